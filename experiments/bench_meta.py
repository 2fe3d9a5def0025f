"""Meta-training speed and memory: the vectorized inner loop (torch.func vmap) against the ``higher`` per-task loop.

Same configuration for both paths: second-order MAML, 3 inner SGD steps (lr 1e-2), random images, the meta-loss of
a batch of tasks followed by ``loss.backward()`` (``MetaPrior.forward`` vs ``MetaPrior.reference_forward``). Every
measurement runs in a fresh subprocess (isolated memory, no shared compile caches):

- steps/s: median of ``--iters`` timed meta-steps after ``--warmup`` untimed ones (compilation happens there);
- peak tensor memory: one extra step under ``torch.profiler(profile_memory=True)``; the running sum of the CPU
  allocator's allocations minus frees during the step, maximum over time (tensor bytes only; on CUDA,
  ``torch.cuda.max_memory_allocated``);
- peak RSS growth: the process's resident-set high-water mark over one step minus its size before it (Linux: the
  mark is reset through ``/proc/self/clear_refs``); includes allocator caching and fragmentation;
- FLOPs: matmul FLOPs of one eager meta-step (``torch.utils.flop_counter.FlopCounterMode``: every forward and
  backward matmul), so model GFLOP/s = FLOPs / step time, set against the matmul limit on the same machine in the
  same process. The limit at the step's shapes ("mm step"): every matrix product of one eager step is recorded with
  its shapes (a ``TorchDispatchMode``: ``mm``, ``addmm``, ``bmm``, ``baddbmm``, forward and backward), each distinct
  shape is timed alone with ``torch.mm`` / ``torch.bmm`` (fastest of 30), and the limit is the step's FLOPs over the
  sum of those times: what the library reaches on exactly this step's products with nothing else to do. The
  efficiency column divides by it. For reference, two single shapes: ``(B*N, h) @ (h, h)`` (all tasks' points
  through one shared layer) and ``(N, h) @ (h, h)`` (one task, the loop's shape).

A third table gives the memory of second-order MAML for 3 and 10 inner steps, with and without gradient
checkpointing of the inner loop (``MetaPrior(checkpoint=True)``). ``torch.compile`` of the ``higher`` loop is not
measured by default: its inner ``torch.autograd.grad(create_graph=True)`` needs double backward through a compiled
graph, which aot_autograd refuses (``--compile-higher`` tries anyway). The vectorized path compiles, since
``torch.func.grad`` is traced into the forward graph.

    python experiments/bench_meta.py                 # full table (long on a CPU)
    python experiments/bench_meta.py --quick         # small subset, few iterations
    python experiments/bench_meta.py --device cuda   # GPU rows
Writes ``results.json`` and ``bench_meta.png`` into ``--out`` (default ``runs/bench_meta``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {"32x32 3x256": dict(size=32, hidden=256, layers=3), "8x8 2x64": dict(size=8, hidden=64, layers=2)}


def _rss_kb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def _fastest(torch, fn, device, reps: int = 30) -> float:
    """Seconds of the fastest of ``reps`` timed calls of ``fn`` after one untimed call (the limit; a median of a
    few products of a few milliseconds each moved by up to 1.8x between processes)."""
    times = []
    for _ in range(reps + 1):
        _sync(torch, device)
        t = time.perf_counter()
        fn()
        _sync(torch, device)
        times.append(time.perf_counter() - t)
    return min(times[1:])


def _gflops_mm(torch, m: int, k: int, n: int, device) -> float:
    """``torch.mm`` GFLOP/s at ``(m, k) @ (k, n)``."""
    a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
    return 2 * m * k * n / _fastest(torch, lambda: a @ b, device) / 1e9


def _matmul_shapes(torch, step) -> dict:
    """``{(op, shapes of its two matrix operands): count}`` of the matrix products one call of ``step`` runs."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            op = func.overloadpacket.__name__
            if op in ("mm", "addmm", "bmm", "baddbmm"):
                a, b = args[-2:]  # addmm / baddbmm: (input, mat1, mat2)
                calls[("bmm" if op.endswith("bmm") else "mm", tuple(a.shape), tuple(b.shape))] += 1
            return func(*args, **(kwargs or {}))

    calls = Counter()
    with Record():
        step()
    return dict(calls)


