"""`inrprior train / sample / adapt / bench` end to end at tiny sizes, and the report.html they leave."""
import json
import re

import pytest
from PIL import Image

from inrprior import cli, data, plots

TINY = ["--size", "8", "--hidden", "16", "--layers", "1", "--batch-size", "4", "--quiet"]


@pytest.fixture(scope="module")
def meta_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "meta"
    code = cli.main(["train", "--prior", "meta", "--data", "digits", "--steps", "4", "--eval-every", "2",
                     "--checkpoint-every", "2", "--out", str(out), "--inner-steps", "2", *TINY])
    assert code == 0
    return out


def test_train_writes_run_folder_and_report(meta_run):
    for name in ("prior.safetensors", "checkpoint.safetensors", "metrics.jsonl", "config.json", "report.html"):
        assert (meta_run / name).is_file(), name
    rows = [json.loads(line) for line in (meta_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and "eval_psnr" in rows[1]
    page = (meta_run / "report.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) >= 3
    for src in images:  # relative paths that exist: the page works from a copied folder, with no server
        assert not src.startswith("/") and (meta_run / src).is_file(), src


def test_sample_and_adapt_from_a_run(meta_run, tmp_path):
    grid = tmp_path / "grid.png"
    assert cli.main(["sample", str(meta_run), "-n", "4", "--size", "16", "-o", str(grid),
                     "--save", str(tmp_path / "s.safetensors")]) == 0
    assert grid.is_file() and (tmp_path / "s.safetensors").is_file()
    assert Image.open(grid).size == (2 * 16 + 1, 2 * 16 + 1)  # four 16x16 samples, pixel for pixel, 1 px apart
    assert cli.main(["sample", str(meta_run), "-n", "1", "--size", "12", "20", "-o", str(tmp_path / "wide")]) == 0
    assert Image.open(tmp_path / "wide.png").size == (20, 12)  # height width; the suffix added is the one printed
    paths = []
    for i, image in enumerate(data.stack(data.load("digits", size=8, split="test"))[:2]):
        paths.append(tmp_path / f"d{i}.png")
        plots.save_image(image, paths[-1])
    out = tmp_path / "adapted"
    assert cli.main(["adapt", str(meta_run), *map(str, paths), "--steps", "2", "-o", str(out)]) == 0
    scores = json.loads((out / "psnr.json").read_text())
    assert [r["image"] for r in scores] == list(map(str, paths)) and all(r["psnr"] > 5 for r in scores)
    assert (out / "functions.safetensors").is_file() and (out / "d0_adapted.png").is_file()
    (tmp_path / "other").mkdir()
    plots.save_image(data.stack(data.load("digits", size=8, split="test"))[2], tmp_path / "other" / "d0.png")
    assert cli.main(["adapt", str(meta_run), str(paths[0]), str(tmp_path / "other" / "d0.png"), "-o", str(out)]) == 0
    scores = json.loads((out / "psnr.json").read_text())  # two files named d0.png: two outputs, neither overwritten
    assert [r["output"] for r in scores] == ["0_d0_adapted.png", "1_d0_adapted.png"]
    assert (out / "0_d0_adapted.png").is_file() and (out / "1_d0_adapted.png").is_file()


def test_hyper_train_and_flag_errors(tmp_path, capsys):
    out = tmp_path / "hyper"
    assert cli.main(["train", "--prior", "hyper", "--data", "digits", "--steps", "2", "--out", str(out),
                     "--latent-dim", "8", "--hyper-hidden", "16", "--min-context", "4", *TINY]) == 0
    assert (out / "prior.safetensors").is_file()
    code = cli.main(["train", "--prior", "meta", "--data", "digits", "--steps", "2", "--out", str(tmp_path / "x"),
                     "--beta", "0.1", *TINY])
    assert code == 2 and "--beta: for --prior hyper, not --prior meta" in capsys.readouterr().err


def test_sample_without_a_density_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "nodensity"
    assert cli.main(["train", "--prior", "meta", "--data", "digits", "--steps", "1", "--out", str(out),
                     "--density", "none", *TINY]) == 0
    code = cli.main(["sample", str(out), "-n", "2", "-o", str(tmp_path / "g.png")])
    assert code == 2 and "without a sampling density" in capsys.readouterr().err


def test_resume_via_cli_continues(meta_run, tmp_path):
    code = cli.main(["train", "--prior", "meta", "--data", "digits", "--steps", "6", "--eval-every", "2",
                     "--checkpoint-every", "2", "--out", str(meta_run), "--inner-steps", "2", "--resume", *TINY])
    assert code == 0
    steps = [json.loads(line)["step"] for line in (meta_run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_bench_quick_prints_the_table(capsys):
    assert cli.main(["bench", "--quick", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "query value+gradient+laplacian" in text and "torch.mm" in text
