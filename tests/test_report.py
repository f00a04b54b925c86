"""Tests for transferlab.report: metrics, baseline comparison, plots and the HTML report."""

from __future__ import annotations

import json
import re
from fnmatch import fnmatch
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferlab.atomic import write_json, write_text
from transferlab.errors import TransferlabError
from transferlab.plotting import plt
from transferlab.report.baseline import compare_to_baseline, load_baseline
from transferlab.report.html import REPORT_CSP, render_report, write_report_record
from transferlab.report.metrics import (
    classification_metrics,
    classification_report_text,
)
from transferlab.report.plots import ANNOTATE_MAX_CLASSES, _draw_confusion, plot_confusion_matrix, plot_per_class_f1
from transferlab.report.text import text_table

# cat: tp 2, fp 1, fn 1 -> P = R = F1 = 2/3; dog: tp 1, fp 1, fn 1 -> 0.5; bird: no samples, never predicted.
CLASSES = ["cat", "dog", "bird"]
Y_TRUE = np.array([0, 0, 0, 1, 1])
Y_PRED = np.array([0, 0, 1, 1, 0])


@pytest.fixture
def metrics() -> dict:
    return classification_metrics(Y_TRUE, Y_PRED, CLASSES)


# ---------------------------------------------------------------- metrics


def test_metrics_hand_example(metrics: dict) -> None:
    assert metrics["accuracy"] == 0.6
    assert metrics["n"] == 5
    assert metrics["per_class"]["cat"] == {"precision": 0.6667, "recall": 0.6667, "f1": 0.6667, "support": 3}
    assert metrics["per_class"]["dog"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    # bird has no image in this split: averaged over cat and dog only, (2/3 + 1/2) / 2 = 7/12.
    assert metrics["macro_f1"] == 0.5833
    assert metrics["absent_classes"] == ["bird"]
    assert metrics["weighted_f1"] == 0.6  # (3 * 2/3 + 2 * 1/2) / 5
    assert metrics["confusion"] == [[2, 1, 0], [1, 1, 0], [0, 0, 0]]
    json.dumps(metrics)  # plain types only: it goes straight into metrics.json


def test_zero_support_class_is_listed(metrics: dict) -> None:
    assert list(metrics["per_class"]) == CLASSES
    assert metrics["per_class"]["bird"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_report_text_names_every_class() -> None:
    text = classification_report_text(Y_TRUE, Y_PRED, CLASSES)
    assert all(name in text for name in CLASSES)
    assert "0.6667" in text


def test_metrics_reject_out_of_range_labels() -> None:
    with pytest.raises(TransferlabError, match="class index 3"):
        classification_metrics(np.array([0, 3]), np.array([0, 1]), CLASSES)


# ---------------------------------------------------------------- baseline


def _csv(tmp_path: Path, text: str, name: str = "base line.csv") -> Path:
    path = tmp_path / name
    write_text(path, text)
    return path


def test_load_baseline_good(tmp_path: Path) -> None:
    path = _csv(tmp_path, "\ufeffClass, F1 ,source\ncat,0.8,paper\n\n dome(inner) , 1 ,x\n")
    assert load_baseline(path) == {"cat": 0.8, "dome(inner)": 1.0}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name,f1\ncat,0.5\n", "lacks column"),
        ("class,score\ncat,0.5\n", "lacks column"),
        ("class,f1\ncat,high\n", r":2: f1 of class 'cat' is 'high', not a number"),
        ("class,f1\ncat,nan\n", "outside"),
        ("class,f1\ncat,0.5\ndog,1.2\n", r":3: f1 of class 'dog' is 1.2, outside \[0, 1\]"),
        ("class,f1\ncat,85\n", "fraction"),
        ("class,f1\ncat,-0.1\n", "outside"),
        ("class,f1\ncat,0.5\ndog,0.4\ncat,0.6\n", r":4: class 'cat' appears again \(first on line 2\)"),
        ("", "empty"),
        ("\n\n", "empty"),
        ("class,f1\n", "no class rows"),
        ("class,f1\n,0.5\n", "empty class name"),
        ("class,f1\ncat\n", "no f1 value"),
    ],
)
def test_load_baseline_bad(tmp_path: Path, text: str, expected: str) -> None:
    path = _csv(tmp_path, text)
    with pytest.raises(TransferlabError, match=expected) as info:
        load_baseline(path)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message


def test_load_baseline_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    with pytest.raises(TransferlabError, match="not found") as info:
        load_baseline(path)
    assert str(path) in str(info.value)


