"""Checkpoints of the training loop: what one holds, exact resume, and the run folder's files around them.

``out/checkpoint.safetensors`` is one safetensors file (:func:`inrprior.io.save_state`, written atomically) of kind
``"checkpoint"``. Its tensors are the prior's state (``prior/...``), Adam's per-parameter tensors
(``optim/{index}/{name}``) and the CPU generator's state (``rng/generator``); its JSON config holds ``step``,
``seconds``, the :class:`~inrprior.train.TrainConfig` (``train``), the prior's config (``prior``) and Adam's
param groups and non-tensor state (``optim``). Resuming restores all of them, so a resumed run ends with the weights
of a straight run; settings that change what the next step computes (:data:`RESUME_KEYS`, the prior's config) must
match. Under DDP rank 0 reads and writes the files and every rank raises when it fails.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from . import io

if TYPE_CHECKING:
    from .train import TrainConfig

__all__ = ["CHECKPOINT", "RESUME_KEYS", "RUN_OUTPUTS", "save_checkpoint", "load_checkpoint", "restore_checkpoint",
           "check_resumable", "prepare_out", "prepare_files"]

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.safetensors"
# Settings that must not change when resuming: they change what the next step computes.
RESUME_KEYS = ("batch_size", "lr", "seed", "grad_clip", "amp")


def _json_norm(x):
    return json.loads(json.dumps(x))


def _agree(ok: bool, device, world: int) -> bool:
    """True on every process iff ``ok`` on every process (so that a failure on one rank stops them all)."""
    if world == 1:
        return ok
    flag = torch.tensor([0.0 if ok else 1.0], device=device)
    dist.all_reduce(flag)
    return flag.item() == 0


def _checkpoint_state(prior, opt, g, step, cfg, seconds, data):
    tensors, prior_cfg = prior.to_state()
    tensors = {f"prior/{k}": v for k, v in tensors.items()}
    sd = opt.state_dict()
    extra = {}
    for i, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim/{i}/{k}"] = v
            else:
                extra[f"{i}/{k}"] = v
    tensors["rng/generator"] = g.get_state()
    config = {"kind": "checkpoint", "step": step, "seconds": seconds, "train": asdict(cfg), "prior": prior_cfg,
              "data": data, "optim": {"param_groups": sd["param_groups"], "state": extra}}
    return tensors, config


def restore_checkpoint(prior, opt, g, tensors, config):
    """Load a checkpoint's ``(tensors, config)`` into ``prior``, the optimizer ``opt`` and the generator ``g``."""
    state = {k[6:]: v for k, v in tensors.items() if k.startswith("prior/")}
    restored = type(prior).from_state(state, config["prior"])
    prior.load_state_dict(restored.state_dict())
    opt_state: dict = {}
    for k, v in tensors.items():
        if k.startswith("optim/"):
            _, i, name = k.split("/", 2)
            opt_state.setdefault(int(i), {})[name] = v
    for k, v in config["optim"]["state"].items():
        i, name = k.split("/", 1)
        opt_state.setdefault(int(i), {})[name] = v
    groups = [{**grp, "betas": tuple(grp["betas"])} if "betas" in grp else grp
              for grp in config["optim"]["param_groups"]]
    opt.load_state_dict({"state": opt_state, "param_groups": groups})
    g.set_state(tensors["rng/generator"])


