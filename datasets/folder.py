"""Check (and optionally shrink) a folder of images for `--data folder:PATH`.

inrprior reads any folder directly: every file under it (recursively, sorted by path) whose extension Pillow knows.
This recipe finds the files that do not open, and with --size writes centre-cropped, resized PNG copies into OUT
(same sub-folders), which makes loading large photos much faster.

    python datasets/folder.py photos/                          # check only
    python datasets/folder.py photos/ --size 64 --out photos64/
"""
import argparse
from pathlib import Path

from PIL import Image

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", type=Path, help="folder of images")
    p.add_argument("--size", type=int, default=None, help="write square copies of this size")
    p.add_argument("--out", type=Path, default=None, help="where the copies go (needed with --size)")
    args = p.parse_args()
    if args.size and not args.out:
        p.error("--size needs --out")
    extensions = {e.lower() for e in Image.registered_extensions()}
    files = sorted(f for f in args.source.rglob("*") if f.is_file() and f.suffix.lower() in extensions)
    bad = 0
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                if args.size:
                    w, h = im.size
                    s = min(w, h)
                    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
                    im = im.convert("RGB" if im.mode not in ("L", "I;16", "I") else im.mode)
                    target = (args.out / f.relative_to(args.source)).with_suffix(".png")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    im.resize((args.size, args.size), Image.Resampling.LANCZOS).save(target)
        except Exception as e:
            bad += 1
            print(f"unreadable: {f} ({e})")
    n_test = len(files) // 5
    print(f"{len(files)} image files, {bad} unreadable; splits: {len(files) - n_test} train / {n_test} test "
          f"(every 5th file, in sorted order, is test)")
