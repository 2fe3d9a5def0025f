"""The shared training loop on a tiny prior: outputs, exact resume, faults (NaN, unwritable folder, SIGKILL)."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from inrprior import io
from inrprior.train import ShardedGenerator, TrainConfig, evaluate, per_image, train

sys.path.insert(0, str(Path(__file__).parent))
from toy_prior import PlainPrior, ToyPrior, make_toy, toy_images  # noqa: E402

io.register_prior("toy", ToyPrior)
IMAGES = toy_images(12)
EVAL = toy_images(3, seed=1)
KW = dict(batch_size=4, lr=1e-3, progress=False, density=None)


def weights(prior):
    return {k: v.detach().clone() for k, v in prior.state_dict().items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def read_metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_outputs_metrics_and_saved_prior(tmp_path):
    prior = train(make_toy(), IMAGES, steps=4, out=tmp_path, eval_dataset=EVAL, eval_every=2, checkpoint_every=3,
                  **{**KW, "density": "gaussian"})
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [("eval_psnr" in r) for r in rows] == [False, True, False, True]
    assert all(r["loss"] > 0 and r["seconds"] > 0 and "mse" in r for r in rows)
    assert rows[3]["eval_psnr"] == pytest.approx(evaluate(prior, EVAL, 3)["psnr"], rel=1e-5)  # final weights
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["train"]["batch_size"] == 4 and config["prior"]["kind"] == "toy"
    assert config["data"] == {"train_images": 12, "image_shape": [1, 8, 8], "eval_images": 3}
    _, ck = io.load_state(tmp_path / "checkpoint.safetensors", kind="checkpoint")
    assert ck["step"] == 4 and ck["train"] == config["train"]
    loaded = io.load_prior(tmp_path / "prior.safetensors")
    assert_same(weights(loaded), weights(prior))
    assert len(loaded.sample(2, generator=torch.Generator().manual_seed(0))) == 2  # the density was fitted
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_evaluate_matches_manual_psnr():
    prior = make_toy()
    scores = evaluate(prior, EVAL, steps=2)
    pred = prior.adapt(EVAL, steps=2).render(8, 8)
    per_image_mse = (pred - EVAL).double().pow(2).flatten(1).mean(1)
    assert scores["psnr"] == pytest.approx(float((10 * torch.log10(1 / per_image_mse)).mean()), rel=1e-5)
    assert scores["mse"] == pytest.approx(float((pred - EVAL).pow(2).mean()), rel=1e-5)
    assert prior.training  # evaluate restores the mode


def test_resume_is_exact(tmp_path):
    straight = train(make_toy(), IMAGES, steps=6, out=tmp_path / "a", checkpoint_every=3, **KW)
    train(make_toy(), IMAGES, steps=3, out=tmp_path / "b", checkpoint_every=3, **KW)
    # a differently initialized prior: every weight must come from the checkpoint
    resumed = train(make_toy(seed=7), IMAGES, steps=6, out=tmp_path / "b", checkpoint_every=3, resume=True, **KW)
    assert_same(weights(resumed), weights(straight))
    assert [r["step"] for r in read_metrics(tmp_path / "b")] == list(range(1, 7))
    assert [r["loss"] for r in read_metrics(tmp_path / "b")] == [r["loss"] for r in read_metrics(tmp_path / "a")]


def test_resume_with_other_settings_is_refused(tmp_path):
    train(make_toy(), IMAGES, steps=2, out=tmp_path, checkpoint_every=2, **KW)
    with pytest.raises(ValueError, match="batch_size was 4, now 2"):
        train(make_toy(), IMAGES, steps=4, out=tmp_path, resume=True, **{**KW, "batch_size": 2})
    with pytest.raises(ValueError, match=r"prior.siren.hidden_features was 16, now 8\)"):
        train(make_toy(hidden=8), IMAGES, steps=4, out=tmp_path, resume=True, **KW)
    with pytest.raises(ValueError, match="beyond steps=1"):
        train(make_toy(), IMAGES, steps=1, out=tmp_path, resume=True, **KW)
    with pytest.raises(ValueError, match=r"data.train_images was 12, now 8"):  # other data: refused too
        train(make_toy(), IMAGES[:8], steps=4, out=tmp_path, resume=True, **KW)


def test_a_finished_run_with_a_density_continues(tmp_path):
    from inrprior import MetaPrior, Siren

    prior = MetaPrior(Siren(2, IMAGES.shape[1], 8, 1), inner_steps=1)
    train(prior, IMAGES, steps=2, out=tmp_path, checkpoint_every=2, **{**KW, "density": "gaussian"})
    assert prior.density is not None  # the fitted density is in the prior's config, but it is not a setting
    train(prior, IMAGES, steps=4, out=tmp_path, resume=True, **{**KW, "density": "gaussian"})
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]


def test_a_folder_holding_an_earlier_run_is_kept_unless_overwrite(tmp_path):
    train(make_toy(), IMAGES, steps=2, out=tmp_path, checkpoint_every=2, **KW)
    before = (tmp_path / "prior.safetensors").read_bytes()
    with pytest.raises(ValueError, match="holds an earlier run .*--resume.*--overwrite"):
        train(make_toy(seed=3), IMAGES, steps=2, out=tmp_path, **KW)
    (tmp_path / "checkpoint.safetensors").unlink()
    with pytest.raises(ValueError, match="cannot resume: .* no checkpoint.safetensors"):
        train(make_toy(seed=3), IMAGES, steps=2, out=tmp_path, resume=True, **KW)
    assert (tmp_path / "prior.safetensors").read_bytes() == before and len(read_metrics(tmp_path)) == 2
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "images" / "stale.png").write_bytes(b"x")
    train(make_toy(seed=3), IMAGES, steps=1, out=tmp_path, overwrite=True, **KW)  # starting over: nothing stale
    assert (tmp_path / "prior.safetensors").read_bytes() != before and len(read_metrics(tmp_path)) == 1
    assert not (tmp_path / "images" / "stale.png").exists()
    with pytest.raises(ValueError, match="exclude each other"):
        train(make_toy(), IMAGES, steps=2, out=tmp_path, resume=True, overwrite=True, **KW)


class NanAt(ToyPrior):
    """Returns a NaN loss at its ``nan_at``-th call and counts calls."""
    calls = 0
    nan_at = 5

    def forward(self, images, generator=None):
        NanAt.calls += 1
        loss, metrics = super().forward(images, generator)
        return (loss * float("nan") if NanAt.calls == self.nan_at else loss), metrics


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    NanAt.calls = 0
    prior = NanAt(make_toy().net)
    with pytest.raises(FloatingPointError, match=r"loss became nan at step 5.*step 4\)"):
        train(prior, IMAGES, steps=8, out=tmp_path, checkpoint_every=2, **KW)
    tensors, config = io.load_state(tmp_path / "checkpoint.safetensors", kind="checkpoint")
    assert config["step"] == 4 and all(torch.isfinite(t.float()).all() for t in tensors.values())
    assert not (tmp_path / "prior.safetensors").exists()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]


def test_unwritable_output_fails_before_training(tmp_path, monkeypatch):
    # Tests run as root, which chmod cannot stop; use a path below a regular file, and simulate a read-only
    # filesystem and a full disk at the points io.check_writable probes.
    NanAt.calls = 0
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="cannot create output folder"):
        train(NanAt(make_toy().net), IMAGES, steps=2, out=blocker / "run", **KW)

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")
    with monkeypatch.context() as m:
        m.setattr(io.tempfile, "mkstemp", read_only)
        with pytest.raises(PermissionError, match="cannot write to output folder .*Read-only"):
            train(NanAt(make_toy().net), IMAGES, steps=2, out=tmp_path / "ro", **KW)
    with monkeypatch.context() as m:
        m.setattr(io.shutil, "disk_usage", lambda p: type("U", (), {"free": 10 * 2**20})())
        with pytest.raises(OSError, match="only 10 MB free"):
            train(NanAt(make_toy().net), IMAGES, steps=2, out=tmp_path / "full", **KW)
    assert NanAt.calls == 0  # no training step ran


def test_disk_full_at_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    real, calls = io.save_state, []

    def save_state(path, tensors, config):
        calls.append(config["step"])
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(path, tensors, config)
    monkeypatch.setattr(io, "save_state", save_state)
    with pytest.raises(OSError, match="checkpoint of step 4 .*No space left.*previous checkpoint is left"):
        train(make_toy(), IMAGES, steps=6, out=tmp_path, checkpoint_every=2, **KW)
    assert io.load_state(tmp_path / "checkpoint.safetensors")[1]["step"] == 2


KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from toy_prior import make_toy, toy_images
from inrprior.train import train

real_replace, saves = os.replace, []

def replace(src, dst):  # die half-way through writing the second checkpoint, before the rename
    if str(dst).endswith("checkpoint.safetensors"):
        saves.append(dst)
        if len(saves) == 2:
            with open(src, "r+b") as f:
                f.truncate(os.path.getsize(src) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst)

os.replace = replace
train(make_toy(), toy_images(12), steps=6, out={out!r}, checkpoint_every=2, batch_size=4, lr=1e-3,
      progress=False, density=None)
"""


