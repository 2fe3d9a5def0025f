"""The SIREN architecture and helpers for parameter dicts.

A SIREN maps coordinates to values through sine layers ``sin(w0 * (W x + b))`` and a linear output layer. Its
parameters are plain data: ``dict[str, Tensor]`` keyed by the module's own names (``layers.0.weight``, ...), so the
same module runs fitted weights, MAML inner-loop weights and hypernetwork outputs via ``functional_call``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["Siren", "param_shapes", "stack_params", "unstack_params", "count_params", "batch_size_of"]

Params = dict[str, torch.Tensor]


class Siren(nn.Module):
    """A sine-activated MLP.

    ``hidden_layers=3`` means a first sine layer, 3 hidden sine layers and a linear output, as in the reference code.
    Initialization (Sitzmann et al. 2020): first layer ``U(-1/n, 1/n)``, later layers ``U(-sqrt(6/n)/w0, sqrt(6/n)/w0)``
    for weights *and* biases, with ``n`` the layer's fan-in.

    Args:
        in_features: input dimension (2 for images).
        out_features: output dimension (channels).
        hidden_features: width of every sine layer.
        hidden_layers: number of hidden sine layers after the first one.
        w0: frequency factor of every sine layer.
    """

    def __init__(self, in_features: int = 2, out_features: int = 3, hidden_features: int = 256,
                 hidden_layers: int = 3, w0: float = 30.0):
        super().__init__()
        if min(in_features, out_features, hidden_features) < 1 or hidden_layers < 0:
            raise ValueError("Siren sizes must be positive (hidden_layers may be 0)")
        self.config = dict(in_features=in_features, out_features=out_features, hidden_features=hidden_features,
                           hidden_layers=hidden_layers, w0=float(w0))
        self.w0 = float(w0)
        widths = [in_features] + [hidden_features] * (hidden_layers + 1) + [out_features]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.reset_parameters()

    @property
    def in_features(self) -> int:
        return self.config["in_features"]

    @property
    def out_features(self) -> int:
        return self.config["out_features"]

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        for k, v in self.init_params(generator=generator).items():
            self.get_parameter(k).copy_(v)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """``(..., in_features)`` coordinates to ``(..., out_features)`` raw outputs (images use ``[-1, 1]``)."""
        return self.layers[-1](self.features(coords))

    def features(self, coords: torch.Tensor) -> torch.Tensor:
        """The last sine layer's output ``(..., hidden_features)``: what the linear output layer combines."""
        h = coords
        for layer in self.layers[:-1]:
            h = torch.sin(self.w0 * layer(h))
        return h

    def sine_layer_names(self) -> list[str]:
        """Names of the biases of the sine layers: where shift modulations ``b + s`` enter."""
        return [f"layers.{i}.bias" for i in range(len(self.layers) - 1)]

    def init_params(self, n: int | None = None, generator: torch.Generator | None = None) -> Params:
        """Fresh Sitzmann-initialized parameters, detached; with ``n``, a batch of ``n`` independent draws.

        Only ``generator`` (else the global generator) is drawn from, on its own device, so a CPU generator
        seeds a CUDA network and the same seed gives the same weights on every device.
        """
        ref = next(self.parameters())
        where = generator.device if generator is not None else ref.device

        def draw() -> Params:
            out = {}
            for i, layer in enumerate(self.layers):
                n_in = layer.in_features
                bound = 1.0 / n_in if i == 0 else math.sqrt(6.0 / n_in) / self.w0
                for name, p in layer.named_parameters():
                    u = torch.empty(p.shape, dtype=ref.dtype, device=where).uniform_(-bound, bound,
                                                                                      generator=generator)
                    out[f"layers.{i}.{name}"] = u.to(ref.device)
            return out
        if n is None:
            return draw()
        return stack_params([draw() for _ in range(n)])


def param_shapes(net: nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in net.named_parameters()}


def stack_params(dicts: list[Params]) -> Params:
    """Stack unbatched parameter dicts into one dict with a leading batch dimension."""
    if not dicts:
        raise ValueError("cannot stack an empty list of parameter dicts")
    return {k: torch.stack([d[k] for d in dicts]) for k in dicts[0]}


def unstack_params(params: Params, net: nn.Module) -> list[Params]:
    """Split a batched dict into per-function dicts (shared tensors are repeated by reference)."""
    b = batch_size_of(params, net)
    shapes = param_shapes(net)
    return [{k: (v[i] if v.dim() > len(shapes[k]) else v) for k, v in params.items()} for i in range(b)]


def count_params(params: Params | nn.Module) -> int:
    if isinstance(params, nn.Module):
        return sum(p.numel() for p in params.parameters())
    return sum(v.numel() for v in params.values())


def batch_size_of(params: Params, net: nn.Module) -> int:
    """The number ``B`` of functions a parameter dict describes; tensors without the leading dim are shared.

    Raises a clear error when a tensor matches neither the architecture's shape nor ``(B, *shape)``.
    """
    shapes = param_shapes(net)
    missing = set(shapes) - set(params)
    extra = set(params) - set(shapes)
    if missing or extra:
        raise ValueError(f"parameters do not match this architecture: missing {sorted(missing)}, "
                         f"unexpected {sorted(extra)}")
    sizes = set()
    for k, shape in shapes.items():
        t = params[k]
        if t.shape == shape:
            continue
        if t.dim() == len(shape) + 1 and t.shape[1:] == shape:
            sizes.add(t.shape[0])
        else:
            raise ValueError(f"parameter {k!r} has shape {tuple(t.shape)}; expected {tuple(shape)} "
                             f"or (B, {', '.join(map(str, shape))})")
    if len(sizes) > 1:
        raise ValueError(f"parameter tensors disagree on the batch size: {sorted(sizes)}")
    return sizes.pop() if sizes else 1