def _step_limit(torch, calls: dict, device) -> tuple[float, float]:
    """(FLOPs, seconds) of the recorded products, each timed alone (:func:`_fastest`) with torch.mm / bmm."""
    flops = seconds = 0.0
    for (op, sa, sb), count in calls.items():
        a, b = torch.randn(*sa, device=device), torch.randn(*sb, device=device)
        fn = torch.bmm if op == "bmm" else torch.mm
        batch = sa[0] if op == "bmm" else 1
        flops += count * 2 * batch * sa[-2] * sa[-1] * sb[-1]
        seconds += count * _fastest(torch, lambda: fn(a, b), device)  # noqa: B023 (called before the next loop)
    return flops, seconds


def _sync(torch, device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def worker(job: dict) -> dict:
    """One measurement in this process (see the module docstring)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import inrprior as ip
    from inrprior.meta import MetaPrior

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    device = torch.device(job["device"])
    torch.manual_seed(0)
    net = ip.Siren(2, job["channels"], job["hidden"], job["layers"], 30.0)
    prior = MetaPrior(net, algorithm=job.get("algorithm", "maml"), inner_steps=job["inner_steps"],
                      checkpoint=job.get("checkpoint", False)).to(device)
    images = torch.rand(job["batch"], job["channels"], job["size"], job["size"], device=device)
    fn = prior.forward if job["path"] == "vmap" else prior.reference_forward
    loss_of = (lambda x: fn(x)[0])
    if job["mode"] == "compile":
        loss_of = torch.compile(loss_of)

    def step():
        prior.zero_grad(set_to_none=True)
        loss_of(images).backward()
        _sync(torch, device)

    result = {"threads": torch.get_num_threads()}
    t = time.perf_counter()
    for _ in range(job["warmup"]):
        step()
    result["warmup_s"] = time.perf_counter() - t
    times = []
    for _ in range(job["iters"]):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    result["times"] = times
    result["step_s"] = statistics.median(times)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        result["peak_tensor_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        from torch.profiler import ProfilerActivity, profile
        prior.zero_grad(set_to_none=True)  # frees of blocks allocated before profiling are not reported
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
        events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
        live = peak = 0
        for _, nbytes in events:
            live += nbytes
            peak = max(peak, live)
        result["peak_tensor_mb"] = peak / 2**20
        try:
            before = _rss_kb("VmRSS")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the high-water mark VmHWM to the current RSS
            step()
            result["rss_peak_mb"] = (_rss_kb("VmHWM") - before) / 1024
        except OSError:
            result["rss_peak_mb"] = None
    if job["mode"] == "eager" and job.get("flops", True):
        with FlopCounterMode(display=False) as counter:
            step()
        result["flops"] = counter.get_total_flops()
    if job.get("flops", True):  # the limit at this step's products, timed in this process (compile rows too)
        def eager_step():
            prior.zero_grad(set_to_none=True)
            fn(images)[0].backward()
        calls = _matmul_shapes(torch, eager_step)
        limit_flops, limit_s = _step_limit(torch, calls, device)
        result.update(mm_gflops_step=limit_flops / limit_s / 1e9, step_matmul_flops=limit_flops,
                      step_matmul_shapes=len(calls))
    n, h, b = job["size"] ** 2, job["hidden"], job["batch"]
    result["mm_gflops_batched"] = _gflops_mm(torch, b * n, h, h, device)
    result["mm_gflops_task"] = _gflops_mm(torch, n, h, h, device)
    return result


def run_job(job: dict, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps(job)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**job, "error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {**job, "error": err[:300]}
    return {**job, **json.loads(lines[-1])}


def fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true",
                   help="8x8 at B 4/16/64 and 32x32 at B 4; compile only at 8x8 B 16; 1 warmup, 2 timed steps")
    p.add_argument("--batches", default="4,16,64")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated from {list(CONFIGS)}")
    p.add_argument("--modes", default="eager,compile")
    p.add_argument("--compile-batches", default=None, help="meta-batches of the compile rows (default: --batches)")
    p.add_argument("--compile-higher", action="store_true", help="also try torch.compile on the higher loop")
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--no-memory-table", action="store_true")
    p.add_argument("--no-speed-table", action="store_true")
    p.add_argument("--out", default="runs/bench_meta")
    p.add_argument("--report-only", action="store_true", help="re-print the tables from OUT/results.json")
    a = p.parse_args(argv)
    if a.report_only:
        saved = json.loads((Path(a.out) / "results.json").read_text())
        return report(saved["speed"], saved["memory"], Path(a.out))
    if a.worker:
        print(json.dumps(worker(json.loads(a.worker))))
        return None
    if a.quick:
        a.warmup, a.iters = 1, 2
    base = dict(channels=a.channels, inner_steps=3, warmup=a.warmup, iters=a.iters, threads=a.threads,
                device=a.device)
    jobs = []
    for name in ([] if a.no_speed_table else a.configs.split(",")):
        for b in map(int, a.batches.split(",")):
            if a.quick and name.startswith("32x32") and b != 4:
                continue
            for mode in a.modes.split(","):
                if a.quick and mode == "compile" and not (name.startswith("8x8") and b == 16):
                    continue
                if mode == "compile" and a.compile_batches and b not in map(int, a.compile_batches.split(",")):
                    continue
                for path in ("vmap", "higher"):
                    if path == "higher" and mode == "compile" and not a.compile_higher:
                        continue
                    jobs.append({**base, **CONFIGS[name], "config": name, "batch": b, "mode": mode, "path": path})
    mem_jobs = []
    if not a.no_memory_table:
        name, b = ("8x8 2x64", 16) if a.quick else ("32x32 3x256", 4)
        for steps in (3, 10):
            for path, ckpt in (("vmap", False), ("vmap", True), ("higher", False)):
                mem_jobs.append({**base, **CONFIGS[name], "config": name, "batch": b, "mode": "eager", "path": path,
                                 "checkpoint": ckpt, "inner_steps": steps, "warmup": 1, "iters": 1, "flops": False})
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results, memory = [], []
    for i, job in enumerate(jobs + mem_jobs):
        r = run_job(job, a.timeout)
        (results if i < len(jobs) else memory).append(r)
        tag = f"{r['config']} B={r['batch']} {r['mode']} {r['path']}" + (" ckpt" if r.get("checkpoint") else "")
        if r.get("inner_steps", 3) != 3:
            tag += f" steps={r['inner_steps']}"
        print(f"[{i + 1}/{len(jobs) + len(mem_jobs)}] {tag}: " +
              (r["error"] if "error" in r else f"{r['step_s']:.3f} s/step, {r['peak_tensor_mb']:.1f} MB"), flush=True)
        (out / "results.json").write_text(json.dumps({"args": vars(a), "speed": results, "memory": memory}, indent=1))
    report(results, memory, out)


def report(results, memory, out: Path):
    flops = {(r["config"], r["batch"]): r["flops"] for r in results if r.get("flops") and r["path"] == "vmap"}
    rows, ratios = [], {}
    print("\nspeed (higher = per-task loop with higher; ratio = vmap / higher)")
    print(f"{'config':12s} {'B':>3s} {'mode':8s} {'vmap st/s':>9s} {'higher st/s':>11s} {'ratio':>6s} "
          f"{'vmap MB':>8s} {'higher MB':>9s} {'mem x':>6s} {'GFLOP/s v':>9s} {'GFLOP/s h':>9s} "
          f"{'mm B*N':>7s} {'mm N':>6s} {'mm step':>7s} {'eff':>5s} {'eff h':>5s}")
    keyed = {(r["config"], r["batch"], r["mode"], r["path"]): r for r in results}
    for (cfg, b, mode, path), r in keyed.items():
        if path != "vmap":
            continue
        h = keyed.get((cfg, b, "eager", "higher")) if mode == "eager" else keyed.get((cfg, b, mode, "higher"))
        h = h or keyed.get((cfg, b, "eager", "higher"))  # compile rows compare with the eager loop
        ok = lambda x: x is not None and "error" not in x  # noqa: E731
        v_sps = 1 / r["step_s"] if ok(r) else None
        h_sps = 1 / h["step_s"] if ok(h) else None
        f = flops.get((cfg, b))
        gv = f / r["step_s"] / 1e9 if f and ok(r) else None
        fh = h.get("flops") if ok(h) else None  # the loop's own work: its products are not the vmapped ones
        gh = fh / h["step_s"] / 1e9 if fh else None
        # the limit at this step's own products, measured in the row's own process
        mm = r.get("mm_gflops_step") or (keyed.get((cfg, b, "eager", "vmap")) or {}).get("mm_gflops_step")
        mm_h = h.get("mm_gflops_step") if ok(h) else None
        row = dict(config=cfg, batch=b, mode=mode, vmap_steps_s=v_sps, higher_steps_s=h_sps,
                   ratio=v_sps / h_sps if v_sps and h_sps else None,
                   vmap_mb=r.get("peak_tensor_mb"), higher_mb=h.get("peak_tensor_mb") if ok(h) else None,
                   vmap_gflops=gv, higher_gflops=gh, mm_batched=r.get("mm_gflops_batched"),
                   mm_task=r.get("mm_gflops_task"), mm_step=mm, efficiency=gv / mm if gv and mm else None,
                   higher_efficiency=gh / mm_h if gh and mm_h else None, error=r.get("error"))
        row["mem_ratio"] = row["vmap_mb"] / row["higher_mb"] if row["vmap_mb"] and row["higher_mb"] else None
        rows.append(row)
        ratios[f"{cfg}\nB={b} {mode}"] = row["ratio"]
        print(f"{cfg:12s} {b:3d} {mode:8s} {fmt(v_sps, '9.2f')} {fmt(h_sps, '11.2f')} {fmt(row['ratio'], '6.2f')} "
              f"{fmt(row['vmap_mb'], '8.1f')} {fmt(row['higher_mb'], '9.1f')} {fmt(row['mem_ratio'], '6.2f')} "
              f"{fmt(gv, '9.1f')} {fmt(gh, '9.1f')} {fmt(row['mm_batched'], '7.1f')} {fmt(row['mm_task'], '6.1f')} "
              f"{fmt(mm, '7.1f')} {fmt(row['efficiency'], '5.2f')} {fmt(row['higher_efficiency'], '5.2f')}"
              + (f"  ERROR {r['error']}" if r.get("error") else ""))
    if memory:
        print("\nsecond-order MAML memory vs inner steps (peak tensor MB / peak RSS growth MB / s per step)")
        for r in memory:
            name = f"{r['path']}{' + checkpoint' if r.get('checkpoint') else ''}"
            print(f"{r['config']:12s} B={r['batch']:<3d} steps={r['inner_steps']:<3d} {name:18s} " +
                  (r["error"] if "error" in r else
                   f"{r['peak_tensor_mb']:8.1f} {fmt(r.get('rss_peak_mb'), '8.1f')} {r['step_s']:8.3f}"))
    summary = {"rows": rows, "memory": memory, "raw": results}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        names = [k for k, v in ratios.items() if v]
        fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(names)), 3.5))
        ax.bar(range(len(names)), [ratios[k] for k in names])
        ax.axhline(1, color="k", lw=0.8)
        ax.set_xticks(range(len(names)), names, fontsize=7)
        ax.set_ylabel("vmap steps/s / higher steps/s")
        fig.tight_layout()
        fig.savefig(out / "bench_meta.png", dpi=120)
    except Exception as e:  # plotting is a convenience; the numbers are in the JSON
        print(f"(no plot: {e})")
    print(f"\nwrote {out / 'results.json'}, {out / 'summary.json'} and {out / 'bench_meta.png'}")


if __name__ == "__main__":
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    main()
