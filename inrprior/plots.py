"""Figures: images, image grids, curves and derivative maps, written to files.

Figures are drawn on ``matplotlib.figure.Figure`` objects rendered by the Agg backend, never through ``pyplot``: no
window opens and the caller's pyplot state and backend are left alone. Every function takes tensors or numpy arrays,
creates the output folder, writes one file and returns its path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = ["save_image", "tile", "image_grid", "plot_curves", "fit_figure", "derivative_maps", "gradient_norm",
           "derivative_rows"]


def _subplots(nrows: int, ncols: int, figsize) -> tuple:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _hwc(image) -> np.ndarray:
    """``(C, H, W)`` or ``(H, W)`` -> ``(H, W)`` (gray) or ``(H, W, 3)`` for display."""
    a = _numpy(image)
    if a.ndim == 3:
        if a.shape[0] not in (1, 3, 4):
            raise ValueError(f"image must be (C, H, W) with C in 1, 3, 4; got shape {a.shape}")
        a = a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1)
    elif a.ndim != 2:
        raise ValueError(f"image must be (C, H, W) or (H, W); got shape {a.shape}")
    return a


def _save(fig, path, title: str | None = None, dpi: int = 100) -> Path:
    """Caption, lay out and write a figure; returns its path."""
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = _out(path)
    fig.savefig(path, dpi=dpi)
    return path


def _out(path) -> Path:
    """The file to write: ``.png`` is added to a path without a suffix (the caller prints what is returned)."""
    path = Path(path)
    if not path.suffix:
        path = path.with_name(path.name + ".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def save_image(image, path) -> Path:
    """Write one image pixel for pixel (PNG, JPEG, ... by the suffix).

    Args:
        image: ``(C, H, W)`` or ``(H, W)`` in ``[0, 1]`` (clamped), C in 1, 3, 4.
        path: output file.
    """
    from PIL import Image

    a = _hwc(image)
    a = np.nan_to_num(np.clip(a, 0, 1))
    path = _out(path)
    Image.fromarray(np.round(a * 255).astype(np.uint8)).save(path)
    return path


def tile(images, nrow: int | None = None, pad: int = 1, fill: float = 1.0) -> torch.Tensor:
    """Lay out ``(B, C, H, W)`` images as one ``(C, H', W')`` mosaic, pixel for pixel (for :func:`save_image`).

    Args:
        images: the images.
        nrow: images per row (default: about square).
        pad: pixels between images, filled with ``fill``.
    """
    images = torch.as_tensor(images).detach().cpu()
    if images.dim() != 4 or len(images) == 0:
        raise ValueError(f"tile needs (B, C, H, W) images, got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    ncol = nrow or int(np.ceil(np.sqrt(b)))
    nrows = int(np.ceil(b / ncol))
    out = torch.full((c, nrows * (h + pad) - pad, ncol * (w + pad) - pad), fill, dtype=images.dtype)
    for k in range(b):
        i, j = divmod(k, ncol)
        out[:, i * (h + pad):i * (h + pad) + h, j * (w + pad):j * (w + pad) + w] = images[k]
    return out


def image_grid(images, path, nrow: int | None = None, titles: Sequence[str] | None = None,
               title: str | None = None, cell_inches: float = 1.6) -> Path:
    """A grid of images (samples, reconstructions) with optional per-image titles.

    Args:
        images: ``(B, C, H, W)`` in ``[0, 1]`` (or a list of ``(C, H, W)`` of equal channel count).
        path: output file.
        nrow: images per row (default: about square).
        titles: one short caption per image.
        title: a caption for the whole figure.
    """
    images = [_hwc(im) for im in images]
    if not images:
        raise ValueError("image_grid needs at least one image")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(titles)} titles for {len(images)} images")
    ncol = nrow or int(np.ceil(np.sqrt(len(images))))
    nrows = int(np.ceil(len(images) / ncol))
    fig, axes = _subplots(nrows, ncol, (cell_inches * ncol, cell_inches * nrows + (0.3 if title else 0)))
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < len(images):
            ax.imshow(np.clip(images[k], 0, 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            if titles is not None:
                ax.set_title(titles[k], fontsize=8)
    return _save(fig, path, title)


def plot_curves(curves: dict, path, xlabel: str = "step", ylabel: str = "PSNR (dB)", logx: bool = False,
                title: str | None = None) -> Path:
    """Line plot of named curves, e.g. PSNR versus steps for several methods.

    Args:
        curves: ``{label: (xs, ys)}``.
        path: output file.
        xlabel, ylabel, title: axis labels and title.
        logx: logarithmic x axis (non-positive x values are dropped from the plot).
    """
    fig, axes = _subplots(1, 1, (5, 3.5))
    ax = axes[0, 0]
    for label, (xs, ys) in curves.items():
        xs, ys = _numpy(xs).ravel(), _numpy(ys).ravel()
        if len(xs) != len(ys):
            raise ValueError(f"curve {label!r} has {len(xs)} x values and {len(ys)} y values")
        keep = xs > 0 if logx else np.ones_like(xs, dtype=bool)
        ax.plot(xs[keep], ys[keep], marker="o" if len(xs) <= 12 else None, ms=3, label=label)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = _out(path)
    fig.savefig(path, dpi=120)
    return path


def gradient_norm(gradient) -> torch.Tensor:
    """Gradient magnitude ``(..., C, H, W, 2)`` -> ``(..., H, W)``: the root of the sum of squares over channels
    and both axes."""
    gradient = torch.as_tensor(gradient)
    return gradient.pow(2).sum(dim=(-1, -4)).sqrt()


def _limit(arrays: list[np.ndarray], q: float = 99.5) -> float:
    values = np.concatenate([np.abs(a).ravel() for a in arrays]) if arrays else np.zeros(1)
    values = values[np.isfinite(values)]
    return float(np.percentile(values, q)) if values.size and np.percentile(values, q) > 0 else 1.0


def fit_figure(rows: list[dict], path, title: str | None = None) -> Path:
    """Per row: an image, its gradient magnitude and its Laplacian, with shared colour scales per column.

    Args:
        rows: dicts with ``name`` and ``image`` ``(C, H, W)``, optionally ``gradient_norm`` ``(H, W)`` (or
            ``(C, H, W, 2)`` gradients, reduced with :func:`gradient_norm`) and ``laplacian`` ``(C, H, W)`` or
            ``(H, W)`` (channels are averaged), and ``psnr`` (shown next to the name).
        path: output file.
        title: a caption for the whole figure.
    """
    if not rows:
        raise ValueError("fit_figure needs at least one row")
    grads, laps = [], []
    for row in rows:
        g = row.get("gradient_norm")
        if g is not None:
            g = _numpy(gradient_norm(torch.as_tensor(g)) if _numpy(g).ndim == 4 else g)
        lap = row.get("laplacian")
        if lap is not None:
            lap = _numpy(lap)
            lap = lap.mean(0) if lap.ndim == 3 else lap
        grads.append(g)
        laps.append(lap)
    gmax = _limit([g for g in grads if g is not None])
    lmax = _limit([lap for lap in laps if lap is not None])
    fig, axes = _subplots(len(rows), 3, (7.5, 2.5 * len(rows) + (0.3 if title else 0)))
    for r, row in enumerate(rows):
        name = row.get("name", f"#{r}")
        if row.get("psnr") is not None:
            name = f"{name}  {float(row['psnr']):.1f} dB"
        panels = [(_hwc(row["image"]).clip(0, 1), dict(cmap="gray", vmin=0, vmax=1), name),
                  (grads[r], dict(cmap="magma", vmin=0, vmax=gmax), "gradient magnitude"),
                  (laps[r], dict(cmap="RdBu_r", vmin=-lmax, vmax=lmax), "Laplacian")]
        for ax, (data, style, label) in zip(axes[r], panels):
            ax.axis("off")
            if data is not None:
                ax.imshow(data, interpolation="nearest", **style)
                ax.set_title(label, fontsize=8)
    return _save(fig, path, title)


def derivative_rows(query, names: Sequence[str] | None = None) -> list[dict]:
    """Rows for :func:`fit_figure` from a query laid out as images (``Functions.render_derivatives``): value
    ``(B, C, H, W)``, gradient ``(B, C, H, W, 2)``, laplacian ``(B, C, H, W)``."""
    b = len(query.value)
    names = list(names) if names is not None else [f"#{i}" for i in range(b)]
    return [dict(name=names[i], image=query.value[i],
                 gradient_norm=None if query.gradient is None else gradient_norm(query.gradient[i]),
                 laplacian=None if query.laplacian is None else query.laplacian[i]) for i in range(b)]


def derivative_maps(query_images, path, names: Sequence[str] | None = None, title: str | None = None) -> Path:
    """:func:`fit_figure` for every function of a query laid out as images (see :func:`derivative_rows`)."""
    return fit_figure(derivative_rows(query_images, names), path, title=title)
