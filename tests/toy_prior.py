"""A tiny prior that implements the Prior protocol, for testing the training loop on its own.

It learns a shared SIREN initialization that one (or more) SGD steps adapt to an image (second-order MAML on a
random subset of each image's pixels, the "context"), so its ``forward`` exercises everything the loop relies on:
an inner ``torch.autograd.grad`` with ``create_graph``, per-image randomness drawn from the generator for the
*global* batch (see :func:`inrprior.train.per_image`), and a loss that is a mean over the batch.
"""
from __future__ import annotations

import torch
from torch import nn

from inrprior.coords import image_to_points
from inrprior.functions import Functions, query_params
from inrprior.siren import Siren
from inrprior.train import per_image


class ToyPrior(nn.Module):
    """A learned SIREN initialization adapted by ``inner_steps`` SGD steps on a random ``context`` fraction of pixels.

    Args:
        net: the architecture; its parameters are the learned initialization.
        inner_lr: SGD step size of the inner loop.
        inner_steps: inner steps during training (``adapt`` defaults to it too).
        context: fraction of each image's pixels the inner loop sees during training.
        first_order: first-order MAML (no gradient through the inner step).
    """

    kind = "toy"

    def __init__(self, net: Siren, inner_lr: float = 1e-2, inner_steps: int = 1, context: float = 0.5,
                 first_order: bool = False):
        super().__init__()
        self.net = net
        self.config = {"kind": self.kind, "siren": dict(net.config), "inner_lr": float(inner_lr),
                       "inner_steps": int(inner_steps), "context": float(context),
                       "first_order": bool(first_order)}
        self.register_buffer("density_mean", torch.zeros(0))
        self.register_buffer("density_std", torch.zeros(0))

    def _init(self, b: int) -> dict[str, torch.Tensor]:
        return {k: v.expand(b, *v.shape) for k, v in self.net.named_parameters()}

    def _inner(self, params, coords, values, weights, steps: int, create_graph: bool):
        # coords (n, 2), values (b, n, c), weights (b, n): per-pixel weights of the inner loss
        for _ in range(steps):
            pred = query_params(self.net, params, coords).value  # (b, n, c)
            err = ((pred - values) ** 2).mean(-1)  # (b, n)
            loss = ((err * weights).sum(-1) / weights.sum(-1).clamp_min(1)).sum()  # sum over tasks: per-task grads
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
            params = {k: p - self.config["inner_lr"] * g for (k, p), g in zip(params.items(), grads)}
        return params

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None):
        """Training objective: mean over the batch of each image's MSE after adapting to its context pixels."""
        coords, values = image_to_points(images)  # (n, 2), (b, n, c)
        b, n = values.shape[:2]
        u = per_image(generator, b, lambda total: torch.rand(total, n, generator=generator))  # (b, n) on CPU
        weights = (u < self.config["context"]).to(values)
        params = self._inner(self._init(b), coords, values, weights, self.config["inner_steps"],
                             create_graph=not self.config["first_order"])
        pred = query_params(self.net, params, coords).value
        loss = ((pred - values) ** 2).mean()
        return loss, {"mse": float(loss.detach()), "context_pixels": float(weights.sum(-1).mean())}

    def adapt(self, images: torch.Tensor, steps: int | None = None) -> Functions:
        coords, values = image_to_points(images.to(self.density_mean))
        return self.adapt_context(coords.expand(values.shape[0], *coords.shape), values, steps)

    def adapt_context(self, coords: torch.Tensor, values: torch.Tensor, steps: int | None = None) -> Functions:
        steps = self.config["inner_steps"] if steps is None else steps
        b = values.shape[0]
        with torch.enable_grad():
            params = self._init(b)
            for _ in range(steps):
                pred = query_params(self.net, params, coords).value
                loss = ((pred - values) ** 2).mean(-1).mean(-1).sum()
                grads = torch.autograd.grad(loss, list(params.values()))
                params = {k: p - self.config["inner_lr"] * g for (k, p), g in zip(params.items(), grads)}
        return Functions(self.net, {k: v.detach() for k, v in params.items()})

    def _flat_offsets(self, f: Functions) -> torch.Tensor:
        return torch.cat([(f.params[k] - v.detach()).flatten(1) for k, v in self.net.named_parameters()], 1)

    @torch.no_grad()
    def fit_density(self, images: torch.Tensor, kind: str = "gaussian") -> None:
        if kind != "gaussian":
            raise ValueError(f"ToyPrior only fits a 'gaussian' density, not {kind!r}")
        offsets = self._flat_offsets(self.adapt(images))  # (m, p)
        self.density_mean = offsets.mean(0)
        self.density_std = offsets.std(0, unbiased=False)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Functions:
        if self.density_mean.numel() == 0:
            raise RuntimeError("fit_density() first")
        z = torch.randn(n, self.density_mean.numel(), generator=generator).to(self.density_mean)
        flat = self.density_mean + self.density_std * z
        params, i = {}, 0
        for k, v in self.net.named_parameters():
            params[k] = v.detach() + flat[:, i:i + v.numel()].view(n, *v.shape)
            i += v.numel()
        return Functions(self.net, params)

    def to_state(self):
        tensors = {f"net.{k}": v.detach() for k, v in self.net.named_parameters()}
        tensors.update(density_mean=self.density_mean, density_std=self.density_std)
        return tensors, dict(self.config)

    @classmethod
    def from_state(cls, tensors, config):
        c = {k: v for k, v in config.items() if k not in ("kind", "siren", "format_version")}
        prior = cls(Siren(**config["siren"]), **c)
        prior.net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        prior.density_mean, prior.density_std = tensors["density_mean"], tensors["density_std"]
        return prior.to(tensors["net.layers.0.weight"].dtype)

    def save(self, path):
        from inrprior import io
        return io.save_prior(self, path)


class PlainPrior(ToyPrior):
    """The same prior with a forward cheap to ``torch.compile`` (no vmap): it fits the batch with the initialization
    itself, plus, unless ``first_order``, the squared norm of a gradient (so its backward differentiates twice)."""

    kind = "plain"

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None):
        coords, values = image_to_points(images)  # (n, 2), (b, n, c)
        loss = (((self.net(coords) + 1) / 2 - values) ** 2).mean()
        if not self.config["first_order"]:
            g, = torch.autograd.grad(loss, self.net.layers[0].weight, create_graph=True)
            loss = loss + g.pow(2).sum()
        return loss, {}


def make_toy(seed: int = 0, channels: int = 1, hidden: int = 16, layers: int = 1, cls=ToyPrior, **kw) -> ToyPrior:
    torch.manual_seed(seed)
    return cls(Siren(2, channels, hidden, layers, w0=30.0), **kw)


def toy_images(n: int = 12, channels: int = 1, size: int = 8, seed: int = 0) -> torch.Tensor:
    """Smooth random images ``(n, channels, size, size)`` in ``[0, 1]``."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    a = torch.rand(n, channels, 4, generator=g)
    return (0.5 + 0.25 * torch.sin(3 * a[..., :1, None] * x + 6 * a[..., 1:2, None])
            * torch.cos(3 * a[..., 2:3, None] * y + 6 * a[..., 3:4, None])).clamp(0, 1)
