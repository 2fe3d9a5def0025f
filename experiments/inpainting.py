"""Image inpainting from a few known pixels (the SIREN paper's hypernetwork table), on held-out images.

Trains a :class:`~inrprior.HyperPrior` and a :class:`~inrprior.MetaPrior` on the training split for a fixed budget
of CPU time each, then reconstructs every held-out image from 10, 100, 1000 (where the
image has them) and all of its pixels, and scores the whole image: mean squared error on the [0, 1] scale over all
pixels of all held-out images, and PSNR = 10 log10(1 / MSE) of that pooled MSE. Methods:

- the per-pixel mean of the training images (ignores the context: the floor to beat);
- the Gaussian conditional: the posterior mean of a Gaussian over the pixels with the training images' (and their
  mirror images') mean and covariance, the best linear estimator from this data (see :func:`gaussian_conditional`);
- HyperPrior, one encoder + hypernetwork pass (default settings ``HYPER``: the linear output with the exact
  posterior encoder and 3 learned refinement steps; ``--hyper '{"output": "weights", "encoder": "set",
  "train_refine_steps": 0, "beta": 1e-5}'`` is the per-tensor-heads hypernetwork);
- HyperPrior + ``--refine-steps`` test-time steps on the context pixels: the default (``refine="auto"``: all
  generated weights with the learned step sizes, or without them Adam on all weights, or on the latent alone when
  fewer than 50 pixels are known), and each of the two targets alone;
- MetaPrior ``adapt_context`` with ``--refine-steps`` inner steps;
- a ceiling, not a method: the Gaussian conditional whose covariance has also seen the held-out images.

Every method sees the same context pixels: ``--draws`` random draws per context size (seeds 1, 2, ...); the MSE is
pooled over the draws too, and the table shows the lowest and highest PSNR of the single draws (at 10 pixels one
draw moves the score by +-0.4 dB, as much as the differences between methods). The HyperPrior's one-pass score on
as many training images is reported too (how much it memorizes). Output (``--out``, default ``runs/inpainting``):
``results.json``, ``psnr_vs_context.png``, ``inpainting.png``, one training folder per prior (``hyper/``, ``meta/``
with ``prior.safetensors``, which ``experiments/samples.py --from`` reuses).

    python experiments/inpainting.py                 # faces 32x32, 15 CPU-minutes of training per prior
    python experiments/inpainting.py --split anchor  # the anchor run's split (first 80 faces train, last 20 test)
    python experiments/inpainting.py --quick         # 2 minutes per prior, for a smoke run
    python experiments/inpainting.py --cost          # only: parameters, steps/s, peak memory at a 3x256 SIREN
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

import inrprior as ip
from inrprior import data as ipdata
from inrprior.hyper import HyperPrior
from inrprior.train import train as train_prior

# overridden by --hyper JSON (flip: faces are symmetric); the earlier default was {"output": "weights", "beta": 1e-5}
HYPER = {"output": "linear", "encoder": "posterior", "beta": 1e-6, "train_refine_steps": 3, "flip": True}
META = {"meta_sgd": True}  # MetaPrior settings, overridden by --meta JSON


def train_for(prior, train, minutes: float, out: Path, steps: int | None, batch: int, lr: float, chunk: int = 50,
              grad_clip: float | None = None, progress: bool = False) -> dict:
    """Train with ``inrprior.train`` for ``steps`` steps, or for about ``minutes`` of compute: in chunks of
    ``chunk`` steps resumed from the checkpoint (exact), stopping at the first chunk boundary past the budget.

    The budget is this process's CPU time divided by the torch threads, i.e. minutes of a machine whose
    ``threads`` cores are free: on a shared machine the wall clock would hand a run fewer steps.
    """
    start, cpu0, done = time.perf_counter(), time.process_time(), 0
    while True:
        target = steps if steps is not None else done + chunk
        train_prior(prior, train, target, out, batch_size=batch, lr=lr, checkpoint_every=chunk, resume=done > 0,
                    overwrite=done == 0,
                    density=None, progress=progress, grad_clip=grad_clip, device="cpu")
        done = target
        if steps is not None or (time.process_time() - cpu0) / torch.get_num_threads() > 60 * minutes:
            break
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
    return {"steps": done, "seconds": seconds, "cpu_seconds": cpu, "threads": torch.get_num_threads(),
            "steps_per_s": done / seconds, "steps_per_cpu_s": done / cpu,
            "parameters": sum(p.numel() for p in prior.parameters())}


def contexts(images: torch.Tensor, sizes, seed: int = 1) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return {n: ipdata.sample_context(images, n, generator=gen) for n in sizes}


def context_draws(images: torch.Tensor, sizes, draws: int) -> list[dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """``draws`` independent context draws (seeds 1 .. draws); the first is the single draw of earlier runs."""
    return [contexts(images, sizes, seed) for seed in range(1, draws + 1)]


def score(render: torch.Tensor, images: torch.Tensor) -> dict[str, float]:
    return scored(float((render - images).double().pow(2).mean()))


def scored(mse: float) -> dict[str, float]:
    return {"mse": mse, "psnr": 10 * math.log10(1 / max(mse, 1e-20))}


def show_context(images, coords, values) -> torch.Tensor:
    """The known pixels on a gray canvas (for the figure)."""
    b, c, h, w = images.shape
    px = ip.coord_to_pixel(coords, h, w).round().long()  # (b, n, 2)
    canvas = torch.full((b, h * w, c), 0.5)
    canvas.scatter_(1, (px[..., 1] * w + px[..., 0])[..., None].expand(-1, -1, c), values)
    return canvas.reshape(b, h, w, c).permute(0, 3, 1, 2)


def evaluate(methods: dict, images: torch.Tensor, draws: list[dict]) -> dict[str, dict[int, dict[str, float]]]:
    """``methods``: name -> ``(coords, values) -> (B, C, H, W)`` renders; scores at every context size, the MSE
    pooled over the images and the context draws (:func:`context_draws`), with each draw's PSNR."""
    out = {}
    for name, fn in methods.items():
        out[name] = {}
        for n in draws[0]:
            each = [score(fn(*ctx[n]), images) for ctx in draws]
            out[name][n] = {**scored(sum(e["mse"] for e in each) / len(each)), "psnr_draws": [e["psnr"] for e in each]}
    return out


