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
    "check_finite",
]


def grid(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Pixel-centre coordinates of an ``h x w`` image, row-major.

    Returns:
        ``(h * w, 2)`` tensor of ``(x, y)`` in ``[-1, 1]``; row ``i * w + j`` is pixel ``(j, i)``.
    """
    if h < 1 or w < 1:
        raise ValueError(f"grid size must be positive, got {h}x{w}")
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
    px = torch.as_tensor(px, dtype=torch.get_default_dtype())
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


def as_image_batch(image: Any, name: str = "image") -> tuple[torch.Tensor, bool]:
    """Convert a tensor, numpy array or PIL image to a ``(B, C, H, W)`` float tensor in ``[0, 1]``.

    Accepts ``(C, H, W)``/``(B, C, H, W)`` tensors, channels-last arrays ``(H, W)``/``(H, W, C)``/``(B, H, W, C)``
    as scikit-image and PIL give them (uint8 is scaled by 1/255, uint16 by 1/65535) and PIL images; values outside
    ``[0, 1]`` are an error. Returns the batch and whether the input was a single image.
    """
    if not isinstance(image, torch.Tensor):
        if hasattr(image, "mode") and hasattr(image, "size"):  # PIL image
            image = np.asarray(image.convert("RGB") if image.mode not in ("L", "RGB") else image)
        arr = np.asarray(image)
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
        raise ValueError(
            f"{name} has {image.shape[1]} channels; expected (C, H, W) with C <= 4 (channels-last input? permute it)"
        )
    if min(image.shape[-2:]) < 1 or image.shape[0] < 1:
        raise ValueError(f"{name} is empty: shape {tuple(image.shape)}")
    if not torch.is_floating_point(image):
        image = image.float() / (255.0 if image.dtype == torch.uint8 else 1.0)
    lo, hi = map(float, image.aminmax())  # one reduction (this runs on every training batch): NaN/inf show here too
    if not (math.isfinite(lo) and math.isfinite(hi)):
        check_finite(image, name)  # its message says which
    if lo < 0 or hi > 1:
        hint = " (8-bit values as floats? divide by 255)" if hi > 1.5 else ""
        raise ValueError(f"{name} values must be in [0, 1], got [{lo:.4g}, {hi:.4g}]{hint}")
    return image, single


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
