"""Image datasets: embedded defaults that need no download, image folders, and torchvision datasets on disk.

Every dataset yields ``(C, H, W)`` float tensors in ``[0, 1]``. Specs for :func:`load` (channels in brackets):

- ``faces``: the 100 faces of scikit-image's ``lfw_subset`` (25x25 crops of Labeled Faces in the Wild) [1];
- ``patches``: non-overlapping tiles of scikit-image's shipped photographs :data:`PATCH_PHOTOS` at their native
  resolution [3: gray photographs are replicated];
- ``digits``: scikit-learn's 1,797 8x8 handwritten digits, scaled to ``[0, 1]`` [1];
- ``folder:PATH``: every file under ``PATH`` (recursive, sorted) with an extension Pillow reads [the first file's];
- ``mnist:ROOT``, ``cifar10:ROOT``, ``celeba:ROOT``: torchvision's MNIST [1], CIFAR10 [3], CelebA aligned [3].

Nothing is downloaded here: the torchvision datasets are read with ``download=False``; ``datasets/`` in the
repository holds the recipes that put them on disk.

Splits: torchvision datasets use their official splits. For the others, item ``i`` of the full, ordered set is in
the test split when ``i % 5 == 4`` and in the train split otherwise (80 / 20; ``faces``: 80 / 20 images). The rule
needs no random generator, so it is the same on every machine and every library version.

Resizing: an image whose aspect differs from the target is centre-cropped to the target's aspect, then resized with
antialiased bilinear interpolation. Colour conversion: RGB -> gray uses the ITU-R 601 luma weights; gray -> RGB
replicates the channel; alpha channels are dropped.
"""
from __future__ import annotations

import functools
import numbers
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, Dataset

from .coords import as_image_batch, image_to_points

__all__ = ["load", "photo", "read_image", "stack", "sample_context", "resize", "convert_channels", "split_indices",
           "ImageDataset", "PHOTOS", "PATCH_PHOTOS", "SPECS"]

SPECS = ("faces", "patches", "digits", "folder:PATH", "mnist:ROOT", "cifar10:ROOT", "celeba:ROOT")
#: scikit-image photographs that ship with the package (no download): name -> skimage.data function.
PHOTOS = ("astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
          "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text")
PATCH_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "coins", "moon", "brick", "grass", "gravel")
_LUMA = (0.299, 0.587, 0.114)
_RECIPES = "see datasets/README.md"


class ImageDataset(Dataset):
    """Images held in memory as one ``(M, C, H, W)`` tensor; item ``i`` is ``images[i]`` ``(C, H, W)``."""

    def __init__(self, images: torch.Tensor, name: str = "images"):
        self.images, self.name = images, name

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]

    def __repr__(self) -> str:
        return f"ImageDataset({self.name!r}, {tuple(self.images.shape)})"


class _LazyImages(Dataset):
    """Images read one at a time by ``get(i) -> (C, H, W)``, then converted and resized."""

    def __init__(self, name: str, n: int, get, size: tuple[int, int], channels: int | None):
        self.name, self.n, self.get, self.size, self.channels = name, n, get, size, channels

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        if not -self.n <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} images")
        return resize(convert_channels(self.get(i % self.n), self.channels), self.size)

    def __repr__(self) -> str:
        return f"ImageDataset({self.name!r}, {self.n} images of {self.size}, lazy)"


def _size(size) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, numbers.Integral) else tuple(size) if hasattr(size, "__len__") else ()
    if len(pair) != 2 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1
                                 for v in pair):
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    return int(pair[0]), int(pair[1])