def prior_methods(name: str, prior, h: int, w: int, steps: int) -> dict:
    def run(k, **refine):
        def fn(c, v):
            saved = prior.cfg
            prior.cfg = replace(saved, **refine)
            try:
                return prior.adapt_context(c, v, steps=k).render(h, w)
            finally:
                prior.cfg = saved
        return fn
    if isinstance(prior, HyperPrior):
        fixed = {f"{name} +{steps} steps ({t})": run(steps, refine=t) for t in (prior.cfg.refine_target, "latent")}
        return {f"{name} one pass": run(0), f"{name} +{steps} steps": run(steps), **fixed}
    return {f"{name} {steps} steps": run(steps)}


COST_VARIANTS = {  # name -> HyperPrior settings measured by --cost
    "weights": {"output": "weights"},
    "weights, anchor-sized (latent 256, 256-wide heads)": {"output": "weights", "latent_dim": 256, "hidden": 256,
                                                           "head_width": 256},
    "shift": {"output": "shift"},
    "linear, exact posterior": {"output": "linear", "encoder": "posterior"},
    "linear, exact posterior, 3 learned refinement steps": {"output": "linear", "encoder": "posterior",
                                                             "train_refine_steps": 3},
}


def cost(hidden: int = 256, layers: int = 3, batch: int = 16, size: int = 32, steps: int = 5) -> dict:
    """Parameters, training steps/s and peak memory (RSS) of each variant, each in a fresh process."""
    out = {}
    for name, settings in COST_VARIANTS.items():
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import inpainting as e; "
                f"e._cost_child({json.dumps(settings)!r}, {hidden}, {layers}, {batch}, {size}, {steps}, "
                f"{torch.get_num_threads()})")
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        out[name] = {"settings": settings, **json.loads(res.stdout.strip().splitlines()[-1])}
    return out


