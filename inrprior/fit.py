"""Fit SIRENs to images from values, gradients or Laplacians, and blend images in the gradient domain.

Losses (all on the image scale, every term in PER-PIXEL units so that the weights of a mix are comparable):
``value`` is the MSE of colours in ``[0, 1]``; ``gradient`` is the MSE of the SIREN's gradient against the Sobel
target (:func:`inrprior.targets.image_gradient`), both converted from coordinate to per-pixel units (times
``2/W``, ``2/H``); ``laplacian`` is the MSE against the 5-point Laplacian (:func:`inrprior.targets.image_laplacian`)
times ``4 / (W H)``. Each term is a mean over points and channels, summed over the images of a batch (so every image
of a batch is fitted exactly as it would be alone).

Training runs the hand-written forward mode every query of a SIREN uses (:func:`inrprior.functions.siren_query`,
also importable from here): the value, its two tangents and its Laplacian go through each layer as ONE stacked
matrix product (value-only fitting is the plain forward pass). It is tested against
:func:`inrprior.functions.query_params_autodiff`, the torch.func path: it is as fast for gradients and about 2.5x
faster for Laplacians in eager mode, and being plain tensor code it compiles (``compile=True``) into fused kernels
(numbers in experiments/fit_supervision.py). ``amp="bf16"`` runs that forward and the loss under bfloat16
autocast (the matmuls in bf16); the weights, their gradients and Adam's state stay float32.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from .coords import as_image_batch, grid, image_to_points, points_to_image
from .functions import Functions, check_amp, siren_query
from .siren import Params, Siren, batch_size_of, param_shapes
from .targets import align_affine, align_offset, image_gradient, image_laplacian, psnr

__all__ = ["fit", "blend", "History", "parse_supervision", "siren_query", "composite_gradient", "SUPERVISIONS"]

log = logging.getLogger(__name__)
SUPERVISIONS = ("value", "gradient", "laplacian")


@dataclass
class History:
    """What :func:`fit` and :func:`blend` record.

    ``step[i]`` is the number of optimizer steps done; ``loss[i]`` the training loss of that step (mean over the
    images, before its update); ``psnr[i]`` the PSNR after it on the full pixel grid, mean over the images, after the
    ``alignment`` (``"none"``, ``"offset"`` or ``"affine"``); ``time[i]`` the optimization seconds so far (excluding
    the PSNR evaluations). ``final_psnr`` is per image; ``seconds`` the wall time of the whole call.
    """
    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)
    time: list[float] = field(default_factory=list)
    final_psnr: list[float] = field(default_factory=list)
    seconds: float = 0.0
    alignment: str = "none"
    supervision: dict = field(default_factory=dict)


def parse_supervision(supervision: str | Mapping[str, float]) -> dict[str, float]:
    """``"value"`` / ``"gradient"`` / ``"laplacian"`` or a dict of non-negative weights -> ``{name: weight}``."""
    if isinstance(supervision, str):
        supervision = {supervision: 1.0}
    if not isinstance(supervision, Mapping):
        raise TypeError(f"supervision must be a name or a dict of weights, got {type(supervision).__name__}")
    unknown = [k for k in supervision if k not in SUPERVISIONS]
    if unknown:
        raise ValueError(f"unknown supervision {unknown}; choose from {SUPERVISIONS}")
    weights = {}
    for k, w in supervision.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"supervision weight for {k!r} must be a finite number >= 0, got {w!r}")
        if w > 0:
            weights[k] = float(w)
    if not weights:
        raise ValueError("supervision needs at least one positive weight")
    return weights


def _loss(net, params, coords, targets: dict, weights: dict, value_mask, pixel, order: int):
    """Per-image weighted loss ``(B,)``; see the module docstring for the units."""
    q = siren_query(net, params, coords, order)
    total = 0.0
    if "value" in weights:
        err = (q.value - targets["value"]).square()  # (b, n, c)
        if value_mask is not None:
            err = err * value_mask
        total = total + weights["value"] * err.mean(dim=(1, 2))
    if "gradient" in weights:
        err = ((q.gradient - targets["gradient"]) * pixel).square()  # (b, n, c, 2)
        total = total + weights["gradient"] * err.mean(dim=(1, 2, 3))
    if "laplacian" in weights:
        err = ((q.laplacian - targets["laplacian"]) * (pixel[0] * pixel[1])).square()  # (b, n, c)
        total = total + weights["laplacian"] * err.mean(dim=(1, 2))
    return total


def _alignment(weights: dict) -> str:
    if "value" in weights:
        return "none"
    return "offset" if "gradient" in weights else "affine"


def _aligned_psnr(pred: torch.Tensor, reference: torch.Tensor, alignment: str) -> torch.Tensor:
    if alignment == "offset":
        pred = align_offset(pred, reference)
    elif alignment == "affine":
        pred = align_affine(pred, reference)
    return psnr(pred, reference)


@torch.no_grad()
def _render(net, params, h: int, w: int, chunk_points: int = 1 << 20) -> torch.Tensor:
    """Unclamped ``(B, C, h, w)`` values, in chunks of about ``chunk_points`` points over the whole batch."""
    coords = grid(h, w, device=next(iter(params.values())).device, dtype=next(iter(params.values())).dtype)
    b = batch_size_of(params, net)
    step = max(1, chunk_points // b)
    parts = [siren_query(net, params, coords[i:i + step], 0).value for i in range(0, coords.shape[0], step)]
    return points_to_image(torch.cat(parts, 1), h, w)


def _initial_params(net, init, b: int, seed: int, device, dtype) -> Params:
    if init is None:  # a CPU generator: a seed gives the same functions on every device, and no global state moves
        params = net.init_params(b, generator=torch.Generator().manual_seed(seed))
    else:
        params = init.params if isinstance(init, Functions) else init
        n = batch_size_of(params, net)
        if n not in (1, b):
            raise ValueError(f"init describes {n} functions but there are {b} images")
    shapes = param_shapes(net)
    out = {}
    for k, v in params.items():
        if v.dim() == len(shapes[k]):
            v = v[None]
        out[k] = v.detach().to(device, dtype).expand(b, *shapes[k]).clone().requires_grad_()
    return out


def _optimize(net, params: Params, images: torch.Tensor, targets: dict, weights: dict, reference: torch.Tensor,
              value_mask, steps: int, lr: float, batch_size, progress: bool, seed: int, compile: bool,
              amp: str | None, log_every, desc: str) -> History:
    """The shared loop of :func:`fit` and :func:`blend`: Adam on ``params`` (in place) against ``targets``."""
    start = time.perf_counter()
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    check_amp(amp)
    b, c, h, w = images.shape
    coords = grid(h, w, device=images.device, dtype=images.dtype)  # (n, 2)
    npts = coords.shape[0]
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    full = batch_size is None or batch_size >= npts
    pixel = torch.tensor([2 / w, 2 / h], dtype=images.dtype, device=images.device)
    order = 2 if "laplacian" in weights else (1 if "gradient" in weights else 0)
    alignment = _alignment(weights)
    log_every = log_every or max(1, steps // 50)
    if not isinstance(log_every, int) or log_every < 1:
        raise ValueError(f"log_every must be a positive integer, got {log_every!r}")

    def loss_fn(params, coords, targets, value_mask):  # the backward runs outside autocast, as PyTorch advises
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            return _loss(net, params, coords, targets, weights, value_mask, pixel, order).sum().float()
    if compile:
        loss_fn = torch.compile(loss_fn, dynamic=False)
    opt = torch.optim.Adam(params.values(), lr=lr)
    gen = torch.Generator(device=images.device).manual_seed(seed)
    hist = History(alignment=alignment, supervision=dict(weights))
    elapsed = 0.0
    bar = tqdm(range(1, steps + 1), desc=desc, disable=not progress, leave=False)
    for step in bar:
        t0 = time.perf_counter()
        if full:
            batch_coords, batch_targets, batch_mask = coords, targets, value_mask
        else:
            idx = torch.randperm(npts, generator=gen, device=images.device)[:batch_size]
            batch_coords = coords[idx]
            batch_targets = {k: v[:, idx] for k, v in targets.items()}
            batch_mask = None if value_mask is None else value_mask[:, idx]
        loss = loss_fn(params, batch_coords, batch_targets, batch_mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if images.device.type == "cuda":
            torch.cuda.synchronize(images.device)  # honest step times
        elapsed += time.perf_counter() - t0
        if step % log_every == 0 or step == steps:
            per_image = _aligned_psnr(_render(net, params, h, w), reference, alignment)
            hist.step.append(step)
            hist.loss.append(loss.item() / b)
            hist.psnr.append(per_image.mean().item())
            hist.time.append(elapsed)
            bar.set_postfix(loss=f"{hist.loss[-1]:.3g}", psnr=f"{hist.psnr[-1]:.2f}")
    per_image = _aligned_psnr(_render(net, params, h, w), reference, alignment)
    hist.final_psnr = per_image.tolist()
    hist.seconds = time.perf_counter() - start
    log.info("%s: %d steps, PSNR %.2f dB (%s alignment), %.1f s", desc, steps, per_image.mean(), alignment,
             hist.seconds)
    return hist


def _setup_net(net, channels: int, device, dtype):
    if net is None:
        return Siren(2, channels, 256, 3, 30.0).to(device, dtype)
    if not isinstance(net, Siren):
        raise TypeError(f"net must be an inrprior.Siren, got {type(net).__name__}")
    if net.in_features != 2 or net.out_features != channels:
        raise ValueError(f"net maps {net.in_features} -> {net.out_features} features but an image with {channels} "
                         f"channels needs 2 -> {channels}")
    return net


def fit(image: Any, steps: int = 1000, supervision: str | Mapping[str, float] = "value", net: Siren | None = None,
        lr: float = 1e-4, batch_size: int | None = None, progress: bool = True, seed: int = 0,
        compile: bool = False, amp: str | None = None, init: Functions | Params | None = None,
        log_every: int | None = None) -> tuple[Functions, History]:
    """Fit one SIREN per image with Adam, from its values, gradients, Laplacian, or a weighted mix.

    Gradient supervision determines an image only up to a constant, Laplacian supervision only up to a harmonic
    function (we align the affine part ``a + b x + c y``): the PSNR in the history is measured after the best constant
    offset (``"gradient"``) or the best affine term (``"laplacian"`` alone), per image and channel; with a value term
    there is no alignment. The returned functions are NOT aligned: their offset is whatever the fit left.

    Args:
        image: ``(C, H, W)`` or ``(B, C, H, W)`` in ``[0, 1]`` (tensor, numpy array or PIL image); a batch fits
            ``B`` independent SIRENs at once.
        steps: optimizer steps.
        supervision: ``"value"``, ``"gradient"``, ``"laplacian"`` or a dict of weights such as
            ``{"value": 1.0, "gradient": 0.1}`` (per-pixel units; see the module docstring).
        net: the architecture; default ``Siren(2, C, 256, 3, 30)`` on the image's device and dtype.
        lr: Adam learning rate.
        batch_size: ``None`` for the full pixel grid per step, or the number of random pixels per step.
        progress: show a tqdm bar.
        seed: seeds the initialization and the pixel batches.
        compile: run the loss (forward and backward) through ``torch.compile``; same result, faster after a one-off
            compilation.
        amp: ``"bf16"`` runs the forward and the loss under bfloat16 autocast on the image's device (a GPU speed
            option; works with ``compile``). Weights and optimizer state stay float32, and the PSNR in the history
            is measured in float32. bf16 rounds the sine's argument, so the fit stalls a little lower.
        init: starting parameters (a :class:`Functions` of 1 or ``B`` functions, or a parameter dict) instead of a
            fresh Sitzmann initialization; it is copied, not changed.
        log_every: record loss and PSNR every this many steps (default ``steps // 50``) and at the end.
    Returns:
        ``(functions, history)``: a :class:`Functions` of ``B`` functions and a :class:`History`.
    """
    weights = parse_supervision(supervision)
    images, _ = as_image_batch(image, "image")
    if isinstance(init, Functions) and net is None:
        net = init.net
    net = _setup_net(net, images.shape[1], images.device, images.dtype)
    params = _initial_params(net, init, images.shape[0], seed, images.device, images.dtype)
    targets = _targets(images, weights)
    hist = _optimize(net, params, images, targets, weights, images, None, steps, lr, batch_size, progress, seed,
                     compile, amp, log_every, desc="fit " + "+".join(weights))
    return Functions(net, {k: v.detach() for k, v in params.items()}), hist


def _targets(images: torch.Tensor, weights: Mapping[str, float], gradient: torch.Tensor | None = None) -> dict:
    """Full-grid targets: value ``(B, N, C)``, gradient ``(B, N, C, 2)``, laplacian ``(B, N, C)``."""
    b, c, h, w = images.shape
    out = {"value": image_to_points(images)[1]}
    if "gradient" in weights:
        g = image_gradient(images) if gradient is None else gradient  # (b, c, h, w, 2)
        out["gradient"] = g.permute(0, 2, 3, 1, 4).reshape(b, h * w, c, 2)
    if "laplacian" in weights:
        out["laplacian"] = image_to_points(image_laplacian(images))[1]
    return out


def blend(base: Any, insert: Any, mask: Any = None, steps: int = 1000, mixed: bool = False,
          value_weight: float = 1.0, net: Siren | None = None, lr: float = 1e-4, batch_size: int | None = None,
          progress: bool = True, seed: int = 0, compile: bool = False, amp: str | None = None,
          log_every: int | None = None) -> tuple[Functions, History]:
    """Merge two images in the gradient domain by fitting a SIREN to a composite gradient field.

    Without a mask the target is the SUM of both images' Sobel gradients (where one image is flat the other's detail
    survives); gradients fix the result only up to a constant, which is set so that its mean equals the base's mean.
    With a mask, Poisson compositing: the base's gradients outside the mask and the insert's inside (``mixed=True``:
    inside, per pixel and channel the stronger of the two by magnitude), plus a value term (weight ``value_weight``)
    that anchors the result to the base's values outside the mask. A float mask in ``[0, 1]`` blends both linearly.

    Args:
        base, insert: images of one shape, ``(C, H, W)`` or ``(B, C, H, W)`` in ``[0, 1]`` (tensor, numpy, PIL).
        mask: ``None`` or ``(H, W)`` bool/float in ``[0, 1]``: where the insert's gradients are used.
        steps, net, lr, batch_size, progress, seed, compile, amp, log_every: as in :func:`fit`.
    Returns:
        ``(functions, history)``; the history's PSNR compares with the naive composite (``base + insert`` shifted to the
        base's mean without a mask, offset-aligned; the cut-and-paste composite with a mask, not aligned).
    """
    base_b, _ = as_image_batch(base, "base")
    insert_b, _ = as_image_batch(insert, "insert")
    if base_b.shape != insert_b.shape:
        raise ValueError(f"base and insert must have the same shape, got {tuple(base_b.shape)} and "
                         f"{tuple(insert_b.shape)}")
    if mixed and mask is None:
        raise ValueError("mixed=True chooses between the gradients inside a mask; pass a mask (without one the "
                         "gradients are summed everywhere)")
    insert_b = insert_b.to(base_b.device, base_b.dtype)
    b, c, h, w = base_b.shape
    gb, gi = image_gradient(base_b), image_gradient(insert_b)  # (b, c, h, w, 2)
    if mask is None:
        gradient = gb + gi
        reference = base_b + insert_b - insert_b.mean(dim=(-2, -1), keepdim=True)
        weights, value_mask = {"gradient": 1.0}, None
    else:
        m = _check_mask(mask, h, w, base_b)  # (h, w)
        gradient = composite_gradient(gb, gi, m, mixed)
        reference = m * insert_b + (1 - m) * base_b
        weights = {"gradient": 1.0, "value": float(value_weight)} if value_weight > 0 else {"gradient": 1.0}
        parse_supervision(weights)
        value_mask = (1 - m).reshape(1, h * w, 1)
    net = _setup_net(net, c, base_b.device, base_b.dtype)
    params = _initial_params(net, None, b, seed, base_b.device, base_b.dtype)
    targets = _targets(base_b, weights, gradient=gradient)
    hist = _optimize(net, params, base_b, targets, weights, reference, value_mask, steps, lr, batch_size, progress,
                     seed, compile, amp, log_every, desc="blend")
    params = {k: v.detach() for k, v in params.items()}
    if mask is None:  # fix the free constant: the mean of the result is the base's mean
        shift = (base_b - _render(net, params, h, w)).mean(dim=(-2, -1))  # (b, c)
        last = f"layers.{len(net.layers) - 1}.bias"
        params[last] = params[last] + 2 * shift  # raw outputs are 2 * colour - 1
    return Functions(net, params), hist


def composite_gradient(base: torch.Tensor, insert: torch.Tensor, mask: torch.Tensor,
                       mixed: bool = False) -> torch.Tensor:
    """The Poisson-compositing target: ``insert`` gradients where ``mask`` is 1, ``base`` where it is 0.

    Args:
        base, insert: ``(B, C, H, W, 2)`` gradient fields.
        mask: ``(H, W)`` in ``[0, 1]``.
        mixed: inside the mask, per pixel and channel take the stronger of the two gradients (by magnitude).
    Returns:
        ``(B, C, H, W, 2)``.
    """
    inside = insert
    if mixed:
        stronger = insert.norm(dim=-1) > base.norm(dim=-1)  # (b, c, h, w)
        inside = torch.where(stronger[..., None], insert, base)
    m = mask[:, :, None]  # (h, w, 1): broadcast over the two axes
    return m * inside + (1 - m) * base


def _check_mask(mask: Any, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        mask = torch.from_numpy(np.asarray(mask))
    m = mask.float() / 255.0 if mask.dtype == torch.uint8 else mask  # an 8-bit 0/255 mask, as image files hold
    if m.dim() == 3 and m.shape[0] == 1:
        m = m[0]
    if tuple(m.shape) != (h, w):
        raise ValueError(f"mask must have shape (H, W) = ({h}, {w}), got {tuple(m.shape)}")
    m = m.to(like.device, like.dtype)
    if not torch.isfinite(m).all() or m.min() < 0 or m.max() > 1:
        raise ValueError("mask values must be finite and in [0, 1] (bool or float)")
    return m
