"""The training loop shared by every prior: devices, DDP, metrics log (checkpoints and exact resume are in
:mod:`inrprior.checkpoint`).

What a prior must provide (the Prior protocol, see DESIGN.md) and what this loop relies on:
- ``forward(images (b, C, H, W), generator) -> (loss, metrics)``: ``loss`` must be the **mean over the batch** of
  per-image losses. Under DDP each process sees ``b = batch_size / world_size`` images and DDP averages the
  gradients, which equals the single-process gradient of the global batch only for a batch mean.
- All randomness comes from ``generator`` (a CPU :class:`torch.Generator`; draw on the CPU and move the result, so
  CPU and GPU runs draw the same numbers). Per-image randomness must be drawn for the **global** batch and sliced,
  so that every process consumes the generator identically and gets the numbers a single process would: use
  :func:`per_image`, or read ``generator.shard == (start, stop, global_batch)`` yourself.
- ``adapt``, ``fit_density``, ``to_state`` / ``from_state`` (exact round trip of the parameters) and ``save``;
  optionally ``density_kinds`` (what ``fit_density`` accepts), checked before the first step, and ``can_sample``
  (whether ``sample`` works now; the report draws samples if so, by default if a density was fitted).

The output folder ``out/`` holds: ``config.json`` (the :class:`TrainConfig`, the prior's config, the data's shape),
``metrics.jsonl`` (one JSON object per logged step: ``step``, ``loss``, the prior's metrics, ``lr``, ``seconds``,
and ``eval_psnr`` / ``eval_mse`` at evaluation steps), ``checkpoint.safetensors`` (resume state, see
:mod:`inrprior.checkpoint`) and, at the end, ``prior.safetensors`` and ``report.html`` (with ``images/``). A report
can be rebuilt from these files alone. A folder holding an earlier run is refused unless the run is resumed or
``overwrite=True`` starts it over.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist

from .checkpoint import (CHECKPOINT, check_resumable, load_checkpoint, prepare_files, prepare_out,
                         restore_checkpoint, save_checkpoint)

from .targets import psnr

__all__ = ["TrainConfig", "train", "evaluate", "per_image", "ShardedGenerator"]

log = logging.getLogger(__name__)
_HINT = "; lower the outer or inner learning rate, or clip gradients (grad_clip)"


@dataclass
class TrainConfig:
    """Training settings (JSON-able; stored in ``out/config.json`` and in every checkpoint)."""
    steps: int = 1000
    batch_size: int = 8  # global meta-batch, split across DDP processes
    lr: float = 5e-5
    eval_every: int = 100
    eval_steps: int = 3  # adaptation steps of the held-out evaluation
    eval_images: int = 16  # the first this-many images of the eval dataset
    checkpoint_every: int = 100
    log_every: int = 1
    seed: int = 0
    density: str | None = "gaussian"  # None: do not fit a sampling density
    density_images: int = 4096  # fit the density on at most this many training images
    grad_clip: float | None = None
    amp: str | None = None  # "bf16" or None
    compile: bool | str = False  # True: torch.compile with inductor; a string names another backend

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_every", "eval_steps", "eval_images", "checkpoint_every",
                     "log_every", "density_images"):
            least = 0 if name in ("steps", "eval_steps") else 1
            if not isinstance(getattr(self, name), int) or getattr(self, name) < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.amp not in (None, "bf16"):
            raise ValueError(f"amp must be 'bf16' or None, got {self.amp!r}")
        if not isinstance(self.compile, (bool, str)):
            raise ValueError(f"compile must be a bool or a torch.compile backend name, got {self.compile!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip}")


class ShardedGenerator(torch.Generator):
    """A :class:`torch.Generator` that also says which rows of the global batch this process holds.

    ``shard == (start, stop, global_batch)``; ``(0, b, b)`` in a single process.
    """
    shard: tuple[int, int, int] | None = None


@torch.compiler.disable  # torch.compile cannot read attributes of a Generator; draw eagerly
def per_image(generator: torch.Generator | None, batch: int, draw):
    """Per-image random numbers that agree between one process and DDP: ``draw(global_batch)[start:stop]``.

    Args:
        generator: the generator the loop passed to ``forward`` (may be ``None`` or a plain generator).
        batch: the local batch size ``b``.
        draw: ``n -> tensor (n, ...)``, drawing with ``generator``.
    Returns:
        ``(b, ...)``: this process's rows.
    """
    start, stop, total = getattr(generator, "shard", None) or (0, batch, batch)
    if stop - start != batch:
        raise ValueError(f"generator shard {start}:{stop} does not match the batch of {batch} images")
    return draw(total)[start:stop]


def evaluate(prior, images: torch.Tensor, steps: int = 3) -> dict[str, float]:
    """Fast-fit ``images (B, C, H, W)`` with ``prior.adapt(images, steps)`` and score the renders.

    Returns:
        ``{"psnr": mean per-image PSNR (dB), "mse": mean squared error}``.
    """
    ref = next(prior.parameters())
    images = images.to(ref.device, ref.dtype)
    was_training = prior.training
    prior.eval()
    try:
        f = prior.adapt(images, steps=steps)  # not under no_grad: adapting needs gradients
        pred = f.render(images.shape[-2], images.shape[-1]).to(images)
    finally:
        prior.train(was_training)
    return {"psnr": float(psnr(pred, images).mean()), "mse": float((pred - images).pow(2).mean())}


def _item(x) -> torch.Tensor:
    return x[0] if isinstance(x, (tuple, list)) else x  # (image, label) datasets give the image first


def _gather(dataset, idx: torch.Tensor) -> torch.Tensor:
    """Images ``(b, C, H, W)`` at dataset indices ``idx``, checked to be finite."""
    if isinstance(dataset, torch.Tensor):
        images = dataset[idx]
    else:
        items = [torch.as_tensor(_item(dataset[int(i)])) for i in idx]
        if len({tuple(t.shape) for t in items}) > 1:
            raise ValueError(f"dataset images differ in shape: {sorted({tuple(t.shape) for t in items})}")
        images = torch.stack(items)
    if images.dim() != 4:
        raise ValueError(f"dataset items must be (C, H, W) images, got shape {tuple(images.shape[1:])}")
    if not torch.is_floating_point(images) or not torch.isfinite(images).all():
        bad = [int(i) for i, t in zip(idx, images) if not torch.is_floating_point(t) or not torch.isfinite(t).all()]
        raise ValueError(f"dataset images at indices {bad} are not finite floats (NaN, inf or integer dtype)")
    return images


def _draw_indices(g: torch.Generator, n: int, b: int) -> torch.Tensor:
    return torch.randperm(n, generator=g)[:b] if b <= n else torch.randint(n, (b,), generator=g)


def _dist_setup(device):
    """``(rank, world, device, created)``; under torchrun, joins (or creates) the default process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")), False
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device, created