def _cost_child(settings: str, hidden, layers, batch, size, steps, threads):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    prior = HyperPrior(ip.Siren(2, 3, hidden, layers), **json.loads(settings))
    images, g = torch.rand(batch, 3, size, size), torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(prior.parameters(), 1e-4)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        loss, _ = prior(images, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"parameters": sum(p.numel() for p in prior.parameters()),
                      "outputs_per_latent": sum(h.out_features for h in prior.hyper.heads),
                      "steps_per_s": steps / sum(times[1:]), "peak_rss_mb": peak / 1024,
                      "rss_before_first_step_mb": base / 1024}))


def gaussian_conditional(train: torch.Tensor, flip: bool, noise: float = 3e-3):
    """Baseline: the posterior mean of a Gaussian over the pixels (the training images' mean and covariance, with
    their mirror images when ``flip``) given the known pixels with noise variance ``noise``: the best a linear
    estimator does from this data (a probabilistic PCA of full rank). ``noise`` 3e-3 was the best of 1e-4 .. 1e-2 on
    held-out faces, with or without flips and shrinkage, at 10 and 100 pixels; flips helped at every size."""
    b, c, h, w = train.shape
    x = torch.cat([train, train.flip(-1)] if flip else [train]).double().permute(0, 2, 3, 1).reshape(-1, h * w * c)
    mu = x.mean(0)
    cov = (x - mu).T @ (x - mu) / len(x)  # (P c, P c), pixel-major: value j of pixel p is p * c + j

    def run(coords, values):
        px = ip.coord_to_pixel(coords, h, w).round().long()
        idx = ((px[..., 1] * w + px[..., 0])[..., None] * c + torch.arange(c)).flatten(1)  # (B, n c)
        out = []
        for i, known in enumerate(idx):
            k = cov[known][:, known] + noise * torch.eye(len(known), dtype=cov.dtype)
            out.append(mu + cov[:, known] @ torch.linalg.solve(k, values[i].double().flatten() - mu[known]))
        return torch.stack(out).float().reshape(-1, h, w, c).permute(0, 3, 1, 2)
    return run


