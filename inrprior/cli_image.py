"""``inrprior fit / render / blend / demo``: the command line of single images (registered into :mod:`inrprior.cli`),
with the writers of what a fit or a blend produced (also used by the demo job).
"""
from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import torch

from .cli import (add_siren_arguments, add_size_argument, device_of, load_image, positive_float, positive_int, register,
                  write_json)


def add_optimizer_arguments(p: argparse.ArgumentParser, steps: int, lr: float = 1e-4) -> None:
    g = p.add_argument_group("optimization")
    g.add_argument("--steps", type=positive_int, default=steps, help="Adam steps")
    g.add_argument("--lr", type=positive_float, default=lr, help="Adam learning rate")
    g.add_argument("--batch-size", type=positive_int, default=None,
                   help="random pixels per step (default: all pixels, full batch)")
    g.add_argument("--seed", type=int, default=0, help="seed of the initialization and of the pixel batches")
    g.add_argument("--compile", action="store_true", help="torch.compile the training step (faster on long runs)")
    g.add_argument("--amp", choices=("bf16",), default=None,
                   help="bfloat16 autocast of the forward and the loss (a GPU speed option; weights stay float32, "
                        "the PSNR stalls a little lower)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def parse_supervision_arg(text: str) -> str | dict[str, float]:
    """``value`` / ``gradient`` / ``laplacian``, or weights such as ``value=1,gradient=0.1``."""
    if "=" not in text:
        return text
    weights = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        try:
            weights[name.strip()] = float(weight)
        except ValueError:
            raise ValueError(f"bad supervision weight {part!r}; write e.g. value=1,gradient=0.1") from None
    return weights


def aligned(render: torch.Tensor, target: torch.Tensor, alignment: str) -> torch.Tensor:
    """Apply the alignment a fit's PSNR is reported after (``none``, ``offset`` or ``affine``) to ``(B, C, H, W)``."""
    from .targets import align_affine, align_offset

    return {"offset": align_offset, "affine": align_affine}.get(alignment, lambda a, b: a)(render, target)


def write_fit_outputs(out: Path, image: torch.Tensor, functions, history, config: dict, name: str = "fit") -> dict:
    """Save what a fit produced into ``out``: ``functions.safetensors``, ``{name}.png`` (the render; with an
    alignment also ``{name}_aligned.png``), ``derivatives.png`` (image, gradient magnitude and Laplacian of the
    target and of the fit) and ``history.json``. Returns ``{"psnr": ..., "files": [...], "row": figure row}``."""
    from .plots import fit_figure, gradient_norm, save_image
    from .targets import image_gradient, image_laplacian, psnr

    c, h, w = image.shape
    target = image[None].to(functions.device, functions.dtype)  # (1, c, h, w)
    q = functions[0].render_derivatives(h, w)
    alignment = getattr(history, "alignment", "none")
    fitted = aligned(q.value, target, alignment).clamp(0, 1)  # (1, c, h, w)
    value_psnr = float(psnr(fitted, target)[0])
    functions.save(out / "functions.safetensors")
    files = [out / "functions.safetensors", save_image(q.value[0].clamp(0, 1), out / f"{name}.png")]
    if alignment != "none":
        files.append(save_image(fitted[0], out / f"{name}_aligned.png"))
    row = dict(name=f"{name} ({alignment} aligned)" if alignment != "none" else name, image=fitted[0],
               gradient_norm=gradient_norm(q.gradient[0]), laplacian=q.laplacian[0], psnr=value_psnr)
    truth = dict(name="target", image=image, gradient_norm=gradient_norm(image_gradient(target)[0]),
                 laplacian=image_laplacian(target)[0])
    files.append(fit_figure([truth, row], out / "derivatives.png"))
    record = {"config": config, "psnr": value_psnr, "history": asdict(history)}
    files.append(write_json(out / "history.json", record))
    return {"psnr": value_psnr, "files": files, "row": row, "truth": truth}


# ------------------------------------------------------------------------------------------------------------- fit
def _fit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", type=Path, help="image file (anything Pillow reads, or an (H, W[, C]) .npy array)")
    p.add_argument("--supervision", default="value",
                   help="value, gradient or laplacian, or weights such as value=1,gradient=0.1; gradient-only "
                        "fits are scored after the best constant offset, Laplacian-only after the best affine term")
    add_size_argument(p, "resize the image first (centre-cropped to the aspect)")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    add_optimizer_arguments(p, steps=1000)
    add_siren_arguments(p)


def fit_image(image: torch.Tensor, args: argparse.Namespace, supervision):
    """Fit one ``(C, H, W)`` image with the network and optimizer options of ``args``."""
    from .fit import fit
    from .siren import Siren

    device = device_of(args.device)
    net = Siren(2, image.shape[0], args.hidden, args.layers, args.w0).to(device)
    return fit(image.to(device), steps=args.steps, supervision=supervision, net=net, lr=args.lr,
               batch_size=args.batch_size, progress=not args.quiet, seed=args.seed, compile=args.compile,
               amp=args.amp)


def _fit(args: argparse.Namespace) -> int:
    from .fit import parse_supervision
    from .io import check_writable

    supervision = parse_supervision_arg(args.supervision)
    parse_supervision(supervision)  # fail on a bad name before reading anything
    image = load_image(args.image, args.size)
    out = check_writable(args.out)
    functions, history = fit_image(image, args, supervision)
    config = {"image": str(args.image), "size": list(image.shape[1:]), "supervision": supervision,
              "steps": args.steps, "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed,
              "amp": args.amp, "siren": functions.net.config}
    result = write_fit_outputs(out, image.cpu(), functions, history, config)
    print(f"fitted {args.image} ({image.shape[0]}x{image.shape[1]}x{image.shape[2]}) from {args.supervision} in "
          f"{args.steps} steps: PSNR {result['psnr']:.2f} dB ({history.alignment} alignment)")
    print("wrote " + ", ".join(str(f) for f in result["files"]))
    return 0


register("fit", "fit a SIREN to one image from its values, gradients or Laplacian", _fit_arguments, _fit,
         epilog="writes OUT/functions.safetensors, OUT/fit.png, OUT/derivatives.png and OUT/history.json")


# ---------------------------------------------------------------------------------------------------------- render
def _render_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("functions", type=Path, help="a .safetensors file from `fit`/`blend` (or its folder)")
    add_size_argument(p, "output resolution (any: the functions are continuous)", required=True)
    p.add_argument("--derivative", choices=("value", "gradient", "laplacian"), default="value",
                   help="what to draw: the image, its gradient magnitude (0 = black, scaled to the maximum) or its "
                        "Laplacian (mid-gray = 0, scaled to the largest magnitude)")
    p.add_argument("--index", type=int, default=None, help="draw only this function of the file (default: all, tiled)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available, else cpu)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the evaluation (faster for large or repeated renders after a one-off "
                        "compilation; same image within float rounding)")
    p.add_argument("--amp", choices=("bf16",), default=None,
                   help="bfloat16 autocast, for --derivative value only (a GPU speed option; colours within about "
                        "1e-2)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output image file (.png, .jpg, ...)")


def _render(args: argparse.Namespace) -> int:
    from .io import load_functions
    from .plots import gradient_norm, save_image, tile

    if args.amp and args.derivative != "value":
        raise ValueError("--amp applies to --derivative value only; derivatives are rendered in float32")
    functions = load_functions(args.functions, device=device_of(args.device))
    if args.index is not None:
        if not -len(functions) <= args.index < len(functions):
            raise ValueError(f"--index {args.index} is out of range: {args.functions} holds {len(functions)} functions")
        functions = functions[args.index]
    h, w = args.size
    note = ""
    if args.derivative == "value":
        images = functions.render(h, w, amp=args.amp, compile=args.compile)  # (b, c, h, w)
    elif args.derivative == "gradient":
        g = gradient_norm(functions.render_derivatives(h, w, ("gradient",), compile=args.compile).gradient)  # (b, h, w)
        scale = float(g.max()) or 1.0
        images, note = (g / scale)[:, None], f" (white = gradient magnitude {scale:.4g})"
    else:
        lap = functions.render_derivatives(h, w, ("laplacian",), compile=args.compile).laplacian.mean(1)  # (b, h, w)
        scale = float(lap.abs().max()) or 1.0
        images, note = (0.5 + lap / (2 * scale))[:, None], f" (black/white = Laplacian -/+{scale:.4g})"
    path = save_image(tile(images), args.output)
    print(f"wrote {path}: {len(images)} function(s), {args.derivative} at {h}x{w}{note}")
    return 0


register("render", "render saved functions (or their derivatives) at any resolution", _render_arguments, _render)


# ----------------------------------------------------------------------------------------------------------- blend
def _blend_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", type=Path, help="the base image file")
    p.add_argument("insert", type=Path, help="the image whose gradients are inserted")
    p.add_argument("--mask", type=Path, default=None,
                   help="gray image, white where INSERT goes (Poisson compositing); without it the two gradient "
                        "fields are summed everywhere")
    p.add_argument("--mixed", action="store_true",
                   help="inside the mask keep the stronger of the two gradients (mixed gradients)")
    add_size_argument(p, "resize all inputs first (needed when BASE and INSERT differ in size)")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    add_optimizer_arguments(p, steps=1000)
    add_siren_arguments(p)


def load_blend_inputs(base_path, insert_path, mask_path=None, size=None):
    """Read ``base``, ``insert`` (to the larger channel count) and an optional binary mask, all one size."""
    from .data import convert_channels, resize

    base, insert = load_image(base_path, size), load_image(insert_path, size)
    if base.shape[1:] != insert.shape[1:]:
        raise ValueError(f"{base_path} is {base.shape[1]}x{base.shape[2]} but {insert_path} is "
                         f"{insert.shape[1]}x{insert.shape[2]}; pass --size H W to resize both")
    c = max(base.shape[0], insert.shape[0])
    base, insert = convert_channels(base, c), convert_channels(insert, c)
    mask = None
    if mask_path is not None:
        raw, (h, w) = load_image(mask_path, channels=1), base.shape[1:]
        if raw.shape[1] * w != raw.shape[2] * h:  # resizing would crop it: the region would move
            raise ValueError(f"mask {mask_path} is {raw.shape[1]}x{raw.shape[2]} but the images are {h}x{w}; "
                             f"a mask must have the images' aspect ratio")
        mask = (resize(raw, (h, w)) > 0.5).float()  # (1, h, w)
        if not mask.any():
            raise ValueError(f"mask {mask_path} is empty (no pixel brighter than 0.5)")
    return base, insert, mask


def write_blend_outputs(out: Path, base, insert, mask, functions, history, config: dict) -> list[Path]:
    """Save a blend into ``out``: ``functions.safetensors``, ``blend.png``, ``blend_figure.png`` (inputs and result
    side by side) and ``history.json``."""
    from .plots import image_grid, save_image

    result = functions.render(*base.shape[1:])[0].cpu()
    functions.save(out / "functions.safetensors")
    files = [out / "functions.safetensors", save_image(result, out / "blend.png")]
    panels = [base, insert] + ([mask.expand_as(base)] if mask is not None else []) + [result]
    titles = ["base", "insert"] + (["mask"] if mask is not None else []) + ["blend"]
    files.append(image_grid(torch.stack(panels), out / "blend_figure.png", nrow=len(panels), titles=titles))
    files.append(write_json(out / "history.json", {"config": config, "history": asdict(history)}))
    return files


def _blend(args: argparse.Namespace) -> int:
    from .fit import blend
    from .io import check_writable
    from .siren import Siren

    if args.mixed and args.mask is None:
        raise ValueError("--mixed chooses between the two gradients inside a mask: pass --mask")
    base, insert, mask = load_blend_inputs(args.base, args.insert, args.mask, args.size)
    out = check_writable(args.out)
    device = device_of(args.device)
    net = Siren(2, base.shape[0], args.hidden, args.layers, args.w0).to(device)
    functions, history = blend(base.to(device), insert.to(device), mask=None if mask is None else mask.to(device),
                               steps=args.steps, mixed=args.mixed, net=net, lr=args.lr, batch_size=args.batch_size,
                               progress=not args.quiet, seed=args.seed, compile=args.compile, amp=args.amp)
    config = {"base": str(args.base), "insert": str(args.insert), "mask": str(args.mask) if args.mask else None,
              "mixed": args.mixed, "steps": args.steps, "lr": args.lr, "siren": functions.net.config}
    files = write_blend_outputs(out, base, insert, mask, functions, history, config)
    print(f"blended {args.insert} into {args.base} in {args.steps} steps")
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


register("blend", "merge two images in the gradient domain (Poisson blending)", _blend_arguments, _blend,
         epilog="writes OUT/functions.safetensors, OUT/blend.png, OUT/blend_figure.png and OUT/history.json")


# ------------------------------------------------------------------------------------------------------------ demo
def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", "-o", type=Path, default=Path("runs/demo"), help="output folder")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few steps: a smoke test in seconds")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available, else cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, quick=args.quick, device=device_of(args.device), progress=not args.quiet)
    return 0


register("demo", "the demo job on embedded data: fit the cameraman three ways, blend two photos, meta-train a "
                 "MAML prior on faces, write a report",
         _demo_arguments, _demo)
