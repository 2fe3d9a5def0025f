"""Check (and optionally shrink) a folder of images for `--data folder:PATH`.

inrprior reads any folder directly: every file under it (recursively, sorted by path) whose extension Pillow knows.
This recipe reads each file exactly as inrprior will (`inrprior.data.read_image`: the same channels, 16-bit images
scaled), lists the files that do not open, and with --size writes centre-cropped, resized 8-bit PNG copies into OUT
(same sub-folders; files that share a name up to the extension, `x.jpg` and `x.png`, become `x.jpg.png` and
`x.png.png`), which makes loading large photos much faster. It exits with status 1 if any file does not open.

    python datasets/folder.py photos/                          # check only
    python datasets/folder.py photos/ --size 64 --out photos64/
"""
import argparse
from collections import Counter
from pathlib import Path

from _common import check, fail

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, help="folder of images")
    p.add_argument("--size", type=int, default=None, help="write square copies of this size")
    p.add_argument("--out", type=Path, default=None, help="where the copies go (needed with --size)")
    args = p.parse_args()
    if args.size and not args.out:
        p.error("--size needs --out")
    if not args.source.is_dir():
        fail(f"{args.source} is not a folder")
    try:
        from PIL import Image

        from inrprior.data import read_image, resize
        from inrprior.plots import save_image
    except ImportError as e:
        fail(f"{e}: run this in the project's environment (make venv; .venv/bin/python datasets/folder.py ...)")
    extensions = {e.lower() for e in Image.registered_extensions()}
    files = sorted(f for f in args.source.rglob("*") if f.is_file() and f.suffix.lower() in extensions)
    stems = Counter(f.with_suffix("") for f in files)
    bad = 0
    for f in files:
        try:
            image = read_image(f)  # (C, H, W) in [0, 1], as training reads it
            if args.size:
                name = f.relative_to(args.source)
                target = args.out / (name.with_suffix(".png") if stems[f.with_suffix("")] == 1
                                     else name.with_name(name.name + ".png"))
                save_image(resize(image, args.size), target)
        except (OSError, ValueError) as e:
            bad += 1
            print(f"unreadable: {f} ({e})")
    n_test = len(files) // 5
    print(f"{len(files)} image files, {bad} unreadable; splits: {len(files) - n_test} train / {n_test} test "
          f"(every 5th file, in sorted order, is test)")
    if bad:
        raise SystemExit(1)
    if files:
        check(f"folder:{args.out if args.size else args.source}")
