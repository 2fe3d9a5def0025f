"""The README's first Python block is the API tour a new user copies: it must run as written."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python block"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert namespace["big"].shape == (1, 1, 256, 256)
    assert len(namespace["fast"]) == 4 and len(namespace["new"]) == 8
    assert (tmp_path / "runs/readme/report.html").is_file()