def test_sigkill_mid_checkpoint_then_resume(tmp_path):
    out = tmp_path / "run"
    script = KILLED_RUN.format(tests=str(Path(__file__).parent), out=str(out))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert list(out.glob(".checkpoint.safetensors.*.tmp"))  # the torn write is there ...
    _, config = io.load_state(out / "checkpoint.safetensors", kind="checkpoint")
    assert config["step"] == 2  # ... and the last good checkpoint is intact
    resumed = train(make_toy(seed=3), IMAGES, steps=6, out=out, checkpoint_every=2, resume=True, **KW)
    straight = train(make_toy(), IMAGES, steps=6, out=tmp_path / "straight", checkpoint_every=2, **KW)
    assert_same(weights(resumed), weights(straight))
    assert not list(out.glob(".checkpoint.safetensors.*.tmp"))
    assert [r["step"] for r in read_metrics(out)] == list(range(1, 7))


def test_bf16_autocast_close_to_fp32(tmp_path):
    fp32 = train(make_toy(), IMAGES, steps=3, out=tmp_path / "a", **KW)
    bf16 = train(make_toy(), IMAGES, steps=3, out=tmp_path / "b", amp="bf16", **KW)
    la, lb = [r["loss"] for r in read_metrics(tmp_path / "a")], [r["loss"] for r in read_metrics(tmp_path / "b")]
    assert la != lb  # autocast did change the arithmetic
    assert lb == pytest.approx(la, rel=0.05)  # stated tolerance: 5 % on the loss (bf16 keeps ~3 digits)
    for (k, a), b in zip(fp32.named_parameters(), bf16.parameters()):  # Adam moves a weight by ~lr per step
        assert (a - b).abs().max() <= 3 * 2 * KW["lr"], k


