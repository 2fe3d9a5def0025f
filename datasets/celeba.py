"""Prepare CelebA (aligned and cropped faces) in ROOT/celeba (torchvision's layout) for `--data celeba:ROOT`.

torchvision downloads CelebA from Google Drive, which often refuses with a quota error. Then download these six
files by hand from the CelebA page (https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html, "Align&Cropped Images" and
"Anno"/"Eval"), put them in ROOT/celeba/ and run this script again: it extracts the images and checks the files.

    img_align_celeba.zip  list_attr_celeba.txt  identity_CelebA.txt  list_bbox_celeba.txt
    list_landmarks_align_celeba.txt  list_eval_partition.txt

    python datasets/celeba.py data/          # ~1.4 GB, then: inrprior train --data celeba:data/ ...
"""
import zipfile

from _common import check, fail, parser

if __name__ == "__main__":
    args = parser(__doc__.splitlines()[0]).parse_args()
    from torchvision.datasets import CelebA

    folder = args.root / "celeba"
    archive = folder / "img_align_celeba.zip"
    if archive.is_file() and not (folder / "img_align_celeba").is_dir():
        print(f"extracting {archive} ...")
        with zipfile.ZipFile(archive) as z:
            z.extractall(folder)
    try:
        CelebA(str(args.root), split="all", target_type=[], download=not (folder / "img_align_celeba").is_dir())
    except Exception as e:  # gdown missing, Drive quota, or a checksum mismatch
        fail(f"{e}\nDownload the files by hand as this script's docstring explains, then run it again.")
    check(f"celeba:{args.root}")
