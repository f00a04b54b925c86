"""`transferlab auto`: the plan within a budget, its decision log, resume, and smaller plans
for budgets that cannot hold everything (tiny random-weight backbones, generated images)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_image_folder
from transferlab.errors import TransferlabError
from transferlab.inference.predict import load_predictor
from transferlab.pipelines import auto_plan
from transferlab.pipelines.auto import AutoConfig, higher_resolution, run_auto
from transferlab.pipelines.auto_plan import parse_budget

BACKBONES = ("test_resnet", "test_efficientnet")
RECIPE = {"resolution": 48, "precision": "fp32", "batch_size": 8, "stages": [{"train": "all", "epochs": 1}]}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("auto") / "data", per_class=8, size=40)


def _config(data: Path, out: Path, **overrides) -> AutoConfig:
    settings = {"data": str(data), "out": str(out), "budget_s": 900.0, "backbones": BACKBONES,
                "recipe": dict(RECIPE), "max_finetunes": 1, "rank_per_class": 4, "workers": 0, "progress": False,
                **overrides}
    return AutoConfig(**settings)


@pytest.fixture(scope="module")
def full(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("auto-full") / "auto"
    return run_auto(_config(data, out, max_finetunes=2)), out


def test_a_roomy_budget_runs_the_whole_plan(full, data):
    result, out = full
    plan = (out / "plan.md").read_text(encoding="utf-8")
    for step in ("**rank**: run", "**probe test_resnet**: run", "**probe test_efficientnet**: run",
                 "**fine-tune", "**test-time augmentation (flip)", "**ensemble (select)**", "**result**"):
        assert step in plan
    assert "| probe only (best of the probes) |" in plan and "| + fine-tune |" in plan
    assert "LogME" in plan and "img/s" in plan  # the figures behind the ranking
    chosen = json.loads((out / "result.json").read_text())
    assert out / chosen["run"] == result.chosen and chosen["val_accuracy"] == result.val_accuracy
    assert result.val_accuracy >= max(s.val_accuracy for s in result.steps if s.kind == "probe")
    predictor = load_predictor(result.chosen)  # an ordinary run folder
    prediction = predictor.predict_paths([next(data.rglob("*.png"))])[0]
    assert prediction.error is None and prediction.top[0][0] in predictor.classes
    assert {p.name for p in (out / "runs").iterdir()} >= {"probe-test_resnet", "probe-test_efficientnet"}
    # Both probed backbones fine-tuned; between them the first again at 1.25x the recipe's 48 px
    # (in multiples of 32), and the second at whichever of the two did better.
    finetunes = [s for s in result.steps if s.kind == "finetune"]
    first, higher, second = finetunes
    assert (first.resolution, higher.resolution) == (None, 64) and first.backbone == higher.backbone
    assert higher.run.name.endswith("-64px") and (first.cost, higher.cost) == (1.0, (64 / 48) ** 2)
    assert {first.backbone, second.backbone} == set(BACKBONES)
    assert second.resolution == (64 if higher.val_accuracy > first.val_accuracy else None)
    assert json.loads((higher.run / "model" / "model.json").read_text())["resolution"] == 64
    assert f"**{higher.label}**: run" in plan and "| + resolution | 0." in plan
    assert "**speeds**: note" in plan  # relative speeds re-read from the probes' extraction
    ensemble = yaml.safe_load((out / "runs" / "ensemble" / "config.yaml").read_text())["ensemble"]
    assert ensemble["tta"] is None and "flip on every member" not in plan  # members scored as they are


def test_the_same_command_again_reuses_every_finished_run(full, data):
    result, out = full
    metrics = sorted((out / "runs").glob("*/metrics.json"))
    stamps = {p: p.stat().st_mtime_ns for p in metrics}
    spent = json.loads((out / "auto.json").read_text())["spent_s"]
    again = run_auto(_config(data, out, max_finetunes=2))
    assert again.chosen == result.chosen and again.val_accuracy == result.val_accuracy
    assert {p: p.stat().st_mtime_ns for p in metrics} == stamps  # nothing was run twice
    plan = (out / "plan.md").read_text(encoding="utf-8")
    assert "**resume**: note" in plan and "**probe test_resnet**: reuse" in plan
    assert json.loads((out / "auto.json").read_text())["spent_s"] > spent  # the earlier time still counts


def test_the_auto_folder_itself_names_the_run_to_use(full, tmp_path, monkeypatch):
    """`predict OUT` on the auto folder: one line naming the chosen run. result.json holds it relative
    to the folder, so the name holds from any working directory and after the folder is moved."""
    result, out = full
    chosen = json.loads((out / "result.json").read_text())
    assert not Path(chosen["run"]).is_absolute() and (out / chosen["run"]).resolve() == result.chosen.resolve()
    moved = tmp_path / "moved"
    shutil.copytree(out, moved, symlinks=True)
    monkeypatch.chdir(tmp_path)
    for folder, model in ((out, result.chosen), (Path("moved"), moved / chosen["run"])):
        with pytest.raises(TransferlabError) as info:
            load_predictor(folder)
        assert "transferlab auto" in str(info.value) and repr(str(model.resolve())) in str(info.value)


def test_the_time_spent_reaches_auto_json_while_auto_runs(data, tmp_path, monkeypatch):
    """kill -9 and SIGTERM end auto without a `finally`: the time spent must be on disk already."""
    from transferlab.pipelines import auto as auto_module

    monkeypatch.setattr(auto_module, "SAVE_EVERY_S", 0.05)
    seen: list[float] = []
    original = auto_module.rank_step

    def slow_rank(context):  # a step long enough for the clock to tick during it
        import time
        time.sleep(0.5)
        seen.append(json.loads((context.out / "auto.json").read_text())["spent_s"])
        return original(context)

    monkeypatch.setattr(auto_module, "rank_step", slow_rank)
    run_auto(_config(data, tmp_path / "auto", max_finetunes=0))
    assert seen and seen[0] > 0  # written during the step (a fresh state says 0.0), not only at its end


def test_files_left_out_are_named_in_the_plan(tmp_path, monkeypatch):
    monkeypatch.setattr(auto_plan, "FINETUNE_PASSES", 1e9)  # probes only: quick
    data = make_image_folder(tmp_path / "data", per_class=8, size=40)
    (data / "circle" / "broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    run_auto(_config(data, tmp_path / "auto"))
    plan = (tmp_path / "auto" / "plan.md").read_text(encoding="utf-8")
    assert "**data**: note: 1 file(s) left out of every step" in plan and "skipped.csv" in plan


def test_skip_figures_add_up():
    budget = auto_plan.Budget(100.0)
    line = budget.shortfall("finetune", 80.0, 20.0)
    assert "needs 112 s with a 15% margin (estimate 80 s + 20 s kept for the ensemble)" in line
    assert not budget.fits("finetune", 80.0, 20.0)


def test_a_budget_that_cannot_hold_a_fine_tune_gives_a_smaller_plan(data, tmp_path, monkeypatch):
    monkeypatch.setattr(auto_plan, "FINETUNE_PASSES", 1e9)  # a fine-tune that could never fit
    result = run_auto(_config(data, tmp_path / "auto"))
    plan = (tmp_path / "auto" / "plan.md").read_text(encoding="utf-8")
    assert "**fine-tune test_" in plan and "skip: does not fit" in plan
    assert not list((tmp_path / "auto" / "runs").glob("finetune-*"))
    assert all(s.kind == "probe" for s in result.steps)


def test_a_fine_tune_that_does_not_fit_leaves_the_next_backbone_its_turn(data, tmp_path, monkeypatch):
    asked: list[str] = []
    original = auto_plan.Throughput.finetune

    def finetune(self, backbone):  # the best-ranked backbone's fine-tune could never fit
        asked.append(backbone)
        return 1e9 if backbone == asked[0] else original(self, backbone)

    monkeypatch.setattr(auto_plan.Throughput, "finetune", finetune)
    result = run_auto(_config(data, tmp_path / "auto", max_finetunes=2))
    plan = (tmp_path / "auto" / "plan.md").read_text(encoding="utf-8")
    assert f"**fine-tune {asked[0]}**: skip: does not fit" in plan
    ran = [s for s in result.steps if s.kind == "finetune"]
    assert ran and {s.backbone for s in ran} == set(BACKBONES) - {asked[0]}


def test_the_second_backbone_falls_back_to_the_probes_resolution(data, tmp_path, monkeypatch):
    """When the higher resolution won for the first backbone but does not fit for the second,
    the second is fine-tuned at the probe's resolution instead of not at all."""
    from transferlab.pipelines import auto as auto_module

    original_ensemble, original_step = auto_plan.Throughput.ensemble, auto_module.finetune_step
    calls: list[int | None] = []

    def reserve(self, backbones, costs=None):  # the second backbone's higher resolution never fits
        return 1e9 if costs and costs[0] > 1 and len(calls) >= 2 else original_ensemble(self, backbones, costs)

    def finetune_step(context, throughput, backbone, reserve, resolution=None, cost_factor=1.0):
        calls.append(resolution)
        step = original_step(context, throughput, backbone, reserve, resolution=resolution, cost_factor=cost_factor)
        if step is not None and resolution is not None:
            step.val_accuracy = 1.0  # the higher resolution "won"
        return step

    monkeypatch.setattr(auto_plan.Throughput, "ensemble", reserve)
    monkeypatch.setattr(auto_module, "finetune_step", finetune_step)
    result = run_auto(_config(data, tmp_path / "auto", max_finetunes=2))
    plan = (tmp_path / "auto" / "plan.md").read_text(encoding="utf-8")
    finetunes = [s for s in result.steps if s.kind == "finetune"]
    assert calls == [None, 64, 64, None]
    assert [s.resolution for s in finetunes] == [None, 64, None]
    assert f"**fine-tune {finetunes[2].backbone} at 64 px**: skip: does not fit" in plan
    assert json.loads((finetunes[2].run / "model" / "model.json").read_text())["resolution"] == 48