def load_split(name: str, size: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) image stacks: inrprior's documented split, or the anchor's first 80 % / last 20 %."""
    if split == "rule":
        return ipdata.stack(ipdata.load(name, size, "train")), ipdata.stack(ipdata.load(name, size, "test"))
    images = ipdata.stack(ipdata.load(name, size, "all"))
    cut = round(0.8 * len(images))
    return images[:cut], images[cut:]


def train_priors(a, train, c: int, out: Path, results: dict):
    layers, width = map(int, a.siren.split("x"))
    torch.manual_seed(0)
    hyper = HyperPrior(ip.Siren(2, c, width, layers), **{**HYPER, **json.loads(a.hyper)})
    results["train"]["hyper"] = train_for(hyper, train, a.minutes, out / "hyper", a.steps, a.batch, a.lr)
    hyper.fit_density(train, kind="gaussian")
    hyper.save(out / "hyper" / "prior.safetensors")
    meta = None
    if not a.no_meta:
        try:
            from inrprior.meta import MetaPrior
        except ImportError:
            print("inrprior.meta not available: no MetaPrior row")
            return hyper, None
        torch.manual_seed(0)
        meta = MetaPrior(ip.Siren(2, c, width, layers), inner_steps=a.refine_steps, **{**META, **json.loads(a.meta)})
        minutes = a.minutes if a.meta_minutes is None else a.meta_minutes
        results["train"]["meta"] = train_for(meta, train, minutes, out / "meta", a.steps, a.batch, a.meta_lr)
        meta.fit_density(train, kind="gaussian")
        meta.save(out / "meta" / "prior.safetensors")
    return hyper, meta


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="faces")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--siren", default="3x64", help="hidden layers x width of the SIREN")
    p.add_argument("--minutes", type=float, default=15.0,
                   help="training budget of the HyperPrior: CPU minutes per torch thread (see train_for)")
    p.add_argument("--meta-minutes", type=float, default=None, help="the MetaPrior's budget (default: --minutes)")
    p.add_argument("--steps", type=int, default=None, help="train exactly this many steps instead")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4, help="HyperPrior Adam step size")
    p.add_argument("--meta-lr", type=float, default=1e-4, help="MetaPrior outer Adam step size")
    p.add_argument("--hyper", default="{}", help=f"JSON HyperPrior settings over {HYPER}")
    p.add_argument("--meta", default="{}", help=f"JSON MetaPrior settings over {META}")
    p.add_argument("--no-meta", action="store_true")
    p.add_argument("--from", dest="from_run", default=None, help="score the priors saved in this --out folder "
                   "(hyper/prior.safetensors, meta/prior.safetensors) instead of training")
    p.add_argument("--refine-steps", type=int, default=3)
    p.add_argument("--draws", type=int, default=10, help="random context draws per size (the MSE is pooled over them)")
    p.add_argument("--split", choices=("rule", "anchor"), default="rule",
                   help="rule: inrprior's split (every 5th image is test); anchor: the first 80%% train, the last "
                        "20%% test, the split of the SIREN-hypernetwork anchor run (its mean image scores 15.7 dB "
                        "on faces, against 14.4 dB on the rule's test faces)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (1 is faster on a busy machine)")
    p.add_argument("--out", default="runs/inpainting")
    p.add_argument("--quick", action="store_true", help="2 minutes of training per prior")
    p.add_argument("--cost", action="store_true",
                   help="only measure the cost (parameters, steps/s, peak memory) of each output mode at a 3x256 SIREN")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.cost:
        res = cost()
        (out / "cost.json").write_text(json.dumps(res, indent=1))
        for name, r in res.items():
            print(f"3x256 SIREN, {name}: {r['parameters'] / 1e6:.2f} M parameters, {r['steps_per_s']:.2f} steps/s "
                  f"(batch 16, 32x32 RGB, {torch.get_num_threads()} threads), peak RSS {r['peak_rss_mb']:.0f} MB "
                  f"({r['rss_before_first_step_mb']:.0f} MB before the first step)")
        return res
    if a.quick:
        a.minutes = min(a.minutes, 2.0)
        a.meta_minutes = min(a.meta_minutes or a.minutes, 2.0)
    if a.from_run:  # score the saved priors on the data, size and split they were trained with
        saved = json.loads((Path(a.from_run) / "results.json").read_text())["config"]
        for key, old in (("data", a.data), ("size", a.size), ("split", "rule"), ("siren", a.siren)):
            value = saved.get(key, old)  # runs older than the --split flag used the rule split
            if value != getattr(a, key):
                print(f"--{key} {value} (as the run in {a.from_run} was trained)")
                setattr(a, key, value)
    train, test = load_split(a.data, a.size, a.split)
    c, h, w = train.shape[1:]
    sizes = sorted({n for n in (10, 100, 1000) if n < h * w} | {h * w})
    if a.draws < 1:
        p.error(f"--draws must be >= 1, got {a.draws}")
    draws, train_draws = context_draws(test, sizes, a.draws), context_draws(train[:len(test)], sizes, a.draws)
    results = {"config": vars(a), "train_images": len(train), "test_images": len(test), "sizes": sizes, "train": {}}
    print(f"{a.data} {h}x{w}: {len(train)} train / {len(test)} test images; SIREN {a.siren}; "
          f"torch threads {torch.get_num_threads()}")

    mean = train.mean(0, keepdim=True).expand_as(test)
    methods = {"mean image": lambda cc, vv: mean,
               "Gaussian conditional (pixels)": gaussian_conditional(train, flip=a.data == "faces"),
               "ceiling: Gaussian cond. (+ test in cov.)": gaussian_conditional(torch.cat([train, test]),
                                                                                flip=a.data == "faces")}
    if a.from_run:
        from inrprior.io import load_prior

        hyper = load_prior(Path(a.from_run) / "hyper" / "prior.safetensors")
        meta_path = Path(a.from_run) / "meta" / "prior.safetensors"
        meta = load_prior(meta_path) if meta_path.exists() and not a.no_meta else None
        results["train"] = json.loads((Path(a.from_run) / "results.json").read_text())["train"]
    else:
        hyper, meta = train_priors(a, train, c, out, results)
    methods.update(prior_methods("hyper", hyper, h, w, a.refine_steps))
    if meta is not None:
        methods.update(prior_methods("meta", meta, h, w, a.refine_steps))
    for name, r in results["train"].items():
        cpu = f", {r['cpu_seconds'] / r['threads']:.0f} CPU-s per thread" if "cpu_seconds" in r else ""
        print(f"trained {name}: {r['steps']} steps in {r['seconds']:.0f} s wall{cpu} ({r['steps_per_s']:.2f} "
              f"steps/s), {r['parameters'] / 1e6:.2f} M parameters")
    results["test"] = evaluate(methods, test, draws)
    results["train_images_one_pass"] = evaluate({"hyper one pass": methods["hyper one pass"]}, train[:len(test)],
                                                train_draws)["hyper one pass"]
    (out / "results.json").write_text(json.dumps(results, indent=1))
    table(results)
    figures(out, results, methods, test, draws[0], a)
    print(f"wrote {out / 'results.json'}, {out / 'psnr_vs_context.png'}, {out / 'inpainting.png'}")
    return results


def table(results: dict) -> None:
    sizes, draws = results["sizes"], results["config"]["draws"]
    head = (f"{'held-out MSE (PSNR dB)':40s}" + "".join(f"{str(n) + ' px':>28s}" for n in sizes) +
            f"\n{'':40s}" + f"{'MSE (PSNR) [single draws]':>28s}" * len(sizes))
    print(f"{draws} context draws per size\n" + head + "\n" + "-" * len(head.splitlines()[0]))
    rows = {**results["test"], "hyper one pass, TRAIN imgs": results["train_images_one_pass"]}
    for name, r in rows.items():
        print(f"{name:40s}" + "".join(f"{r[n]['mse']:9.5f} ({r[n]['psnr']:4.1f}) "
                                      f"[{min(r[n]['psnr_draws']):4.1f}, {max(r[n]['psnr_draws']):4.1f}]"
                                      for n in sizes))


def figures(out: Path, results: dict, methods: dict, test, ctx, a) -> None:
    from inrprior.plots import image_grid, plot_curves

    sizes = results["sizes"]
    plot_curves({name: (sizes, [r[n]["psnr"] for n in sizes]) for name, r in results["test"].items()},
                out / "psnr_vs_context.png", "known pixels", "held-out PSNR (dB)", logx=True,
                title=f"{a.data} {a.size}x{a.size}: inpainting from known pixels")
    k = min(4, len(test))
    rows, titles = [], []
    for n in sizes:
        cc, vv = ctx[n][0][:k], ctx[n][1][:k]
        rows.append(show_context(test[:k], cc, vv))
        titles.append(f"{n} known")
        for name, fn in methods.items():
            if name != "mean image" and "(" not in name:
                rows.append(fn(cc, vv))
                titles.append(name)
    rows.append(test[:k])
    titles.append("truth")
    grid = torch.stack(rows, 1).flatten(0, 1)  # image-major: one row per test image
    image_grid(grid, out / "inpainting.png", nrow=len(rows), titles=titles * k, cell_inches=1.2,
               title="held-out images: known pixels, then each method's reconstruction")


if __name__ == "__main__":
    main()
