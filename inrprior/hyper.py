"""HyperPrior: a context encoder and a hypernetwork that map known pixels to SIREN weights, with a Gaussian latent.

The networks and their settings are in :mod:`inrprior.hypernet`: an encoder maps known pixels (coordinates +
colours) to the mean and log-variance of a Gaussian latent ``z``; a hypernetwork maps ``z`` to SIREN parameters by
the SIREN's own names, either every tensor (``output="weights"``, offsets from a learned base), only the sine-layer
biases (``output="shift"``) or, linearly, only the output layer (``output="linear"``), whose latent posterior
``encoder="posterior"`` computes exactly instead of learning an encoder. This module holds the prior that trains,
refines and samples with them.

Training (``forward``) draws a context size log-uniformly between ``min_context`` and all pixels, encodes a random
context, reconstructs *all* pixels and minimizes ``MSE + beta * KL (+ weight_reg * mean squared offset)``; the
SIREN paper's weight-norm term is applied to the generated offsets, since the shared base is learned separately.
Refinement (``steps > 0``) starts from the generated function and takes gradient steps on the context pixels only,
on the latent, the sine-layer shifts or all generated parameters (``refine``): Adam with a fixed step size, or, when
the prior was trained with ``train_refine_steps``, SGD with the per-element step sizes it learned (Meta-SGD on top of
the amortized guess). Refinement never changes the prior.
"""
from __future__ import annotations

import math
from dataclasses import asdict, replace

import torch
from torch import nn

from . import io as _io
from .config import check_count
from .coords import as_image_batch, check_context, image_to_points
from .functions import Functions, query_params
from .hypernet import ConvEncoder, GridEncoder, HyperConfig, HyperNet, SetEncoder, linear_posterior
from .siren import Params, Siren, param_shapes

__all__ = ["HyperPrior", "HyperConfig"]


def _shard(generator, b: int) -> tuple[int, int]:
    """(global batch, this process's first row): per-image draws cover the global batch so DDP ranks agree.

    The training loop's generator says where this process's rows are (``generator.shard``, see
    :func:`inrprior.train.per_image`); without it, torch.distributed's rank and world size are used.
    """
    shard = getattr(generator, "shard", None)
    if shard is not None:
        start, stop, total = shard
        if stop - start != b:
            raise ValueError(f"generator shard {start}:{stop} does not match the batch of {b} images")
        return total, start
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return b * torch.distributed.get_world_size(), b * torch.distributed.get_rank()
    return b, 0


