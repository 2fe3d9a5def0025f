"""The demo job behind ``make demo`` / ``inrprior demo``: embedded data only, a few minutes on two CPU cores.

It runs a list of stages (:data:`STAGES`); each writes its files into the output folder and returns a
:class:`Section` of the report: a table and the figures to look at. ``report.md`` collects them and the same tables
are printed (this module is the command line's job, so it prints). A new stage is a function
``stage(out, config, device, progress) -> Section`` appended to :data:`STAGES`.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

__all__ = ["DemoConfig", "Section", "STAGES", "run_demo", "fit_stage", "blend_stage", "prior_stage"]


@dataclass
class DemoConfig:
    """Sizes and steps of the demo. The defaults take about ten minutes on two free CPU cores (a 3x128 SIREN:
    a quarter of the work of the 3x256 one per step; the MAML prior is most of it); :data:`QUICK` takes seconds."""
    size: int = 128
    hidden: int = 128
    layers: int = 3
    lr: float = 1e-4
    steps: dict = field(default_factory=lambda: {"value": 500, "gradient": 200, "laplacian": 200})
    blend_size: int = 96
    blend_steps: int = 200
    prior_size: int = 32
    prior_hidden: int = 128
    prior_layers: int = 3
    prior_steps: int = 300
    prior_lr: float = 1e-4
    prior_inner_lr: float = 4e-2  # the loss is on the [0, 1] colour scale: 4x Tancik et al.'s 1e-2


QUICK = DemoConfig(size=16, hidden=16, layers=1, lr=1e-3, steps={"value": 10, "gradient": 10, "laplacian": 10},
                   blend_size=16, blend_steps=10, prior_size=8, prior_hidden=16, prior_layers=1, prior_steps=4,
                   prior_lr=1e-3)


@dataclass
class Section:
    """One part of the report: a title, a short text, a table (header + rows) and the figures it produced."""
    title: str
    text: str = ""
    header: list[str] = field(default_factory=list)
    rows: list[list] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    numbers: dict = field(default_factory=dict)

    def table(self) -> str:
        cells = [self.header] + [[_cell(v) for v in row] for row in self.rows]
        widths = [max(len(str(r[i])) for r in cells) for i in range(len(self.header))]
        lines = ["| " + " | ".join(str(v).ljust(w) for v, w in zip(r, widths)) + " |" for r in cells]
        lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
        return "\n".join(lines)


def _cell(v) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def fit_stage(out: Path, config: DemoConfig, device: torch.device, progress: bool) -> Section:
    """Fit the cameraman from its values, from its gradients only and from its Laplacian only."""
    from .cli_image import write_fit_outputs
    from .data import photo
    from .fit import fit
    from .plots import fit_figure, plot_curves
    from .siren import Siren

    image = photo("camera", config.size)  # (1, size, size)
    section = Section("Fitting the cameraman from values, gradients and Laplacians",
                      text=f"scikit-image's cameraman at {config.size}x{config.size}, a {config.layers}x"
                           f"{config.hidden} SIREN (w0 30), Adam lr {config.lr}, full batch. Gradient-only fits "
                           "are scored after the best constant offset, Laplacian-only fits after the best affine "
                           "term (what those operators cannot see).",
                      header=["supervision", "steps", "alignment", "PSNR (dB)", "seconds", "ms/step"])
    rows, curves = [], {}
    for supervision, steps in config.steps.items():
        print(f"[demo] fitting the {config.size}x{config.size} cameraman from its {supervision} ({steps} steps)",
              flush=True)
        net = Siren(2, 1, config.hidden, config.layers, 30.0).to(device)
        start = time.perf_counter()
        functions, history = fit(image.to(device), steps=steps, supervision=supervision, net=net, lr=config.lr,
                                 progress=progress)
        seconds = time.perf_counter() - start
        result = write_fit_outputs(out / f"fit-{supervision}", image, functions, history,
                                   {"image": "camera", "supervision": supervision, "steps": steps,
                                    **asdict(config)}, name="fit")
        rows.append({**result["row"], "name": supervision})
        curves[supervision] = (history.step, history.psnr)
        section.rows.append([supervision, steps, history.alignment, result["psnr"], seconds, 1000 * seconds / steps])
        section.numbers[supervision] = {"psnr": result["psnr"], "seconds": seconds, "steps": steps}
    section.figures.append(fit_figure([result["truth"]] + rows, out / "fit_supervision.png",
                                      title="cameraman: target and fits (image, gradient magnitude, Laplacian)"))
    section.figures.append(plot_curves(curves, out / "psnr_curves.png", "step", "PSNR (dB, aligned)",
                                       title="cameraman fits"))
    return section


def blend_stage(out: Path, config: DemoConfig, device: torch.device, progress: bool) -> Section:
    """Poisson-composite the cat of ``chelsea`` into the cup of ``coffee`` inside a disk."""
    from .cli_image import write_blend_outputs
    from .coords import grid
    from .data import photo
    from .fit import blend
    from .siren import Siren

    s = config.blend_size
    base, insert = photo("coffee", s), photo("chelsea", s)  # (3, s, s) each
    mask = (grid(s, s).norm(dim=-1) < 0.45).float().reshape(1, s, s)  # a centred disk
    net = Siren(2, 3, config.hidden, config.layers, 30.0).to(device)
    print(f"[demo] blending chelsea into coffee at {s}x{s} ({config.blend_steps} steps)", flush=True)
    start = time.perf_counter()
    functions, history = blend(base.to(device), insert.to(device), mask=mask.to(device), steps=config.blend_steps,
                               net=net, lr=config.lr, progress=progress)
    seconds = time.perf_counter() - start
    files = write_blend_outputs(out / "blend", base, insert, mask, functions, history,
                                {"base": "coffee", "insert": "chelsea", "mask": "disk r=0.45", **asdict(config)})
    return Section("Poisson blending", text=f"chelsea's gradients inside a disk, coffee's outside, "
                                            f"{s}x{s}, {config.blend_steps} steps.",
                   header=["images", "steps", "seconds"], rows=[["coffee + chelsea", config.blend_steps, seconds]],
                   figures=[files[2]], numbers={"seconds": seconds})


def prior_stage(out: Path, config: DemoConfig, device: torch.device, progress: bool) -> Section:
    """Meta-train a small MAML prior on the embedded faces; sample it, fast-fit held-out faces, and compare the
    prior's PSNR-versus-steps curve with a standard initialization fitted by Adam."""
    from .data import load, stack
    from .fit import fit
    from .meta import MetaPrior
    from .plots import image_grid, plot_curves
    from .siren import Siren
    from .targets import psnr
    from .train import train

    s = config.prior_size
    train_set, test = load("faces", size=s, split="train"), stack(load("faces", size=s, split="test"))
    test = test[:8].to(device)
    torch.manual_seed(0)
    prior = MetaPrior(Siren(2, 1, config.prior_hidden, config.prior_layers, 30.0), inner_steps=3,
                      inner_lr=config.prior_inner_lr)
    print(f"[demo] meta-training a MAML prior on {len(train_set)} faces at {s}x{s} ({config.prior_steps} steps)",
          flush=True)
    start = time.perf_counter()
    train(prior, train_set, steps=config.prior_steps, out=out / "prior", batch_size=8, lr=config.prior_lr,
          eval_dataset=test, eval_every=max(1, config.prior_steps // 5), checkpoint_every=config.prior_steps,
          device=device, progress=progress, overwrite=True)  # the demo's own folder: a second `make demo` redoes it
    seconds = time.perf_counter() - start
    steps = [0, 1, 2, 3, 5, 10]
    prior_curve = [psnr(prior.adapt(test, steps=k).render(s, s), test).mean().item() for k in steps]
    base_steps = [1, 3, 10, 30, 100]
    _, history = fit(test, steps=max(base_steps), net=Siren(2, 1, config.prior_hidden, config.prior_layers, 30.0)
                     .to(device), lr=1e-4, progress=False, log_every=1)
    base_curve = [history.psnr[history.step.index(k)] for k in base_steps]
    figures = [
        image_grid(prior.sample(16, generator=torch.Generator().manual_seed(0)).render(s, s).cpu(),
                   out / "prior_samples.png", title="samples from the prior"),
        image_grid(torch.cat([test, prior.adapt(test, steps=3).render(s, s)]).cpu(), out / "prior_fastfit.png",
                   nrow=len(test), title="held-out faces (top) and 3-step fits from the prior (bottom)"),
        plot_curves({"MAML prior, SGD steps": (steps, prior_curve),
                     "standard init, Adam 1e-4": (base_steps, base_curve)}, out / "prior_psnr_vs_steps.png",
                    "adaptation steps", "PSNR on held-out faces (dB)", title="fast fitting"),
    ]
    rows = [[f"prior, {k} steps", p] for k, p in zip(steps, prior_curve)]
    rows += [[f"standard init, {k} Adam steps", p] for k, p in zip(base_steps, base_curve)]
    return Section("A meta-learned prior on faces",
                   text=f"MAML (3 inner SGD steps, lr {config.prior_inner_lr}) over a {config.prior_layers}x"
                        f"{config.prior_hidden} SIREN, {config.prior_steps} outer steps on 80 faces in "
                        f"{seconds:.0f} s; PSNR on {len(test)} held-out faces. The run folder is prior/ "
                        "(metrics.jsonl, report.html).",
                   header=["fit", "PSNR (dB)"], rows=rows, figures=figures,
                   numbers={"prior": dict(zip(map(str, steps), prior_curve)),
                            "standard": dict(zip(map(str, base_steps), base_curve)), "seconds": seconds})


STAGES: list[Callable[..., Section]] = [fit_stage, blend_stage, prior_stage]


def run_demo(out="runs/demo", quick: bool = False, device=None, progress: bool = True,
             config: DemoConfig | None = None) -> list[Section]:
    """Run every stage, write ``report.md`` and ``summary.json`` into ``out`` and print the tables.

    Args:
        out: output folder.
        quick: use :data:`QUICK` (tiny, seconds) instead of the default :class:`DemoConfig`.
        device: torch device (default CPU).
        progress: show progress bars.
        config: explicit sizes and steps (overrides ``quick``).
    Returns:
        the report's sections.
    """
    from .io import check_writable

    out = check_writable(out)
    config = config or (QUICK if quick else DemoConfig())
    device = torch.device(device or "cpu")
    start = time.perf_counter()
    sections = [stage(out, config, device, progress) for stage in STAGES]
    minutes = (time.perf_counter() - start) / 60
    report = [f"# inrprior demo\n\nRan in {minutes:.1f} minutes on {device}"
              f"{' (--quick)' if config is QUICK else ''}.\n"]
    for s in sections:
        figures = "\n".join(f"![{f.name}]({f.relative_to(out)})" for f in s.figures)
        report.append(f"## {s.title}\n\n{s.text}\n\n{s.table()}\n\n{figures}\n")
        print(f"\n{s.title}\n{s.table()}")
    (out / "report.md").write_text("\n".join(report))
    summary = {"config": asdict(config), "minutes": minutes, "sections": {s.title: s.numbers for s in sections}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\nDemo outputs are in {out}/ (report: {out / 'report.md'}, figures: "
          + ", ".join(str(f.relative_to(out)) for s in sections for f in s.figures) + ")")
    return sections
