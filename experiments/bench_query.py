"""Points per second of render and derivative queries, against a plain forward pass of the same SIREN.

    python experiments/bench_query.py [--quick] [--device cpu|cuda] [--out runs/bench_query]

Every row is measured in the same run on the same device, so the ratios are what to read. On a CUDA machine the GPU
rows are added (bf16 autocast and torch.compile as options of the plain forward).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import inrprior as ip
from inrprior.functions import query_params


def timed(fn, device, repeats):
    fn()  # warm-up (and compile, where asked)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def bench(device: torch.device, n_points: int, batch: int, repeats: int, hidden: int, layers: int) -> list[dict]:
    torch.manual_seed(0)
    net = ip.Siren(2, 3, hidden, layers).to(device)
    params = {k: v.to(device) for k, v in net.init_params(batch).items()}
    funcs = ip.Functions(net, params)
    coords = torch.rand(n_points, 2, device=device) * 2 - 1
    side = int(n_points ** 0.5)
    cases = {
        "forward (plain, batched matmul)": lambda: query_params(net, params, coords, ("value",)),
        "query value+gradient": lambda: funcs.query(coords, ("value", "gradient")),
        "query value+gradient+laplacian": lambda: funcs.query(coords, ("value", "gradient", "laplacian")),
        f"render {side}x{side}": lambda: funcs.render(side, side),
    }
    if device.type == "cuda":
        def bf16():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return query_params(net, params, coords, ("value",))
        cases["forward bf16 autocast"] = bf16
    rows = []
    with torch.no_grad():
        base = None
        for name, fn in cases.items():
            sec = timed(fn, device, repeats)
            pts = batch * n_points / sec
            base = base or pts
            rows.append(dict(device=str(device), case=name, seconds=sec, points_per_s=pts, vs_forward=pts / base))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: both where available)")
    ap.add_argument("--out", default="runs/bench_query")
    args = ap.parse_args(argv)
    n_points, batch, repeats = (64 * 64, 2, 2) if args.quick else (256 * 256, 4, 5)
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for d in devices:
        rows += bench(torch.device(d), n_points, batch, repeats, hidden=256, layers=3)
    print(f"{'device':6} {'case':36} {'Mpoints/s':>10} {'x forward':>10}")
    for r in rows:
        print(f"{r['device']:6} {r['case']:36} {r['points_per_s'] / 1e6:10.3f} {r['vs_forward']:10.3f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
