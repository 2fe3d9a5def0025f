"""The speed table of this machine (``inrprior bench``): points per second of queries (values, gradients,
Laplacians) and renders, each next to a plain forward pass of the same SIREN measured in the same run.

Ratios measured side by side are what to compare across machines; absolute numbers depend on the load.
"""
from __future__ import annotations

import time

import torch

from torch.func import functional_call, vmap

from .functions import Functions, query_params_autodiff
from .siren import Siren

__all__ = ["timed", "query_rows", "mm_gflops", "print_rows", "HEADER", "row_line"]


def timed(fn, device: torch.device, repeats: int) -> float:
    """Mean seconds of ``fn()`` after one warm-up call (which also compiles, where asked)."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / repeats


def mm_gflops(n: int, k: int, m: int, device: torch.device, repeats: int = 5) -> float:
    """``torch.mm`` GFLOP/s at ``(n, k) @ (k, m)``: the limit a SIREN layer of that shape can reach."""
    a, b = torch.randn(n, k, device=device), torch.randn(k, m, device=device)
    return 2 * n * k * m / timed(lambda: a @ b, device, repeats) / 1e9


def query_rows(device: torch.device, n_points: int = 256 * 256, batch: int = 4, repeats: int = 3,
               hidden: int = 256, layers: int = 3, compile: bool = True, on_row=None) -> list[dict]:
    """Points per second of queries (``Functions.query``: the hand-written forward mode; the torch.func path next
    to it) and of ``render`` (eager and compiled), for ``batch`` functions, against the module's plain forward.
    ``on_row(row)`` is called as each row is measured (a table that prints as it goes)."""
    on_row = on_row or (lambda row: None)
    torch.manual_seed(0)
    net = Siren(2, 3, hidden, layers).to(device)
    params = {k: v.to(device) for k, v in net.init_params(batch).items()}
    funcs = Functions(net, params)
    coords = torch.rand(n_points, 2, device=device) * 2 - 1
    side = int(n_points ** 0.5)
    value, gradient, laplacian = ("value",), ("value", "gradient"), ("value", "gradient", "laplacian")
    forward = vmap(lambda p: functional_call(net, p, (coords,)))  # the nn.Module's own forward, per function
    cases = {
        "forward (values)": lambda: forward(params),
        "query value": lambda: funcs.query(coords, value),
        "query value+gradient": lambda: funcs.query(coords, gradient),
        "query value+gradient+laplacian": lambda: funcs.query(coords, laplacian),
        "  same by torch.func (gradient)": lambda: query_params_autodiff(net, params, coords, gradient),
        "  same by torch.func (laplacian)": lambda: query_params_autodiff(net, params, coords, laplacian),
        f"render {side}x{side}": lambda: funcs.render(side, side),
    }
    if compile:  # the first call compiles (seconds), outside the timing
        cases[f"render {side}x{side} compile=True"] = lambda: funcs.render(side, side, compile=True)
    if device.type == "cuda":
        def bf16():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return forward(params)
        cases["forward bf16 autocast"] = bf16
        cases[f"render {side}x{side} amp=bf16"] = lambda: funcs.render(side, side, amp="bf16")
    flops = 2 * batch * n_points * sum(p.numel() for p in net.parameters())  # ~ one multiply-add per weight
    rows, base = [], None
    with torch.no_grad():
        for name, fn in cases.items():
            sec = timed(fn, device, repeats)
            pts = batch * n_points / sec
            base = base or pts
            rows.append(dict(device=str(device), case=name, seconds=sec, points_per_s=pts, vs_forward=pts / base,
                             gflops=flops / sec / 1e9 if name.startswith("forward") else None))
            on_row(rows[-1])
    limit = mm_gflops(batch * n_points if device.type == "cuda" else min(batch * n_points, 65536), hidden, hidden,
                      device)
    rows.append(dict(device=str(device), case=f"torch.mm {hidden}x{hidden} (the limit)", seconds=None,
                     points_per_s=None, vs_forward=None, gflops=limit))
    on_row(rows[-1])
    return rows


HEADER = f"{'device':7} {'case':38} {'Mpoints/s':>10} {'x forward':>10} {'GFLOP/s':>8}"


def row_line(r: dict) -> str:
    def f(v, fmt):
        return format(v, fmt) if v is not None else "-"
    return (f"{r['device']:7} {r['case']:38} {f(r['points_per_s'] and r['points_per_s'] / 1e6, '10.3f'):>10} "
            f"{f(r['vs_forward'], '10.3f'):>10} {f(r['gflops'], '8.1f'):>8}")


def print_rows(rows: list[dict]) -> None:
    print(HEADER)
    for r in rows:
        print(row_line(r))
