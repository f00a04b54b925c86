"""Study summaries, study.csv and study.html from real (tiny) probe runs; compare's variant column."""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
from collections import Counter
from pathlib import Path

import pytest
from safetensors.torch import load_file
from scipy.stats import binomtest

from tests.conftest import make_image_folder
from transferlab.errors import TransferlabError
from transferlab.insight.compare import compare_runs
from transferlab.insight.study_stats import discordant, mcnemar_p
from transferlab.insight.study_table import VariantRun, summarise_study, write_study_csv
from transferlab.pipelines.probe import ProbeConfig, run_probe
from transferlab.report.study_report import render_study_report

FAST = {"backbone": "test_resnet", "weights": "random", "resolution": 64, "workers": 0, "progress": False,
        "precision": "fp32", "embed": "", "error_grid": 0}
# Two red round shapes: a random-weight network confuses them, so runs make mistakes to count.
CLASSES = {"circle": ((220, 40, 40), "ellipse"), "disc": ((200, 60, 50), "ellipse"),
           "square": ((40, 200, 60), "rectangle")}
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Probe runs of a small study: logreg (reference) vs knn, and per_class 4 / 6 / all, two seeds each."""
    base = tmp_path_factory.mktemp("study")
    data = make_image_folder(base / "data", per_class=10, classes=CLASSES)
    cache = str(base / "cache")
    variants = {"reference": ({}, None, None), "classifier=knn": ({"classifier": "knn"}, "classifier", "knn"),
                "per_class=4": ({"per_class": 4}, "per_class", 4), "per_class=6": ({"per_class": 6}, "per_class", 6)}
    runs: dict[str, list[VariantRun]] = {}
    for label, (settings, factor, value) in variants.items():
        for seed in SEEDS:
            out = base / "runs" / f"{label}-seed{seed}"
            run_probe(ProbeConfig(data=str(data), out=str(out), cache_dir=cache, seed=seed, **FAST, **settings))
            runs.setdefault(label, []).append(VariantRun(label, settings, factor, value, seed, out,
                                                         reference=label == "reference"))
    return {"base": base, "runs": runs}


def _metrics(run: VariantRun) -> dict:
    return json.loads((run.run_dir / "metrics.json").read_text())


def _correct(run: VariantRun) -> dict[str, bool]:
    with open(run.run_dir / "predictions.csv", newline="") as handle:
        return {r["path"]: r["true"] == r["predicted"] for r in csv.DictReader(handle) if r["split"] == "val"}


def _entry(summary: dict, label: str) -> dict:
    return next(e for e in summary["variants"] if e["variant"] == label)


def _one_factor(study, *labels) -> list[VariantRun]:
    return [run for label in ("reference",) + labels for run in study["runs"][label]]


# --------------------------------------------------------------------------- summary


def test_summary_numbers_are_the_runs_own(study):
    summary = summarise_study(_one_factor(study, "classifier=knn"))
    assert summary["reference"] == "reference" and summary["factors"] == ["classifier"]
    assert summary["factorial"] is False and summary["seeds"] == list(SEEDS)
    for label in ("reference", "classifier=knn"):
        entry, runs = _entry(summary, label), study["runs"][label]
        metrics = [_metrics(r)["val"] for r in runs]
        accuracies = [m["accuracy"] for m in metrics]
        assert entry["n_seeds"] == len(SEEDS)
        assert entry["accuracy"]["mean"] == pytest.approx(statistics.fmean(accuracies))
        assert entry["accuracy"]["sd"] == pytest.approx(statistics.stdev(accuracies))
        assert entry["macro_f1"]["mean"] == pytest.approx(statistics.fmean(m["macro_f1"] for m in metrics))
        assert entry["per_class_f1"]["disc"]["mean"] == pytest.approx(
            statistics.fmean(m["per_class"]["disc"]["f1"] for m in metrics))
        assert entry["seconds"]["mean"] == pytest.approx(
            statistics.fmean(_metrics(r)["timings"]["total"] for r in runs))
        weights = load_file(runs[0].run_dir / "model" / "backbone.safetensors")
        assert entry["parameters"] == sum(t.numel() for t in weights.values())
        assert entry["beats"] is None  # no baseline in these runs
    reference = _entry(summary, "reference")
    assert reference["paired"] is None
    p, n = reference["accuracy"]["mean"], reference["n_val"]["mean"]
    assert summary["noise"]["se"] == pytest.approx(math.sqrt(p * (1 - p) / n))
    assert f"±{100 * math.sqrt(p * (1 - p) / n):.1f} points" in summary["noise"]["text"]


def test_paired_test_counts_the_images_only_one_run_got_right(study):
    summary = summarise_study(_one_factor(study, "classifier=knn"))
    paired = _entry(summary, "classifier=knn")["paired"]
    better = worse = 0
    for seed_entry, ours, ref in zip(paired["seeds"], study["runs"]["classifier=knn"], study["runs"]["reference"]):
        mine, theirs = _correct(ours), _correct(ref)
        assert seed_entry["accuracy_diff"] == pytest.approx(_metrics(ours)["val"]["accuracy"]
                                                            - _metrics(ref)["val"]["accuracy"])
        assert seed_entry["better"] == sum(mine[p] and not theirs[p] for p in mine)
        assert seed_entry["worse"] == sum(theirs[p] and not mine[p] for p in mine)
        assert seed_entry["same_images"] is True  # same seed, same split
        better, worse = better + seed_entry["better"], worse + seed_entry["worse"]
    assert better + worse > 0  # the confusable classes make the two classifiers disagree somewhere
    expected = binomtest(better, better + worse).pvalue
    assert paired["p_value"] == pytest.approx(expected)
    assert paired["verdict"] == ("within noise" if expected >= 0.05 else "better" if better > worse else "worse")


def test_a_variant_against_itself_differs_by_nothing(study):
    copy = [VariantRun("copy", {"classifier": "logreg"}, "classifier", "logreg", r.seed, r.run_dir, False)
            for r in study["runs"]["reference"]]
    paired = _entry(summarise_study(_one_factor(study) + copy), "copy")["paired"]
    assert paired["accuracy_diff"]["mean"] == 0 and paired["macro_f1_diff"]["mean"] == 0
    assert (paired["better"], paired["worse"], paired["p_value"]) == (0, 0, 1.0)
    assert paired["verdict"] == "within noise" and paired["same_images"] is True


def test_beats_baseline_comes_from_the_runs_baseline_comparison(study, tmp_path):
    data = study["base"] / "data"
    baseline = tmp_path / "baseline.csv"
    baseline.write_text("class,f1\ncircle,0.5\ndisc,0.99\nsquare,0.5\n")
    runs = [VariantRun("reference", {}, None, None, seed, tmp_path / f"run{seed}", True) for seed in SEEDS]
    for run in runs:
        run_probe(ProbeConfig(data=str(data), out=str(run.run_dir), seed=run.seed, baseline=str(baseline), **FAST))
    beats = _entry(summarise_study(runs), "reference")["beats"]
    expected = [_metrics(r)["val"]["baseline"] for r in runs]
    assert beats["mean"] == pytest.approx(statistics.fmean(e["beats"] for e in expected))
    assert beats["of"] == expected[0]["of"] == len(CLASSES)


def test_mcnemar_and_discordant_counts():
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(10, 0) == pytest.approx(2 * 0.5 ** 10)  # all ten discordant images one way
    assert mcnemar_p(3, 3) == pytest.approx(1.0)
    variant = {"a": True, "b": True, "c": False, "d": True}
    reference = {"a": True, "b": False, "c": True, "e": False}
    assert discordant(variant, reference) == (1, 1, 3)


def test_learning_curve_has_a_numeric_axis_of_training_images(study):
    summary = summarise_study(_one_factor(study, "per_class=4", "per_class=6"))
    plot = summary["plots"][0]
    assert plot["factor"] == "per_class" and plot["numeric"] and plot["learning_curve"]
    assert plot["title"] == "Learning curve"
    labels = [p["label"] for p in plot["points"]]
    assert labels == ["4", "6", "all"]  # by training images, "all" at the full count
    for point in plot["points"]:
        runs = [r for label in point["variants"] for r in study["runs"][label]]
        per_run = []
        for run in runs:
            split = json.loads((run.run_dir / "split.json").read_text())
            per_run.append(sum(Counter(c for _, c in split["train"]).values()) / len(split["classes"]))
        assert point["x"] == pytest.approx(statistics.fmean(per_run))
    xs = [p["x"] for p in plot["points"]]
    assert xs == sorted(xs) and len(set(xs)) == 3
    # per_class holds out fewer images: the paired test says it uses the images both runs scored.
    assert any("Validation images differ" in note for note in summary["notes"])


def test_categorical_points_follow_the_listed_order(study):
    runs = _one_factor(study, "classifier=knn")
    for runs_ in (runs, [r for r in runs if r.variant == "classifier=knn"] + study["runs"]["reference"]):
        plot = summarise_study(runs_, orders={"classifier": ["knn", "logreg"]})["plots"][0]
        # The reference sets no classifier: its value is the one its config.yaml recorded.
        assert not plot["numeric"] and [p["label"] for p in plot["points"]] == ["knn", "logreg"]
    # Without a listed order the reference comes first.
    plot = summarise_study(runs)["plots"][0]
    assert [p["reference"] for p in plot["points"]] == [True, False]
    assert [p["x"] for p in plot["points"]] == [0.0, 1.0]


def test_factorial_combinations_are_rows_and_plots_pool_the_other_factors(study, tmp_path):
    combos = {"reference": {"classifier": "logreg", "per_class": None},
              "classifier=knn": {"classifier": "knn", "per_class": None},
              "per_class=4": {"classifier": "logreg", "per_class": 4}}
    runs = [VariantRun(label, settings, None, None, r.seed, r.run_dir, label == "reference")
            for label, settings in combos.items() for r in study["runs"][label]]
    summary = summarise_study(runs)
    assert summary["factorial"] and summary["factors"] == ["classifier", "per_class"]
    classifier = summary["plots"][0]
    assert classifier["averaged"] and [p["n_runs"] for p in classifier["points"]] == [4, 2]
    page = render_study_report(tmp_path, summary, title="factorial", command="transferlab study", notes=[])
    assert "other factors averaged" in page.read_text()


# --------------------------------------------------------------------------- study.csv and study.html


def test_csv_has_one_row_per_variant(study, tmp_path):
    summary = summarise_study(_one_factor(study, "classifier=knn", "per_class=4"))
    write_study_csv(summary, tmp_path / "study.csv")
    with open(tmp_path / "study.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["variant"] for r in rows] == ["reference", "classifier=knn", "per_class=4"]
    for row in rows:
        entry = _entry(summary, row["variant"])
        assert float(row["accuracy_mean"]) == pytest.approx(entry["accuracy"]["mean"], abs=1e-6)
        assert float(row["f1_circle_mean"]) == pytest.approx(entry["per_class_f1"]["circle"]["mean"], abs=1e-6)
    assert rows[0]["verdict"] == "" and rows[1]["verdict"] in ("within noise", "better", "worse")
    json.dumps(summary)  # study.json holds it as it is


def test_html_is_self_contained_and_states_the_noise(study, tmp_path):
    hostile = [VariantRun("<script>alert(1)</script>", {"classifier": "knn"}, "classifier", "knn", r.seed,
                          r.run_dir, False) for r in study["runs"]["classifier=knn"]]
    summary = summarise_study(_one_factor(study, "per_class=4") + hostile)
    page = render_study_report(tmp_path, summary, title="study: shapes", command="transferlab study data --vary x",
                               notes=["a note from the runner"])
    html = page.read_text()
    assert page == tmp_path / "study.html"
    assert "binomial standard error" in html and summary["noise"]["text"].split(";")[0] in html
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    for attribute in ('src="http', "src='http", 'href="http', "href='http"):
        assert attribute not in html
    assert html.count('src="data:image/png;base64,') == 2  # one plot per factor
    pngs = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert pngs == ["study_classifier.png", "study_per_class.png"]
    assert all((tmp_path / "plots" / p).read_bytes().startswith(b"\x89PNG") for p in pngs)
    assert "a note from the runner" in html and "not the classical head" in html


def test_a_study_with_no_finished_run_still_gets_a_page(tmp_path):
    page = render_study_report(tmp_path, {}, title="study: none", command="transferlab study",
                               notes=["failed: runs/a: out of memory"])
    html = page.read_text()
    assert "No run of the study finished" in html and "failed: runs/a: out of memory" in html
    assert "data:image/png" not in html


# --------------------------------------------------------------------------- hostile run folders


def _copy(run: VariantRun, tmp_path: Path) -> Path:
    target = tmp_path / run.run_dir.name
    shutil.copytree(run.run_dir, target)
    return target


@pytest.mark.parametrize(("name", "content", "message"), [
    ("metrics.json", b'{"val": {"accuracy": "1.0", "macro_f1": 1, "n": 6, "per_class": {}}}', "'accuracy' must be"),
    ("metrics.json", b'{"val": {"accuracy": 0.5, "macro_f1": 0.5, "n": 6, "per_class": []}}', "'per_class' must"),
    ("metrics.json", b"\xff\xfe not json", "not valid JSON"),
    ("predictions.csv", b"path,split\nx,val\n", "lacks the column"),
    ("predictions.csv", b"path,split,true,predicted\n\xff\xfe,val,a,b\n", "not readable CSV"),
    ("split.json", b'{"root": 5}', "not a valid split file"),
    ("model/backbone.safetensors", b"\x00" * 64, "not a valid safetensors file"),
])
def test_a_hostile_run_file_is_one_line_naming_it(study, tmp_path, name, content, message):
    reference = study["runs"]["reference"][0]
    folder = _copy(reference, tmp_path)
    (folder / name).write_bytes(content)
    runs = [VariantRun("reference", {}, None, None, 0, folder, True)]
    with pytest.raises(TransferlabError, match=message) as caught:
        summarise_study(runs)
    text = str(caught.value)
    assert "\n" not in text and str(folder / name) in text


def test_a_config_value_that_is_not_json_data_is_left_out(study, tmp_path):
    folder = _copy(study["runs"]["reference"][0], tmp_path)
    config = (folder / "config.yaml").read_text().replace("per_class: null", "per_class: 2024-01-01")
    (folder / "config.yaml").write_text(config)
    knn = study["runs"]["classifier=knn"][0]
    summary = summarise_study([VariantRun("reference", {}, None, None, 0, folder, True),
                               VariantRun("per_class=4", {"per_class": 4}, "per_class", 4, 0, knn.run_dir, False)])
    assert _entry(summary, "reference")["values"] == {"per_class": None}  # a YAML date is no setting value
    json.dumps(summary)


# --------------------------------------------------------------------------- compare


@pytest.mark.parametrize("bad", [b"{not json", b'{"variant": 5}', b'{"variant": "x", "seed": "zero"}'])
def test_compare_shows_the_variant_of_study_runs(study, tmp_path, bad):
    knn, ref, plain = (_copy(run, tmp_path) for run in (study["runs"]["classifier=knn"][0],
                                                          study["runs"]["reference"][0],
                                                          study["runs"]["per_class=4"][0]))
    (knn / "variant.json").write_text(json.dumps({"study": "s", "variant": "classifier=knn",
                                                  "settings": {"classifier": "knn"}, "seed": 0, "reference": False}))
    (ref / "variant.json").write_bytes(bad)
    comparison = compare_runs([knn, ref, plain])
    lines = comparison.table_text().splitlines()
    assert lines[0].split()[:2] == ["run", "variant"]
    assert lines[1].split()[:2] == [knn.name, "classifier=knn"]
    assert lines[2].split()[:2] == [ref.name, "-"] and lines[3].split()[:2] == [plain.name, "-"]
    warning = next(w for w in comparison.warnings if "variant.json" in w)
    assert "\n" not in warning and str(ref / "variant.json") in warning
    html = comparison.write_html(tmp_path / "compare.html").read_text()
    assert "<th>variant</th>" in html and "<td>classifier=knn</td>" in html
    assert comparison.to_dict()["runs"][0]["variant"] == "classifier=knn"
