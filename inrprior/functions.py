"""A batch of SIREN functions, queried at continuous coordinates with values, gradients and Laplacians.

One path computes them for a :class:`Siren`: :func:`siren_query`, a hand-written forward mode that carries the
value, its two coordinate derivatives and its Laplacian through each layer as one stacked matrix product (a
value-only query is a plain forward pass). It is plain tensor code, so it composes with reverse-mode autograd (the
same path serves queries, gradient/Laplacian supervision and hypernetwork training), runs under ``vmap`` and
compiles. :func:`query_params_autodiff` takes the derivatives with ``torch.func`` (``jvp`` along the two axes, nested
for the Laplacian) instead: it serves any other module and is the oracle the tests check :func:`siren_query` against.

Units: values are colours on the image scale ``[0, 1]`` (not clamped); derivatives are of that colour with respect
to the ``[-1, 1]`` coordinates. :func:`gradient_per_pixel` and :func:`laplacian_per_pixel` convert to pixel units.
"""
from __future__ import annotations

import copy
import functools
import numbers
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable

import torch
from torch import nn
from torch.func import functional_call, jvp, vmap

from .coords import check_coords, grid
from .siren import Params, Siren, batch_size_of, param_shapes

__all__ = ["Functions", "Query", "query_params", "query_params_autodiff", "siren_query", "gradient_per_pixel",
           "laplacian_per_pixel", "DERIVATIVES"]

DERIVATIVES = ("value", "gradient", "laplacian")


@dataclass
class Query:
    """What :meth:`Functions.query` returns; fields not asked for are ``None``.

    value ``(B, N, C)``, gradient ``(B, N, C, 2)`` (d/dx, d/dy), laplacian ``(B, N, C)``.
    """
    value: torch.Tensor | None = None
    gradient: torch.Tensor | None = None
    laplacian: torch.Tensor | None = None

    def map(self, fn) -> "Query":
        return Query(**{f.name: (None if getattr(self, f.name) is None else fn(f.name, getattr(self, f.name)))
                        for f in fields(self)})


def _check_derivatives(derivatives: Iterable[str] | str) -> tuple[str, ...]:
    derivatives = (derivatives,) if isinstance(derivatives, str) else tuple(derivatives)
    unknown = [d for d in derivatives if d not in DERIVATIVES]
    if unknown or not derivatives:
        raise ValueError(f"unknown derivative {unknown or derivatives!r}; choose from {DERIVATIVES}")
    return derivatives


def _raw_derivatives(f, x: torch.Tensor, derivatives: tuple[str, ...]):
    """Raw output, gradient and Laplacian of ``f`` at points ``x (N, 2)``; ``f`` treats rows independently."""
    if "laplacian" in derivatives:
        def second(t):
            (v, d), (_, dd) = jvp(lambda y: jvp(f, (y,), (t,)), (x,), (t,))
            return v, d, dd
        tangents = torch.eye(2, dtype=x.dtype, device=x.device)[:, None, :].expand(2, *x.shape)
        v, d, dd = vmap(second)(tangents)  # each (2, N, C): one slice per axis
        return v[0], d.permute(1, 2, 0), dd.sum(0)
    if "gradient" in derivatives:
        tangents = torch.eye(2, dtype=x.dtype, device=x.device)[:, None, :].expand(2, *x.shape)
        v, d = vmap(lambda t: jvp(f, (x,), (t,)))(tangents)
        return v[0], d.permute(1, 2, 0), None
    return f(x), None, None


def query_params(net: nn.Module, params: Params, coords: torch.Tensor,
                 derivatives: Iterable[str] | str = ("value",)) -> Query:
    """Query the functions ``params`` describe (a pure function of its inputs; differentiable in ``params``).

    A :class:`Siren` runs the hand-written forward mode :func:`siren_query`; any other module runs
    :func:`query_params_autodiff`.

    Args:
        net: the architecture (a :class:`Siren`, or any module mapping ``(N, 2)`` points to ``(N, C)``).
        params: parameter dict; tensors with a leading batch dim ``B`` are per function, others shared.
        coords: ``(N, 2)`` points shared by all functions, or ``(B, N, 2)``.
        derivatives: any of ``"value"``, ``"gradient"``, ``"laplacian"``.
    Returns:
        :class:`Query` on the image scale (see the module docstring for units): value ``(B, N, C)``,
        gradient ``(B, N, C, 2)``, laplacian ``(B, N, C)``.
    """
    if not isinstance(net, Siren):
        return query_params_autodiff(net, params, coords, derivatives)
    derivatives = _check_derivatives(derivatives)
    coords = check_coords(coords, batch=batch_size_of(params, net))
    return _forward_mode_chunk(net, params, coords, derivatives)


