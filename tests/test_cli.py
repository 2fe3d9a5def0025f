import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from inrprior import cli
from inrprior.functions import Functions
from inrprior.io import load_functions, save_state
from inrprior.siren import Siren

TINY = ["--steps", "3", "--hidden", "16", "--layers", "1", "--quiet"]


@pytest.fixture
def photo_png(tmp_path):
    y, x = np.mgrid[0:12, 0:10]
    rgb = np.stack([x * 20, y * 20, (x + y) * 10], -1).astype(np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(path)
    return path


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_every_command(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for name in ("fit", "render", "blend", "demo"):
        assert name in out
    for name in cli.COMMANDS:
        code, out, _ = run(capsys, name, "--help")
        assert code == 0 and "usage: inrprior " + name in out


def test_usage_error_exits_2(capsys):
    code, _, err = run(capsys, "fit", "x.png")
    assert code == 2 and "required: -o/--out" in err
    code, _, err = run(capsys, "fit", "x.png", "-o", "out", "--steps", "0")
    assert code == 2 and "positive integer" in err


def test_fit_writes_loadable_outputs(tmp_path, capsys, photo_png):
    out = tmp_path / "fit"
    code, printed, _ = run(capsys, "fit", photo_png, "--size", 8, 6, *TINY, "-o", out)
    assert code == 0 and "PSNR" in printed
    for name in ("functions.safetensors", "fit.png", "derivatives.png", "history.json"):
        assert (out / name).is_file(), name
    f = load_functions(out / "functions.safetensors")
    assert len(f) == 1 and f.channels == 3 and f.net.config["hidden_features"] == 16
    record = json.loads((out / "history.json").read_text())
    assert record["config"]["size"] == [8, 6] and len(record["history"]["loss"]) >= 1
    assert Image.open(out / "fit.png").size == (6, 8)


def test_fit_from_gradients_writes_aligned_render(tmp_path, capsys, photo_png):
    out = tmp_path / "g"
    code, printed, _ = run(capsys, "fit", photo_png, "--supervision", "gradient", *TINY, "-o", out)
    assert code == 0 and "offset" in printed and (out / "fit_aligned.png").is_file()
    code, _, _ = run(capsys, "fit", photo_png, "--supervision", "value=1,laplacian=0.1", *TINY, "-o", out)
    assert code == 0


def test_render_value_and_derivatives(tmp_path, capsys):
    net = Siren(2, 3, 16, 1)
    Functions(net, net.init_params(2)).save(tmp_path / "f.safetensors")
    Functions(net, net.init_params(2)).save(tmp_path / "run" / "functions.safetensors")
    code, printed, _ = run(capsys, "render", tmp_path / "f.safetensors", "--size", 9, 7, "-o", tmp_path / "all.png")
    assert code == 0 and Image.open(tmp_path / "all.png").size == (2 * 7 + 1, 9)  # two functions, tiled
    code, _, _ = run(capsys, "render", tmp_path / "run", "--size", 9, 7, "--index", 1, "-o", tmp_path / "one.png")
    assert code == 0 and Image.open(tmp_path / "one.png").size == (7, 9)  # a folder means its functions.safetensors
    for derivative in ("gradient", "laplacian"):
        code, printed, _ = run(capsys, "render", tmp_path / "f.safetensors", "--size", 8, 8, "--index", 0,
                               "--derivative", derivative, "-o", tmp_path / f"{derivative}.png")
        assert code == 0 and derivative.capitalize()[:3].lower() in printed.lower()
        assert Image.open(tmp_path / f"{derivative}.png").mode == "L"
    code, _, err = run(capsys, "render", tmp_path / "f.safetensors", "--size", 8, 8, "--index", 5, "-o", "x.png")
    assert code == 2 and "out of range" in err
    code, _, _ = run(capsys, "render", tmp_path / "f.safetensors", "--size", 6, "--index", 0, "-o", tmp_path / "sq.png")
    assert code == 0 and Image.open(tmp_path / "sq.png").size == (6, 6)  # one value: a square
    code, _, err = run(capsys, "render", tmp_path / "f.safetensors", "--size", 6, 5, 4, "-o", tmp_path / "x.png")
    assert code == 2 and "one value (a square) or two" in err and not (tmp_path / "x.png").exists()


def test_blend_with_mask(tmp_path, capsys, photo_png):
    mask = np.zeros((12, 10), np.uint8)
    mask[3:9, 3:7] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((12, 10), 128, np.uint8)).save(gray)
    out = tmp_path / "blend"
    code, printed, err = run(capsys, "blend", gray, photo_png, "--mask", tmp_path / "mask.png", *TINY, "-o", out)
    assert code == 0, err
    for name in ("functions.safetensors", "blend.png", "blend_figure.png", "history.json"):
        assert (out / name).is_file(), name
    assert load_functions(out).channels == 3  # gray base promoted to the insert's RGB


def test_blend_size_mismatch(tmp_path, capsys, photo_png):
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "small.png")
    code, _, err = run(capsys, "blend", photo_png, tmp_path / "small.png", "-o", tmp_path / "o", *TINY)
    assert code == 2 and "pass --size H W" in err
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(tmp_path / "square.png")  # the photo is 12x10
    code, _, err = run(capsys, "blend", photo_png, photo_png, "--mask", tmp_path / "square.png", "-o", tmp_path / "o",
                       *TINY)
    assert code == 2 and "must have the images' aspect ratio" in err
    code, _, err = run(capsys, "blend", photo_png, photo_png, "--mixed", "-o", tmp_path / "o2", *TINY)
    assert code == 2 and "pass --mask" in err and not (tmp_path / "o2").exists()


