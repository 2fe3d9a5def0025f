"""``inrprior train / sample / adapt``: the command line of the priors (registered into :mod:`inrprior.cli`).

The prior's options are built from the fields of :class:`~inrprior.meta.MetaConfig` and
:class:`~inrprior.hyper.HyperConfig` (one flag per field, typed from its annotation), so a new field is a new flag.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import MISSING, fields
from pathlib import Path

import torch

from .cli import (add_siren_arguments, add_size_argument, device_of, load_image, non_negative_int, positive_float,
                  positive_int, register, write_json)

log = logging.getLogger(__name__)

_TYPES = {"int": int, "float": float, "str": str}
_DEST = "prior."  # prior options live apart from the command's own (HyperConfig.hidden vs the SIREN's --hidden)


def _prior_configs():
    from .hyper import HyperConfig
    from .meta import MetaConfig

    return {"meta": MetaConfig, "hyper": HyperConfig}


def _flag_type(annotation: str):
    """``int``, ``float | None``, ``bool`` ... -> an argparse type (``none`` is accepted for optional fields)."""
    names = [a.strip() for a in str(annotation).split("|")]
    base = _TYPES.get(next((n for n in names if n != "None"), "str"), str)
    if "None" not in names:
        return base
    return lambda text: None if text.lower() == "none" else base(text)


def _field_docs(cls) -> dict[str, str]:
    """``{field: text}`` from a config docstring's ``name: text`` / ``a / b: text`` lines (with their continuations)."""
    names, docs, current = {f.name for f in fields(cls)}, {}, []
    for line in (cls.__doc__ or "").splitlines():
        head, sep, text = line.strip().partition(":")
        keys = [k.strip() for k in head.replace(",", "/").split("/")]
        if sep and keys and all(k in names for k in keys):
            current = keys
            for k in keys:
                docs[k] = text.strip()
        elif current and line.startswith("        ") and line.strip():
            for k in current:
                docs[k] += " " + line.strip()
        else:
            current = []
    return docs


def add_prior_arguments(p: argparse.ArgumentParser) -> None:
    """One ``--field-name`` flag per field of the priors' config dataclasses (given ones only are passed on);
    a name the parser already has gets the prior's prefix (``--hyper-hidden``)."""
    owners: dict[str, list] = {}  # field name -> [(kind, its dataclass field, its doc)] in declaration order
    groups = {}
    for kind, cls in _prior_configs().items():
        groups[kind] = p.add_argument_group(f"--prior {kind} options ({cls.__name__}; see its docstring)")
        docs = _field_docs(cls)
        for f in fields(cls):
            owners.setdefault(f.name, []).append((kind, f, docs.get(f.name, "")))
    for name, decl in owners.items():
        kind, first, _ = decl[0]  # the flag lives in the first declaring prior's group; the help covers each
        flag = "--" + name.replace("_", "-")
        if flag in p._option_string_actions:  # e.g. HyperConfig.hidden next to the SIREN's --hidden
            flag = f"--{kind}-" + name.replace("_", "-")
        help_text = " ".join(f"[{k}] {doc} (default: {f.default if f.default is not MISSING else None})"
                             for k, f, doc in decl).replace("%", "%%")
        if str(first.type) == "bool":
            groups[kind].add_argument(flag, dest=_DEST + name, action=argparse.BooleanOptionalAction,
                                      default=argparse.SUPPRESS, help=help_text)
        else:
            optional = " | ".join(str(f.type) for _, f, _ in decl)  # "none" is accepted if any prior takes None
            groups[kind].add_argument(flag, dest=_DEST + name, type=_flag_type(optional), default=argparse.SUPPRESS,
                                      metavar=name.upper(), help=help_text)


def prior_options(args: argparse.Namespace, kind: str) -> dict:
    """The prior options given on the command line; one that the chosen prior does not take is an error."""
    configs = _prior_configs()
    given = {k[len(_DEST):]: v for k, v in vars(args).items() if k.startswith(_DEST)}
    mine = {f.name for f in fields(configs[kind])}
    wrong = sorted(set(given) - mine)
    if wrong:
        owners = {k for k, cls in configs.items() for f in fields(cls) if f.name in wrong}
        flags = ", ".join("--" + n.replace("_", "-") for n in wrong)
        raise ValueError(f"{flags}: for --prior {' or '.join(sorted(owners))}, not --prior {kind}")
    return given


def build_prior(kind: str, channels: int, size: int, args: argparse.Namespace):
    from .hyper import HyperPrior
    from .meta import MetaPrior
    from .siren import Siren

    net = Siren(2, channels, args.hidden, args.layers, args.w0)
    options = prior_options(args, kind)
    if kind == "hyper":
        options.setdefault("image_size", size)
        return HyperPrior(net, **options)
    return MetaPrior(net, **options)