def _stack(dataset, limit: int) -> torch.Tensor:
    return _gather(dataset, torch.arange(min(len(dataset), limit)))


def train(prior, dataset, steps: int, out, batch_size: int = 8, lr: float = 5e-5, eval_dataset=None,
          eval_every: int = 100, eval_steps: int = 3, checkpoint_every: int = 100, resume: bool = False,
          overwrite: bool = False, device=None, progress: bool = True, seed: int = 0, density: str | None = "gaussian",
          grad_clip: float | None = None, amp: str | None = None, compile: bool | str = False, **options):
    """Train ``prior`` on ``dataset`` and write checkpoints, metrics and the final prior into ``out``.

    Under ``torchrun`` (``WORLD_SIZE > 1``) it runs DistributedDataParallel: every process draws the same global
    batch indices and takes its slice of ``batch_size / world_size`` images; only rank 0 writes files.

    Args:
        prior: a prior implementing the Prior protocol (module docstring).
        dataset: indexable of ``(C, H, W)`` tensors in ``[0, 1]`` (a torch Dataset or an ``(M, C, H, W)`` tensor).
        steps: total optimizer steps (a resumed run continues up to it).
        out: output folder (created).
        batch_size: global meta-batch per step.
        eval_dataset: held-out images; every ``eval_every`` steps their PSNR after ``eval_steps`` adaptation
            steps is logged.
        checkpoint_every: steps between checkpoints (one is also written at the end).
        resume: continue from ``out/checkpoint.safetensors`` (exactly: the final weights equal a straight run's);
            the checkpoint's settings, prior and data (image count and shape) must match.
        overwrite: start over in a folder that holds an earlier run, removing its outputs; without it (and without
            ``resume``) such a folder is refused, so that nothing saved is lost.
        device: default CUDA (the process's ``LOCAL_RANK`` GPU under torchrun) when available, else CPU.
        density: sampling density fitted after training (``prior.fit_density(images, kind=density)``); None skips.
        grad_clip: clip the gradient norm to this value.
        amp: ``"bf16"`` runs the prior's forward under bfloat16 autocast.
        compile: ``torch.compile`` the forward (``True``: inductor; a string: that backend, e.g. ``"aot_eager"``).
            Second-order gradients (MAML) cannot go through a compiled graph: when the compiled step fails, a
            single process falls back to eager with a warning (under DDP it raises).
        options: further :class:`TrainConfig` fields (``eval_images``, ``log_every``, ``density_images``).
    Returns:
        The trained prior (the same object, on ``device``).
    """
    unknown = set(options) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise TypeError(f"train() got unknown options {sorted(unknown)}")
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, eval_every=eval_every, eval_steps=eval_steps,
                      checkpoint_every=checkpoint_every, seed=seed, density=density, grad_clip=grad_clip, amp=amp,
                      compile=compile, **options)
    if len(dataset) == 0:
        raise ValueError("the training dataset is empty")
    kinds = getattr(prior, "density_kinds", None)
    if density is not None and kinds is not None and density not in kinds:
        raise ValueError(f"{type(prior).__name__} cannot fit a {density!r} sampling density (choose from {kinds}, "
                         f"or None); checked before training so that no run ends without its prior")
    out = Path(out)
    rank, world, device, created = _dist_setup(device)
    try:
        return _run(prior, dataset, eval_dataset, cfg, out, resume, overwrite, device, progress, rank, world)
    finally:
        if created:  # a group the caller set up stays theirs
            dist.destroy_process_group()


