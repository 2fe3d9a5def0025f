"""The inner loop of :class:`~inrprior.meta.MetaPrior`: pure functions of a parameter dict, vmapped over tasks.

Fast-fitting an image ("a task") runs a few SGD steps on its pixels from a starting point: :func:`adapt` is that
inner loop as a *pure* function of a parameter dict (``torch.func.grad`` per step, nothing mutated) and
:func:`adapt_tasks` ``vmap``s it over a batch of tasks. What adapts is named explicitly by a set of keys: SIREN
weights, or a latent (``LATENT``) that a linear map (``MODULATION``) turns into shift modulations of the sine-layer
biases, ``sin(w0 (W x + b + s))`` with ``s = M z`` (functa / CAVIA); :func:`siren_params` turns such a dict into
plain SIREN parameters. The loss is the mean squared error of colours on the image scale ``[0, 1]``.

Memory: second-order MAML keeps every inner step's graph. ``adapt_tasks(..., checkpoint=True)`` recomputes each
vectorized inner step in the backward pass (``torch.utils.checkpoint``, reentrant: torch.func transforms refuse the
saved-tensor hooks of the non-reentrant variant); the loss then needs ``loss.backward()`` rather than
``torch.autograd.grad``.
"""
from __future__ import annotations

import torch
import torch.utils.checkpoint as torch_checkpoint
from torch.func import functional_call, grad_and_value, vmap

from .siren import Params, Siren

__all__ = ["adapt", "adapt_trace", "adapt_tasks", "task_loss", "siren_params", "LATENT", "MODULATION",
           "LearningRate"]

LATENT, MODULATION = "latent", "modulation.weight"
LearningRate = float | dict[str, torch.Tensor]


def siren_params(net: Siren, params: Params) -> Params:
    """Plain SIREN parameters from a dict that may hold a latent: sine-layer biases become ``b + M z``.

    ``params[LATENT]`` is ``(d,)`` or ``(B, d)``; the result then has per-function biases ``(B, hidden)`` and the
    shared weights unbatched. Dicts without a latent are returned as they are.
    """
    if LATENT not in params:
        return params
    shifts = params[LATENT] @ params[MODULATION].T  # (..., S): all sine layers' shifts, concatenated
    out = {k: v for k, v in params.items() if k not in (LATENT, MODULATION)}
    start = 0
    for k in net.sine_layer_names():
        width = out[k].shape[-1]
        out[k] = out[k] + shifts[..., start:start + width]
        start += width
    return out


def task_loss(net: Siren, params: Params, coords: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared colour error of one task: ``coords (N, 2)``, ``targets (N, C)`` in [0, 1] -> scalar."""
    raw = functional_call(net, siren_params(net, params), (coords,))  # (N, C) on the network's [-1, 1] scale
    return ((raw + 1) / 2 - targets).pow(2).mean()


def _step(net, params, coords, targets, lr: LearningRate, keys, first_order):
    def loss_of(sub):
        return task_loss(net, {**params, **sub}, coords, targets)
    grads, loss = grad_and_value(loss_of)({k: params[k] for k in keys})
    if first_order:
        grads = {k: g.detach() for k, g in grads.items()}
    rates = lr if isinstance(lr, dict) else dict.fromkeys(keys, lr)
    return {**params, **{k: params[k] - rates[k] * grads[k] for k in keys}}, loss


def adapt_trace(net: Siren, params: Params, coords: torch.Tensor, targets: torch.Tensor, steps: int,
                lr: LearningRate, keys, first_order: bool = False) -> tuple[Params, torch.Tensor]:
    """:func:`adapt` that also returns the loss *before* each step, ``(steps,)``."""
    losses = []
    for _ in range(steps):
        params, loss = _step(net, params, coords, targets, lr, keys, first_order)
        losses.append(loss)
    return params, (torch.stack(losses) if losses else coords.new_zeros(0))


def adapt(net: Siren, params: Params, coords: torch.Tensor, targets: torch.Tensor, steps: int, lr: LearningRate,
          keys, first_order: bool = False) -> Params:
    """The inner loop for one task, a pure function: ``steps`` SGD steps on the keys ``keys`` of ``params``.

    Args:
        net: the architecture.
        params: one task's parameters (no batch dim); may hold ``LATENT`` and ``MODULATION``.
        coords: ``(N, 2)``; targets: ``(N, C)`` colours in [0, 1].
        steps: inner steps; lr: a step size, or a dict of per-entry step sizes shaped like ``params[k]``.
        keys: the names that adapt; the rest stay fixed (gradients still flow to them through the steps).
        first_order: treat inner gradients as constants (first-order MAML).
    Returns:
        A new dict; ``params`` is not modified.
    """
    return adapt_trace(net, params, coords, targets, steps, lr, keys, first_order)[0]


def adapt_tasks(net: Siren, params: Params, coords: torch.Tensor, targets: torch.Tensor, steps: int,
                lr: LearningRate, keys, first_order: bool = False,
                checkpoint: bool = False) -> tuple[Params, torch.Tensor]:
    """:func:`adapt` vectorized over ``B`` tasks with ``torch.func.vmap`` (no Python loop over tasks).

    Args:
        params: unbatched starting parameters shared by all tasks (the meta-parameters).
        coords: ``(N, 2)`` shared or ``(B, N, 2)``; targets: ``(B, N, C)``.
        checkpoint: recompute each vectorized step in the backward pass (less memory for second order).
    Returns:
        ``({k: (B, *shape) for k in keys}, losses (B, steps))``: only the adapted entries, batched.
    """
    keys = tuple(keys)
    cdim = 0 if coords.dim() == 3 else None
    if not checkpoint:
        def one(c, t):
            p, losses = adapt_trace(net, params, c, t, steps, lr, keys, first_order)
            return {k: p[k] for k in keys}, losses
        return vmap(one, in_dims=(cdim, 0))(coords, targets)
    # Checkpointed: the loop over steps runs outside vmap so that each step is one checkpointed region. Every
    # tensor that needs a gradient must be an explicit input: reentrant checkpointing ignores closed-over tensors.
    rest = [k for k in params if k not in keys]
    rates = sorted(lr) if isinstance(lr, dict) else []

    def one_step(batched, *flat):
        n, m = len(keys), len(rest)
        cur, fixed = dict(zip(keys, flat[:n])), dict(zip(rest, flat[n:n + m]))
        rate = dict(zip(rates, flat[n + m:n + m + len(rates)])) if rates else lr
        c, t = flat[-2], flat[-1]
        def fn(p, ci, ti):
            new, loss = _step(net, {**fixed, **p}, ci, ti, rate, keys, first_order)
            return [new[k] for k in keys], loss  # only the adapted entries: vmap would expand the fixed ones
        new, loss = vmap(fn, in_dims=(0 if batched else None, cdim, 0))(cur, c, t)
        return (*new, loss)

    cur, losses = [params[k] for k in keys], []
    fixed = [params[k] for k in rest] + [lr[k] for k in rates]
    for s in range(steps):
        *cur, loss = torch_checkpoint.checkpoint(one_step, s > 0, *cur, *fixed, coords, targets, use_reentrant=True)
        losses.append(loss)
    b = targets.shape[0]
    adapted = {k: (v if steps else v.expand(b, *v.shape)) for k, v in zip(keys, cur)}
    return adapted, (torch.stack(losses, 1) if losses else targets.new_zeros(b, 0))