def test_compare_beats_count_hand_example() -> None:
    per_class = {"a": {"f1": 0.9}, "b": {"f1": 0.5}, "c": {"f1": 0.7}}
    comparison = compare_to_baseline(per_class, {"a": 0.8, "b": 0.6, "c": 0.7})
    # a beats, b loses, c ties: a tie is not a win.
    assert (comparison.beats, comparison.of) == (1, 3)
    assert [row["beats"] for row in comparison.rows] == [True, False, False]
    assert comparison.rows[1]["delta"] == -0.1
    assert comparison.to_dict()["per_class"]["a"] == {"ours": 0.9, "baseline": 0.8, "delta": 0.1}
    lines = comparison.table_text().splitlines()
    assert lines[-1] == "beats 1 of 3 classes"
    assert len({line.index("0.") for line in lines[1:-1]}) == 1  # columns line up


def test_compare_partial_overlap_lists_missing() -> None:
    per_class = {"a": {"f1": 0.9}, "b": {"f1": 0.5}}
    comparison = compare_to_baseline(per_class, {"b": 0.4, "z": 0.6})
    assert (comparison.beats, comparison.of) == (1, 1)
    assert comparison.missing_in_ours == ["z"]
    assert comparison.missing_in_baseline == ["a"]
    assert comparison.to_dict()["missing_in_ours"] == ["z"]


def test_compare_no_overlap_raises() -> None:
    with pytest.raises(TransferlabError, match="no class name") as info:
        compare_to_baseline({"Cat": {"f1": 0.9}}, {"cat": 0.8})
    assert "'Cat'" in str(info.value) and "'cat'" in str(info.value)


# ---------------------------------------------------------------- plots


def _confusion(n: int) -> list[list[int]]:
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 5, size=(n, n)) + np.eye(n, dtype=int) * 20
    return matrix.tolist()


def test_confusion_plot_grows_with_classes(tmp_path: Path) -> None:
    small = plot_confusion_matrix(_confusion(3), ["a", "b$", "c$d$"], tmp_path / "small.png", title="val $1$")
    names = [f"class_{i:02d}_with_a_long_name" for i in range(35)]
    big = plot_confusion_matrix(_confusion(35), names, tmp_path / "plots" / "big.png", normalize=False)
    with Image.open(small) as a, Image.open(big) as b:
        assert a.format == b.format == "PNG"
        assert b.width > a.width * 2 and b.height > a.height * 2
    assert not list(tmp_path.rglob("*.tmp"))  # atomic write left no temp file


def _drawn_confusion(counts: np.ndarray, normalize: bool = True):
    n = len(counts)
    fig, ax = plt.subplots()
    shade = counts / counts.sum(axis=1, keepdims=True) if normalize else counts.astype(float)
    _draw_confusion(fig, ax, counts, shade, [f"c{i}" for i in range(n)], normalize=normalize, title="t")
    return fig, ax


def test_confusion_cells_show_counts_over_row_normalised_shading() -> None:
    counts = np.array([[8, 2, 0], [1, 1, 0], [0, 30, 90]])
    fig, ax = _drawn_confusion(counts)
    try:
        # Numbers: the raw counts, row by row; colour: each true class's share.
        assert [t.get_text() for t in ax.texts] == [str(v) for v in counts.ravel()]
        np.testing.assert_allclose(ax.images[0].get_array(), counts / counts.sum(axis=1, keepdims=True))
        assert ax.images[0].get_clim() == (0.0, 1.0)
        assert fig.axes[-1].get_ylabel() == "share of true class"  # the colour bar
        assert [t.get_text() for t in ax.get_xticklabels()] == ["c0", "c1", "c2"]
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted", "true")
        # Dark cells get light text and light cells dark text: the 0.75 share differs from the 0 share.
        assert ax.texts[8].get_color() != ax.texts[6].get_color()
    finally:
        plt.close(fig)


def test_confusion_numbers_stop_above_the_annotation_limit() -> None:
    counts = np.eye(ANNOTATE_MAX_CLASSES + 1, dtype=int) * 3 + 1
    fig, ax = _drawn_confusion(counts, normalize=False)
    try:
        assert not ax.texts
        assert fig.axes[-1].get_ylabel() == "count"
        assert len(ax.get_yticklabels()) == ANNOTATE_MAX_CLASSES + 1  # every class still named
    finally:
        plt.close(fig)
    fig, ax = _drawn_confusion(counts[:ANNOTATE_MAX_CLASSES, :ANNOTATE_MAX_CLASSES], normalize=False)
    try:
        assert len(ax.texts) == ANNOTATE_MAX_CLASSES**2
    finally:
        plt.close(fig)


