"""Fit the cameraman from its values, from its gradients only and from its Laplacian only (SIREN, Sitzmann et al. 2020).

Prints a table of PSNR (after the alignment each supervision allows), ms per step, and the achieved model GFLOP/s next
to torch.mm's GFLOP/s at the same shapes measured in the same run; writes results.json (rewritten after each
supervision, so a long run leaves partial results) and fits.png / psnr.png into --out.

Model FLOPs count only the matrix products of forward + backward: a forward pass of the SIREN costs
``F = 2 * sum(fan_in * fan_out)`` per point and stream; value fitting runs 1 stream, gradient fitting 3 (value and
two tangents), Laplacian fitting 4 (plus the Laplacian), and the backward pass costs twice the forward.

    python experiments/fit_supervision.py --small            # 128x128, the CPU default
    python experiments/fit_supervision.py --size 256 --compile
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import inrprior as ip  # noqa: E402
from inrprior.fit import _targets, fit  # noqa: E402
from inrprior.functions import query_params_autodiff  # noqa: E402
from inrprior.targets import align_affine, align_offset, image_gradient, image_laplacian  # noqa: E402

STREAMS = {"value": 1, "gradient": 3, "laplacian": 4}


def cameraman(size: int) -> torch.Tensor:
    try:
        from inrprior.data import photo
        return photo("camera", size=size)
    except (ImportError, AttributeError):
        import skimage.data
        import skimage.transform
        img = skimage.transform.resize(skimage.data.camera() / 255.0, (size, size), anti_aliasing=True)
        return torch.from_numpy(img).float()[None]


def forward_flops_per_point(net: ip.Siren) -> int:
    return sum(2 * layer.in_features * layer.out_features for layer in net.layers)


def mm_gflops(rows: int, width: int, device, reps: int = 3) -> float:
    """torch.mm GFLOP/s on one hidden layer's three products: forward, input-gradient and weight-gradient."""
    a = torch.randn(rows, width, device=device)
    w = torch.randn(width, width, device=device)
    shapes = [(a, w), (a, w.T), (a.T, a[:, :width])]  # (rows,w)x(w,w) twice, (w,rows)x(rows,w)

    def run():
        for x, y in shapes:
            torch.mm(x, y)
        if device.type == "cuda":
            torch.cuda.synchronize()
    run()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return 3 * 2 * rows * width * width / sorted(times)[len(times) // 2] / 1e9


def torch_func_ms(net, params, coords, targets, name: str, steps: int) -> float:
    """ms per step of the same loss through the generic torch.func path (query_params_autodiff), for comparison."""
    params = {k: v.clone().requires_grad_() for k, v in params.items()}
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        q = query_params_autodiff(net, params, coords, (name,))
        (getattr(q, name) - targets).square().mean().backward()
        times.append(time.perf_counter() - t)
    return 1000 * min(times[1:])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps-value", type=int, default=1000)
    p.add_argument("--steps-gradient", type=int, default=500)
    p.add_argument("--steps-laplacian", type=int, default=500)
    p.add_argument("--small", action="store_true", help="128x128 (the default on CPU)")
    p.add_argument("--size", type=int, default=None, help="image size (default 256 on CUDA, 128 on CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the loss")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--torch-func-steps", type=int, default=2,
                   help="steps timed through the generic torch.func derivative path (0: skip)")
    p.add_argument("--only", default="value,gradient,laplacian", help="comma-separated supervisions to run")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="runs/fit_supervision")
    args = p.parse_args(argv)
    unknown = [n for n in args.only.split(",") if n.strip() not in STREAMS]
    if unknown:
        p.error(f"--only: unknown supervisions {unknown}; choose from {list(STREAMS)}")
    for name in STREAMS:
        if getattr(args, f"steps_{name}") < 1:
            p.error(f"--steps-{name} must be >= 1, got {getattr(args, f'steps_{name}')}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str((out / "inductor_cache").resolve()))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    size = 128 if args.small else (args.size or (256 if device.type == "cuda" else 128))
    image = cameraman(size).to(device)  # (1, h, w)
    truth = image[None]
    net = ip.Siren(2, 1, 256, 3, 30.0).to(device)
    coords = ip.grid(size, size, device=device)
    flops_point = forward_flops_per_point(net)
    steps = {"value": args.steps_value, "gradient": args.steps_gradient, "laplacian": args.steps_laplacian}
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    results = dict(size=size, device=str(device), threads=torch.get_num_threads(), compile=args.compile,
                   torch=torch.__version__, machine=platform.processor() or platform.machine(), lr=args.lr,
                   model="Siren(2, 1, 256, 3, 30)", rows={})
    figure_rows = [dict(name="ground truth", image=image, gradient_norm=image_gradient(truth)[0],
                        laplacian=image_laplacian(truth)[0])]
    curves = {}
    for name in names:
        n_steps = steps[name]
        log_every = max(1, n_steps // 20)
        f, hist = fit(image, steps=n_steps, supervision=name, net=net, lr=args.lr, compile=args.compile,
                      log_every=log_every, progress=sys.stderr.isatty(), seed=0)
        if len(hist.step) > 1:  # ms/step from the first log on: leaves out warm-up and compilation
            ms = 1000 * (hist.time[-1] - hist.time[0]) / (hist.step[-1] - hist.step[0])
        else:  # one log: every step, warm-up included
            ms = 1000 * hist.time[-1] / hist.step[-1]
        s = STREAMS[name]
        model_flops = 3 * s * size * size * flops_point
        mm = mm_gflops(s * size * size, 256, device)
        row = dict(psnr=hist.final_psnr[0], alignment=hist.alignment, steps=n_steps, ms_per_step=ms,
                   model_gflops=model_flops / (ms / 1000) / 1e9, mm_gflops=mm, seconds=hist.seconds,
                   curve=dict(step=hist.step, psnr=hist.psnr, loss=hist.loss))
        row["fraction_of_mm"] = row["model_gflops"] / mm
        if name != "value" and args.torch_func_steps > 0:
            target = _targets(truth, {name: 1.0})[name]  # (1, n, 1, 2) or (1, n, 1)
            row["torch_func_ms_per_step"] = torch_func_ms(net, f.params, coords, target, name, args.torch_func_steps)
        results["rows"][name] = row
        curves[name] = (hist.step, hist.psnr)
        q = f.render_derivatives(size, size, ("value", "gradient", "laplacian"))
        shown = {"none": lambda v: v, "offset": lambda v: align_offset(v, truth),
                 "affine": lambda v: align_affine(v, truth)}[hist.alignment](q.value)
        figure_rows.append(dict(name=f"from {name} ({n_steps} steps)", image=shown[0], psnr=hist.final_psnr[0],
                                gradient_norm=q.gradient[0], laplacian=q.laplacian[0]))
        (out / "results.json").write_text(json.dumps(results, indent=1))
        print(f"{name}: {row['psnr']:.2f} dB ({row['alignment']} alignment), {ms:.0f} ms/step", flush=True)
    report(results)
    try:
        from inrprior import plots
        plots.fit_figure(figure_rows, out / "fits.png", title=f"cameraman {size}x{size}: fits and their derivatives")
        plots.plot_curves(curves, out / "psnr.png")
    except (ImportError, AttributeError, TypeError) as e:  # plots is optional for this script
        print(f"no figure: {e}", file=sys.stderr)
    print(f"wrote {out / 'results.json'}")
    return results


def report(results: dict) -> None:
    print(f"\ncameraman {results['size']}x{results['size']}, {results['device']}, {results['threads']} threads, "
          f"compile={results['compile']}, torch {results['torch']}")
    head = f"{'supervision':<12}{'steps':>6}{'PSNR dB':>9}{'align':>8}{'ms/step':>9}{'model GF/s':>11}" \
           f"{'mm GF/s':>9}{'ratio':>7}{'torch.func ms':>15}"
    print(head)
    for name, r in results["rows"].items():
        tf = r.get("torch_func_ms_per_step")
        print(f"{name:<12}{r['steps']:>6}{r['psnr']:>9.2f}{r['alignment']:>8}{r['ms_per_step']:>9.0f}"
              f"{r['model_gflops']:>11.1f}{r['mm_gflops']:>9.1f}{r['fraction_of_mm']:>7.0%}"
              f"{(f'{tf:.0f}' if tf else '-'):>15}")


if __name__ == "__main__":
    main()
