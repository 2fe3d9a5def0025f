"""The networks of a :class:`~inrprior.hyper.HyperPrior` and its settings (:class:`HyperConfig`).

Known pixels (coordinates + colours) go through a set encoder (per-point MLP + masked mean pooling, any number of
points), a convolutional encoder (the points rasterized into a masked image) or a learned feature grid read at the
points, to the mean and log-variance of a Gaussian latent ``z``. A hypernetwork maps ``z`` to SIREN parameters by the
SIREN's own names:

- ``output="weights"``: one linear head per parameter tensor on a shared MLP trunk; every generated tensor is the
  net's own learned tensor (initialized by Sitzmann's rule) plus an offset ``head(z) * scale``. ``scale`` is the
  tensor's Sitzmann init bound (``1/w0`` for sine-layer biases: one unit of offset is one radian of phase). With
  the heads at PyTorch's default init (``head_init=1`` scales it) the offsets of a fresh prior are ~5 % of the
  base's spread (~15 % for biases), so it generates SIRENs close to a Sitzmann initialization.
- ``output="shift"``: the latent only shifts the sine-layer biases (``b + s``); all weights are shared, so the
  returned :class:`~inrprior.functions.Functions` hold shared weights and per-function biases (much lighter for
  large SIRENs).
- ``output="linear"``: the latent offsets only the linear output layer, through linear heads (no trunk), so a
  generated function is ``m(x) + J(x) z``: the shared SIREN's hidden features are a learned basis and ``z`` its
  coefficients (a probabilistic PCA whose basis functions are SIREN features). The latent's posterior given any
  context is then Gaussian in closed form, which ``encoder="posterior"`` computes exactly (:func:`linear_posterior`).

The module attribute names (``point``, ``rho``, ``convs``, ``features``, ``trunk``, ``heads``, ...) are the keys of
saved priors: renaming one breaks loading.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import check_types
from .coords import coord_to_pixel
from .siren import Params, Siren, param_shapes

__all__ = ["HyperConfig", "SetEncoder", "ConvEncoder", "GridEncoder", "HyperNet", "linear_posterior"]


@dataclass
class HyperConfig:
    """Settings of a :class:`~inrprior.hyper.HyperPrior` (all JSON-able).

    encoder: "set" (any points), "conv" (points rasterized onto an ``image_size`` grid with a mask channel),
        "grid" (a learned feature grid of ``image_size`` read at the points; see :class:`GridEncoder`) or
        "posterior" (no network: the exact Gaussian posterior of the latent under the model's own likelihood with
        a learned noise variance; needs output="linear", see :func:`linear_posterior`).
    latent_dim: size of the Gaussian latent.
    output: "weights" (every SIREN tensor generated), "shift" (only the sine-layer biases) or "linear" (only the
        output layer, linearly in the latent; ``hidden``, ``head_width`` and ``trunk_layers`` then do not apply).
    beta: weight of the KL term (per image, summed over latent dims) against the per-value MSE on the [0, 1]
        scale (an ELBO with noise variance s2 on N values has beta = 2 s2 / N).
    hidden: width of the encoder and hypernetwork-trunk MLPs.
    head_width: input width of every per-tensor linear head (the heads hold head_width x SIREN-size weights).
    encoder_layers / trunk_layers: depths of the per-point encoder MLP and of the hypernetwork trunk.
    fourier_bands: octaves of sine/cosine position features in the set encoder.
    min_context: smallest context drawn in training (log-uniform up to all pixels).
    head_init: scale of the heads' default (PyTorch) init.
    weight_reg: weight of the mean squared generated offset (the SIREN paper's weight-norm term).
    refine: what refinement steps optimize: "latent", "shift" (sine-layer biases), "params" (all generated
        tensors) or "auto": "params" for output="weights" or "linear", "shift" for output="shift", but "latent"
        when an image has fewer than refine_min_context known pixels (moving every weight then fits those pixels at
        the cost of the rest: on held-out faces it lost ~1 dB at 10 pixels, while refining the latent gained a
        little); with learned step sizes (train_refine_steps) always the configured target.
    refine_lr: step size for the configured target; None picks per target: Adam 1e-3 (params), 1e-2 (shift),
        5e-2 (latent); learned-SGD init 1e-2 (params), 1e-1 (shift, latent).
    refine_steps: default refinement steps of adapt / adapt_context.
    refine_min_context: see refine="auto".
    train_refine_steps: 0: refinement is Adam with step size refine_lr. k > 0: training also takes k SGD steps
        on the context with learned per-element step sizes (Meta-SGD, initialized at refine_lr) and adds the
        all-pixel error after them to the loss; refinement then uses those learned steps.
    first_order: drop the second-order terms of that training inner loop.
    image_size: the grid the conv encoder rasterizes context points onto when no size is given.
    logvar_init: initial log-variance of the latent (small, so the latent is not drowned in noise at the start).
    noise_init: initial noise variance of encoder="posterior" on the SIREN's raw [-1, 1] scale (then learned).
    flip: mirror training images left-right at random (augmentation for data with that symmetry, e.g. faces).
    """
    encoder: str = "set"
    latent_dim: int = 64
    output: str = "weights"
    beta: float = 1e-5
    hidden: int = 128
    head_width: int = 64
    encoder_layers: int = 3
    trunk_layers: int = 2
    fourier_bands: int = 5
    min_context: int = 10
    head_init: float = 1.0
    weight_reg: float = 0.0
    refine: str = "auto"
    refine_lr: float | None = None
    refine_steps: int = 0
    refine_min_context: int = 50
    train_refine_steps: int = 0
    first_order: bool = False
    image_size: int = 32
    logvar_init: float = -10.0
    noise_init: float = 1e-2
    flip: bool = False

    def __post_init__(self):
        check_types(self)
        choices = dict(encoder=("set", "conv", "grid", "posterior"), output=("weights", "shift", "linear"),
                       refine=("auto", "latent", "shift", "params"))
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("latent_dim", "hidden", "head_width", "encoder_layers", "min_context", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("beta", "weight_reg", "refine_steps", "train_refine_steps", "trunk_layers", "fourier_bands"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.refine_lr is not None and not self.refine_lr > 0:
            raise ValueError(f"refine_lr must be positive, got {self.refine_lr}")
        if not self.noise_init > 0:
            raise ValueError(f"noise_init must be positive, got {self.noise_init}")
        if self.encoder == "posterior" and self.output != "linear":
            raise ValueError(f'encoder="posterior" needs output="linear" (its posterior is exact only for a '
                             f'generator linear in the latent), got output={self.output!r}')

    @property
    def refine_target(self) -> str:
        if self.refine != "auto":
            return self.refine
        return "shift" if self.output == "shift" else "params"

    @property
    def refine_step_size(self) -> float:
        return self.step_size_for(self.refine_target)

    def step_size_for(self, target: str) -> float:
        if self.refine_lr is not None and (self.refine != "auto" or target == self.refine_target):
            return float(self.refine_lr)
        table = ({"params": 1e-2, "shift": 1e-1, "latent": 1e-1} if self.train_refine_steps
                 else {"params": 1e-3, "shift": 1e-2, "latent": 5e-2})
        return table[target]


def _gaussian_head(d_in: int, width: int, latent_dim: int, logvar_init: float) -> nn.Sequential:
    """MLP to (mean, log-variance); the log-variance starts at ``logvar_init`` so early training is not drowned
    in posterior noise (with a small beta the latent would otherwise be ignored for hundreds of steps)."""
    head = _mlp([d_in, width, 2 * latent_dim], last_relu=False)
    with torch.no_grad():
        head[-1].weight[latent_dim:].mul_(0.1)
        head[-1].bias[latent_dim:].fill_(logvar_init)
    return head


def _mlp(widths: list[int], last_relu: bool = True) -> nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if last_relu or i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class SetEncoder(nn.Module):
    """Per-point MLP, masked mean pooling, then an MLP to the latent's mean and log-variance.

    A point's input is its position features ``p`` (coords and their sines/cosines at ``fourier_bands`` octaves),
    its value ``v`` in [-1, 1], and the products ``v * p``. The pooled means of ``v`` and ``v * p`` (linear
    projections of the image) also skip the per-point MLP: the pooled MLP features are dominated by the positions,
    which all images share, so at initialization they differ between images by ~1e-4 and the latent would be ignored
    for a long time; the linear projections differ by ~0.1 from the first step.
    """

    def __init__(self, channels: int, cfg: HyperConfig):
        super().__init__()
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(cfg.fourier_bands, dtype=torch.float32),
                             persistent=False)
        d_pos = 2 + 4 * cfg.fourier_bands
        d_in = d_pos * (1 + channels) + channels
        self.point = _mlp([d_in] + [cfg.hidden] * cfg.encoder_layers)
        self.rho = _gaussian_head(cfg.hidden + d_pos * channels + channels, cfg.hidden, cfg.latent_dim,
                                  cfg.logvar_init)

    def forward(self, coords, values, mask=None, size=None):
        ang = (coords[..., None] * self.freqs).flatten(-2)  # (b, n, 2 * bands)
        pos = torch.cat([coords, ang.sin(), ang.cos()], -1)  # (b, n, d_pos)
        v = 2 * values - 1  # (b, n, c)
        linear = torch.cat([v, (v[..., None] * pos[..., None, :]).flatten(-2)], -1)  # (b, n, c * (1 + d_pos))
        h = self.point(torch.cat([pos, linear], -1))  # (b, n, hidden)
        pooled = _masked_mean(torch.cat([h, _LINEAR_GAIN * linear], -1), mask)
        return self.rho(pooled).chunk(2, dim=-1)


# Gain on the pooled linear features: their spread across images (0.005..0.15 for faces) becomes O(0.1..1), so that
# the latent means of different images differ by more than the initial posterior noise.
_LINEAR_GAIN = 10.0


def _masked_mean(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over points ``(b, n, d) -> (b, d)``, counting only points with ``mask (b, n)`` 1."""
    if mask is None:
        return h.mean(1)
    m = mask[..., None].to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


class ConvEncoder(nn.Module):
    """Points rasterized into a masked image ``(values in [-1, 1] * mask, mask)``, strided convs, global pooling;
    a 4x4 average-pooled thumbnail of that image skips the convs (see :class:`SetEncoder` for why)."""

    def __init__(self, channels: int, cfg: HyperConfig):
        super().__init__()
        widths = [channels + 1, 32, 64, 128, cfg.hidden]
        convs = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            convs += [nn.Conv2d(a, b, 3, stride=1 if i == 0 else 2, padding=1), nn.ReLU()]
        self.convs = nn.Sequential(*convs)
        self.rho = _gaussian_head(cfg.hidden + 16 * (channels + 1), cfg.hidden, cfg.latent_dim, cfg.logvar_init)
        self.size = cfg.image_size

    def forward(self, coords, values, mask=None, size=None):
        b, n, c = values.shape
        h, w = size or (self.size, self.size)
        px = coord_to_pixel(coords, h, w).round().long()  # (b, n, 2)
        inside = (px[..., 0] >= 0) & (px[..., 0] < w) & (px[..., 1] >= 0) & (px[..., 1] < h)
        keep = inside if mask is None else inside & mask.bool()
        idx = (px[..., 1].clamp(0, h - 1) * w + px[..., 0].clamp(0, w - 1))  # (b, n)
        k = keep[..., None].to(values.dtype)
        sums = values.new_zeros(b, h * w, c + 1).scatter_add(
            1, idx[..., None].expand(-1, -1, c + 1), torch.cat([(2 * values - 1) * k, k], -1))  # (b, h*w, c+1)
        count = sums[..., c:]
        canvas = torch.cat([sums[..., :c] / count.clamp_min(1.0), count.clamp_max(1.0)], -1)  # mean value, mask
        x = canvas.reshape(b, h, w, c + 1).permute(0, 3, 1, 2)
        pooled = torch.cat([self.convs(x).mean((2, 3)), _LINEAR_GAIN * F.adaptive_avg_pool2d(x, 4).flatten(1)], -1)
        return self.rho(pooled).chunk(2, dim=-1)


class GridEncoder(nn.Module):
    """A learned feature grid read at the context coordinates: each point contributes ``g(x) * (v - m(x))``, where
    ``g`` (``hidden`` channels) and the mean image ``m`` are bilinearly interpolated from ``image_size``-square
    grids (any coordinate works, not only pixel centres); masked mean pooling, a shrinkage ``n / (n + k)`` per
    feature that learns how much ``n`` points can be trusted, then an MLP to the latent's mean and log-variance.

    It is linear in the context values up to the MLP, like the posterior mean of a linear-Gaussian (PCA) model,
    which a PCA shows to be strong on 80 faces. ``g`` starts as the lowest-frequency 2-D cosine (DCT) basis, so the
    first features are the image's coarse DCT coefficients. Measured on held-out faces with ``output="weights"`` it
    scores the same as the set encoder (within 0.1 dB after 4 CPU-minutes): there the per-tensor-heads decoder limits
    the one-pass reconstruction; ``output="linear"`` with ``encoder="posterior"`` lifts it by 2-4 dB."""

    def __init__(self, channels: int, cfg: HyperConfig):
        super().__init__()
        s = cfg.image_size
        freqs = sorted(((kx, ky) for kx in range(s) for ky in range(s)), key=lambda k: (k[0] + k[1], k))
        t = (torch.arange(s, dtype=torch.float32) + 0.5) / s  # pixel centres on [0, 1]
        basis = [torch.cos(math.pi * ky * t)[:, None] * torch.cos(math.pi * kx * t)[None, :]
                 for kx, ky in freqs[:cfg.hidden]]
        basis += [torch.randn(s, s) * 0.5 for _ in range(cfg.hidden - len(basis))]  # grids smaller than hidden
        self.features = nn.Parameter(torch.stack(basis)[None])  # (1, hidden, s, s)
        self.mean = nn.Parameter(torch.zeros(1, channels, s, s))  # times _MEAN_GAIN: the mean image in [-1, 1]
        self.log_k = nn.Parameter(torch.full((cfg.hidden * channels,), math.log(10.0)))
        self.rho = _gaussian_head(cfg.hidden * channels + 1, cfg.hidden, cfg.latent_dim, cfg.logvar_init)

    def forward(self, coords, values, mask=None, size=None):
        b, n, c = values.shape
        grid = coords[:, :, None, :]  # (b, n, 1, 2): grid_sample's (x, y) with align_corners=False = our pixels
        read = lambda t: F.grid_sample(t.expand(b, -1, -1, -1), grid, align_corners=False,  # noqa: E731
                                       padding_mode="border")[..., 0].transpose(1, 2)  # (b, n, channels of t)
        g, m = read(self.features), read(_MEAN_GAIN * self.mean)
        point = (g[..., None] * (2 * values - 1 - m)[..., None, :]).flatten(-2)  # (b, n, hidden * c)
        count = values.new_full((b, 1), float(n)) if mask is None else mask.sum(1, keepdim=True).to(values.dtype)
        pooled = _masked_mean(point, mask) * (count / (count + self.log_k.exp()))
        return self.rho(torch.cat([_LINEAR_GAIN * pooled, count.log() / 10], -1)).chunk(2, dim=-1)


# The mean-image grid is learned through this gain so that Adam's ~lr-sized steps cover [-1, 1] in ~1000 steps.
_MEAN_GAIN = 10.0


class HyperNet(nn.Module):
    """Latent ``(b, d)`` -> offsets ``{name: (b, *shape)}`` for the SIREN tensors it generates, one head each."""

    def __init__(self, net: Siren, cfg: HyperConfig):
        super().__init__()
        shapes = param_shapes(net)
        sines = set(net.sine_layer_names())
        last = f"layers.{len(net.layers) - 1}."
        keep = {"weights": lambda k: True, "shift": lambda k: k in sines, "linear": lambda k: k.startswith(last)}
        self.names = [k for k in shapes if keep[cfg.output](k)]
        self.shapes = {k: tuple(shapes[k]) for k in self.names}
        if cfg.output == "linear":  # offsets linear in z: heads straight on the latent, no bias (the base has one)
            self.trunk = nn.Identity()
            self.heads = nn.ModuleList(nn.Linear(cfg.latent_dim, math.prod(self.shapes[k]), bias=False)
                                       for k in self.names)
        else:
            self.trunk = _mlp([cfg.latent_dim] + [cfg.hidden] * cfg.trunk_layers + [cfg.head_width])
            self.heads = nn.ModuleList(nn.Linear(cfg.head_width, math.prod(self.shapes[k])) for k in self.names)
        with torch.no_grad():
            for head in self.heads:
                head.weight.mul_(cfg.head_init)
                if head.bias is not None:
                    head.bias.zero_()
        for i, k in enumerate(self.names):
            fan_in = shapes[k.replace("bias", "weight")][1]
            bound = 1.0 / fan_in if k == "layers.0.weight" else math.sqrt(6.0 / fan_in) / net.w0
            self.register_buffer(f"scale{i}", torch.tensor(1.0 / net.w0 if k in sines else bound),
                                 persistent=False)

    def forward(self, z: torch.Tensor) -> Params:
        t = self.trunk(z)  # (b, head_width)
        return {k: head(t).view(-1, *self.shapes[k]) * getattr(self, f"scale{i}")
                for i, (k, head) in enumerate(zip(self.names, self.heads))}


def linear_posterior(net: Siren, hyper: HyperNet, coords: torch.Tensor, values: torch.Tensor,
                     mask: torch.Tensor | None, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact Gaussian posterior of the latent of an ``output="linear"`` prior given context points.

    The generated function's raw output is ``m(x) + J(x) z`` with ``m`` the base SIREN and ``J(x)`` the heads applied
    to the base's last hidden features; with ``z ~ N(0, I)`` and raw values ``2 v - 1 = m + J z + N(0, noise)``, the
    posterior is ``N(mu, P^-1)`` with precision ``P = I + J^T J / noise`` and ``mu = P^-1 J^T (2 v - 1 - m) / noise``:
    Bayesian linear regression on the context, one Cholesky per image (latent_dim x latent_dim), for any number of
    points (masked rows drop out of the sums).

    Args:
        net: the SIREN (its own parameters are the base).
        hyper: the :class:`HyperNet` built with ``output="linear"``.
        coords, values, mask: ``(b, n, 2)``, ``(b, n, C)`` in [0, 1], optional ``(b, n)``.
        noise: scalar noise variance on the raw scale.
    Returns:
        ``mu (b, d)`` and the lower Cholesky factor ``(b, d, d)`` of the precision ``P``.
    """
    h = net.features(coords)  # (b, n, k)
    out = net.layers[-1]
    c, k = out.weight.shape
    head_w, head_b = hyper.heads  # names: the output layer's weight, then its bias
    d = head_w.weight.shape[1]
    jac = torch.einsum("bnk,ckd->bncd", h, head_w.weight.view(c, k, d)) * hyper.scale0
    jac = (jac + head_b.weight * hyper.scale1).flatten(1, 2)  # (b, n * C, d)
    resid = (2 * values - 1 - out(h)).flatten(1)  # (b, n * C)
    if mask is not None:
        keep = mask[..., None].expand(-1, -1, c).flatten(1).to(jac.dtype)
        jac, resid = jac * keep[..., None], resid * keep
    eye = torch.eye(d, dtype=jac.dtype, device=jac.device)
    chol = torch.linalg.cholesky(eye + jac.mT @ jac / noise)
    mu = torch.cholesky_solve((jac.mT @ resid[..., None]) / noise, chol)[..., 0]
    return mu, chol