def _checked_chunk(net: nn.Module, params: Params, coords: torch.Tensor, derivatives: tuple[str, ...]) -> Query:
    """One chunk of :meth:`Functions.query`, whose inputs were checked once for all chunks: a SIREN skips the
    per-chunk checks (a finiteness pass over the points each), any other module takes the torch.func path."""
    if isinstance(net, Siren):
        return _forward_mode_chunk(net, params, coords, derivatives)
    return query_params_autodiff(net, params, coords, derivatives)


def query_params_autodiff(net: nn.Module, params: Params, coords: torch.Tensor,
                          derivatives: Iterable[str] | str = ("value",)) -> Query:
    """:func:`query_params` by ``torch.func``: ``jvp`` along the two axes (nested for the Laplacian), ``vmap``ped
    over functions. Works for any module; for a :class:`Siren` it is the reference the fast path is tested against.
    Same arguments and returns as :func:`query_params`."""
    derivatives = _check_derivatives(derivatives)
    shapes = param_shapes(net)
    b = batch_size_of(params, net)
    coords = check_coords(coords, batch=b).contiguous()  # jvp rejects overlapping memory (expanded coords)
    pdims = {k: (0 if v.dim() > len(shapes[k]) else None) for k, v in params.items()}
    cdim = 0 if coords.dim() == 3 else None
    if cdim is None and all(d is None for d in pdims.values()):
        params = {k: v[None] for k, v in params.items()}
        pdims = {k: 0 for k in params}

    def one(p, x):
        out = _raw_derivatives(lambda y: functional_call(net, p, (y,)), x, derivatives)
        return tuple(t for t in out if t is not None)  # vmap returns tensors only

    with warnings.catch_warnings():
        # torch 2.14 warns about torch.jit.script from inside its own forward-AD setup; nothing for users to act on.
        warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
        outs = iter(vmap(one, in_dims=(pdims, cdim))(params, coords))
    value = next(outs)
    gradient = next(outs) if "gradient" in derivatives or "laplacian" in derivatives else None
    laplacian = next(outs) if "laplacian" in derivatives else None
    # The network speaks [-1, 1]; users speak colours in [0, 1].
    return Query(
        value=(value + 1) / 2 if "value" in derivatives else None,
        gradient=gradient / 2 if "gradient" in derivatives else None,
        laplacian=laplacian / 2 if laplacian is not None else None,
    )


def _rows(t: torch.Tensor) -> torch.Tensor:
    """A bias ``(d,)`` or ``(b, d)`` broadcast over the rows of ``(..., rows, d)`` activations."""
    return t[:, None] if t.dim() == 2 else t


