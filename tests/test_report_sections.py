"""Report sections a reader relies on: errors of every split, file names, how to reproduce."""

from __future__ import annotations

import re
from importlib import metadata

import numpy as np

from tests.conftest import make_image_folder
from tests.test_cli_probe import probe
from transferlab.pipelines.evaluation import SplitPredictions, write_error_grid
from transferlab.report.reproduce import command_line


def test_report_has_a_reproduce_block_and_errors_of_both_splits(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=6)
    test = make_image_folder(tmp_path / "test", per_class=3)
    out = tmp_path / "run"
    code, output = probe(data, out, "--test", test, "--seed", "7")
    assert code == 0, output
    page = (out / "report.html").read_text()
    reproduce = page[page.index('<section id="reproduce">'):]
    assert "<td>seed</td><td>7</td>" in reproduce
    assert f"torch {metadata.version('torch')}" in reproduce
    assert "Error analysis (val)" in page and "Error analysis (test)" in page


def test_command_line_is_the_transferlab_command():
    assert command_line(["/usr/bin/transferlab", "probe", "my data", "--seed", "3"]) == \
        "transferlab probe 'my data' --seed 3"
    assert command_line(["script.py"]).startswith("Python API")


def test_error_tiles_are_captioned_with_file_names(tmp_path, monkeypatch):
    data = make_image_folder(tmp_path / "data", per_class=2)
    paths = sorted(data.rglob("*.png"))[:2]
    captured = {}

    def keep(tiles, path, title=""):
        captured["names"] = [t.name for t in tiles]
        return path

    monkeypatch.setattr("transferlab.pipelines.evaluation.plot_error_grid", keep)
    split = SplitPredictions("val", paths, np.array([0, 1]), np.array([[0.1, 0.9], [0.8, 0.2]]))
    note = write_error_grid(split, ["a", "b"], tmp_path / "errors.png", 4, cam=None)
    assert re.search(r"2 most confidently wrong", note)
    assert sorted(captured["names"]) == sorted(p.name for p in paths)


def test_report_command_rebuilds_the_page_from_the_folder_alone(tmp_path):
    from tests.test_cli_probe import invoke

    data = make_image_folder(tmp_path / "data", per_class=6)
    out = tmp_path / "run"
    code, output = probe(data, out)
    assert code == 0, output
    original = (out / "report.html").read_text()
    (out / "report.html").unlink()
    code, output = invoke("report", out)
    assert code == 0, output
    # Identical but for the timings, which now include the final "report" and "total" phases.
    def without_timings(page: str) -> str:
        return re.sub(r'<section id="timings">.*?</section>', "", page, flags=re.DOTALL)

    rebuilt = (out / "report.html").read_text()
    assert '<section id="timings">' in rebuilt and "total" in rebuilt
    assert without_timings(rebuilt) == without_timings(original)