def _differences(old, new, where: str) -> list[str]:
    """``"where.key was A, now B"`` for every leaf that differs between two JSON-like values."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str)
                for d in _differences(old.get(k), new.get(k), f"{where}.{k}" if where else str(k))]
    return [] if old == new else [f"{where} was {old!r}, now {new!r}"]


def check_resumable(path: Path, config: dict, cfg: TrainConfig, prior_cfg: dict, data: dict) -> None:
    """Raise a ValueError when the checkpoint at ``path`` has other settings or data, or is beyond ``cfg.steps``.

    The prior's sampling density is not a setting (it is fitted after training, and a finished run continued
    further fits it again); checkpoints written before ``data`` was stored are not checked for it.
    """
    saved = config["train"]
    diffs = [f"{k} was {saved.get(k)!r}, now {getattr(cfg, k)!r}" for k in RESUME_KEYS
             if saved.get(k) != getattr(cfg, k)]
    skip = ("format_version", "density")
    old = {k: v for k, v in _json_norm(config["prior"]).items() if k not in skip}
    diffs += _differences(old, {k: v for k, v in _json_norm(prior_cfg).items() if k not in skip}, "prior")
    if "data" in config:
        diffs += _differences(config["data"], _json_norm(data), "data")
    if diffs:
        raise ValueError(f"cannot resume from {path}: the run's settings differ ({'; '.join(diffs)}); "
                         "use the original settings and data, or a new output folder")
    if config["step"] > cfg.steps:
        raise ValueError(f"cannot resume from {path}: it is at step {config['step']}, beyond steps={cfg.steps}")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines after ``step`` (written after the checkpoint a resumed run restarts from) and torn lines."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            pass
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(x + "\n" for x in keep))
    os.replace(tmp, path)


def save_checkpoint(path, prior, opt, g, step, cfg, seconds, data, rank, world, device) -> None:
    """Rank 0 writes; the other ranks wait for it and raise too if it failed (e.g. the disk filled up)."""
    if world > 1:
        dist.barrier()
    err = None
    if rank == 0:
        try:
            io.save_state(path, *_checkpoint_state(prior, opt, g, step, cfg, seconds, data))
            log.debug("checkpoint at step %d written to %s", step, path)
        except OSError as e:
            err = OSError(e.errno, f"cannot write the checkpoint of step {step} to {path} ({e.strerror or e}); "
                                   "the previous checkpoint is left as it was")
    if not _agree(err is None, device, world):
        raise err or OSError(f"rank 0 could not write the checkpoint of step {step}")


# What a run leaves in its folder: an earlier run is recognised by the first three, and starting over removes all.
RUN_OUTPUTS = (CHECKPOINT, "prior.safetensors", "metrics.jsonl", "report.html", "images")


def _check_earlier_run(out: Path, resume: bool, overwrite: bool) -> None:
    earlier = [name for name in RUN_OUTPUTS[:3] if (out / name).exists()]
    if not earlier or overwrite:
        return
    held = ", ".join(earlier)
    if not resume:
        raise ValueError(f"{out} holds an earlier run ({held}): continue it with resume=True (--resume), start over "
                         "with overwrite=True (--overwrite), or choose another output folder")
    if CHECKPOINT not in earlier:
        raise ValueError(f"cannot resume: {out} holds an earlier run ({held}) but no {CHECKPOINT}; start over with "
                         "overwrite=True (--overwrite) or choose another output folder")


def prepare_out(prior, out: Path, rank: int, world: int, device, resume: bool = False,
                overwrite: bool = False) -> None:
    """Check before training that rank 0 can write ``out`` and that no earlier run there would be lost (every rank
    raises if not)."""
    err = None
    if rank == 0:
        nbytes = sum(p.numel() * p.element_size() for p in prior.parameters())
        try:  # room for the prior, Adam's two moments, and the old checkpoint while the new one is written
            io.check_writable(out, min_free_mb=max(100.0, 8 * nbytes / 2**20))
            _check_earlier_run(out, resume, overwrite)
        except (OSError, ValueError) as e:
            err = e
    if not _agree(err is None, device, world):
        raise err or OSError(f"rank 0 cannot write the output folder {out}, or it holds an earlier run")


def load_checkpoint(ckpt: Path, rank: int, world: int):
    """``(tensors, config)`` of ``ckpt`` (None if it does not exist), read by rank 0 and sent to every rank; a read
    error is raised on every rank."""
    loaded, err = None, None
    if rank == 0 and ckpt.exists():
        try:
            loaded = io.load_state(ckpt, kind="checkpoint")
        except (OSError, ValueError) as e:
            err = e
    if world > 1:
        box = [(loaded, err)]
        dist.broadcast_object_list(box, src=0)
        loaded, err = box[0]
    if err is not None:
        raise err
    return loaded


def prepare_files(out: Path, info: dict, resumed_step: int | None) -> None:
    """Rank 0, before the first step: clear leftovers of an earlier run and write ``config.json``."""
    for stale in out.glob(f".{CHECKPOINT}.*.tmp"):  # left by a run killed mid-write
        stale.unlink()
    if resumed_step is not None:
        _truncate_metrics(out / "metrics.jsonl", resumed_step)
    else:  # starting over (prepare_out refused unless overwrite was asked for): nothing of the old run stays
        for name in RUN_OUTPUTS:
            old = out / name
            if old.is_dir():
                shutil.rmtree(old)
            elif old.exists():
                log.warning("starting over: removing %s of an earlier run", old)
                old.unlink()
    (out / "config.json.tmp").write_text(json.dumps(_json_norm(info), indent=1))
    os.replace(out / "config.json.tmp", out / "config.json")
