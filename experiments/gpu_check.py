"""GPU correctness: the same results on the GPU as on the CPU (and as the oracles, on the GPU).

Checks, each printed as one row with its measured error and tolerance (exit status 1 if any fails):

- query: value / gradient / Laplacian of a batch of SIRENs at continuous points, the hand-written forward mode on
  the device against the CPU (float64 and float32) and against the ``torch.func`` oracle on the device;
- meta: the vectorized meta-gradient on the device against the ``higher`` per-task loop on the device (float64,
  the unit tests' 1e-6) and against the vectorized path on the CPU, for MAML, first-order MAML and Meta-SGD;
- hyper: a linear HyperPrior with the exact posterior, loss and gradients device vs CPU (float64, same random draws);
- train: five steps of ``inrprior.train`` (float64) on the device and on the CPU end with the same weights;
- fit: ``inrprior.fit`` on the device against the CPU (float32, PSNR after 30 steps, about 39 dB), and with
  ``compile`` and ``amp="bf16"`` on the device (PSNR within a few dB: bf16 changes the arithmetic);
- api: a CPU generator seeds a device network with the CPU's weights and a device generator draws on the device;
  ``Functions.to(device)`` leaves the prior's network where it was and queries as on the CPU; a NaN image on the
  device is refused.

    python experiments/gpu_check.py              # needs CUDA
    python experiments/gpu_check.py --device cpu # the same code path against itself (a smoke test)
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile

import torch

import inrprior as ip
from inrprior.coords import image_to_points
from inrprior.functions import query_params, query_params_autodiff
from inrprior.hyper import HyperPrior
from inrprior.meta import MetaPrior

ROWS: list[tuple[str, float, float]] = []


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Norm-wise relative difference ``|a - b| / |b|`` (both moved to the CPU, float64)."""
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def check(name: str, err: float, tol: float) -> None:
    ROWS.append((name, err, tol))
    print(f"{'ok  ' if err <= tol else 'FAIL'} {name:62s} {err:10.2e}  (tolerance {tol:.0e})", flush=True)


def faces(n: int, size: int = 8, split: str = "test") -> torch.Tensor:
    """The first ``n`` shipped faces, ``(n, 1, size, size)`` float64."""
    return ip.data.stack(ip.data.load("faces", size=size, split=split))[:n].double()


def query_checks(dev):
    kinds = ("value", "gradient", "laplacian")
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        torch.manual_seed(0)
        net = ip.Siren(2, 3, 64, 3).to(dtype)
        params = net.init_params(4)
        coords = torch.rand(4, 500, 2, dtype=dtype) * 2 - 1
        cpu = query_params(net, params, coords, kinds)
        gpu = query_params(net.to(dev), {k: v.to(dev) for k, v in params.items()}, coords.to(dev), kinds)
        for k in kinds:
            check(f"query {k} {str(dtype)[6:]}: device vs CPU", rel(getattr(gpu, k), getattr(cpu, k)), tol)
        if dtype == torch.float64:
            ref = query_params_autodiff(net, {k: v.to(dev) for k, v in params.items()}, coords.to(dev), kinds)
            for k in kinds:
                check(f"query {k} float64: forward mode vs torch.func (device)", rel(getattr(gpu, k),
                                                                                     getattr(ref, k)), 1e-10)


def meta_checks(dev):
    images = faces(3)
    for name, kw in (("maml", {}), ("fomaml", {"algorithm": "fomaml"}), ("meta-sgd", {"meta_sgd": True})):
        torch.manual_seed(0)
        prior = MetaPrior(ip.Siren(2, 1, 32, 2).to(torch.float64), inner_lr=0.1, context_fraction=0.5, **kw)
        if kw.get("meta_sgd"):
            with torch.no_grad():
                for lr in prior.inner_lrs:
                    lr.uniform_(0.05, 0.2)

        def grads(fn, x):
            prior.zero_grad(set_to_none=True)
            fn(x, torch.Generator().manual_seed(3))[0].backward()
            return [p.grad.detach().clone() for p in prior.parameters() if p.grad is not None]

        cpu = grads(prior.forward, images)
        prior.to(dev)
        x = images.to(dev)
        gpu, ref = grads(prior.forward, x), grads(prior.reference_forward, x)
        check(f"meta-gradient {name}: vmap vs higher (device, float64)",
              max(rel(a, b) for a, b in zip(gpu, ref)), 1e-6)
        check(f"meta-gradient {name}: device vs CPU (float64)", max(rel(a, b) for a, b in zip(gpu, cpu)), 1e-9)


def hyper_checks(dev):
    images = faces(4)
    torch.manual_seed(0)
    prior = HyperPrior(ip.Siren(2, 1, 32, 2).to(torch.float64), output="linear", encoder="posterior",
                       latent_dim=8, min_context=10).to(torch.float64)

    def run(x):
        prior.zero_grad(set_to_none=True)
        loss = prior(x, torch.Generator().manual_seed(5))[0]
        loss.backward()
        return loss.detach(), [p.grad.detach().clone() for p in prior.parameters() if p.grad is not None]

    loss_cpu, g_cpu = run(images)
    prior.to(dev)
    loss_gpu, g_gpu = run(images.to(dev))
    check("hyper linear+posterior: loss device vs CPU (float64)", rel(loss_gpu, loss_cpu), 1e-9)
    check("hyper linear+posterior: gradients device vs CPU (float64)",
          max(rel(a, b) for a, b in zip(g_gpu, g_cpu)), 1e-8)
    coords, values = image_to_points(images.to(dev))
    pred = prior.adapt_context(coords[:32].expand(4, -1, -1), values[:, :32]).query(coords).value
    prior.to("cpu")
    coords_c, values_c = image_to_points(images)
    ref = prior.adapt_context(coords_c[:32].expand(4, -1, -1), values_c[:, :32]).query(coords_c).value
    check("hyper adapt_context (32 of 64 pixels): device vs CPU (float64)", rel(pred, ref), 1e-9)
    mask = torch.ones(4, 64, dtype=torch.float64)
    mask[1, 12:] = 0  # one image with 12 known pixels: refined on its latent only, the others on every weight
    refined = {}
    for where in (dev, "cpu"):
        prior.to(where)
        torch.manual_seed(0)
        refined[where] = prior.adapt_context(coords_c.to(where), values_c.to(where), steps=2,
                                             mask=mask.to(where)).query(coords_c.to(where)).value
    check("hyper refinement of a masked batch (per-image targets): device vs CPU", rel(refined[dev], refined["cpu"]),
          1e-8)


