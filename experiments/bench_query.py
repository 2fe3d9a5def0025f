"""Points per second of render and derivative queries, against a plain forward pass of the same SIREN.

    python experiments/bench_query.py [--quick] [--device cpu|cuda] [--out runs/bench_query]

Every row is measured in the same run on the same device, so the ratios are what to read. On a CUDA machine the GPU
rows (and a bf16-autocast forward) are added. `inrprior bench` prints the same rows at 128 x 128 points.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from inrprior.bench import print_rows, query_rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, no compiled render (a smoke run)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: both where available)")
    ap.add_argument("--out", default="runs/bench_query")
    args = ap.parse_args(argv)
    quick = dict(n_points=64 * 64, batch=2, repeats=2, compile=False)  # no compiled render: seconds, not minutes
    size = quick if args.quick else dict(n_points=256 * 256, batch=4, repeats=3)
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if any(d.startswith("cuda") for d in devices) and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available here")
    rows = [r for d in devices for r in query_rows(torch.device(d), **size)]
    print_rows(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
