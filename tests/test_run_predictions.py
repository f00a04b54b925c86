"""The one reader of a run's predictions.csv (`runs.read_predictions`): a run folder is hostile
until checked, so the file is bounded, its columns required, and anything else one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from transferlab import runs
from transferlab.errors import TransferlabError
from transferlab.runs import PredictionRow, image_on_disk, read_predictions

HEADER = "path,split,true,predicted,p_a,p_b\n"


def _write(folder: Path, text: str | bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = text.encode() if isinstance(text, str) else text
    (folder / "predictions.csv").write_bytes(data)
    return folder


def test_rows_of_one_split_or_all(tmp_path):
    run = _write(tmp_path / "run", HEADER + "a/1.png,train,a,a,0.9,0.1\nb/2.png,val,b,a,0.6,0.4\nc.png,test,a,b,0,1\n")
    assert read_predictions(run, "val") == [PredictionRow("b/2.png", "val", "b", "a")]
    assert [r.split for r in read_predictions(run)] == ["train", "val", "test"]


def test_columns_in_another_order_are_read_by_name(tmp_path):
    run = _write(tmp_path / "run", "predicted,p_a,true,split,path\na,1,b,val,x.png\n")
    assert read_predictions(run) == [PredictionRow("x.png", "val", "b", "a")]


def test_a_missing_file_is_one_line_unless_allowed(tmp_path):
    with pytest.raises(TransferlabError, match="predictions file not found"):
        read_predictions(tmp_path)
    assert read_predictions(tmp_path, missing_ok=True) == []


@pytest.mark.parametrize(("content", "message"), [
    ("path,split,true\nx.png,val,a\n", "lacks the column(s) predicted"),
    (HEADER + "x.png,val\n", "line 2 has 2 columns"),
    (b"path,split,true,predicted\n\xff\xfe,val,a,b\n", "not readable CSV"),
    ("", "lacks the column(s) path, split, true, predicted"),
])
def test_a_malformed_file_is_one_line_naming_it(tmp_path, content, message):
    run = _write(tmp_path / "run", content)
    with pytest.raises(TransferlabError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        read_predictions(run, missing_ok=True)
    assert str(run / "predictions.csv") in str(info.value) and "\n" not in str(info.value)


def test_a_file_over_the_bound_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    """A hostile run's predictions.csv may be any size: no more than the bound is ever read."""
    monkeypatch.setattr(runs, "MAX_PREDICTIONS_BYTES", 100)
    run = _write(tmp_path / "run", HEADER + "x.png,val,a,a,1,0\n" * 20)
    with pytest.raises(TransferlabError, match="larger than"):
        read_predictions(run)
    small = _write(tmp_path / "small", HEADER + "x.png,val,a,a,1,0\n")
    assert len(read_predictions(small)) == 1


def test_image_paths_are_found_where_the_run_ran(tmp_path, monkeypatch):
    """Paths are as the run saw them: relative to where it ran (the folder holding runs/) or absolute."""
    project = tmp_path / "project"
    image = project / "data" / "a" / "1.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"png")
    run = runs.RunDir(project / "runs" / "probe")
    monkeypatch.chdir(tmp_path)  # elsewhere: the relative name does not resolve from here
    assert image_on_disk(run, "data/a/1.png") == (project / "data" / "a" / "1.png").resolve()
    assert image_on_disk(run, str(image)) == image
    assert image_on_disk(run, "data/a/missing.png") is None


def test_a_hostile_image_name_is_not_found_rather_than_a_traceback(tmp_path):
    run = runs.RunDir(tmp_path / "runs" / "probe")
    assert image_on_disk(run, "x" * 300 + ".png") is None  # longer than a file name may be: ENAMETOOLONG


def test_blank_lines_are_skipped_and_reading_stops_when_the_caller_does(tmp_path):
    run = _write(tmp_path / "run", HEADER + "a.png,val,a,a,1,0\n\nb.png,val,b,b,0,1\n")
    assert [r.path for r in read_predictions(run)] == ["a.png", "b.png"]
    rows = runs.iter_predictions(run, "val")
    assert next(rows).path == "a.png"  # a generator: a caller wanting a few rows takes only those