def test_diverged_training_is_a_one_line_error(tmp_path, capsys):
    code, _, err = run(capsys, "train", "--data", "digits", "--size", "8", "--hidden", "8", "--layers", "1",
                       "--steps", "4", "--lr", "1e3", "--inner-lr", "1e3", "--quiet", "--out", tmp_path / "r")
    assert code == 2 and err.count("\n") == 1 and "training stopped" in err and "learning rate" in err


def bad_inputs(tmp_path):
    (tmp_path / "notes.png").write_text("hello")
    nan = np.zeros((4, 4))
    nan[0, 0] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 2, 2)))
    return [("notes.png", "is not an image file Pillow can read"), ("missing.png", "does not exist"),
            ("nan.npy", "contains NaN values"), ("cube.npy", "must be (H, W) or (H, W, C)")]


def test_fit_user_errors_are_one_line_without_traceback(tmp_path, capsys):
    for name, message in bad_inputs(tmp_path):
        code, out, err = run(capsys, "fit", tmp_path / name, *TINY, "-o", tmp_path / "o")
        assert code == 2, name
        assert err.startswith("inrprior: error: ") and message in err and err.count("\n") == 1
        assert "Traceback" not in err
    code, _, err = run(capsys, "fit", tmp_path / "nan.npy", "--supervision", "colour", "-o", tmp_path / "o")
    assert code == 2 and "unknown supervision" in err


def test_output_folder_that_is_a_file(tmp_path, capsys, photo_png):
    (tmp_path / "taken").write_text("x")
    code, _, err = run(capsys, "fit", photo_png, *TINY, "-o", tmp_path / "taken")
    assert code == 2 and "a file of that name exists" in err


def test_render_rejects_foreign_and_mismatched_files(tmp_path, capsys):
    save_state(tmp_path / "prior.safetensors", {"w": torch.ones(1)}, {"kind": "meta"})
    code, _, err = run(capsys, "render", tmp_path / "prior.safetensors", "--size", 4, 4, "-o", tmp_path / "x.png")
    assert code == 2 and "expected 'functions'" in err
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    code, _, err = run(capsys, "render", tmp_path / "junk.safetensors", "--size", 4, 4, "-o", tmp_path / "x.png")
    assert code == 2 and "not a readable safetensors file" in err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        cli.main(["--debug", "render", str(tmp_path / "none.safetensors"), "--size", "4", "4", "-o", "x.png"])


def test_demo_quick(tmp_path, capsys):
    code, printed, err = run(capsys, "demo", "--quick", "--quiet", "--device", "cpu", "--out", tmp_path / "demo")
    assert code == 0, err
    out = tmp_path / "demo"
    for name in ("report.md", "summary.json", "fit_supervision.png", "psnr_curves.png", "blend/blend.png",
                 "fit-value/functions.safetensors", "fit-gradient/fit_aligned.png", "fit-laplacian/derivatives.png"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "| laplacian" in report and "PSNR (dB)" in printed and str(out) in printed
    summary = json.loads((out / "summary.json").read_text())
    assert np.isfinite(list(summary["sections"].values())[0]["value"]["psnr"])


def test_python_dash_m_is_the_same_cli():
    result = subprocess.run([sys.executable, "-m", "inrprior", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage: inrprior" in result.stdout and "blend" in result.stdout
