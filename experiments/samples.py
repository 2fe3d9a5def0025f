"""Samples from the priors: grids, a latent interpolation strip, and a classifier two-sample test.

For the HyperPrior, samples come from latents drawn from N(0, I), from a Gaussian and from a scikit-learn
``GaussianMixture`` fitted to the training images' latents; for the MetaPrior, from its fitted density. The
two-sample test trains a logistic regression (scikit-learn, raw pixels) to tell rendered samples from held-out real
images and reports its cross-validated accuracy (0.5: indistinguishable), averaged over ``--repeats`` draws of the
samples and of the folds. References: randomly initialized SIRENs (the ceiling, near 1.0) and held-out real images
against training images (the floor, near 0.5).

Output (``--out``, default ``runs/samples``): ``results.json``, ``samples_*.png`` (rendered at ``--render-size``,
any resolution), ``interpolation.png``.

    python experiments/samples.py --from runs/inpainting   # reuse the priors experiments/inpainting.py trained
    python experiments/samples.py                          # train both priors here (15 minutes each)
    python experiments/samples.py --quick                  # 2 minutes each, for a smoke run
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

import inrprior as ip
from inrprior.hyper import HyperPrior
from inrprior.io import load_prior

sys.path.insert(0, str(Path(__file__).parent))
from inpainting import HYPER, META, load_split, train_for  # noqa: E402


def two_sample_accuracy(fake: torch.Tensor, real: torch.Tensor, seed: int) -> float:
    """Cross-validated accuracy of a logistic regression separating ``fake`` from ``real`` images (equal counts)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    x = torch.cat([fake, real]).flatten(1).double().numpy()
    y = np.r_[np.ones(len(fake)), np.zeros(len(real))]
    folds = StratifiedKFold(n_splits=min(5, len(real)), shuffle=True, random_state=seed)
    return float(cross_val_score(LogisticRegression(max_iter=5000), x, y, cv=folds).mean())


def two_sample(draw, real: torch.Tensor, repeats: int) -> dict[str, float]:
    """``draw(n, seed) -> (n, C, H, W)``; accuracy mean and standard deviation over ``repeats`` draws."""
    accs = [two_sample_accuracy(draw(len(real), r), real, r) for r in range(repeats)]
    return {"accuracy": float(np.mean(accs)), "std": float(np.std(accs)), "runs": accs}


def rendered(sampler, h: int, w: int):
    return lambda n, seed: sampler(n, torch.Generator().manual_seed(1000 + seed)).render(h, w)


def hyper_sampler(prior: HyperPrior, density):
    def sample(n, generator):
        prior.density = density  # None: N(0, I)
        return prior.sample(n, generator)
    return sample


def get_priors(a, train, c: int) -> dict:
    priors = {}
    if a.from_run:
        for name in ("hyper", "meta"):
            path = Path(a.from_run) / name / "prior.safetensors"
            if path.exists():
                priors[name] = load_prior(path)
        if "hyper" not in priors:
            raise SystemExit(f"no hyper/prior.safetensors under {a.from_run}; run experiments/inpainting.py first")
        return priors
    layers, width = map(int, a.siren.split("x"))
    out = Path(a.out)
    torch.manual_seed(0)
    priors["hyper"] = HyperPrior(ip.Siren(2, c, width, layers), **HYPER)
    train_for(priors["hyper"], train, a.minutes, out / "hyper", None, a.batch, a.lr)
    try:
        from inrprior.meta import MetaPrior
    except ImportError:
        return priors
    torch.manual_seed(0)
    priors["meta"] = MetaPrior(ip.Siren(2, c, width, layers), **META)
    train_for(priors["meta"], train, a.minutes, out / "meta", None, a.batch, a.meta_lr)
    return priors


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="from_run", default=None, help="a folder written by experiments/inpainting.py")
    p.add_argument("--data", default="faces")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--siren", default="3x64")
    p.add_argument("--minutes", type=float, default=15.0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--split", choices=("rule", "anchor"), default="rule",
                   help="as in experiments/inpainting.py; with --from, the split that run used")
    p.add_argument("--meta-lr", type=float, default=1e-4)
    p.add_argument("--n", type=int, default=16, help="samples per grid")
    p.add_argument("--render-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--components", type=int, default=4, help="GaussianMixture components")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="runs/samples")
    p.add_argument("--quick", action="store_true", help="2 minutes of training per prior")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.quick:
        a.minutes = min(a.minutes, 2.0)
    from inrprior.plots import image_grid

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.from_run:  # score on the split the priors were trained with
        a.split = json.loads((Path(a.from_run) / "results.json").read_text())["config"].get("split", "rule")
    train, test = load_split(a.data, a.size, a.split)
    c, h, w = train.shape[1:]
    priors = get_priors(a, train, c)
    hyper, r = priors["hyper"], a.render_size
    samplers = {}
    for kind in ("standard", "gaussian", "gmm"):
        density = hyper.fit_density(train, kind=kind, **({"n_components": a.components} if kind == "gmm" else {}))
        samplers["hyper N(0, I)" if kind == "standard" else f"hyper {kind}"] = hyper_sampler(hyper, density)
    if "meta" in priors:
        meta = priors["meta"]
        if meta.density is None:
            meta.fit_density(train, kind="gaussian")
        samplers["meta"] = meta.sample
    net = ip.Siren(2, c, hyper.net.config["hidden_features"], hyper.net.config["hidden_layers"])
    samplers["random-init SIREN"] = lambda n, g: ip.Functions(net, net.init_params(n, generator=g))

    results = {"config": vars(a), "two_sample": {}}
    for name, sampler in samplers.items():
        slug = name.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "")
        image_grid(sampler(a.n, torch.Generator().manual_seed(0)).render(r, r), out / f"samples_{slug}.png",
                   nrow=int(np.ceil(np.sqrt(a.n))), title=f"{name} samples, rendered at {r}x{r}")
        results["two_sample"][name] = two_sample(rendered(sampler, h, w), test, a.repeats)

    def real_draw(n, seed):
        return train[torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]]
    results["two_sample"]["real (train) vs held-out"] = two_sample(real_draw, test, a.repeats)

    strip = hyper.interpolate(test[0], test[1], n=8).render(r, r)
    ends = torch.nn.functional.interpolate(test[:2], size=(r, r), mode="nearest")
    image_grid(torch.cat([ends[:1], strip, ends[1:]]), out / "interpolation.png", nrow=10,
               titles=["image A"] + [f"t={t:.2f}" for t in torch.linspace(0, 1, 8).tolist()] + ["image B"],
               title="HyperPrior: functions along the latent line between two held-out images")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"classifier two-sample test vs {len(test)} held-out images (logistic regression, {a.repeats} repeats of "
          f"5-fold CV; 0.5 = indistinguishable)")
    for name, res in results["two_sample"].items():
        print(f"  {name:28s} accuracy {res['accuracy']:.3f} +- {res['std']:.3f}")
    print(f"wrote {out / 'results.json'}, samples_*.png, interpolation.png")
    return results


if __name__ == "__main__":
    main()