# ----------------------------------------------------------------------------------------------------------- train
def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prior", choices=("meta", "hyper"), default="meta", help="which prior to train")
    p.add_argument("--data", default="faces",
                   help="faces | patches | digits | folder:PATH | mnist:ROOT | cifar10:ROOT | celeba:ROOT")
    p.add_argument("--size", type=positive_int, default=32, help="image side length the data is resized to")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None, help="convert the data to gray or RGB")
    p.add_argument("--out", "-o", type=Path, required=True, help="run folder (checkpoints, metrics, report.html)")
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=positive_int, default=300, help="outer optimizer steps")
    g.add_argument("--batch-size", type=positive_int, default=8, help="images per step (global, across processes)")
    g.add_argument("--lr", type=positive_float, default=5e-5, help="outer Adam learning rate")
    g.add_argument("--eval-every", type=positive_int, default=50, help="steps between held-out evaluations")
    g.add_argument("--eval-steps", type=non_negative_int, default=3,
                   help="adaptation steps of the evaluation (0: the prior's one pass)")
    g.add_argument("--checkpoint-every", type=positive_int, default=50, help="steps between checkpoints")
    g.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    g.add_argument("--overwrite", action="store_true",
                   help="start over in an OUT that holds an earlier run, removing its outputs (else it is refused)")
    g.add_argument("--density", choices=("gaussian", "gmm", "pca", "none"), default="gaussian",
                   help="sampling density fitted after training (gmm: latent MetaPriors and HyperPriors; none: a "
                        "HyperPrior samples N(0, I), a MetaPrior cannot sample)")
    g.add_argument("--grad-clip", type=positive_float, default=None, help="clip the gradient norm")
    g.add_argument("--amp", choices=("bf16",), default=None, help="bfloat16 autocast")
    g.add_argument("--compile", action="store_true", help="torch.compile the training step")
    g.add_argument("--seed", type=int, default=0, help="seed of the batches and of every random draw")
    g.add_argument("--device", default=None, help="cpu, cuda (default: cuda if available; under torchrun, LOCAL_RANK)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    add_siren_arguments(p)
    add_prior_arguments(p)


def _train(args: argparse.Namespace) -> int:
    from . import data
    from .train import train

    if args.compile:  # compiled kernels are cached in the run folder, not in the shared /tmp
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str((args.out / "inductor_cache").resolve()))
    train_set = data.load(args.data, size=args.size, split="train", channels=args.channels)
    if len(train_set) == 0:
        raise ValueError(f"dataset {args.data!r} has no training images")
    test_set = data.load(args.data, size=args.size, split="test", channels=args.channels)
    channels = train_set[0].shape[0]
    torch.manual_seed(args.seed)  # the prior's initialization
    prior = build_prior(args.prior, channels, args.size, args)
    device = device_of(args.device) if args.device else None
    train(prior, train_set, steps=args.steps, out=args.out, batch_size=args.batch_size, lr=args.lr,
          eval_dataset=test_set if len(test_set) else None, eval_every=args.eval_every, eval_steps=args.eval_steps,
          checkpoint_every=args.checkpoint_every, resume=args.resume, overwrite=args.overwrite, device=device,
          progress=not args.quiet, seed=args.seed, density=None if args.density == "none" else args.density,
          grad_clip=args.grad_clip, amp=args.amp, compile=args.compile)
    if _rank() == 0:
        print(f"trained prior: {args.out / 'prior.safetensors'}; report: {args.out / 'report.html'}")
    return 0


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


register("train", "train a prior (MetaPrior or HyperPrior) on an image dataset; torchrun-ready",
         _train_arguments, _train, epilog="examples:\n"
         "  inrprior train --prior meta --data faces --steps 300 --out runs/faces\n"
         "  inrprior train --prior hyper --data folder:~/photos --size 64 --steps 2000 --out runs/photos\n"
         "  inrprior train ... --out runs/faces --resume          continue an interrupted run\n"
         "  torchrun --nproc-per-node 4 -m inrprior train --prior meta --data celeba:/data --batch-size 64 \\\n"
         "      --out runs/c")


# ---------------------------------------------------------------------------------------------------------- sample
def _load_run(path: Path, device):
    from .io import load_prior

    return load_prior(path, device=device)


def _run_image_size(path: Path) -> tuple[int, int] | None:
    """The image size a run was trained at (from RUN/config.json), where known."""
    cfg = (path if path.is_dir() else path.parent) / "config.json"
    if cfg.is_file():
        shape = json.loads(cfg.read_text()).get("data", {}).get("image_shape")
        if shape:
            return int(shape[-2]), int(shape[-1])
    return None


