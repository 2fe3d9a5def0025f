"""``report.html``: a training run's metrics, curves, samples and reconstructions, viewable with no server.

Everything the page shows lives in the run folder (images under ``images/``, referenced by relative paths), so the
folder can be copied or zipped and opened anywhere.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import torch

from .plots import image_grid, plot_curves

__all__ = ["write_report", "read_metrics"]


def read_metrics(path) -> list[dict]:
    """The rows of a ``metrics.jsonl`` file (a torn last line, from a killed run, is skipped)."""
    rows = []
    path = Path(path)
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _table(rows: list[dict], keys: list[str]) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(k))}</td>" for k in keys) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _figures(out: Path, rows: list[dict], prior, eval_images, eval_steps: int, n_samples: int) -> list[tuple]:
    figs = []
    img = out / "images"
    if rows:
        figs.append(("Training loss", plot_curves({"loss": ([r["step"] for r in rows], [r["loss"] for r in rows])},
                                                   img / "loss.png", ylabel="loss")))
    evals = [r for r in rows if "eval_psnr" in r]
    if evals:
        figs.append(("Held-out PSNR", plot_curves(
            {f"after {eval_steps} steps": ([r["step"] for r in evals], [r["eval_psnr"] for r in evals])},
            img / "eval_psnr.png")))
    if prior is not None and eval_images is not None and len(eval_images):
        shown = eval_images[:8]
        recon = prior.adapt(shown, steps=eval_steps).render(*shown.shape[-2:]).to(shown)
        figs.append((f"Held-out images (top) and their {eval_steps}-step reconstructions (bottom)",
                     image_grid(torch.cat([shown, recon]).cpu(), img / "reconstructions.png", nrow=len(shown))))
    if prior is not None and n_samples:
        try:
            size = tuple(eval_images.shape[-2:]) if eval_images is not None else (32, 32)
            samples = prior.sample(n_samples, generator=torch.Generator().manual_seed(0)).render(*size)
            figs.append(("Samples from the prior", image_grid(samples.cpu(), img / "samples.png")))
        except RuntimeError as e:  # no density fitted (train(..., density=None))
            figs.append((f"No samples: {e}", None))
    return figs


def write_report(out, prior=None, eval_images: torch.Tensor | None = None, eval_steps: int = 3,
                 n_samples: int = 16) -> Path:
    """Write ``out/report.html`` from ``out/metrics.jsonl`` and ``out/config.json`` (and, with a prior, its
    reconstructions of ``eval_images (M, C, H, W)`` and samples).

    Returns:
        The path of the page.
    """
    out = Path(out)
    rows = read_metrics(out / "metrics.jsonl")
    config = json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else {}
    with torch.no_grad():
        figs = _figures(out, rows, prior, eval_images, eval_steps, n_samples)
    evals = [r for r in rows if "eval_psnr" in r]
    keys = [k for k in ("step", "loss", "eval_psnr", "eval_mse", "grad_norm", "seconds") if any(k in r for r in rows)]
    parts = [f"<h1>inrprior run: {html.escape(out.resolve().name)}</h1>"]
    if rows:
        last = rows[-1]
        parts.append(f"<p>{last['step']} steps in {last.get('seconds', 0):.1f} s; final loss {last['loss']:.4g}"
                     + (f"; held-out PSNR {evals[-1]['eval_psnr']:.2f} dB" if evals else "") + ".</p>")
        parts.append("<h2>Metrics</h2>" + _table(evals or rows[-10:], keys))
    for caption, path in figs:
        parts.append(f"<h2>{html.escape(caption)}</h2>")
        if path is not None:
            parts.append(f'<img src="{Path(path).relative_to(out).as_posix()}" alt="{html.escape(caption)}">')
    parts.append("<h2>Configuration</h2><pre>" + html.escape(json.dumps(config, indent=1)) + "</pre>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}img{max-width:100%}")
    page = out / "report.html"
    page.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>inrprior report</title>"
                    f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
    return page