def test_confusion_plot_rejects_shape_mismatch(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not match"):
        plot_confusion_matrix([[1, 0], [0, 1]], ["a", "b", "c"], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_per_class_f1_plot_with_partial_baseline(tmp_path: Path, metrics: dict) -> None:
    path = plot_per_class_f1(metrics["per_class"], tmp_path / "f1.png", baseline={"cat": 0.7})
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 100


# ---------------------------------------------------------------- html


def _run_dir(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run <1> & co"
    classes = ["dome(inner)", "<b>bold</b>", "plain"]
    val = classification_metrics(np.array([0, 1, 2, 2]), np.array([0, 1, 2, 1]), classes)
    per_class = val["per_class"]
    val["baseline"] = compare_to_baseline(per_class, {"dome(inner)": 0.5, "<b>bold</b>": 0.9, "ghost": 0.2}).to_dict()
    write_json(run_dir / "metrics.json", {"val": val, "timings": {"features": 3.25, "fit": 75.0}, "extra": [1]})
    plot_confusion_matrix(val["confusion"], classes, run_dir / "plots" / "confusion_val.png")
    write_text(run_dir / "skipped.csv", "path,reason\ndata/a <x>.txt,not an image file\n")
    return run_dir


def test_report_html(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path)
    path = render_report(
        run_dir,
        title="Probe <elpv>",
        summary={"backbone": "efficientnet_lite0", "resolution": 224, "data": "/x/<y> z"},
        sections=[("Notes & more", "<p>already <i>safe</i></p>")],
    )
    assert path == run_dir / "report.html"
    html = path.read_text(encoding="utf-8")
    assert "dome(inner)" in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html and "<b>bold</b>" not in html
    assert "data/a &lt;x&gt;.txt" in html
    assert "/x/&lt;y&gt; z" in html
    assert "Probe &lt;elpv&gt;" in html
    assert "data:image/png;base64," in html
    assert "confusion val" in html
    # dome(inner): F1 1.0 vs 0.5 beats; <b>bold</b>: F1 2/3 (one false positive) vs 0.9 does not.
    assert "beats 1 of 2 classes" in html
    assert '<span class="up">+0.5000</span>' in html and '<span class="down">-0.2333</span>' in html
    assert "ghost" in html  # baseline class missing from the run is named
    assert "1 min 15.0 s" in html
    assert "<p>already <i>safe</i></p>" in html and "Notes &amp; more" in html
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html


def test_report_missing_metrics_names_file(tmp_path: Path) -> None:
    with pytest.raises(TransferlabError, match="metrics.json"):
        render_report(tmp_path, title="t", summary={})


def test_report_caps_skipped_rows_and_keeps_small_settings(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    write_json(run_dir / "metrics.json", {"val": classification_metrics(Y_TRUE, Y_PRED, CLASSES)})
    write_text(run_dir / "skipped.csv", "path,reason\n" + "".join(f"img{i}.txt,bad\n" for i in range(250)))
    html = render_report(run_dir, title="t", summary={"lr": 1e-05}).read_text(encoding="utf-8")
    skipped = html.split('<section id="skipped">')[1].split("</section>")[0]
    assert skipped.count("<tr><td>img") == 200
    assert "250 file(s) were skipped" in skipped and "img199.txt" in skipped and "img200.txt" not in skipped
    assert "<td>1e-05</td>" in html
    assert 'id="split-test"' not in html  # no test split in metrics.json


def _minimal_run(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    write_json(run_dir / "metrics.json", {"val": classification_metrics(Y_TRUE, Y_PRED, CLASSES)})
    return run_dir


def test_report_rebuilds_from_the_record_and_arguments_win(tmp_path: Path) -> None:
    run_dir = _minimal_run(tmp_path)
    reproduce = {"command": "transferlab probe data --seed 4", "seed": 4, "versions": {"torch": "9.9"}}
    write_report_record(run_dir, title="Probe <x>", summary={"backbone": "net"},
                        sections=[("Extra & more", "<p>kept <i>as HTML</i></p>")], reproduce=reproduce)
    html = render_report(run_dir).read_text(encoding="utf-8")
    assert "<title>Probe &lt;x&gt;</title>" in html and "<td>backbone</td><td>net</td>" in html
    assert "<h2>Extra &amp; more</h2>\n<p>kept <i>as HTML</i></p>" in html
    assert "<td>seed</td><td>4</td>" in html and "torch 9.9" in html
    html = render_report(run_dir, title="Other", sections=[]).read_text(encoding="utf-8")
    assert "<title>Other</title>" in html and "Extra" not in html
    assert "<td>backbone</td><td>net</td>" in html  # not given: still from the record


def test_report_without_a_record_names_the_run(tmp_path: Path) -> None:
    html = render_report(_minimal_run(tmp_path)).read_text(encoding="utf-8")
    assert "<title>transferlab: run</title>" in html and '<section id="reproduce">' in html


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"sections": "<script>x</script>"}', "'sections' must be a JSON list"),
        ('{"sections": [["only a heading"]]}', "[heading, body] string pairs"),
        ('{"sections": [["h", {"html": 1}]]}', "[heading, body] string pairs"),
        ('{"summary": ["a"]}', "'summary' must be a JSON object"),
        ('{"title": 7}', "'title' must be a JSON string"),
    ],
)
def test_report_refuses_a_malformed_record_in_one_line(tmp_path: Path, content: str, message: str) -> None:
    run_dir = _minimal_run(tmp_path)
    write_text(run_dir / "report.json", content)
    with pytest.raises(TransferlabError, match=re.escape(message)) as info:
        render_report(run_dir)
    assert str(run_dir / "report.json") in str(info.value) and "\n" not in str(info.value)
    assert not (run_dir / "report.html").exists()


def test_report_from_an_edited_folder_escapes_text_and_blocks_scripts(tmp_path: Path) -> None:
    run_dir = _minimal_run(tmp_path)
    evil = "<script>alert(1)</script>"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["val"]["per_class"] = {evil: {"f1": evil}, "ok": "not a dict"}
    metrics["val"]["baseline"] = {"beats": evil, "of": 1, "per_class": [evil], "missing_in_ours": [evil]}
    metrics["timings"] = ["not", "a", "dict"]
    write_json(run_dir / "metrics.json", metrics)
    write_json(run_dir / "report.json", {"title": evil, "summary": {evil: evil}, "reproduce": {"command": evil,
                                         "versions": evil}, "sections": [[evil, "<p>pipeline html</p>"]]})
    html = render_report(run_dir).read_text(encoding="utf-8")
    assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<p>pipeline html</p>" in html  # section bodies are the pipeline's HTML
    # Whatever a section body holds, the policy comes first in <head> and allows no script.
    assert html.index(f'<meta http-equiv="Content-Security-Policy" content="{REPORT_CSP}">') < html.index("<body>")
    assert "script-src" not in REPORT_CSP and "default-src 'none'" in REPORT_CSP


def test_report_embeds_only_real_png_files(tmp_path: Path) -> None:
    run_dir = _minimal_run(tmp_path)
    plot_per_class_f1({"a": {"f1": 0.5}}, run_dir / "plots" / "f1.png")
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG\r\n\x1a\n" + b"secret bytes")
    (run_dir / "plots" / "linked.png").symlink_to(secret)
    (run_dir / "plots" / "fake.png").write_text("not a png")
    html = render_report(run_dir).read_text(encoding="utf-8")
    assert html.count("<figure>") == 1 and 'alt="f1"' in html


def test_report_templates_ship_as_package_data() -> None:
    """Every template file matches a package-data glob, or the wheel would lack it."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    globs = pyproject["tool"]["setuptools"]["package-data"]["transferlab"]
    templates = resources.files("transferlab.report") / "templates"
    names = [f"report/templates/{t.name}" for t in templates.iterdir() if t.is_file()]
    assert "report/templates/report.html" in names
    assert all(any(fnmatch(name, g) for g in globs) for name in names), (names, globs)
    assert "jinja2>=3.1" in pyproject["project"]["dependencies"]


def test_text_table_prints_names_as_written_and_aligns_numbers() -> None:
    text = text_table(["class", "F1"], [["[bold]x[/bold] :smile:", "0.5000"], ["b", "-"]])
    lines = text.splitlines()
    assert lines[1].startswith("[bold]x[/bold] :smile:")  # no rich markup, no emoji
    assert len({len(line) for line in lines}) == 1  # right-aligned numbers end together
    assert [line.split()[-1] for line in lines] == ["F1", "0.5000", "-"]
    assert "\x1b" not in text and all(line == line.rstrip() for line in lines)