def _affine(h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``h @ w.T + bias`` for rows ``([b,] n, k)``, weights ``([b,] d, k)`` and a bias ``([b,] d)``; the bias is
    added inside the matrix product where the shapes allow (one pass over the result fewer)."""
    if w.dim() == 3:
        return torch.baddbmm(_rows(bias), h.expand(w.shape[0], *h.shape[-2:]), w.transpose(1, 2))
    if bias.dim() == 1:
        return torch.addmm(bias, h.reshape(-1, h.shape[-1]), w.T).view(*h.shape[:-1], w.shape[0])
    return h @ w.T + _rows(bias)


def siren_query(net: Siren, params: Params, coords: torch.Tensor, order: int = 0) -> Query:
    """Values and (up to ``order``) derivatives of a batch of SIRENs, by a hand-written forward mode.

    Each layer multiplies the stacked ``[value; d/dx; d/dy; Laplacian]`` rows by its weights at once; ``order=0`` is
    the plain forward pass. Shared tensors stay unbatched (broadcast, not copied) until a per-function tensor meets
    them. No input checks (:func:`query_params` does them); being plain tensor code, it is differentiable in
    ``params``, runs under ``vmap`` and compiles (``fit(compile=True)``, ``render(compile=True)``).

    Args:
        net: the architecture.
        params: parameter dict; tensors with a leading batch dim ``B`` are per function, others shared.
        coords: ``(N, 2)`` points shared by all functions, or ``(B, N, 2)``.
        order: 0 values, 1 values and gradients, 2 also Laplacians.
    Returns:
        :class:`Query` with value ``(B, N, C)``, gradient ``(B, N, C, 2)`` if ``order >= 1``,
        laplacian ``(B, N, C)`` if ``order == 2``.
    """
    w0, last = net.w0, len(net.layers) - 1
    weights = [params[f"layers.{i}.weight"] for i in range(last + 1)]  # ([b,] d, k)
    biases = [params[f"layers.{i}.bias"] for i in range(last + 1)]  # ([b,] d)
    if order == 0:
        h = coords
        for w, b in zip(weights[:-1], biases[:-1]):
            h = torch.sin(_affine(h, w0 * w, w0 * b))
        q = Query(value=(_affine(h, weights[-1], biases[-1]) + 1) / 2)  # the network's [-1, 1] to colours
    else:
        q = _derivative_streams(coords, weights, biases, w0, order)
    batch = coords.shape[0] if coords.dim() == 3 else batch_size_of(params, net)
    # all-shared inputs (or only a per-function output bias) leave results without the batch dim
    return q.map(lambda name, t: t if t.dim() == (4 if name == "gradient" else 3) else t.expand(batch, *t.shape))


def _derivative_streams(coords, weights, biases, w0: float, order: int) -> Query:
    """:func:`siren_query` for ``order`` 1 or 2: the stacked streams through every layer."""
    n = coords.shape[-2]
    u = _affine(coords, w0 * weights[0], w0 * biases[0])  # ([b,] n, d): the sine's argument
    s, c = torch.sin(u), torch.cos(u)
    du = (w0 * weights[0]).transpose(-1, -2)[..., None, :]  # ([b,] 2, 1, d): constant over points
    streams = [s, (c[..., None, :, :] * du).flatten(-3, -2)]  # value ([b,] n, d), tangents ([b,] 2n, d)
    if order == 2:
        streams.append(-s * du.square().sum(-3))  # the first layer is linear: no second-derivative term
    h = torch.cat(streams, -2)
    for w, b in zip(weights[1:-1], biases[1:-1]):
        z = h @ (w0 * w).transpose(-1, -2)  # ([b,] s*n, d)
        u = z[..., :n, :] + w0 * _rows(b)
        s, c = torch.sin(u), torch.cos(u)
        du = z[..., n:3 * n, :].unflatten(-2, (2, n))  # ([b,] 2, n, d)
        streams = [s, (c[..., None, :, :] * du).flatten(-3, -2)]
        if order == 2:
            streams.append(c * z[..., 3 * n:, :] - s * du.square().sum(-3))
        h = torch.cat(streams, -2)
    z = h @ weights[-1].transpose(-1, -2)  # ([b,] s*n, c)
    return Query(value=(z[..., :n, :] + _rows(biases[-1]) + 1) / 2,  # the network's [-1, 1] to colours
                 gradient=z[..., n:3 * n, :].unflatten(-2, (2, n)).movedim(-3, -1) / 2,
                 laplacian=z[..., 3 * n:, :] / 2 if order == 2 else None)


def check_amp(amp) -> None:
    """The autocast options: ``None`` (float32) or ``"bf16"`` (bfloat16 autocast)."""
    if amp not in (None, "bf16"):
        raise ValueError(f"amp must be None or 'bf16', got {amp!r}")


def _forward_mode_chunk(net: Siren, params: Params, coords: torch.Tensor, derivatives: tuple[str, ...]) -> Query:
    """:func:`query_params` for a :class:`Siren` without the input checks, by :func:`siren_query`: plain tensor
    code that ``torch.compile`` fuses (Dynamo cannot trace ``jvp`` inside ``vmap``). Asks for the lowest order
    that gives ``derivatives``: a value-only query is a plain forward pass."""
    order = 2 if "laplacian" in derivatives else 1 if "gradient" in derivatives else 0
    q = siren_query(net, params, coords, order)
    return Query(value=q.value if "value" in derivatives else None,
                 gradient=q.gradient if "gradient" in derivatives else None, laplacian=q.laplacian)


@functools.cache
def _compiled_chunk():
    """One compiled chunk function for the process: Dynamo's guards key its graphs on the architecture, the
    derivatives asked for, the shapes, dtype, device and autocast state, so a repeated render reuses them."""
    return torch.compile(_forward_mode_chunk, dynamic=False)


def gradient_per_pixel(gradient: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Convert gradients ``(..., 2)`` w.r.t. ``[-1, 1]`` coordinates to per-pixel units of an ``h x w`` image."""
    scale = torch.tensor([2.0 / w, 2.0 / h], dtype=gradient.dtype, device=gradient.device)
    return gradient * scale


def laplacian_per_pixel(laplacian: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Convert Laplacians w.r.t. coordinates to per-pixel units; needs square pixels (``h == w``), since otherwise
    the two second derivatives scale differently and the Laplacian alone cannot be converted."""
    if h != w:
        raise ValueError(f"laplacian_per_pixel needs a square image to convert units, got {h}x{w}")
    return laplacian * (2.0 / w) ** 2


class Functions:
    """A batch of ``B`` SIREN functions ``(x, y) -> colour`` sharing one architecture.

    Args:
        net: the architecture (a :class:`Siren`); its own parameters are not used.
        params: dict of tensors with leading batch dim ``B`` (tensors without it are shared by all functions).
    """

    def __init__(self, net: Siren, params: Params):
        self.net = net
        self.batch_size = batch_size_of(params, net)
        shapes = param_shapes(net)
        if all(v.shape == shapes[k] for k, v in params.items()):
            params = {k: v[None] for k, v in params.items()}
        self.params = params

    def __len__(self) -> int:
        return self.batch_size

    def __repr__(self) -> str:
        c = self.net.config
        return (f"Functions(n={len(self)}, {c['in_features']}->{c['out_features']}, "
                f"{c['hidden_layers']}x{c['hidden_features']}, w0={c['w0']})")

    def __getitem__(self, index) -> "Functions":
        """One function (``f[i]``, numpy integers too), a slice (any step) or a list / tensor of indices; always a
        :class:`Functions`, never empty."""
        n, shapes = len(self), param_shapes(self.net)
        if isinstance(index, numbers.Integral) and not isinstance(index, bool):
            if not -n <= index < n:
                raise IndexError(f"function index {index} out of range for {n} functions")
            rows = [int(index) % n]
        elif isinstance(index, slice):
            rows = list(range(n)[index])
        else:
            try:
                rows = torch.arange(n)[torch.as_tensor(index)].reshape(-1).tolist()
            except (IndexError, TypeError, ValueError, RuntimeError) as e:
                raise IndexError(f"cannot index {n} functions with {index!r}: {e}") from None
        if not rows:
            raise IndexError(f"{index!r} selects none of the {n} functions")
        if rows == list(range(rows[0], rows[-1] + 1)):  # contiguous: views, no copy
            pick = lambda v: v[rows[0]:rows[-1] + 1]  # noqa: E731
        else:
            idx = torch.tensor(rows, device=self.device)
            pick = lambda v: v.index_select(0, idx)  # noqa: E731
        return Functions(self.net, {k: (pick(v) if v.dim() > len(shapes[k]) else v) for k, v in self.params.items()})

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.params.values())).dtype

    @property
    def channels(self) -> int:
        return self.net.out_features

    def to(self, *args, **kwargs) -> "Functions":
        params = {k: v.to(*args, **kwargs) for k, v in self.params.items()}
        ref, own = next(iter(params.values())), next(self.net.parameters())
        net = self.net
        if (own.device, own.dtype) != (ref.device, ref.dtype):  # a copy: the net may be a prior's, shared
            net = copy.deepcopy(net).to(ref.device, ref.dtype)
        return Functions(net, params)

    def detach(self) -> "Functions":
        return Functions(self.net, {k: v.detach() for k, v in self.params.items()})

    def query(self, coords: torch.Tensor, derivatives: Iterable[str] | str = ("value",),
              chunk: int | None = None) -> Query:
        """Values and derivatives at continuous coordinates.

        Args:
            coords: ``(N, 2)`` points in ``[-1, 1]`` shared by all functions, or ``(B, N, 2)``. Points outside
                ``[-1, 1]`` are allowed: the function extrapolates there.
            derivatives: any of ``"value"``, ``"gradient"``, ``"laplacian"``.
            chunk: evaluate at most this many points per function at once (bounded memory).
        Returns:
            :class:`Query` with value ``(B, N, C)``, gradient ``(B, N, C, 2)``, laplacian ``(B, N, C)``.
        """
        return self._query(coords, derivatives, chunk, _checked_chunk)

    def _query(self, coords, derivatives, chunk, run) -> Query:
        """:meth:`query` with ``run`` (:func:`_checked_chunk` or the compiled chunk) evaluating each chunk."""
        derivatives = _check_derivatives(derivatives)
        coords = check_coords(coords, batch=self.batch_size).to(self.device, self.dtype)
        n = coords.shape[-2]
        if chunk is not None and (not isinstance(chunk, int) or chunk < 1):
            raise ValueError(f"chunk must be a positive integer (points per function at once), got {chunk!r}")
        if chunk is None or n <= chunk:
            return run(self.net, self.params, coords, derivatives)
        parts = [run(self.net, self.params, coords[..., i:i + chunk, :], derivatives) for i in range(0, n, chunk)]
        return parts[0].map(lambda name, _: torch.cat([getattr(p, name) for p in parts], dim=1))

    @torch.no_grad()
    def render(self, h: int, w: int, chunk: int = 65536, amp: str | None = None,
               compile: bool = False) -> torch.Tensor:
        """Render every function on an ``h x w`` pixel grid, at any resolution.

        Args:
            h, w: the resolution.
            chunk: points per function evaluated at once (bounded memory).
            amp: ``"bf16"`` runs the matmuls under bfloat16 autocast (GPU speed; the sine of a bf16 pre-activation
                is coarse, so expect errors of a few 1e-2 on a 3x256 SIREN with w0=30).
            compile: evaluate each chunk of :func:`siren_query` with ``torch.compile`` (same image within float
                rounding; the first call of a shape compiles, later ones reuse it).
        Returns:
            ``(B, C, h, w)`` images clamped to ``[0, 1]``.
        """
        check_amp(amp)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            image = self.render_derivatives(h, w, ("value",), chunk=chunk, compile=compile).value
        return image.to(self.dtype).clamp(0, 1)

    @torch.no_grad()
    def render_derivatives(self, h: int, w: int, derivatives: Iterable[str] | str = DERIVATIVES,
                           chunk: int = 16384, compile: bool = False) -> Query:
        """Values and derivatives on an ``h x w`` grid, laid out as images, in bounded memory.

        Args:
            h, w: the resolution.
            derivatives: any of ``"value"``, ``"gradient"``, ``"laplacian"``.
            chunk: points per function evaluated at once.
            compile: evaluate each chunk with ``torch.compile``, as in :meth:`render`.
        Returns:
            :class:`Query` with value ``(B, C, h, w)`` (not clamped), gradient ``(B, C, h, w, 2)``,
            laplacian ``(B, C, h, w)``.
        """
        run = _compiled_chunk() if compile else _checked_chunk
        q = self._query(grid(h, w, device=self.device, dtype=self.dtype), derivatives, chunk, run)
        b, c = self.batch_size, self.channels

        def to_image(name, t):
            t = t.reshape(b, h, w, c, *t.shape[3:])
            return t.permute(0, 3, 1, 2, *range(4, t.dim()))
        return q.map(to_image)

    def save(self, path) -> Path:
        """Save to ``path`` (a ``.safetensors`` file holding the weights and a JSON config), atomically; returns
        the path written (``.safetensors`` is added to a path without a suffix)."""
        from .io import save_functions
        return save_functions(self, path)