def resize(image: torch.Tensor, size) -> torch.Tensor:
    """Centre-crop ``(C, H, W)`` (or ``(B, C, H, W)``) to the aspect of ``size``, then resize (antialiased bilinear).

    Args:
        image: images in ``[0, 1]``.
        size: ``int`` (square) or ``(height, width)``.
    Returns:
        the resized images, clamped to ``[0, 1]``.
    """
    h, w = _size(size)
    H, W = image.shape[-2:]
    if (H, W) == (h, w):
        return image
    if H * w > W * h:  # too tall for the target aspect
        ch = max(1, round(W * h / w))
        image = image[..., (H - ch) // 2:(H - ch) // 2 + ch, :]
    elif H * w < W * h:
        cw = max(1, round(H * w / h))
        image = image[..., (W - cw) // 2:(W - cw) // 2 + cw]
    batch = image if image.dim() == 4 else image[None]
    out = F.interpolate(batch.float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    out = out.clamp(0, 1).to(image.dtype)
    return out if image.dim() == 4 else out[0]


def convert_channels(image: torch.Tensor, channels: int | None) -> torch.Tensor:
    """Convert ``(C, H, W)`` or ``(B, C, H, W)`` between gray (1) and RGB (3); ``None`` leaves it unchanged."""
    c = image.shape[-3]
    if channels is None or channels == c:
        return image
    if channels == 1 and c == 3:
        weights = torch.tensor(_LUMA, dtype=image.dtype, device=image.device).view(3, 1, 1)
        return (image * weights).sum(-3, keepdim=True)
    if channels == 3 and c == 1:
        return image.repeat_interleave(3, dim=-3)
    raise ValueError(f"cannot convert {c} channels to {channels}; channels must be 1 (gray) or 3 (RGB)")


def read_image(path, channels: int | None = None) -> torch.Tensor:
    """Read an image file: anything Pillow reads (PNG, JPEG, TIFF, 16-bit PNG, ...), or a ``.npy`` array.

    Args:
        path: the file. A ``.npy`` file holds an ``(H, W)`` or ``(H, W, C)`` array (uint8 scaled by 1/255, floats
            taken as they are); it is read without unpickling.
        channels: convert to 1 (gray) or 3 (RGB); default: as stored (gray or RGB; alpha dropped).
    Returns:
        ``(C, H, W)`` float tensor in ``[0, 1]``.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not an image file")
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"{path} is not a plain numeric .npy array ({e})") from None
        if arr.ndim not in (2, 3):
            raise ValueError(f"{path} holds an array of shape {arr.shape}; one image must be (H, W) or (H, W, C)")
        image = as_image_batch(arr, str(path))[0][0]
    else:
        try:
            with Image.open(path) as img:
                img.load()
                image = as_image_batch(img, str(path))[0][0]
        except UnidentifiedImageError:
            raise ValueError(f"{path} is not an image file Pillow can read") from None
        except (OSError, SyntaxError) as e:  # truncated or damaged files
            raise ValueError(f"{path} is a damaged image: {e}") from None
    return convert_channels(image, channels)


def photo(name: str = "camera", size=None, channels: int | None = None) -> torch.Tensor:
    """One of scikit-image's shipped photographs (no download), e.g. the cameraman.

    Args:
        name: one of :data:`PHOTOS`.
        size: ``None`` for the native resolution, else ``int`` or ``(height, width)`` (see :func:`resize`).
        channels: 1 or 3 to convert; default as shipped (``camera`` is gray, ``astronaut`` RGB, ...).
    Returns:
        ``(C, H, W)`` float tensor in ``[0, 1]``.
    """
    image = _photo(name).clone()  # the cache's copy stays as shipped whatever the caller does with it
    image = convert_channels(image, channels)
    return image if size is None else resize(image, size)


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> torch.Tensor:
    import skimage.data

    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; choose from {', '.join(PHOTOS)}")
    arr = getattr(skimage.data, name)()
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    return as_image_batch(arr, name)[0][0]


def split_indices(n: int, split: str) -> list[int]:
    """Indices of ``split`` (``"train"``, ``"test"`` or ``"all"``) among ``n`` ordered items: test is ``i % 5 == 4``."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    return [i for i in range(n) if split == "all" or (i % 5 == 4) == (split == "test")]


@functools.lru_cache(maxsize=8)
def _embedded(name: str, size: tuple[int, int]) -> torch.Tensor:
    if name == "faces":
        import skimage.data
        faces = torch.from_numpy(skimage.data.lfw_subset()[:100]).float()[:, None]  # (100, 1, 25, 25)
        return resize(faces, size)
    if name == "digits":
        from sklearn.datasets import load_digits
        digits = torch.from_numpy(load_digits().images).float()[:, None] / 16.0  # (1797, 1, 8, 8)
        return resize(digits, size)
    h, w = size
    tiles = []
    for name in PATCH_PHOTOS:
        image = convert_channels(_photo(name), 3)
        H, W = image.shape[-2:]
        tiles += [image[:, i:i + h, j:j + w] for i in range(0, H - h + 1, h) for j in range(0, W - w + 1, w)]
    if not tiles:
        raise ValueError(f"patch size {size} is larger than the photographs")
    return torch.stack(tiles)


def load(spec: str, size=32, split: str = "train", channels: int | None = None) -> Dataset:
    """Load an image dataset (see the module docstring for specs, splits and conversions).

    Args:
        spec: ``"faces"``, ``"patches"``, ``"digits"``, ``"folder:PATH"``, ``"mnist:ROOT"``, ``"cifar10:ROOT"``
            or ``"celeba:ROOT"``.
        size: ``int`` or ``(height, width)`` of every image.
        split: ``"train"``, ``"test"`` or ``"all"``.
        channels: 1 (gray) or 3 (RGB); default: the dataset's own.
    Returns:
        a torch ``Dataset`` whose items are ``(C, H, W)`` float tensors in ``[0, 1]``.
    """
    size = _size(size)
    split_indices(0, split)  # validates split
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
    kind, _, arg = spec.partition(":")
    if kind in ("faces", "patches", "digits") and not arg:
        images = _embedded(kind, size)
        images = convert_channels(images[split_indices(len(images), split)], channels)
        return ImageDataset(images, name=f"{kind} ({split})")
    if kind == "folder" and arg:
        return _folder(Path(arg).expanduser(), size, split, channels)
    if kind in ("mnist", "cifar10", "celeba") and arg:
        parts = ("train", "test") if split == "all" and kind != "celeba" else (split,)
        sets = [_torchvision(kind, Path(arg).expanduser(), part, size, channels) for part in parts]
        return sets[0] if len(sets) == 1 else ConcatDataset(sets)
    raise ValueError(f"unknown dataset {spec!r}; use one of {', '.join(SPECS)}")


def _folder(root: Path, size, split: str, channels: int | None) -> Dataset:
    from PIL import Image

    if not root.is_dir():
        what = ("is a file, not a folder (folder:PATH reads the images under PATH)" if root.exists()
                else "does not exist")
        raise FileNotFoundError(f"image folder {root} {what}")
    extensions = {e.lower() for e in Image.registered_extensions()}
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
    if not files:
        raise ValueError(f"image folder {root} holds no image files (no file ending in "
                         f"{', '.join(sorted(extensions)[:6])}, ...)")
    if channels is None:
        channels = read_image(files[0]).shape[0]
    files = [files[i] for i in split_indices(len(files), split)]  # a folder of < 5 images has an empty test split
    _check_headers(files, root)
    return _LazyImages(f"folder:{root} ({split})", len(files), lambda i: read_image(files[i]), size, channels)


def _check_headers(files: list[Path], root: Path) -> None:
    """Fail now, not hours into training, on files whose header Pillow cannot read (reads headers only: a file
    damaged further in is still found when it is read)."""
    from PIL import Image, UnidentifiedImageError

    bad = []
    for path in files:
        try:
            with Image.open(path):
                pass
        except (UnidentifiedImageError, OSError, SyntaxError):
            bad.append(path.relative_to(root))
    if bad:
        names = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(f"image folder {root}: {len(bad)} file(s) Pillow cannot read: {names}; remove or fix them")


_TORCHVISION = {"mnist": ("MNIST", 1, "datasets/mnist.py"), "cifar10": ("CIFAR10", 3, "datasets/cifar10.py"),
                "celeba": ("CelebA", 3, "datasets/celeba.py")}


def _torchvision(kind: str, root: Path, split: str, size, channels: int | None) -> Dataset:
    import torchvision.datasets as tvd

    cls_name, natural, recipe = _TORCHVISION[kind]
    cls = getattr(tvd, cls_name)
    split_args = {"split": split} if kind == "celeba" else {"train": split == "train"}
    try:
        base = cls(str(root), download=False, **split_args, **({"target_type": []} if kind == "celeba" else {}))
    except RuntimeError as e:
        raise FileNotFoundError(f"{cls_name} not found under {root} ({e}); prepare it with "
                                f"`python {recipe} {root}` ({_RECIPES})") from None
    channels = channels or natural
    get = lambda i: as_image_batch(base[i][0], f"{cls_name}[{i}]")[0][0]  # noqa: E731
    return _LazyImages(f"{kind}:{root} ({split})", len(base), get, size, channels)


def stack(dataset) -> torch.Tensor:
    """All images of a dataset as one ``(M, C, H, W)`` tensor."""
    if isinstance(dataset, ImageDataset):
        return dataset.images
    if len(dataset) == 0:
        raise ValueError("cannot stack an empty dataset")
    return torch.stack([dataset[i] for i in range(len(dataset))])


def sample_context(images: torch.Tensor, n: int | float, generator: torch.Generator | None = None):
    """Pick ``n`` distinct random pixels of every image: the context for few-pixel fitting.

    Args:
        images: ``(B, C, H, W)`` (or ``(C, H, W)``) in ``[0, 1]``.
        n: number of pixels per image, or a fraction in ``(0, 1]`` of them.
        generator: source of randomness (pixels differ between images).
    Returns:
        ``coords (B, n, 2)`` in ``[-1, 1]`` and ``values (B, n, C)`` in ``[0, 1]``.
    """
    images, _ = as_image_batch(images, "images")
    b, c, h, w = images.shape
    if not isinstance(n, numbers.Integral):  # a fraction (numpy floats too)
        n = float(n)
        if not 0 < n <= 1:
            raise ValueError(f"a fraction of pixels must be in (0, 1], got {n}")
        n = max(1, round(n * h * w))
    if not 1 <= n <= h * w:
        raise ValueError(f"cannot pick {n} pixels from a {h}x{w} image")
    coords, values = image_to_points(images)  # (h*w, 2), (b, h*w, c)
    device = generator.device if generator is not None else images.device
    idx = torch.rand(b, h * w, generator=generator, device=device).argsort(dim=1)[:, :n].to(images.device)  # (b, n)
    return coords[idx], values.gather(1, idx[..., None].expand(b, n, c))
