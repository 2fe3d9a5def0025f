"""Fast fitting with a meta-learned prior against a standard SIREN initialization (Tancik et al. 2021; functa).

For every MetaPrior variant: meta-train on the training split with ``inrprior.train``, then measure the mean per-image
PSNR of held-out images after 0, 1, 2, 3, 5, 10 inner SGD steps. The baseline is the standard (Sitzmann)
initialization fitted with Adam (lr 1e-4) for up to ``--adam-steps`` steps. The **speed-up** is the number of Adam
steps the baseline needs to reach the prior's 3-step PSNR, divided by 3. Then the same from 10 % of the pixels: the
prior's 3-step reconstruction of the *whole* image against the standard initialization fitted (Adam) to the same
pixels and scored on the whole image.

PSNRs are of the unclamped function values at the pixel centres (the same for the prior and the baseline), averaged
over images. Output (``--out``, default ``runs/fastfit``): ``results.json``, ``psnr_vs_steps.png``,
``context10.png``, ``reconstructions.png`` and one training folder per variant.

    python experiments/fastfit.py                                  # faces 32x32, the demo's training (all variants)
    python experiments/fastfit.py --data patches --size 64 --out runs/fastfit-patches64
    python experiments/fastfit.py --quick                          # minutes on a busy CPU: fewer steps and images
    python experiments/fastfit.py --data patches --size 64 --variants metasgd --device cuda   # on a GPU
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import inrprior as ip
from inrprior import data as ipdata
from inrprior.coords import image_to_points
from inrprior.demo import DemoConfig
from inrprior.functions import query_params
from inrprior.meta import MetaPrior, adapt_tasks
from inrprior.train import train as train_prior

VARIANTS = {  # name -> MetaPrior settings (beyond the shared inner_steps / inner_lr)
    "maml": {},
    "fomaml": {"algorithm": "fomaml"},
    "reptile": {"algorithm": "reptile"},
    "metasgd": {"meta_sgd": True},
    "latent": {"latent_dim": 128, "meta_sgd": True, "inner_lr": 1.0},  # a latent needs far larger steps
    "maml-ctx10": {"context_fraction": 0.1},
}
PRIOR_STEPS = (0, 1, 2, 3, 5, 10)


def load_data(name: str, size: int, max_test: int):
    train, test = ipdata.load(name, size=size, split="train"), ipdata.load(name, size=size, split="test")
    return ipdata.stack(train), ipdata.stack(test)[:max_test]


def psnr_of(mse: torch.Tensor) -> float:
    return float((-10 * torch.log10(mse.double().clamp_min(1e-20))).mean())


@torch.no_grad()
def prior_curve(prior: MetaPrior, images: torch.Tensor) -> dict[int, float]:
    """PSNR after k inner steps, k = 0..10, from one 11-step trace (losses before each step on all pixels)."""
    coords, values = image_to_points(images)
    rates = prior.inner_rates()
    rates = {k: v.detach() for k, v in rates.items()} if isinstance(rates, dict) else rates
    params = {k: v.detach() for k, v in prior.meta_params().items()}
    _, losses = adapt_tasks(prior.net, params, coords, values, max(PRIOR_STEPS) + 1, rates, prior.adapt_keys,
                            first_order=True)  # (b, 11)
    return {k: psnr_of(losses[:, k]) for k in PRIOR_STEPS}


def context_curve(prior: MetaPrior, images, ctx_coords, ctx_values) -> dict[int, float]:
    coords, values = image_to_points(images)
    out = {}
    for k in PRIOR_STEPS:
        pred = prior.adapt_context(ctx_coords, ctx_values, steps=k).query(coords).value
        out[k] = psnr_of((pred - values).pow(2).flatten(1).mean(1))
    return out


def adam_baseline(net: ip.Siren, images, steps: int, lr: float, ctx=None, every=None, seed: int = 0):
    """Standard initialization + Adam on all pixels (``ctx=None``) or on context pixels; returns {step: PSNR on
    all pixels} at every step (all pixels) or at the steps in ``every`` (context), and the final params."""
    coords, values = image_to_points(images)
    fit_c, fit_v = (coords, values) if ctx is None else ctx
    gen = torch.Generator().manual_seed(seed)  # on the CPU: the same initial functions on every device
    params = {k: v.requires_grad_() for k, v in net.init_params(images.shape[0], generator=gen).items()}
    opt = torch.optim.Adam(params.values(), lr=lr)
    curve, snapshots = {}, {}
    for step in range(steps + 1):
        mse = (query_params(net, params, fit_c).value - fit_v).pow(2).flatten(1).mean(1)  # (b,)
        if ctx is None:
            curve[step] = psnr_of(mse.detach())
        elif step in every:
            with torch.no_grad():
                curve[step] = psnr_of((query_params(net, params, coords).value - values).pow(2).flatten(1).mean(1))
        if step in (3,):
            snapshots[step] = {k: v.detach().clone() for k, v in params.items()}
        if step == steps:
            break
        opt.zero_grad()
        mse.sum().backward()  # sum over images: independent fits sharing one Adam
        opt.step()
    snapshots[steps] = {k: v.detach().clone() for k, v in params.items()}
    return curve, snapshots


def reuse_adam(folder: Path, a) -> dict:
    """The Adam curves of an earlier run with the same data and baseline settings (JSON keys back to ints)."""
    if not (folder / "results.json").is_file():
        raise SystemExit(f"--adam-from {folder}: no results.json there (the --out of an earlier fastfit run)")
    old = json.loads((folder / "results.json").read_text())
    same = ("data", "size", "hidden", "layers", "adam_steps", "adam_lr", "test_images")
    diff = {k: (old["config"].get(k), getattr(a, k)) for k in same if old["config"].get(k) != getattr(a, k)}
    if diff:
        raise SystemExit(f"--adam-from {folder}: its settings differ (old, new): {diff}")
    adam = old["adam"]
    return {**adam, "psnr": {int(k): v for k, v in adam["psnr"].items()},
            "context10_psnr": {int(k): v for k, v in adam["context10_psnr"].items()}, "from": str(folder)}


def earlier_variants(path: Path, a) -> dict:
    """The variants an earlier run into the same ``--out`` measured with the same data, SIREN, test images and
    baseline (kept, so that adding or resuming a variant does not drop the others' results)."""
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    same = ("data", "size", "hidden", "layers", "adam_steps", "adam_lr", "test_images")
    if any(old["config"].get(k) != getattr(a, k) for k in same):
        return {}
    kept = {name: r for name, r in old.get("variants", {}).items() if name not in a.variants.split(",")}
    if kept:
        print(f"keeping the earlier results of {sorted(kept)} from {path}")
    return kept


def steps_to_reach(curve: dict[int, float], target: float) -> int | None:
    return next((k for k in sorted(curve) if curve[k] >= target), None)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="faces")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}")
    demo = DemoConfig()  # the defaults are the demo's prior training ("demo-sized training")
    p.add_argument("--hidden", type=int, default=demo.prior_hidden)
    p.add_argument("--layers", type=int, default=demo.prior_layers)
    p.add_argument("--train-steps", type=int, default=demo.prior_steps)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--eval-every", type=int, default=None,
                   help="held-out 3-step PSNR every this many outer steps (default: 5 times per run)")
    p.add_argument("--outer-lr", type=float, default=demo.prior_lr)
    p.add_argument("--inner-steps", type=int, default=3)
    p.add_argument("--inner-lr", type=float, default=demo.prior_inner_lr,
                   help="SGD step of the inner loop (MetaPrior default 1e-2 is slower; see the report)")
    p.add_argument("--adam-steps", type=int, default=1000)
    p.add_argument("--adam-lr", type=float, default=1e-4)
    p.add_argument("--adam-from", default=None, help="reuse the standard-init Adam curves of this earlier --out "
                   "folder (its results.json; data, size, SIREN, test images and Adam settings must match)")
    p.add_argument("--test-images", type=int, default=20)
    p.add_argument("--resume", action="store_true", help="continue the training folders under --out (exact resume; "
                   "a larger --train-steps trains them further)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (1 is faster on a busy machine)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (training, the baseline and the evaluation)")
    p.add_argument("--out", default="runs/fastfit")
    p.add_argument("--quick", action="store_true",
                   help="100 outer steps, 300 Adam steps, 10 test images, variants maml,latent,maml-ctx10 (the "
                        "demo's SIREN)")
    p.add_argument("--no-progress", action="store_true")
    if p.parse_known_args(argv)[0].quick:  # quick changes the defaults; explicit flags still win
        p.set_defaults(train_steps=100, adam_steps=300, test_images=10, variants="maml,latent,maml-ctx10")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    variants = a.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(a.device)
    train, test = load_data(a.data, a.size, a.test_images)
    test = test.to(dev)
    c = train.shape[1]
    gen = torch.Generator().manual_seed(0)
    ctx_c, ctx_v = ipdata.sample_context(test.cpu(), 0.1, generator=gen)  # (b, n, 2), (b, n, c)
    ctx_c, ctx_v = ctx_c.to(dev), ctx_v.to(dev)
    results = {"config": vars(a), "train_images": len(train), "test_images": len(test),
               "variants": earlier_variants(out / "results.json", a)}
    print(f"{a.data} {a.size}x{a.size}: {len(train)} train / {len(test)} test images; SIREN {a.layers}x{a.hidden}; "
          f"torch threads {torch.get_num_threads()}; {dev}")

    net = ip.Siren(2, c, a.hidden, a.layers, 30.0).to(dev)
    every = sorted({s for s in [0, 1, 2, 3, 5, 10, 20, 30, 50, 100, 200, 300, 500, 1000, 2000] if s <= a.adam_steps})
    if a.adam_from:
        results["adam"], adam_params = reuse_adam(Path(a.adam_from), a), None
        adam, adam_ctx = results["adam"]["psnr"], results["adam"]["context10_psnr"]
    else:
        t0 = time.perf_counter()
        adam, adam_params = adam_baseline(net, test, a.adam_steps, a.adam_lr)
        adam_ctx, _ = adam_baseline(net, test, a.adam_steps, a.adam_lr, ctx=(ctx_c, ctx_v), every=set(every))
        results["adam"] = {"psnr": adam, "context10_psnr": adam_ctx, "seconds": time.perf_counter() - t0}
    print(f"standard init + Adam {a.adam_lr}: " + ", ".join(f"{s}: {adam[s]:.1f}" for s in every) + " dB")

    renders = {"test": test}
    for name in variants:
        torch.manual_seed(0)
        settings = {"inner_steps": a.inner_steps, "inner_lr": a.inner_lr, **VARIANTS[name]}
        prior = MetaPrior(ip.Siren(2, c, a.hidden, a.layers, 30.0), **settings)
        start = time.perf_counter()
        train_prior(prior, train, a.train_steps, out / name, batch_size=a.batch, lr=a.outer_lr, eval_dataset=test,
                    eval_every=a.eval_every or max(1, a.train_steps // 5), checkpoint_every=a.train_steps,
                    density=None, progress=not a.no_progress, device=dev, resume=a.resume, overwrite=not a.resume)
        seconds = time.perf_counter() - start
        curve = prior_curve(prior, test)
        reach = steps_to_reach(adam, curve[3])
        ctx_curve = context_curve(prior, test, ctx_c, ctx_v)
        results["variants"][name] = {"settings": settings, "train_seconds": seconds, "psnr": curve,
                                     "adam_steps_to_match_3": reach,
                                     "speedup": None if reach is None else reach / 3,
                                     "context10_psnr": ctx_curve}
        renders[f"{name} 3 steps"] = prior.adapt(test, steps=3).render(a.size, a.size)
        speed = f"{reach / 3:.1f}x" if reach is not None else f">{a.adam_steps / 3:.0f}x"
        (out / "results.json").write_text(json.dumps(results, indent=1))  # after every variant: hours of work
        print(f"{name:11s} trained {seconds:6.0f} s | PSNR after " +
              " ".join(f"{k}:{v:5.1f}" for k, v in curve.items()) + f" | speed-up {speed} | 10% pixels, 3 steps: "
              f"{ctx_curve[3]:.1f} dB (Adam on the same pixels: 3 steps {adam_ctx[3]:.1f}, "
              f"best {max(adam_ctx.values()):.1f} dB)")
    if adam_params is not None:
        renders["Adam 3 steps"] = ip.Functions(net, adam_params[3]).render(a.size, a.size)
        renders[f"Adam {a.adam_steps} steps"] = ip.Functions(net, adam_params[a.adam_steps]).render(a.size, a.size)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plots(out, results, renders, a)
    print(f"wrote {out / 'results.json'} and plots")
    return results


def plots(out: Path, results: dict, renders: dict, a) -> None:
    from inrprior.plots import image_grid, plot_curves

    adam = results["adam"]["psnr"]
    curves = {"standard init + Adam": (list(adam)[1:], list(adam.values())[1:])}
    for name, r in results["variants"].items():
        curves[f"{name} (SGD {r['settings']['inner_lr']})"] = (list(r["psnr"])[1:], list(r["psnr"].values())[1:])
    plot_curves(curves, out / "psnr_vs_steps.png", "steps", "held-out PSNR (dB)", logx=True,
                title=f"{a.data} {a.size}x{a.size}: prior vs standard initialization")
    ctx = {"standard init + Adam": tuple(zip(*[(k, v) for k, v in results["adam"]["context10_psnr"].items() if k]))}
    for name, r in results["variants"].items():
        ctx[name] = tuple(zip(*[(k, v) for k, v in r["context10_psnr"].items() if k]))
    plot_curves(ctx, out / "context10.png", "steps", "whole-image PSNR (dB)", logx=True,
                title="fitting 10% of the pixels, scored on the whole image")
    n = min(6, len(renders["test"]))
    rows = [(name, img[:n]) for name, img in renders.items()]
    image_grid(torch.cat([img.cpu() for _, img in rows]), out / "reconstructions.png", nrow=n,
               titles=[name if j == 0 else "" for name, _ in rows for j in range(n)],
               title="held-out images: target, prior after 3 steps" +
               (", standard init after 3 / all Adam steps" if any(k.startswith("Adam") for k in renders) else ""))


if __name__ == "__main__":
    main()