def test_relative_speeds_come_from_the_probes_at_the_rankings_level():
    from transferlab.pipelines.auto_plan import Throughput

    ranked = Throughput({"a": 0.010, "b": 0.030, "c": 0.5}, images=100, val_images=20)
    adjusted = ranked.relative_to({"a": 40.0, "b": 40.0, "x": 9.0})  # c unprobed, x unranked
    assert adjusted.seconds_per_image == pytest.approx({"a": 0.020, "b": 0.020, "c": 0.5})
    assert ranked.relative_to({"a": 40.0}) is ranked  # one backbone: nothing relative to learn
    assert ranked.ensemble(["a", "b"], [2.0, 1.0]) == pytest.approx(
        auto_plan.FIXED_SECONDS + auto_plan.ENSEMBLE_VAL_PASSES * 0.05 * 20)
    with pytest.raises(ValueError):
        ranked.ensemble(["a", "b"], [1.0])


def test_a_budget_too_short_for_one_probe_is_one_line(data, tmp_path, monkeypatch):
    monkeypatch.setattr(auto_plan, "PROBE_PASSES", 1e9)
    with pytest.raises(TransferlabError) as info:
        run_auto(_config(data, tmp_path / "auto"))
    message = str(info.value)
    assert "\n" not in message and "--budget" in message
    assert "skip: does not fit" in (tmp_path / "auto" / "plan.md").read_text(encoding="utf-8")


