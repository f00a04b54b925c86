"""The Python API's documentation runs: every ```python block of docs/python.md, in order."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import make_image_folder

DOC = Path(__file__).resolve().parents[1] / "docs" / "python.md"


def test_python_api_examples_run(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 5
    make_image_folder(tmp_path / "photos", per_class=6)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    printed = capsys.readouterr().out
    assert "stage 1 done" in printed and "report.html" in printed
    assert namespace["run"].card.kind == "probe"
    assert (tmp_path / "runs" / "photos-finetune" / "model" / "network.safetensors").is_file()