def train_checks(dev):
    data = faces(16, split="train")
    finals = {}
    for where in ("cpu", dev):
        torch.manual_seed(0)
        prior = MetaPrior(ip.Siren(2, 1, 32, 2).to(torch.float64), inner_lr=0.1)
        with tempfile.TemporaryDirectory() as tmp:
            ip.train(prior, data, steps=5, out=tmp, batch_size=4, lr=1e-3, device=where, progress=False,
                     density=None, eval_every=10, checkpoint_every=5)
        finals[where] = torch.cat([p.detach().cpu().flatten() for p in prior.parameters()])
    check("train 5 steps (MetaPrior, float64): device vs CPU weights", rel(finals[dev], finals["cpu"]), 1e-8)


def fit_checks(dev):
    image = faces(2, size=32).float()
    psnr = {}
    for name, where, kw in (("cpu", "cpu", {}), ("device", dev, {}), ("device compile", dev, {"compile": True}),
                            ("device bf16", dev, {"amp": "bf16"})):
        net = ip.Siren(2, 1, 64, 3).to(where)
        _, hist = ip.fit(image.to(where), steps=30, net=net, lr=1e-3, progress=False, seed=0, **kw)
        psnr[name] = hist.psnr[-1]
    print("fit 30 steps, PSNR: " + ", ".join(f"{k} {v:.2f}" for k, v in psnr.items()))
    check("fit float32 30 steps: |PSNR device - CPU| (dB)", abs(psnr["device"] - psnr["cpu"]), 0.5)
    check("fit with compile: |PSNR - eager| on device (dB)", abs(psnr["device compile"] - psnr["device"]), 0.5)
    check("fit with amp bf16: |PSNR - float32| on device (dB)", abs(psnr["device bf16"] - psnr["device"]), 3.0)


def api_checks(dev):
    net = ip.Siren(2, 1, 32, 2).to(torch.float64)
    cpu = net.init_params(3, generator=torch.Generator().manual_seed(7))
    on_dev = net.to(dev).init_params(3, generator=torch.Generator().manual_seed(7))
    check("init_params, CPU generator: device net vs CPU net weights", max(rel(on_dev[k], cpu[k]) for k in cpu), 0)
    check("init_params, CPU generator: tensors on the net's device",
          float(any(v.device.type != torch.device(dev).type for v in on_dev.values())), 0)
    a, b = (net.init_params(3, generator=torch.Generator(dev).manual_seed(7)) for _ in range(2))
    check("init_params, device generator: same seed, same draw", max(rel(a[k], b[k]) for k in a), 0)
    net.to("cpu")

    torch.manual_seed(0)
    prior = MetaPrior(ip.Siren(2, 1, 32, 2).to(torch.float64), inner_lr=0.1)
    images = faces(3)
    f = prior.adapt(images, steps=2)
    coords = torch.rand(200, 2, dtype=torch.float64) * 2 - 1
    moved = f.to(dev).query(coords.to(dev), ("value", "laplacian"))
    ref = f.query(coords, ("value", "laplacian"))
    check("Functions.to(device): prior's net stays on the CPU",
          float(next(prior.net.parameters()).device.type != "cpu"), 0)
    check("Functions.to(device): laplacian vs CPU (float64)", rel(moved.laplacian, ref.laplacian), 1e-10)
    half = faces(1, size=16).to(dev, torch.float16)
    _, hist = ip.fit(half, steps=5, net=ip.Siren(2, 1, 16, 1).to(dev), lr=1e-3, progress=False)
    check("fit of a float16 image on the device: finite PSNR (computed in float32)",
          float(not all(map(math.isfinite, hist.final_psnr))), 0)
    bad = images.to(dev).clone()
    bad[0, 0, 1, 1] = float("nan")
    try:
        prior.adapt(bad)
        wrong = 1.0  # accepted: a failure
    except ValueError as e:
        wrong = 0.0 if "nan" in str(e).lower() else 1.0
    check("a NaN image on the device: ValueError naming NaN", wrong, 0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    a = p.parse_args(argv)
    if a.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit("CUDA is not available here (use --device cpu for a smoke test)")
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    dev = torch.device(a.device)
    for section in (query_checks, meta_checks, hyper_checks, train_checks, fit_checks, api_checks):
        try:
            section(dev)
        except Exception as e:  # one broken section must not hide the others' results
            check(f"{section.__name__} raised {type(e).__name__}: {str(e)[:200]}", float("inf"), 0)
    failed = [r for r in ROWS if not r[1] <= r[2]]
    print(f"\n{len(ROWS) - len(failed)} of {len(ROWS)} checks passed on {dev}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