def test_another_command_or_a_foreign_folder_is_refused(full, data, tmp_path):
    _, out = full
    with pytest.raises(TransferlabError, match="another command"):
        run_auto(_config(data, out, budget_s=60.0))
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(TransferlabError, match="not an auto folder"):
        run_auto(_config(data, foreign))
    assert (foreign / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("base, native, short, expected", [
    (128, 240, 128, 160),  # small images: upsampled towards the native size
    (224, 224, 300, 288),  # large images: towards their own size
    (240, 240, 240, None),  # already at both
    (260, 260, 300, 288),  # capped by the images, in multiples of 32
    (64, 160, None, None),  # 1.25x rounds back to 64
])
def test_higher_resolution_stays_within_the_backbone_and_the_images(base, native, short, expected):
    assert higher_resolution(base, native, short) == expected


@pytest.mark.parametrize("text, seconds", [("20m", 1200), ("90s", 90), ("1.5h", 5400), ("300", 300),
                                           ("2min", 120)])
def test_budgets_read_as_durations(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["soon", "5", "-3m", "9d"])
def test_bad_budgets_are_one_line(text):
    with pytest.raises(TransferlabError, match="--budget"):
        parse_budget(text)


def test_a_bare_number_too_small_for_seconds_hints_at_minutes():
    with pytest.raises(TransferlabError, match=r"a bare number is seconds: did you mean 5m\?"):
        parse_budget("5")
    with pytest.raises(TransferlabError) as refused:
        parse_budget("5s")
    assert "did you mean" not in str(refused.value)  # the unit was given


def test_the_largest_ensemble_that_fits_is_chosen():
    """Every run, else the best three: a short budget gets a smaller ensemble instead of none.
    Members are never scored with flip (it cost heritage's ensembles 6-12 images)."""
    from transferlab.pipelines.auto_plan import Budget, Throughput
    from transferlab.pipelines.auto_steps import StepResult, _ensemble_that_fits

    steps = [StepResult(f"run {i}", "probe", "b", Path(f"r{i}"), accuracy, accuracy, 1.0)
             for i, accuracy in enumerate([0.90, 0.95, 0.93, 0.91, 0.94])]
    throughput = Throughput({"b": 0.01}, images=1000, val_images=1000)
    one = throughput.ensemble(["b"] * 5)  # all five, one view
    three = throughput.ensemble(["b"] * 3)

    def chosen(seconds: float):
        found = _ensemble_that_fits(throughput, Budget(seconds), steps)
        return None if found is None else [s.label for s in found[0]]

    assert chosen(one * 1.2) == [s.label for s in steps]
    assert chosen(one * 1.1) == ["run 1", "run 4", "run 2"]  # the best three by validation accuracy
    assert chosen(three * 1.2) == ["run 1", "run 4", "run 2"]
    assert chosen(three * 0.5) is None


def test_the_ensemble_scores_its_members_without_flip_even_when_flip_was_kept(monkeypatch, tmp_path):
    """Flip kept for the best single run (one image on heritage) is not put on every member: there it
    cost the ensemble 6-12 images out of fold."""
    from transferlab.pipelines import auto_steps
    from transferlab.pipelines.auto_plan import Budget, PlanLog, Throughput

    class Launched(Exception):
        pass

    def launched(config):
        raise Launched(config)

    monkeypatch.setattr(auto_steps, "run_ensemble", launched)
    config = _config(tmp_path / "data", tmp_path / "auto")
    context = auto_steps.AutoContext(config=config, out=tmp_path / "auto", budget=Budget(900.0),
                                     log=PlanLog(tmp_path / "plan.md", "auto"), recipe_for=lambda b, r=None: None)
    steps = [auto_steps.StepResult(f"run {i}", "probe", "b", tmp_path / f"r{i}", 0.9 + i / 100, 0.9, 1.0)
             for i in range(3)]
    best = steps[-1]
    flipped = dataclasses.replace(best, label=best.label + " + flip", val_accuracy=0.95, tta="flip")
    with pytest.raises(Launched) as launched_with:
        auto_steps.ensemble_step(context, Throughput({"b": 0.001}, images=100, val_images=20), steps, best, flipped)
    ensemble_config = launched_with.value.args[0]
    assert ensemble_config.tta is None and len(ensemble_config.runs) == 3


def test_ensemble_estimates_count_the_engine_that_will_score(monkeypatch):
    """OpenVINO scores an ensemble's members in fp32 3-6x faster than torch: its estimate is the
    smaller one, and a forced torch engine (or no OpenVINO) keeps torch's."""
    from transferlab import openvino_rt
    from transferlab.pipelines import auto_steps

    monkeypatch.setattr(openvino_rt, "available", lambda: True)
    monkeypatch.setenv("TRANSFERLAB_ENGINE", "auto")
    assert auto_steps._scoring_passes() == auto_plan.ENSEMBLE_COMPILED_PASSES
    monkeypatch.setenv("TRANSFERLAB_ENGINE", "torch")
    assert auto_steps._scoring_passes() == auto_plan.ENSEMBLE_VAL_PASSES
    monkeypatch.setenv("TRANSFERLAB_ENGINE", "auto")
    monkeypatch.setattr(openvino_rt, "available", lambda: False)
    assert auto_steps._scoring_passes() == auto_plan.ENSEMBLE_VAL_PASSES
    passes = auto_plan.ENSEMBLE_COMPILED_PASSES
    compiled = auto_plan.Throughput({"a": 0.01}, images=100, val_images=20, ensemble_passes=passes)
    assert compiled.relative_to({"a": 1.0, "b": 1.0}).ensemble_passes == passes
    assert compiled.ensemble(["a"]) < auto_plan.Throughput({"a": 0.01}, images=100, val_images=20).ensemble(["a"])
