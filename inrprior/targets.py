"""Supervision targets computed from images, and the metrics that compare fits with them.

Derivative targets are in COORDINATE units, the units of :meth:`Functions.query`: the derivative of the colour (image
scale ``[0, 1]``) with respect to the ``[-1, 1]`` coordinates. One pixel step is ``2 / W`` in x and ``2 / H`` in y, so
a per-pixel difference is multiplied by ``W / 2`` (x) or ``H / 2`` (y), and a second difference by the square.
Every filter runs per image and per channel (a depthwise ``conv2d``) with replicate padding at the border.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .coords import grid

__all__ = ["image_gradient", "image_laplacian", "psnr", "align_offset", "align_affine"]

_SOBEL_X = [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]
_LAPLACE_X = [[0.0, 0.0, 0.0], [1.0, -2.0, 1.0], [0.0, 0.0, 0.0]]


def _check_images(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a (B, C, H, W) tensor, got {shape}")
    if not torch.is_floating_point(images):
        raise TypeError(f"{name} must be floating point, got dtype {images.dtype}")
    return images


def _depthwise(images: torch.Tensor, kernels: list) -> torch.Tensor:
    """Apply each ``3x3`` kernel to every channel of every image: ``(B, C, H, W)`` -> ``(B, C, H, W, K)``."""
    b, c, h, w = images.shape
    weight = torch.tensor(kernels, dtype=images.dtype, device=images.device)[:, None]  # (k, 1, 3, 3)
    x = F.pad(images.reshape(b * c, 1, h, w), (1, 1, 1, 1), mode="replicate")
    out = F.conv2d(x, weight)  # (b*c, k, h, w)
    return out.reshape(b, c, len(kernels), h, w).permute(0, 1, 3, 4, 2)


def image_gradient(images: torch.Tensor) -> torch.Tensor:
    """Sobel gradients in coordinate units.

    The Sobel filters are normalized by 8 so that on a linear ramp they give the exact per-pixel derivative; that is
    then multiplied by ``W / 2`` (d/dx) and ``H / 2`` (d/dy).

    Args:
        images: ``(B, C, H, W)`` on the image scale.
    Returns:
        ``(B, C, H, W, 2)``: (d/dx, d/dy), x along columns, y along rows.
    """
    images = _check_images(images)
    h, w = images.shape[-2:]
    sobel_x = [[v / 8 for v in row] for row in _SOBEL_X]
    sobel_y = [list(col) for col in zip(*sobel_x)]  # transpose: rows become the derivative axis
    d = _depthwise(images, [sobel_x, sobel_y])  # (b, c, h, w, 2) per pixel
    return d * torch.tensor([w / 2, h / 2], dtype=images.dtype, device=images.device)


def image_laplacian(images: torch.Tensor) -> torch.Tensor:
    """Discrete 5-point Laplacian in coordinate units: ``d2/dx2 * (W/2)^2 + d2/dy2 * (H/2)^2``.

    Args:
        images: ``(B, C, H, W)`` on the image scale.
    Returns:
        ``(B, C, H, W)``.
    """
    images = _check_images(images)
    h, w = images.shape[-2:]
    laplace_y = [list(col) for col in zip(*_LAPLACE_X)]
    d = _depthwise(images, [_LAPLACE_X, laplace_y])  # (b, c, h, w, 2) second differences per pixel
    return d[..., 0] * (w / 2) ** 2 + d[..., 1] * (h / 2) ** 2


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, in dB (no clamping: clamp first if you want it).

    Args:
        a, b: ``(B, C, H, W)`` (or any ``(B, ...)``; a ``(C, H, W)`` pair is treated as one image).
        data_range: the peak value (1 for images in ``[0, 1]``).
    Returns:
        ``(B,)`` PSNR; ``(1,)`` for a single ``(C, H, W)`` image. Identical images give ``inf``.
    """
    if a.shape != b.shape:
        raise ValueError(f"psnr needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() == 3:
        a, b = a[None], b[None]
    mse = (a - b).double().pow(2).flatten(1).mean(1)
    return (10 * torch.log10(data_range ** 2 / mse)).to(a.dtype)


def align_offset(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Shift each image/channel of ``pred`` by the constant that best matches ``target`` (least squares).

    Gradient supervision cannot see a constant offset; this removes it before comparing.

    Args:
        pred, target: ``(B, C, H, W)``.
    Returns:
        ``(B, C, H, W)`` aligned prediction.
    """
    _check_pair(pred, target)
    return pred + (target - pred).mean(dim=(-2, -1), keepdim=True)


def align_affine(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Add to each image/channel of ``pred`` the affine term ``a + b x + c y`` that best matches ``target``.

    Laplacian supervision cannot see affine terms (their Laplacian is zero); this removes them before comparing.
    ``x, y`` are the pixel-centre coordinates in ``[-1, 1]``.

    Args:
        pred, target: ``(B, C, H, W)``.
    Returns:
        ``(B, C, H, W)`` aligned prediction.
    """
    _check_pair(pred, target)
    b, c, h, w = pred.shape
    xy = grid(h, w, device=pred.device, dtype=torch.float64)  # (h*w, 2)
    basis = torch.cat([torch.ones_like(xy[:, :1]), xy], dim=1)  # (h*w, 3)
    residual = (target - pred).double().reshape(b * c, h * w).T  # (h*w, b*c)
    coef = torch.linalg.lstsq(basis, residual).solution  # (3, b*c)
    fitted = (basis @ coef).T.reshape(b, c, h, w)
    return pred + fitted.to(pred.dtype)


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    _check_images(pred, "pred")
    _check_images(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