def _forward_backward(model, images, g, opt, cfg, device, world, step, where):
    """One forward and backward; returns the metrics' names and the loss and metrics averaged over the processes."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp == "bf16"):
        loss, metrics = model(images, generator=g)
    values = torch.tensor([float(loss.detach()), *map(float, metrics.values())], dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(values)
        values /= world
    values = values.tolist()
    if not math.isfinite(values[0]):
        raise FloatingPointError(f"loss became {values[0]} at step {step + 1}; training stopped ({where}){_HINT}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    return list(metrics), values


def _run(prior, dataset, eval_dataset, cfg: TrainConfig, out: Path, resume: bool, overwrite: bool, device, progress,
         rank, world):
    from tqdm import tqdm

    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} does not split evenly across {world} processes")
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: continue the run, or start it over")
    prepare_out(prior, out, rank, world, device, resume=resume, overwrite=overwrite)
    ckpt, metrics_path = out / CHECKPOINT, out / "metrics.jsonl"
    prior.to(device).train()
    dtype = next(prior.parameters()).dtype
    opt = torch.optim.Adam(prior.parameters(), lr=cfg.lr)
    g = ShardedGenerator()
    g.manual_seed(cfg.seed)
    prior_cfg = prior.to_state()[1]
    step, seconds = 0, 0.0
    data = {"train_images": len(dataset), "image_shape": list(_item(dataset[0]).shape)}  # what resume must match
    loaded = load_checkpoint(ckpt, rank, world) if resume else None
    if loaded is not None:
        check_resumable(ckpt, loaded[1], cfg, prior_cfg, data)
        restore_checkpoint(prior, opt, g, *loaded)
        step, seconds = loaded[1]["step"], loaded[1]["seconds"]
        log.info("resuming from %s at step %d", ckpt, step)
    elif resume:
        log.warning("resume requested but %s does not exist: starting from step 0", ckpt)
    if rank == 0:
        info = {"train": asdict(cfg), "prior": prior_cfg, "world_size": world, "device": str(device),
                "data": {**data, "eval_images": 0 if eval_dataset is None else min(len(eval_dataset), cfg.eval_images)}}
        prepare_files(out, info, None if loaded is None else step)

    model = prior
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        model = DistributedDataParallel(prior, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model, **({"backend": cfg.compile} if isinstance(cfg.compile, str) else {}))
    evals = None
    if rank == 0 and eval_dataset is not None and len(eval_dataset):
        evals = _stack(eval_dataset, cfg.eval_images).to(device, dtype)
    b = cfg.batch_size // world
    lo = rank * b
    log.info("training %s (%d parameters) on %d images for %d steps, batch %d on %d process(es) on %s; output %s",
             type(prior).__name__, sum(p.numel() for p in prior.parameters()), len(dataset), cfg.steps,
             cfg.batch_size, world, device, out)
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress or rank != 0, desc="train", unit="step")
    metrics_file = open(metrics_path, "a") if rank == 0 else None
    t0 = time.perf_counter() - seconds
    last_good = step if loaded is not None else None
    try:
        while step < cfg.steps:
            idx = _draw_indices(g, len(dataset), cfg.batch_size)  # the same global batch on every rank
            state = g.get_state()
            images = _gather(dataset, idx[lo:lo + b]).to(device, dtype)
            g.shard = (lo, lo + b, cfg.batch_size)
            where = "no checkpoint yet" if last_good is None else f"last good checkpoint: {ckpt} (step {last_good})"
            try:
                metrics, values = _forward_backward(model, images, g, opt, cfg, device, world, step, where)
            except RuntimeError as e:  # e.g. aot_autograd cannot differentiate twice (second-order MAML)
                if model is prior or world > 1:
                    raise
                log.warning("the compiled forward failed (%s); training without compile", str(e).split("\n")[0])
                model = prior
                g.set_state(state)
                metrics, values = _forward_backward(model, images, g, opt, cfg, device, world, step, where)
            norm = float(torch.nn.utils.clip_grad_norm_(prior.parameters(), cfg.grad_clip or math.inf))
            if not math.isfinite(norm):
                raise FloatingPointError(f"gradient became {norm} at step {step + 1}; training stopped "
                                         f"({where}){_HINT}")
            opt.step()
            step += 1
            row = {"step": step, **dict(zip(metrics, values[1:])), "loss": values[0], "grad_norm": norm,
                   "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
            evaluated = evals is not None and (step % cfg.eval_every == 0 or step == cfg.steps)
            if evaluated:
                row.update({f"eval_{k}": v for k, v in evaluate(prior, evals, cfg.eval_steps).items()})
                log.info("step %d: loss %.4g, eval PSNR %.2f dB after %d steps", step, row["loss"],
                         row["eval_psnr"], cfg.eval_steps)
            if metrics_file is not None and (step % cfg.log_every == 0 or evaluated or step == cfg.steps):
                metrics_file.write(json.dumps(row) + "\n")
                metrics_file.flush()
            bar.set_postfix({k: f"{row[k]:.4g}" for k in ("loss", "eval_psnr") if k in row}, refresh=False)
            bar.update(1)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save_checkpoint(ckpt, prior, opt, g, step, cfg, time.perf_counter() - t0, data, rank, world, device)
                last_good = step
    finally:
        bar.close()
        if metrics_file is not None:
            metrics_file.close()
    if cfg.density is not None:
        prior.fit_density(_stack(dataset, cfg.density_images).to(device, dtype), kind=cfg.density)
    if rank == 0:
        prior.save(out / "prior.safetensors")
        from .report import write_report
        samples = getattr(prior, "can_sample", cfg.density is not None)
        page = write_report(out, prior.eval(), evals, cfg.eval_steps, n_samples=16 if samples else 0)
        log.info("wrote %s, %s, %s and %s", out / "prior.safetensors", ckpt, metrics_path, page)
    return prior