def _sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="a run folder (holding prior.safetensors) or a prior file")
    p.add_argument("-n", type=positive_int, default=16, help="how many functions to sample")
    add_size_argument(p, "size of each rendered sample (any: the functions are continuous)", default=(128, 128))
    p.add_argument("--seed", type=int, default=0, help="seed of the draw")
    p.add_argument("--save", type=Path, default=None, help="also save the sampled functions (.safetensors)")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="image to write (PNG, ...): the samples tiled pixel for pixel, 1 px apart")
    p.add_argument("--device", default=None, help="cpu or cuda")


def _sample(args: argparse.Namespace) -> int:
    from .plots import save_image, tile

    prior = _load_run(args.run, device_of(args.device))
    if not getattr(prior, "can_sample", True):
        raise ValueError(f"{args.run} holds a MetaPrior without a sampling density (trained with --density none); "
                         "fit one in Python: prior.fit_density(train_images); prior.save(path)")
    functions = prior.sample(args.n, generator=torch.Generator().manual_seed(args.seed))
    images = functions.render(*args.size).cpu()
    written = [save_image(tile(images), args.output)]  # pixel for pixel
    if args.save:
        written.append(functions.save(args.save))
    print("wrote " + " and ".join(map(str, written)))
    return 0


register("sample", "sample new image functions from a trained prior and render them at any size",
         _sample_arguments, _sample)


# ----------------------------------------------------------------------------------------------------------- adapt
def _adapt_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="a run folder (holding prior.safetensors) or a prior file")
    p.add_argument("images", type=Path, nargs="+", help="image files to fast-fit")
    p.add_argument("--steps", type=non_negative_int, default=3, help="adaptation steps (0: the prior's one-pass guess)")
    add_size_argument(p, "resize the images (default: the run's training size)")
    add_size_argument(p, "size of the renders (default: --size)", flag="--render-size")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    p.add_argument("--device", default=None, help="cpu or cuda")


def _adapt(args: argparse.Namespace) -> int:
    from .io import check_writable
    from .plots import image_grid, save_image
    from .targets import psnr

    prior = _load_run(args.run, device_of(args.device))
    size = tuple(args.size) if args.size else _run_image_size(args.run)
    channels = prior.net.out_features
    images = torch.stack([load_image(p, size=size, channels=channels) for p in args.images])
    if len({tuple(im.shape) for im in images}) > 1:
        raise ValueError("the images have different sizes; pass --size H W")
    out = check_writable(args.out)
    ref = next(prior.parameters())
    functions = prior.adapt(images.to(ref), steps=args.steps)
    h, w = images.shape[-2:]
    recon = functions.render(h, w).cpu()
    scores = psnr(recon, images).tolist()
    stems = [p.stem for p in args.images]
    names = [f"{i}_{stem}" if stems.count(stem) > 1 else stem for i, stem in enumerate(stems)]  # no overwrites
    for name, im in zip(names, functions.render(*(args.render_size or (h, w))).cpu()):
        save_image(im, out / f"{name}_adapted.png")
    image_grid(torch.cat([images, recon]), out / "adapted.png", nrow=len(images))
    functions.save(out / "functions.safetensors")
    write_json(out / "psnr.json", [{"image": str(p), "output": f"{n}_adapted.png", "psnr": s}
                                   for p, n, s in zip(args.images, names, scores)])
    for p, s in zip(args.images, scores):
        print(f"{p}: {s:.2f} dB after {args.steps} steps")
    print(f"wrote {out}/ (adapted.png, functions.safetensors, psnr.json)")
    return 0


register("adapt", "fast-fit images with a trained prior (a few steps or one forward pass)",
         _adapt_arguments, _adapt)


# ----------------------------------------------------------------------------------------------------------- bench
def _bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="small sizes, no compiled render (seconds)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: every device here)")


def _bench(args: argparse.Namespace) -> int:
    from .bench import HEADER, query_rows, row_line

    quick = dict(n_points=64 * 64, batch=2, repeats=2, compile=False)  # no compiled render: seconds, not minutes
    size = quick if args.quick else dict(n_points=128 * 128, batch=4, repeats=3)
    names = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    devices = [device_of(d) for d in names]  # an unusable device is refused before the table starts
    if not args.quick:
        print("(the compiled render's row compiles first: a minute or two on a small CPU; --quick skips it)")
    print(HEADER)
    for d in devices:
        query_rows(d, **size, on_row=lambda row: print(row_line(row), flush=True))
    return 0


register("bench", "the speed table of this machine: queries, derivatives and renders against a plain forward pass",
         _bench_arguments, _bench)
