"""Coordinate grids, pixel <-> coordinate maps, and image <-> (coords, values) conversion.

Conventions shared by every module (see DESIGN.md):
- coordinates are ``(..., 2)`` float tensors in ``[-1, 1]``, ordered ``(x, y)``; x runs along columns, y along rows;
- pixel ``(j, i)`` of an ``H x W`` image has its centre at ``x = -1 + (2j + 1) / W``, ``y = -1 + (2i + 1) / H``;
- images at the API edge are ``(C, H, W)`` or ``(B, C, H, W)`` floats in ``[0, 1]``.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = [
    "grid",
    "pixel_to_coord",
    "coord_to_pixel",
    "as_image_batch",
    "image_to_points",
    "points_to_image",
    "check_coords",
    "check_context",
    "check_finite",
]


def grid(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Pixel-centre coordinates of an ``h x w`` image, row-major.

    Returns:
        ``(h * w, 2)`` tensor of ``(x, y)`` in ``[-1, 1]``; row ``i * w + j`` is pixel ``(j, i)``.
    """
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (h, w)) or h < 1 or w < 1:
        raise ValueError(f"grid size must be positive integers, got {h!r} x {w!r}")
    ys = (2 * torch.arange(h, device=device, dtype=dtype) + 1) / h - 1
    xs = (2 * torch.arange(w, device=device, dtype=dtype) + 1) / w - 1
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy], dim=-1).reshape(-1, 2)


def pixel_to_coord(px, py, h: int, w: int) -> torch.Tensor:
    """Map continuous pixel positions to coordinates; pixel ``j`` is centred at ``j`` (3.5 is between 3 and 4).

    Args:
        px, py: column and row positions (numbers or tensors of one shape).
    Returns:
        ``(..., 2)`` tensor of ``(x, y)``.
    """
    px = torch.as_tensor(px)
    if not torch.is_floating_point(px):  # a float tensor keeps its precision; numbers take the default dtype
        px = px.to(torch.get_default_dtype())
    py = torch.as_tensor(py, dtype=px.dtype, device=px.device)
    return torch.stack([(2 * px + 1) / w - 1, (2 * py + 1) / h - 1], dim=-1)


def coord_to_pixel(coords: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`pixel_to_coord`: ``(..., 2)`` coordinates to ``(..., 2)`` continuous ``(px, py)``."""
    x, y = coords[..., 0], coords[..., 1]
    return torch.stack([((x + 1) * w - 1) / 2, ((y + 1) * h - 1) / 2], dim=-1)


def check_finite(t: torch.Tensor, name: str) -> None:
    if not torch.is_floating_point(t):
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if not torch.isfinite(t).all():
        bad = "NaN" if torch.isnan(t).any() else "infinite"
        raise ValueError(f"{name} contains {bad} values")


def check_coords(coords: torch.Tensor, batch: int | None = None) -> torch.Tensor:
    """Validate coordinates of shape ``(N, 2)`` or ``(B, N, 2)``; coordinates outside ``[-1, 1]`` are allowed
    (the function is defined everywhere; outside the image it extrapolates)."""
    if not isinstance(coords, torch.Tensor):
        coords = torch.as_tensor(np.asarray(coords), dtype=torch.get_default_dtype())
    if coords.dim() not in (2, 3) or coords.shape[-1] != 2:
        raise ValueError(f"coords must have shape (N, 2) or (B, N, 2), got {tuple(coords.shape)}")
    if coords.dim() == 3 and batch is not None and coords.shape[0] != batch:
        raise ValueError(f"coords have batch size {coords.shape[0]} but there are {batch} functions")
    check_finite(coords, "coords")
    return coords


def check_context(coords: Any, values: Any, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate known pixels for ``adapt_context``: ``values (B, N, C)`` in ``[0, 1]`` (the images' scale) with
    ``N >= 1``, and ``coords (B, N, 2)`` or ``(N, 2)`` shared. Returns both as tensors (coords as given)."""
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"values must be a tensor, got {type(values).__name__}")
    if values.dim() != 3 or values.shape[-1] != channels:
        raise ValueError(f"values must have shape (B, N, {channels}), got {tuple(values.shape)}")
    if values.shape[1] < 1:
        raise ValueError("need at least 1 context pixel per image, got N=0")
    coords = check_coords(coords, batch=values.shape[0])
    if coords.shape[-2] != values.shape[1]:
        raise ValueError(f"coords hold {coords.shape[-2]} points but values hold {values.shape[1]}")
    check_finite(values, "values")
    lo, hi = map(float, values.aminmax())
    if lo < 0 or hi > 1:
        raise ValueError(f"values must be in [0, 1] like the images, got [{lo:.4g}, {hi:.4g}]")
    return coords, values


