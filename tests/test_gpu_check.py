"""experiments/gpu_check.py, the GPU-against-CPU correctness script, run here with the CPU as its "device": the
code path a GPU session runs, so that it cannot rot between the sessions that have a GPU (its fit section, which
compiles, is left to those sessions)."""
import importlib.util
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.py


def load_script():
    path = Path(__file__).resolve().parents[1] / "experiments" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_sections_pass_on_the_cpu():
    gc = load_script()
    gc.ROWS.clear()
    for section in (gc.query_checks, gc.meta_checks, gc.hyper_checks, gc.train_checks, gc.api_checks):
        section(torch.device("cpu"))
    assert len(gc.ROWS) == 30 - 3  # every row but the compiling fit section's three was checked
    assert all(err <= tol for _, err, tol in gc.ROWS), [r for r in gc.ROWS if not r[1] <= r[2]]


def test_gpu_check_reports_a_mismatch():
    gc = load_script()
    gc.ROWS.clear()
    gc.check("planted", gc.rel(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.1])), 1e-6)
    name, err, tol = gc.ROWS[-1]
    assert err == pytest.approx(0.1 / (1 + 2.1 ** 2) ** 0.5) and err > tol
