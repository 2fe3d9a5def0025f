"""MetaPrior: a MAML-family prior over SIREN weights, with the inner loop vectorized over tasks by torch.func.

The prior is a learned initialization ``theta`` (the SIREN's own parameters). Fast-fitting an image ("a task") runs
a few SGD steps on the image's pixels from ``theta``. The inner loop is in :mod:`inrprior.inner` (a pure function of
a parameter dict, ``vmap``ped over tasks; :func:`adapt`, :func:`adapt_tasks`, :func:`siren_params` and the other
public names are re-exported here). What adapts is named explicitly by a set of keys:

- all weights (``latent_dim=None``, "learned initializations", Tancik et al. 2021);
- a latent ``z`` (initialized at zero) that a linear map turns into shift modulations of the sine-layer biases,
  ``sin(w0 (W x + b + s))`` with ``s = M z`` (functa / CAVIA). Adapted functions are then the shared weights plus a
  per-function bias ``b + s``: plain SIRENs, see :func:`siren_params`.

Algorithms (``forward`` is the meta-training loss; the generic train loop backpropagates it and steps Adam):
``"maml"`` differentiates through the inner steps (second order); ``"fomaml"`` treats the inner gradients as
constants; ``"reptile"`` returns the surrogate ``mean_t 0.5 * ||theta - stopgrad(phi_t)||^2`` (``phi_t``: task
``t``'s adapted weights) whose gradient is ``theta - mean_t phi_t``, so an SGD step of size ``eps`` *is* the
Reptile update ``theta += eps (mean_t phi_t - theta)`` and Adam gives "Reptile with Adam" as in the Reptile paper.
``meta_sgd=True`` learns one inner step size per adapted parameter entry, initialized at ``inner_lr``; it is used
as ``clamp(lr, min=0)`` and projected back to ``>= 0`` before every forward (projected gradient descent; the
clamp passes gradients at 0, so a step size can grow again).

Pixels: by default (``context_fraction=None``) the inner loop and the outer loss both see every pixel, as in functa
and Tancik et al. With ``context_fraction=f`` the inner loop sees a random ``f`` of each image's pixels and the outer
loss all of them, which trains for ``adapt_context`` from partial observations. The loss is the mean squared error
of colours on the image scale ``[0, 1]`` (so ``PSNR = -10 log10(loss)``).

Memory: second-order MAML keeps every inner step's graph. ``checkpoint=True`` recomputes each vectorized inner step
in the backward pass (see :mod:`inrprior.inner`); it then needs ``loss.backward()`` rather than
``torch.autograd.grad``.

:meth:`MetaPrior.reference_forward` computes the same loss with ``higher`` one task at a time: the oracle of the tests
and the baseline of ``experiments/bench_meta.py``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import nn
from torch.func import vmap

from . import io as _io
from .config import check_count, check_types
from .coords import as_image_batch, check_context, image_to_points
from .functions import Functions
from .inner import LATENT, MODULATION, LearningRate, adapt, adapt_tasks, adapt_trace, siren_params, task_loss
from .siren import Params, Siren

__all__ = ["MetaPrior", "MetaConfig", "adapt", "adapt_trace", "adapt_tasks", "task_loss", "siren_params",
           "LATENT", "MODULATION"]

ALGORITHMS = ("maml", "fomaml", "reptile")


@dataclass
class MetaConfig:
    """Settings of a :class:`MetaPrior` (JSON-able).

    algorithm: "maml" (second order), "fomaml" (first order) or "reptile".
    inner_steps / inner_lr: SGD steps and step size of the inner loop during training (and the default of adapt*).
    meta_sgd: learn per-entry inner step sizes (Meta-SGD), initialized at ``inner_lr``, kept ``>= 0``.
    latent_dim: None adapts all weights; an int adapts only a latent of that size (shift modulations).
    context_fraction: None: the inner loop sees every pixel; else this fraction of each image's pixels.
    checkpoint: gradient checkpointing of the inner steps (second-order memory; needs ``loss.backward()``).
    """
    algorithm: str = "maml"
    inner_steps: int = 3
    inner_lr: float = 1e-2
    meta_sgd: bool = False
    latent_dim: int | None = None
    context_fraction: float | None = None
    checkpoint: bool = False

    def __post_init__(self):
        check_types(self)
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.inner_steps < 1:  # the types were checked above
            raise ValueError(f"inner_steps must be a positive integer, got {self.inner_steps!r}")
        if self.inner_lr < 0:
            raise ValueError(f"inner_lr must be >= 0, got {self.inner_lr}")
        if self.latent_dim is not None and self.latent_dim < 1:
            raise ValueError(f"latent_dim must be None or a positive integer, got {self.latent_dim!r}")
        if self.context_fraction is not None and not 0 < self.context_fraction <= 1:
            raise ValueError(f"context_fraction must be in (0, 1], got {self.context_fraction}")
        if self.algorithm == "reptile" and (self.latent_dim is not None or self.meta_sgd):
            raise ValueError("reptile moves the initialization towards adapted weights: it cannot learn a latent's "
                             "modulation map or Meta-SGD step sizes; use algorithm='maml' or 'fomaml'")


@torch.compiler.disable  # torch.compile cannot read a Generator's attributes: draw eagerly
def _draw_pixels(generator: torch.Generator | None, b: int, n: int, m: int) -> torch.Tensor:
    """``(b, m)`` distinct random pixel indices per image, drawn for the global batch under DDP (the loop's
    ``generator.shard == (start, stop, global_batch)``) so that every process matches a single process."""
    start, stop, total = getattr(generator, "shard", None) or (0, b, b)
    gdev = generator.device if generator is not None else "cpu"
    return torch.rand(total, n, generator=generator, device=gdev).argsort(1)[start:stop, :m]


class _Reference(nn.Module):
    """The SIREN (with the latent's shifts when ``modulation`` is given) as an ordinary module for ``higher``;
    shares ``net`` and ``modulation`` with the prior. (Iterates the layers: higher cannot slice a ModuleList.)"""

    def __init__(self, net: Siren, modulation: nn.Linear | None = None):
        super().__init__()
        self.net, self.modulation = net, modulation
        if modulation is not None:
            w = modulation.weight
            self.latent = nn.Parameter(torch.zeros(w.shape[1], dtype=w.dtype, device=w.device))

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        shifts = None if self.modulation is None else self.modulation.weight @ self.latent
        h, start, last = coords, 0, len(self.net.layers) - 1
        for i, layer in enumerate(self.net.layers):
            if i == last:
                return layer(h)
            pre = layer(h)
            if shifts is not None:
                pre = pre + shifts[start:start + layer.out_features]
                start += layer.out_features
            h = torch.sin(self.net.w0 * pre)


class MetaPrior(nn.Module):
    """A meta-learned SIREN initialization (MAML / first-order MAML / Reptile, optional Meta-SGD and latent).

    Implements the Prior protocol of DESIGN.md: ``forward`` (training loss), ``adapt``, ``adapt_context``,
    ``sample``, ``fit_density``, ``to_state`` / ``from_state``, ``save``.

    Args:
        net: the SIREN; its parameters are the learned initialization (the shared weights of the latent variant).
        config: a :class:`MetaConfig`; keyword arguments override its fields (``MetaPrior(net, meta_sgd=True)``).
    """

    def __init__(self, net: Siren, config: MetaConfig | None = None, **overrides):
        super().__init__()
        if not isinstance(net, Siren):
            raise TypeError(f"net must be a Siren, got {type(net).__name__}")
        self.net = net
        self.cfg = replace(config or MetaConfig(), **overrides)
        shapes = {k: v.shape for k, v in net.named_parameters()}
        ref = next(net.parameters())
        if self.cfg.latent_dim is not None:
            width = sum(shapes[k][0] for k in net.sine_layer_names())
            self.modulation = nn.Linear(self.cfg.latent_dim, width, bias=False).to(ref)
            shapes = {LATENT: torch.Size([self.cfg.latent_dim])}
        self.adapt_keys = tuple(shapes)  # exactly what the inner loop adapts
        if self.cfg.meta_sgd:
            self.inner_lrs = nn.ParameterList(nn.Parameter(torch.full(s, self.cfg.inner_lr, dtype=ref.dtype,
                                                                      device=ref.device)) for s in shapes.values())
        self.density = None  # fitted by fit_density; used by sample

    @property
    def config(self) -> dict:
        return {"kind": "meta", "siren": dict(self.net.config), "meta": asdict(self.cfg)}

    @property
    def _ref(self) -> torch.Tensor:
        return next(self.net.parameters())

    def meta_params(self) -> Params:
        """The starting point of every inner loop: SIREN weights (+ modulation map and a zero latent)."""
        params = dict(self.net.named_parameters())
        if self.cfg.latent_dim is not None:
            params[MODULATION] = self.modulation.weight
            params[LATENT] = self._ref.new_zeros(self.cfg.latent_dim)
        return params

    def inner_rates(self) -> LearningRate:
        """The inner step size: ``inner_lr``, or Meta-SGD's per-entry sizes clamped at 0."""
        if not self.cfg.meta_sgd:
            return self.cfg.inner_lr
        return {k: lr.clamp(min=0) for k, lr in zip(self.adapt_keys, self.inner_lrs)}

    @torch.compiler.disable  # a data-dependent in-place write: keep it out of compiled graphs
    def _project(self) -> None:
        if self.cfg.meta_sgd:
            with torch.no_grad():
                for lr in self.inner_lrs:
                    if (lr < 0).any():  # only then: an in-place write would invalidate graphs built on lr
                        lr.clamp_(min=0)

    def _check_images(self, images) -> torch.Tensor:
        images, _ = as_image_batch(images, "images", channels=self.net.out_features)
        return images.to(self._ref.device, self._ref.dtype)

    def _support(self, coords, values, generator):
        """The inner loop's pixels: all of them, or a random ``context_fraction`` of each image's."""
        if self.cfg.context_fraction is None:
            return coords, values
        b, n, c = values.shape
        idx = _draw_pixels(generator, b, n, max(1, round(self.cfg.context_fraction * n))).to(values.device)
        return coords[idx], values.gather(1, idx[..., None].expand(-1, -1, c))  # (b, m, 2), (b, m, c)

    def _query_mse(self, params, adapted, coords, values) -> torch.Tensor:
        full = {**params, **adapted}
        dims = {k: (0 if k in adapted else None) for k in full}
        return vmap(lambda p, t: task_loss(self.net, p, coords, t), in_dims=(dims, 0))(full, values)  # (b,)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None):
        """Meta-training loss on a batch of tasks ``images (B, C, H, W)`` in [0, 1] (mean over the batch).

        Returns:
            ``(loss, metrics)``; metrics: ``mse`` and ``psnr`` after adaptation on all pixels, ``psnr_step0`` on the
            inner-loop pixels before it (mean per-image PSNR).
        """
        images = self._check_images(images)
        self._project()
        coords, values = image_to_points(images)  # (n, 2), (b, n, c)
        inner_c, inner_v = self._support(coords, values, generator)
        params, algo = self.meta_params(), self.cfg.algorithm
        with torch.set_grad_enabled(torch.is_grad_enabled() and algo != "reptile"):
            adapted, inner = adapt_tasks(self.net, params, inner_c, inner_v, self.cfg.inner_steps, self.inner_rates(),
                                         self.adapt_keys, first_order=algo != "maml",
                                         checkpoint=self.cfg.checkpoint and algo == "maml")
        if algo == "reptile":
            with torch.no_grad():
                mse = self._query_mse(params, adapted, coords, values)
            dist = sum(0.5 * (params[k] - adapted[k]).pow(2).flatten(1).sum(1) for k in self.adapt_keys)  # (b,)
            loss = dist.mean()  # gradient: theta - mean_t(phi_t), since adapted was computed without a graph
        else:
            mse = self._query_mse(params, adapted, coords, values)
            loss = mse.mean()
        psnr = lambda e: float((-10 * torch.log10(e.detach().clamp_min(1e-12))).mean())  # noqa: E731
        return loss, {"mse": float(mse.detach().mean()), "psnr": psnr(mse), "psnr_step0": psnr(inner[:, 0])}

    def reference_forward(self, images: torch.Tensor, generator: torch.Generator | None = None):
        """The same loss as :meth:`forward` (MAML / first-order MAML, Meta-SGD, latent) computed with ``higher``,
        one task at a time (``innerloop_ctx(..., copy_initial_weights=False)``): the tests' oracle and the
        benchmark's baseline. Returns ``(loss, {"mse": ...})``."""
        import higher

        if self.cfg.algorithm == "reptile":
            raise ValueError("the higher reference path covers maml and fomaml, not reptile")
        images = self._check_images(images)
        self._project()
        coords, values = image_to_points(images)
        inner_c, inner_v = self._support(coords, values, generator)
        latent = self.cfg.latent_dim is not None
        module = _Reference(self.net, self.modulation if latent else None)
        adapting = [module.latent] if latent else list(self.net.parameters())
        opt = torch.optim.SGD([{"params": [p]} for p in adapting], lr=self.cfg.inner_lr)
        rates = self.inner_rates()
        override = {"lr": [rates[k] for k in self.adapt_keys]} if self.cfg.meta_sgd else None
        callback = (lambda gs: [g.detach() for g in gs]) if self.cfg.algorithm == "fomaml" else None

        def mse(out, target):
            return ((out + 1) / 2 - target).pow(2).mean()
        losses = []
        for t in range(values.shape[0]):
            c = inner_c[t] if inner_c.dim() == 3 else inner_c
            with higher.innerloop_ctx(module, opt, copy_initial_weights=False) as (fmodel, diffopt):
                for _ in range(self.cfg.inner_steps):
                    diffopt.step(mse(fmodel(c), inner_v[t]), override=override, grad_callback=callback)
                losses.append(mse(fmodel(coords), values[t]))
        per_task = torch.stack(losses)
        return per_task.mean(), {"mse": float(per_task.detach().mean())}

    # -- fast fitting -------------------------------------------------------------------------------------------
    def _adapt_points(self, coords, values, steps, chunk: int) -> Params:
        steps = self.cfg.inner_steps if steps is None else check_count(steps, "steps")
        chunk = check_count(chunk, "chunk", least=1)
        params = {k: v.detach() for k, v in self.meta_params().items()}
        rates = self.inner_rates()
        rates = {k: v.detach() for k, v in rates.items()} if isinstance(rates, dict) else rates
        parts = []
        with torch.no_grad():  # torch.func.grad still computes the inner gradients; no outer graph is kept
            for i in range(0, values.shape[0], chunk):
                c = coords[i:i + chunk] if coords.dim() == 3 else coords
                parts.append(adapt_tasks(self.net, params, c, values[i:i + chunk], steps, rates, self.adapt_keys,
                                         first_order=True)[0])
        return {k: torch.cat([p[k] for p in parts]) for k in self.adapt_keys}

    def adapt(self, images, steps: int | None = None, chunk: int = 64) -> Functions:
        """Fast-fit whole images: ``steps`` inner steps (default ``inner_steps``; more are allowed) from the prior.

        Args:
            images: ``(B, C, H, W)`` or ``(C, H, W)`` in [0, 1] (numpy / PIL accepted).
            chunk: images adapted at once (bounds memory).
        Returns:
            :class:`Functions` of ``B`` functions (detached); the latent variant shares all weights but the biases.
        """
        images = self._check_images(images)
        coords, values = image_to_points(images)
        return self._functions(self._adapt_points(coords, values, steps, chunk))

    def adapt_context(self, coords: torch.Tensor, values: torch.Tensor, steps: int | None = None,
                      chunk: int = 64) -> Functions:
        """Fast-fit from known pixels: ``coords (B, N, 2)`` (or ``(N, 2)`` shared) in [-1, 1], ``values (B, N, C)``
        in [0, 1]. The inner loop sees only these pixels; the functions are defined everywhere.

        Returns:
            :class:`Functions` of ``B`` functions (detached).
        """
        coords, values = check_context(coords, values, self.net.out_features)
        ref = self._ref
        return self._functions(self._adapt_points(coords.to(ref), values.to(ref), steps, chunk))

    def _functions(self, adapted: Params) -> Functions:
        params = {k: v.detach() for k, v in self.meta_params().items()}
        return Functions(self.net, siren_params(self.net, {**params, **adapted}))

    # -- sampling -----------------------------------------------------------------------------------------------
    @property
    def density_kinds(self) -> tuple[str, ...]:
        """What ``fit_density(kind=...)`` accepts (``inrprior.train`` checks it before training)."""
        return ("gaussian", "gmm", "pca") if self.cfg.latent_dim is not None else ("gaussian", "pca")

    @property
    def can_sample(self) -> bool:
        """Whether :meth:`sample` works: a MetaPrior samples from the density fitted after training."""
        return self.density is not None

    def codes(self, images, steps: int | None = None, chunk: int = 64) -> torch.Tensor:
        """What the sampling density models: adapted latents ``(M, d)``, or adapted weight offsets
        ``(M, P)`` from the initialization (flattened in ``net.named_parameters()`` order)."""
        images = self._check_images(images)
        coords, values = image_to_points(images)
        adapted = self._adapt_points(coords, values, steps, chunk)
        if self.cfg.latent_dim is not None:
            return adapted[LATENT]
        theta = dict(self.net.named_parameters())
        return torch.cat([(adapted[k] - theta[k].detach()).flatten(1) for k in self.adapt_keys], 1)

    def fit_density(self, images, kind: str = "gaussian", steps: int | None = None, max_images: int = 512,
                    **kwargs):
        """Fit the sampling density over the codes (see :meth:`codes`) of training images; stored in ``to_state``.

        Args:
            images: ``(M, C, H, W)`` in [0, 1].
            kind: latent variant: "gaussian" | "gmm" | "pca"; all-weights variant: "gaussian" or "pca" (both
                a Gaussian over the principal axes of the weight offsets, :class:`~inrprior.density.PCAGaussian`).
            steps: inner steps used to adapt the images (default ``inner_steps``).
            max_images: the all-weights variant uses only the first this-many images (its codes are as long as
                the SIREN has parameters); the latent variant uses all.
            kwargs: passed to the density (``n_components=...``, ``reg=...``).
        Returns:
            The fitted density.
        """
        from .density import make_density

        if kind not in self.density_kinds:
            if self.cfg.latent_dim is not None:
                raise ValueError(f"unknown density {kind!r}; choose from {self.density_kinds}")
            raise ValueError(f"the all-weights MetaPrior samples from a Gaussian over PCA-reduced weight offsets "
                             f"(kind 'gaussian' or 'pca'), not {kind!r}; use latent_dim for 'gmm'")
        if self.cfg.latent_dim is None:
            kind = "pca"
            images = self._check_images(images)[:max_images]
        density = make_density(kind, **kwargs)
        density.fit(self.codes(images, steps).cpu())
        self.density = density
        return density

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Functions:
        """``n`` new functions drawn from the density fitted by :meth:`fit_density`."""
        if int(n) < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if self.density is None:
            raise RuntimeError("this MetaPrior has no sampling density: call fit_density(train_images) first "
                               "(inrprior.train does it unless density=None)")
        x = self.density.sample(int(n), generator=generator).to(self._ref)  # (n, d) or (n, P)
        if self.cfg.latent_dim is not None:
            return self._functions({LATENT: x})
        theta, adapted, start = dict(self.net.named_parameters()), {}, 0
        for k in self.adapt_keys:
            size = theta[k].numel()
            adapted[k] = theta[k] + x[:, start:start + size].reshape(-1, *theta[k].shape)
            start += size
        return self._functions(adapted)

    # -- saving -------------------------------------------------------------------------------------------------
    def to_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        return _io.prior_to_state(self)

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], config: dict) -> "MetaPrior":
        try:
            prior = cls(Siren(**config["siren"]), MetaConfig(**config["meta"]))
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a valid MetaPrior config: {e}") from None
        return _io.restore_prior_state(prior, tensors, config)

    def save(self, path):
        """Save to ``path`` (one .safetensors file); load with ``inrprior.io.load_prior`` or ``inrprior.load``."""
        return _io.save_prior(self, path)


_io.register_prior("meta", MetaPrior)