class HyperPrior(nn.Module):
    """A generative hypernetwork prior over SIRENs (see the module docstring).

    Args:
        net: the SIREN architecture; its own parameters are the learned base the hypernetwork offsets.
        config: a :class:`HyperConfig`; keyword arguments override its fields (``HyperPrior(net, output="shift")``).
    """

    def __init__(self, net: Siren, config: HyperConfig | None = None, **overrides):
        super().__init__()
        if not isinstance(net, Siren):
            raise TypeError(f"net must be a Siren, got {type(net).__name__}")
        self.net = net
        self.cfg = replace(config or HyperConfig(), **overrides)
        if self.cfg.encoder == "posterior":  # no network: Bayesian linear regression with a learned noise
            self.encoder = None
            self.log_noise = nn.Parameter(torch.tensor(math.log(self.cfg.noise_init)))
        else:
            enc = {"set": SetEncoder, "conv": ConvEncoder, "grid": GridEncoder}[self.cfg.encoder]
            self.encoder = enc(net.out_features, self.cfg)
        self.hyper = HyperNet(net, self.cfg)
        self.density = None  # None: N(0, I); else a fitted density from inrprior.density
        if self.cfg.train_refine_steps:  # Meta-SGD: one learned (raw, as in Li et al. 2017) step size per element
            shapes = param_shapes(net)
            keys = {"latent": ["z"], "shift": net.sine_layer_names(), "params": list(shapes)}[self.cfg.refine_target]
            self.step_size = nn.ParameterDict({k.replace(".", "_"): nn.Parameter(torch.full(
                (self.cfg.latent_dim,) if k == "z" else tuple(shapes[k]), self.cfg.refine_step_size)) for k in keys})

    @property
    def config(self) -> dict:
        return {"kind": "hyper", "siren": dict(self.net.config), "hyper": asdict(self.cfg)}

    # -- building blocks ------------------------------------------------------------------------------------------
    def encode(self, coords: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None = None,
               size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance ``(b, latent_dim)`` of the latent given context points ``(b, n, 2)``, ``(b, n, C)``
        (``mask (b, n)``: 1 for real points, 0 for padding; ``size``: the grid the conv encoder rasterizes onto).
        The "posterior" encoder's covariance is full; its diagonal is returned (see :meth:`_posterior`)."""
        if self.encoder is None:
            mu, chol = self._posterior(coords, values, mask)
            return mu, torch.cholesky_inverse(chol).diagonal(dim1=-2, dim2=-1).log()
        return self.encoder(coords, values, mask, size)

    def _posterior(self, coords, values, mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and Cholesky factor of the precision of the exact latent posterior (encoder="posterior")."""
        return linear_posterior(self.net, self.hyper, coords, values, mask, self.log_noise.exp())

    def generate(self, z: torch.Tensor) -> Params:
        """SIREN parameters for latents ``z (b, latent_dim)``; shift mode leaves the shared weights unbatched."""
        offsets = self.hyper(z)
        return {k: (v + offsets[k] if k in offsets else v) for k, v in self.net.named_parameters()}

    def _draw(self, kind: str, shape: tuple[int, ...], generator, device) -> torch.Tensor:
        """Per-image random numbers ``shape = (b, ...)``, drawn on the generator's device for the global batch."""
        total, offset = _shard(generator, shape[0])
        gdev = generator.device if generator is not None else device
        fn = torch.rand if kind == "rand" else torch.randn
        return fn((total, *shape[1:]), generator=generator, device=gdev)[offset:offset + shape[0]].to(device)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None):
        """Training objective on ``(B, C, H, W)`` images in [0, 1]: reconstruct all pixels from a random context.

        Returns:
            ``(loss, metrics)`` with metrics ``loss, mse, psnr, kl, context`` as floats.
        """
        images = as_image_batch(images, "images", channels=self.net.out_features)[0].to(self._device, self._dtype)
        b, c, h, w = images.shape
        if self.cfg.flip:  # augmentation: mirror each image left-right with probability 1/2
            flip = self._draw("rand", (b,), generator, images.device) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        coords, values = image_to_points(images)  # (P, 2), (b, P, c)
        p = h * w
        lo = min(self.cfg.min_context, p)
        u = torch.rand((), generator=generator, device=generator.device if generator is not None else "cpu")
        n = int(round(math.exp(math.log(lo) + float(u) * (math.log(p) - math.log(lo)))))
        idx = self._draw("rand", (b, p), generator, images.device).argsort(-1)[:, :n]  # (b, n)
        ctx_values = values.gather(1, idx[..., None].expand(-1, -1, c))
        if self.encoder is None:  # full-covariance posterior N(mu, P^-1), P = L L^T: z = mu + L^-T eps
            mu, chol = self._posterior(coords[idx], ctx_values)
            eps = self._draw("randn", tuple(mu.shape), generator, images.device)
            z = mu + torch.linalg.solve_triangular(chol.mT, eps[..., None], upper=True)[..., 0]
            # KL(N(mu, P^-1) || N(0, I)) = (tr P^-1 + |mu|^2 - d + log det P) / 2, tr P^-1 = |L^-1|_F^2
            inv = torch.linalg.solve_triangular(chol, torch.eye(mu.shape[-1], dtype=mu.dtype, device=mu.device),
                                                upper=False)
            logdet = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
            kl = 0.5 * (inv.pow(2).sum((-2, -1)) + mu.pow(2).sum(-1) - mu.shape[-1] + logdet).mean()
        else:
            mu, logvar = self.encode(coords[idx], ctx_values, size=(h, w))
            z = mu + (0.5 * logvar).exp() * self._draw("randn", tuple(mu.shape), generator, images.device)
            kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(-1).mean()
        offsets = self.hyper(z)
        params = {k: (v + offsets[k] if k in offsets else v) for k, v in self.net.named_parameters()}
        mse = ((query_params(self.net, params, coords).value - values) ** 2).mean()
        loss = mse + self.cfg.beta * kl
        metrics = {"mse": float(mse.detach())}
        if self.cfg.train_refine_steps:
            free, build = self._free(z, params, self.cfg.refine_target)
            ones = ctx_values.new_ones(b, n)
            refined = self._sgd(free, build, coords[idx], ctx_values, ones, self.cfg.train_refine_steps,
                                create_graph=not self.cfg.first_order)
            mse_refined = ((query_params(self.net, refined, coords).value - values) ** 2).mean()
            loss = loss + mse_refined
            metrics["mse_refined"] = float(mse_refined.detach())
        if self.cfg.weight_reg:
            loss = loss + self.cfg.weight_reg * torch.cat([o.flatten(1) for o in offsets.values()], 1).pow(2).mean()
        return loss, {"loss": float(loss.detach()), **metrics, "psnr": -10 * math.log10(max(metrics["mse"], 1e-12)),
                      "kl": float(kl.detach()), "context": float(n)}

    # -- fast fitting ---------------------------------------------------------------------------------------------
    def adapt_context(self, coords: torch.Tensor, values: torch.Tensor, steps: int | None = None,
                      mask: torch.Tensor | None = None, size: tuple[int, int] | None = None) -> Functions:
        """Functions from known pixels: one encoder + hypernetwork pass (latent mean), then optional refinement.

        Args:
            coords: ``(B, N, 2)`` context coordinates in [-1, 1] (or ``(N, 2)`` shared by all B).
            values: ``(B, N, C)`` context colours in [0, 1].
            steps: Adam refinement steps on the context pixels (None: ``refine_steps`` of the config).
            mask: optional ``(B, N)``: 1 for real points, 0 for padding (lets images have different N).
            size: ``(H, W)`` grid the conv encoder rasterizes onto (default ``image_size``).
        Returns:
            :class:`Functions` of ``B`` functions (detached).
        """
        coords, values, mask = self._check_context(coords, values, mask)
        steps = self.cfg.refine_steps if steps is None else check_count(steps, "steps")
        with torch.no_grad():
            z, _ = self.encode(coords, values, mask, size)
        params = self._refine(z, coords, values, mask, steps) if steps else self._generate_detached(z)
        return Functions(self.net, params)

    def adapt(self, images, steps: int | None = None) -> Functions:
        """Functions for whole ``(B, C, H, W)`` (or ``(C, H, W)``) images in [0, 1], every pixel as context."""
        images, _ = as_image_batch(images, "images", channels=self.net.out_features)
        images = images.to(self._device, self._dtype)
        b, c, h, w = images.shape
        coords, values = image_to_points(images)
        return self.adapt_context(coords.expand(b, -1, -1), values, steps, size=(h, w))

    @property
    def _device(self):
        return next(self.parameters()).device

    @property
    def _dtype(self):
        return next(self.parameters()).dtype

    def _check_context(self, coords, values, mask):
        coords, values = check_context(coords, values, self.net.out_features)
        b, n, _ = values.shape
        if coords.dim() == 2:
            coords = coords.expand(b, -1, -1)
        if mask is not None:
            if tuple(mask.shape) != (b, n):
                raise ValueError(f"mask must have shape ({b}, {n}), got {tuple(mask.shape)}")
            if (mask.sum(1) < 1).any():
                raise ValueError("need at least 1 context pixel per image; a mask row is all zeros")
            mask = mask.to(self._device, self._dtype)
        return coords.to(self._device, self._dtype), values.to(self._device, self._dtype), mask

    @torch.no_grad()
    def _generate_detached(self, z: torch.Tensor) -> Params:
        return {k: v.detach() for k, v in self.generate(z).items()}

    def _free(self, z: torch.Tensor, params: Params, target: str):
        """The tensors refinement changes (``target``) and how to rebuild the parameters from them."""
        if target == "latent":
            return {"z": z}, lambda free: self.generate(free["z"])
        shapes = param_shapes(self.net)
        keys = self.net.sine_layer_names() if target == "shift" else list(params)
        free = {k: params[k].expand(z.shape[0], *shapes[k]) for k in keys}  # shared tensors get a batch dim
        return free, lambda free: {**params, **free}

    def _context_loss(self, params: Params, coords, values, weight) -> torch.Tensor:
        err = ((query_params(self.net, params, coords).value - values) ** 2).mean(-1)  # (b, n)
        # per-function mean errors, summed: each function's steps do not depend on the others in the batch
        return ((err * weight).sum(1) / weight.sum(1)).sum()

    def _sgd(self, free, build, coords, values, weight, steps: int, create_graph: bool) -> Params:
        """``steps`` SGD steps with the learned per-element step sizes (differentiable when ``create_graph``)."""
        for _ in range(steps):
            loss = self._context_loss(build(free), coords, values, weight)
            grads = torch.autograd.grad(loss, list(free.values()), create_graph=create_graph)
            free = {k: v - self.step_size[k.replace(".", "_")] * g for (k, v), g in zip(free.items(), grads)}
        return build(free)

    def _refine(self, z, coords, values, mask, steps: int) -> Params:
        """Refine from the generated function on the context; the prior itself is not changed.

        With ``refine="auto"``, an image with fewer than ``refine_min_context`` known pixels refines its latent only
        (its weights would be fitted at the cost of the rest); the choice is per image, so an image's result does not
        depend on the others in its batch.
        """
        weight = mask if mask is not None else values.new_ones(values.shape[:2])
        target = self.cfg.refine_target
        if self.cfg.refine != "auto" or self.cfg.train_refine_steps:
            return self._refine_as(target, z, coords, values, weight, steps)
        few = weight.sum(1) < self.cfg.refine_min_context  # (b,)
        if bool(few.all()) or not bool(few.any()):
            return self._refine_as("latent" if bool(few.all()) else target, z, coords, values, weight, steps)
        shapes, parts = param_shapes(self.net), []
        for rows, part_target in ((few.nonzero()[:, 0], "latent"), ((~few).nonzero()[:, 0], target)):
            part = self._refine_as(part_target, z[rows], coords[rows], values[rows], weight[rows], steps)
            parts.append((rows, {k: v if v.dim() > len(shapes[k]) else v.expand(len(rows), *shapes[k])
                                 for k, v in part.items()}))
        out = {k: v.new_empty(z.shape[0], *shapes[k]) for k, v in parts[0][1].items()}
        for rows, part in parts:
            for k, v in part.items():
                out[k][rows] = v
        return out

    def _refine_as(self, target: str, z, coords, values, weight, steps: int) -> Params:
        with torch.enable_grad():
            base = self._generate_detached(z)
            free, build = self._free(z.detach(), base, target)
            free = {k: v.detach().clone().requires_grad_(True) for k, v in free.items()}
            learned = self.cfg.train_refine_steps and all(k.replace(".", "_") in self.step_size for k in free)
            if learned:  # (a target other than the trained one has no learned step sizes: Adam then)
                return {k: v.detach() for k, v in self._sgd(free, build, coords, values, weight, steps,
                                                              create_graph=False).items()}
            opt = torch.optim.Adam(list(free.values()), lr=self.cfg.step_size_for(target))
            for _ in range(steps):
                loss = self._context_loss(build(free), coords, values, weight)
                for v, g in zip(free.values(), torch.autograd.grad(loss, list(free.values()))):
                    v.grad = g
                opt.step()
            return {k: v.detach() for k, v in build(free).items()}

    # -- generation -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Functions:
        """``n`` new functions: latents from N(0, I), or from the density fitted by :meth:`fit_density`."""
        if int(n) < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if self.density is None:
            gdev = generator.device if generator is not None else self._device
            z = torch.randn(int(n), self.cfg.latent_dim, generator=generator, device=gdev)
        else:
            z = self.density.sample(int(n), generator=generator)
        return Functions(self.net, self._generate_detached(z.to(self._device, self._dtype)))

    @torch.no_grad()
    def latents(self, images, batch_size: int = 64) -> torch.Tensor:
        """Latent means ``(M, latent_dim)`` of ``(M, C, H, W)`` images, every pixel as context."""
        images, _ = as_image_batch(images, "images", channels=self.net.out_features)
        out, batch_size = [], check_count(batch_size, "batch_size", least=1)
        for i in range(0, images.shape[0], batch_size):
            chunk = images[i:i + batch_size].to(self._device, self._dtype)
            coords, values = image_to_points(chunk)
            out.append(self.encode(coords.expand(chunk.shape[0], -1, -1), values, size=chunk.shape[-2:])[0])
        return torch.cat(out)

    #: what ``fit_density(kind=...)`` accepts (``inrprior.train`` checks it before training)
    density_kinds = ("gaussian", "gmm", "pca", "standard")
    #: a HyperPrior samples its latent from N(0, I) until a density is fitted
    can_sample = True

    def fit_density(self, images, kind: str = "gaussian", **kwargs):
        """Fit the sampling density to the latents of training images; ``kind="standard"`` goes back to N(0, I).

        Args:
            images: ``(M, C, H, W)`` images in [0, 1].
            kind: "gaussian" | "gmm" | "pca" (see :func:`inrprior.density.make_density`) or "standard".
            kwargs: passed to the density (e.g. ``n_components=10`` for "gmm").
        Returns:
            The fitted density (None for "standard").
        """
        if kind == "standard":
            self.density = None
            return None
        from .density import make_density
        density = make_density(kind, **kwargs)
        density.fit(self.latents(images).cpu())
        self.density = density
        return density

    @torch.no_grad()
    def interpolate(self, image_a, image_b, n: int = 8) -> Functions:
        """``n`` functions along the straight line between the latent means of two images (ends included)."""
        if int(n) < 2:
            raise ValueError(f"n must be >= 2 to include both ends, got {n}")
        za, zb = self.latents(image_a), self.latents(image_b)
        if za.shape[0] != 1 or zb.shape[0] != 1:
            raise ValueError("interpolate takes one image at each end")
        t = torch.linspace(0, 1, int(n), device=za.device, dtype=za.dtype)[:, None]
        return Functions(self.net, self._generate_detached((1 - t) * za + t * zb))

    # -- saving ---------------------------------------------------------------------------------------------------
    def to_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        return _io.prior_to_state(self)

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], config: dict) -> "HyperPrior":
        try:
            prior = cls(Siren(**config["siren"]), HyperConfig(**config["hyper"]))
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a valid HyperPrior config: {e}") from None
        return _io.restore_prior_state(prior, tensors, config)

    def save(self, path):
        """Save to ``path`` (one .safetensors file); load with ``inrprior.io.load_prior``."""
        return _io.save_prior(self, path)


_io.register_prior("hyper", HyperPrior)