def test_compile_matches_eager(tmp_path):
    # PlainPrior: torch.compile's tracing of vmap'ed SIRENs costs tens of seconds; the loop's plumbing is the same
    eager = train(make_toy(cls=PlainPrior, first_order=True), IMAGES, steps=2, out=tmp_path / "a", **KW)
    compiled = train(make_toy(cls=PlainPrior, first_order=True), IMAGES, steps=2, out=tmp_path / "b", compile=True,
                     **KW)
    for (k, a), b in zip(eager.named_parameters(), compiled.parameters()):  # stated tolerance: 1e-5
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=k)


def test_compile_falls_back_for_second_order(tmp_path, caplog):
    eager = train(make_toy(cls=PlainPrior), IMAGES, steps=2, out=tmp_path / "a", **KW)
    compiled = train(make_toy(cls=PlainPrior), IMAGES, steps=2, out=tmp_path / "b", compile="aot_eager", **KW)
    assert "training without compile" in caplog.text
    assert_same(weights(compiled), weights(eager))


def test_per_image_slices_the_global_draw():
    g = torch.Generator().manual_seed(0)
    whole = per_image(g, 4, lambda n: torch.rand(n, 3, generator=g))  # a plain generator: the whole batch
    g2 = ShardedGenerator()
    g2.manual_seed(0)
    g2.shard = (2, 4, 4)  # the second of two processes
    assert torch.equal(per_image(g2, 2, lambda n: torch.rand(n, 3, generator=g2)), whole[2:])
    assert torch.equal(g2.get_state(), g.get_state())  # both consumed the same numbers
    with pytest.raises(ValueError, match="does not match"):
        per_image(g2, 3, lambda n: torch.rand(n, generator=g2))


def test_bad_settings_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        train(make_toy(), IMAGES, steps=2, out=tmp_path, **{**KW, "batch_size": 0})
    with pytest.raises(ValueError, match="amp must be"):
        train(make_toy(), IMAGES, steps=2, out=tmp_path, amp="fp16", **KW)
    with pytest.raises(ValueError, match="dataset is empty"):
        train(make_toy(), IMAGES[:0], steps=2, out=tmp_path, **KW)
    bad = IMAGES.clone()
    bad[1:4, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match=r"indices \[.*\] are not finite"):
        train(make_toy(), bad, steps=2, out=tmp_path, **{**KW, "batch_size": 12})
    with pytest.raises(TypeError, match="unknown options"):
        train(make_toy(), IMAGES, steps=2, out=tmp_path, eval_evry=3, **KW)
    assert json.loads(json.dumps(TrainConfig().__dict__))  # JSON-able
