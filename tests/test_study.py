"""Studies: the plan of variants, one-line errors before any run, and runs that resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import make_image_folder
from transferlab.errors import TransferlabError
from transferlab.pipelines.settings import apply_to_recipe, parse_vary
from transferlab.pipelines.study import StudyConfig, run_study
from transferlab.pipelines.study_spec import (
    StudySpec,
    base_values,
    check_spec,
    factor_from_values,
    load_study_spec,
    plan_variants,
)

SRC = str(Path(__file__).resolve().parents[1] / "src")
PROBE_FIXED = {"backbone": "test_resnet", "weights": "random", "resolution": 48}
TINY_RECIPE = ("backbone: test_efficientnet\nresolution: 48\nprecision: fp32\nbatch_size: 8\naugment: light\n"
               "stages:\n  - {train: head, epochs: 2, lr: 0.01}\n  - {train: all, epochs: 3, lr: 0.001, patience: 5}\n")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("study") / "data", per_class=8, size=40)


def _spec(data, **kwargs) -> StudySpec:
    spec = StudySpec(data=str(data), factors=[factor_from_values(k, v, "test") for k, v in kwargs.pop("vary")],
                     **kwargs)
    check_spec(spec, "test")
    return spec


def test_one_factor_at_a_time_plan_starts_from_the_reference(tmp_path, data):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TINY_RECIPE)
    spec = _spec(data, vary=[parse_vary("augment=none,light,classic"), parse_vary("label_smoothing=0,0.1")],
                 recipe=str(recipe), seeds=[0, 1])
    variants = plan_variants(spec, base_values(spec))
    # The recipe's own augment (light) is the reference; label_smoothing 0.1 is the default recipe's.
    assert variants[0].reference and variants[0].settings == {"augment": "light", "label_smoothing": 0.1}
    assert [v.label for v in variants[1:]] == ["augment=none", "augment=classic", "label_smoothing=0"]
    assert variants[3].settings == {"augment": "light", "label_smoothing": 0}
    folders = {v.folder(s) for v in variants for s in spec.seeds}
    assert len(folders) == len(variants) * 2

    spec.factorial = True
    crossed = plan_variants(spec, base_values(spec))
    assert len(crossed) == 6 and crossed[0].reference and sum(v.reference for v in crossed) == 1


def test_learning_curve_values_and_stage_keys(tmp_path):
    assert parse_vary("per_class=25,50,all") == ("per_class", [25, 50, None])
    assert parse_vary("layers=[head],[stage-2,head]") == ("layers", [["head"], ["stage-2", "head"]])
    base = {"stages": [{"train": "head", "lr": 0.01}, {"train": "all", "lr": 0.001}], "backbone": "test_resnet"}
    recipe = apply_to_recipe(base, {"stages.2.lr": 0.005}, 3, "v")
    assert recipe.stages[1]["lr"] == 0.005 and recipe.seed == 3 and base["stages"][1]["lr"] == 0.001


@pytest.mark.parametrize("vary, message", [
    ("learning_rate=0.1,0.2", "'learning_rate' is not a finetune setting"),
    ("augment", "--vary must look like KEY=V1,V2"),
    ("augment=none,none", "repeats a value"),
    ("stages.2.lr=0.1,0.2", "needs a recipe whose stages are a list"),
    ("label_smoothing=0,1.5", "label_smoothing must be in"),
    ("augment=none,sparkles", "sparkles"),
])
def test_bad_variants_fail_in_one_line_before_any_run(tmp_path, data, vary, message):
    out = tmp_path / "study"
    with pytest.raises(TransferlabError, match=message) as info:
        key, values = parse_vary(vary)
        spec = _spec(data, vary=[(key, values)], mode="finetune", fixed={"stages": "fine_tune"})
        run_study(StudyConfig(spec=spec, out=str(out), progress=False))
    assert "\n" not in str(info.value) and not out.exists()


def test_spec_file_errors_name_the_file(tmp_path, data):
    spec = tmp_path / "s.yaml"
    spec.write_text("vary: {classifier: [logreg, knn]}\nreference: {classifier: svm}\n")
    with pytest.raises(TransferlabError, match=r"s.yaml: reference classifier='svm' is not among"):
        load_study_spec(spec, str(data))
    spec.write_text("vary: {classifier: [logreg]}\nseeds: [0, 0]\n")
    with pytest.raises(TransferlabError, match="seeds repeat"):
        load_study_spec(spec, str(data))
    spec.write_text("varry: {classifier: [logreg]}\n")
    with pytest.raises(TransferlabError, match="unknown key 'varry'"):
        load_study_spec(spec, str(data))


def test_probe_study_writes_runs_and_a_rerun_keeps_them(tmp_path, data):
    spec = _spec(data, vary=[parse_vary("classifier=logreg,knn")], mode="probe", fixed=PROBE_FIXED, seeds=[0, 1])
    out = tmp_path / "study"
    events: list[str] = []
    result = run_study(StudyConfig(spec=spec, out=str(out), workers=0, cache_dir="", progress=False,
                                   on_event=events.append))
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["v00-classifier=logreg-seed0", "v00-classifier=logreg-seed1", "v01-classifier=knn-seed0",
                    "v01-classifier=knn-seed1"]
    for name in runs:
        run = out / "runs" / name
        assert json.loads((run / "run.json").read_text())["status"] == "complete"
        variant = json.loads((run / "variant.json").read_text())
        assert variant["settings"]["classifier"] in name and variant["seed"] == int(name[-1])
    state = json.loads((out / "study.json").read_text())
    assert state["status"] == "complete" and result.skipped == 0 and not result.failed
    assert (out / "study.csv").is_file() and result.report.is_file()
    assert len([e for e in events if "val acc" in e]) == 4

    stamps = {name: (out / "runs" / name / "metrics.json").stat().st_mtime_ns for name in runs}
    again = run_study(StudyConfig(spec=spec, out=str(out), workers=0, cache_dir="", progress=False))
    assert again.skipped == 4
    assert stamps == {name: (out / "runs" / name / "metrics.json").stat().st_mtime_ns for name in runs}

    other = _spec(data, vary=[parse_vary("classifier=logreg,rf")], mode="probe", fixed=PROBE_FIXED)
    with pytest.raises(TransferlabError, match="holds a different study"):
        run_study(StudyConfig(spec=other, out=str(out), progress=False))


def test_study_refuses_a_folder_that_is_not_a_study(tmp_path, data):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    spec = _spec(data, vary=[parse_vary("classifier=logreg,knn")], mode="probe", fixed=PROBE_FIXED)
    with pytest.raises(TransferlabError, match="is not a study"):
        run_study(StudyConfig(spec=spec, out=str(out), progress=False))
    assert (out / "notes.txt").read_text() == "keep me" and sorted(os.listdir(out)) == ["notes.txt"]


def _study_cli(*args) -> list[str]:
    return [sys.executable, "-m", "transferlab", "study", *map(str, args)]


def test_kill_9_mid_study_then_the_same_command_finishes_without_redoing(tmp_path, data):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(TINY_RECIPE)
    out = tmp_path / "study"
    command = _study_cli(data, "--recipe", recipe, "--vary", "label_smoothing=0.1,0", "--out", out, "--quiet")
    env = {**os.environ, "PYTHONPATH": SRC}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = out / "runs" / "v01-label_smoothing=0-seed0"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if (second / "checkpoints" / "stage2" / "last.ckpt").exists():  # the 2nd variant is in its 2nd stage
            break
        time.sleep(0.05)
    assert process.poll() is None, "the study finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    first = out / "runs" / "v00-label_smoothing=0.1-seed0"
    stamp = (first / "metrics.json").stat().st_mtime_ns
    assert json.loads((second / "run.json").read_text())["status"] == "running"

    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "done earlier, kept" in completed.stderr
    assert (first / "metrics.json").stat().st_mtime_ns == stamp  # not redone
    assert json.loads((second / "run.json").read_text())["status"] == "complete"
    state = json.loads((out / "study.json").read_text())
    assert state["status"] == "complete" and all(r["status"] == "complete" for r in state["runs"].values())
    logs = sorted(p.name for p in (second / "logs" / "stage2" / "version_0").iterdir())
    assert any(name.startswith("metrics.part") for name in logs)  # the resumed stage kept its earlier log


def test_cli_errors_are_one_line(tmp_path, data):
    env = {**os.environ, "PYTHONPATH": SRC}
    completed = subprocess.run(_study_cli(data, "--vary", "augment"), env=env, capture_output=True, text=True)
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines() == [
        "error: --vary must look like KEY=V1,V2 (e.g. augment=none,light), got 'augment'"]
    completed = subprocess.run(_study_cli(tmp_path / "nope", "--vary", "augment=none"), env=env,
                               capture_output=True, text=True)
    assert completed.returncode == 2 and len(completed.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("spec_file", sorted(p for p in (Path(__file__).resolve().parents[1] / "studies").glob("*.yaml")
                                             if not p.name.endswith("search-space.yaml")), ids=lambda p: p.stem)
def test_shipped_study_specs_load_and_every_variant_is_valid(spec_file, data):
    from transferlab.pipelines.study_spec import check_variants

    spec = load_study_spec(spec_file, str(data))
    variants = plan_variants(spec, base_values(spec))
    check_variants(spec, variants)  # every recipe of every variant built and validated
    assert variants[0].reference and len(variants) >= 2 and spec.seeds