def as_image_batch(image: Any, name: str = "image", channels: int | None = None) -> tuple[torch.Tensor, bool]:
    """Convert a tensor, numpy array or PIL image to a ``(B, C, H, W)`` float tensor in ``[0, 1]``.

    Accepts ``(C, H, W)``/``(B, C, H, W)`` tensors, channels-last arrays ``(H, W)``/``(H, W, C)``/``(B, H, W, C)``
    as scikit-image and PIL give them (uint8 is scaled by 1/255, uint16 by 1/65535) and PIL images; values outside
    ``[0, 1]`` are an error, and so is a channel count other than ``channels`` (a network's outputs) when given.
    Returns the batch and whether the input was a single image.
    """
    from_array = not isinstance(image, torch.Tensor)
    if from_array:
        arr = _pil_to_array(image) if hasattr(image, "mode") and hasattr(image, "getbands") else np.asarray(image)
        if arr.dtype in (np.uint8, np.uint16):
            arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
        if arr.dtype.kind not in "fiub":
            raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
        arr = arr.astype(np.float32)
        if arr.ndim == 2:
            arr = arr[None]
        elif arr.ndim in (3, 4):
            arr = np.moveaxis(arr, -1, -3)  # numpy images are (H, W, C)
        else:
            raise ValueError(f"{name} array must be (H, W), (H, W, C) or (B, H, W, C), got shape {arr.shape}")
        image = torch.from_numpy(np.ascontiguousarray(arr))
    single = image.dim() == 3
    if image.dim() == 2:
        image, single = image[None], True
    if single:
        image = image[None]
    if image.dim() != 4:
        raise ValueError(f"{name} must have shape (C, H, W) or (B, C, H, W), got {tuple(image.shape)}")
    if image.shape[1] > 4:
        hint = ("numpy arrays are read channels-last, (H, W, C); pass a torch tensor for (C, H, W)" if from_array
                else "channels-last input? permute it")
        raise ValueError(f"{name} has {image.shape[1]} channels; expected (C, H, W) with C <= 4 ({hint})")
    if channels is not None and image.shape[1] != channels:
        raise ValueError(f"{name}: {image.shape[1]} channels, but the SIREN outputs {channels}")
    if min(image.shape[-2:]) < 1 or image.shape[0] < 1:
        raise ValueError(f"{name} is empty: shape {tuple(image.shape)}")
    if image.is_complex():
        raise TypeError(f"{name} must be real, got dtype {image.dtype}")
    if not torch.is_floating_point(image):
        image = image.float() / _INTEGER_SCALE.get(image.dtype, 1.0)
    elif image.dtype in (torch.float16, torch.bfloat16):
        image = image.float()  # a half-precision store is fine, optimizing in it is not (Adam's eps underflows)
    lo, hi = map(float, image.aminmax())  # one reduction (this runs on every training batch): NaN/inf show here too
    if not (math.isfinite(lo) and math.isfinite(hi)):
        check_finite(image, name)  # its message says which
    if lo < 0 or hi > 1:
        hint = " (8-bit values as floats? divide by 255)" if hi > 1.5 else ""
        raise ValueError(f"{name} values must be in [0, 1], got [{lo:.4g}, {hi:.4g}]{hint}")
    return image, single


_INTEGER_SCALE = {torch.uint8: 255.0, torch.uint16: 65535.0}


def _pil_to_array(img) -> np.ndarray:
    """A PIL image as float32 ``(H, W)`` or ``(H, W, 3)`` on the [0, 1] scale: 16-bit modes are scaled by 1/65535,
    gray modes (bilevel, gray + alpha, a gray palette) stay one channel, anything else becomes RGB (alpha dropped)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.asarray(img).astype(np.float32) / 65535.0
    if img.mode == "F":
        return np.asarray(img, dtype=np.float32)
    gray = img.mode in ("1", "L", "LA") or (img.mode == "P" and _gray_palette(img))
    return np.asarray(img.convert("L" if gray else "RGB")).astype(np.float32) / 255.0


def _gray_palette(img) -> bool:
    palette = img.getpalette() or []
    rgb = np.asarray(palette[:len(palette) // 3 * 3]).reshape(-1, 3)
    return bool(len(rgb)) and bool((rgb == rgb[:, :1]).all())


def image_to_points(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, C, H, W)`` images to shared ``(H*W, 2)`` coords and ``(B, H*W, C)`` values (same scale as the images)."""
    b, c, h, w = images.shape
    coords = grid(h, w, device=images.device, dtype=images.dtype)
    return coords, images.permute(0, 2, 3, 1).reshape(b, h * w, c)


def points_to_image(values: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``(B, h*w, C)`` values on the grid of :func:`grid` to ``(B, C, h, w)`` images."""
    b, n, c = values.shape
    if n != h * w:
        raise ValueError(f"{n} values cannot form a {h}x{w} image")
    return values.reshape(b, h, w, c).permute(0, 3, 1, 2)
