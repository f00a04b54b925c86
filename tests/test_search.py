"""`transferlab search`: space files, pruning, resume after kill -9, workers sharing a study
(one SQLite file; a real PostgreSQL server), the best recipe re-run as is, hostile inputs."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import make_image_folder
from transferlab.errors import TransferlabError
from transferlab.finetune.recipe import load_recipe
from transferlab.pipelines.finetune import FinetuneConfig, run_finetune
from transferlab.pipelines.search import SearchConfig, run_search, trial_row
from transferlab.pipelines.search_space import PRUNERS, load_space

# Head-only stages train on cached activations of the frozen backbone: a trial takes a second or
# two, and a fresh process does not pay for compiling the backward kernels of every conv layer.
RECIPE = """\
backbone: test_efficientnet
weights: random
resolution: 32
precision: fp32
batch_size: 8
augment: none
augment_draws: 1
stages:
  - {train: head, epochs: 2, lr: 0.01, patience: 5}
"""
TWO_STAGES = RECIPE + "  - {train: head, epochs: 1, lr: 0.001, patience: 5}\n"
SPACE = """\
lr: {type: log, low: 1e-3, high: 1e-1}
label_smoothing: {type: float, low: 0, high: 0.2}
head: [[], [{type: dropout, p: 0.3}]]
"""
POSTGRES_ENV = "TRANSFERLAB_TEST_POSTGRES"
# The command as `transferlab search` runs it, whether or not cli/__init__ imports the module yet.
CLI = ("import sys; import transferlab.cli.search_commands; from transferlab.cli.app import main; "
       "sys.argv[0] = 'transferlab'; main()")
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("search")
    (root / "recipe.yaml").write_text(RECIPE)
    (root / "space.yaml").write_text(SPACE)
    return {"data": str(make_image_folder(root / "data", per_class=5, size=32)),
            "recipe": str(root / "recipe.yaml"), "space": str(root / "space.yaml")}


def config(files: dict, out: Path, **overrides) -> SearchConfig:
    settings = {"data": files["data"], "out": str(out), "space": files["space"], "recipe": files["recipe"],
                "trials": 3, "pruner": "none", "workers": 0, "progress": False, "heartbeat_s": 1}
    return SearchConfig(**{**settings, **overrides})


def study_of(out: Path, name: str = "transferlab") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'search.db'}")


def run_status(folder: Path) -> dict:
    return json.loads((folder / "run.json").read_text())


def cli(files: dict, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", CLI, "search", files["data"], "--space", files["space"], "--recipe",
            files["recipe"], "--out", str(out), "--pruner", "none", "--workers", "0", "--heartbeat", "1", "--quiet",
            *extra]


# --- a search end to end -------------------------------------------------------------------


def test_small_search_writes_a_best_recipe_that_reruns_as_is(files, tmp_path):
    out = tmp_path / "search"
    lines = []
    result = run_search(config(files, out, on_trial_end=lines.append))
    assert result.counts == {"complete": 3} and result.stopped_by == "trials"
    assert [row["number"] for row in lines] == [0, 1, 2]
    study = study_of(out)
    best = study.best_trial
    assert result.best["number"] == best.number and result.best["value"] == pytest.approx(best.value)
    # best_recipe.yaml is the base recipe with the best trial's values, as load_recipe reads it.
    recipe = load_recipe(out / "best_recipe.yaml")
    assert recipe.lr == pytest.approx(best.params["lr"])
    assert recipe.label_smoothing == pytest.approx(best.params["label_smoothing"])
    head_choice = load_space(files["space"]).dimensions[2].value_of(best.params["head"])
    assert recipe.head == head_choice and recipe.backbone == "test_efficientnet" and recipe.seed == 0
    # ... and re-runs to the trial's accuracy (same recipe, same seed: the same numbers).
    rerun = run_finetune(FinetuneConfig(data=files["data"], out=str(tmp_path / "rerun"), recipe=recipe, workers=0,
                                        progress=False, error_grid=0, embed=""))
    assert rerun.metrics["val"]["accuracy"] == pytest.approx(best.value)
    # Every trial is an ordinary, complete run folder; trials.csv lists them with their values.
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["complete"] * 3
    for row in rows:
        assert run_status(Path(row["run_dir"]))["status"] == "complete" and row["epochs"] == "2"
    record = json.loads((out / "search.json").read_text())
    assert record["status"] == "finished" and record["best"]["number"] == best.number
    page = (out / "search.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "Content-Security-Policy" in page
    assert {p.name for p in (out / "plots").iterdir()} == {"optimization_history.png", "param_importances.png",
                                                           "parallel_coordinate.png"}


def test_pruning_reports_epochs_across_stages_and_marks_the_run_pruned(files, tmp_path, monkeypatch):
    # Prunes whatever it sees from step 2 on: the first epoch of stage 2 when epochs count over
    # the whole run (stage 1 has 2). Were each stage's epochs counted from 0, stage 2 would
    # report step 0 again (dropped by Optuna), nothing would be pruned, and the trial would complete.
    monkeypatch.setitem(PRUNERS, "from-step-2", lambda: optuna.pruners.ThresholdPruner(lower=2.0, n_warmup_steps=2))
    recipe = tmp_path / "two stages.yaml"
    recipe.write_text(TWO_STAGES)
    out = tmp_path / "search"
    result = run_search(config(files, out, trials=2, pruner="from-step-2", recipe=str(recipe)))
    assert result.counts == {"pruned": 2} and result.best is None and result.best_recipe is None
    assert not (out / "best_recipe.yaml").exists()
    for trial in study_of(out).trials:
        assert trial.state == TrialState.PRUNED
        assert sorted(trial.intermediate_values) == [0, 1, 2] and trial.user_attrs["epochs"] == 3
        status = run_status(out / "trials" / f"trial-{trial.number:04d}")
        assert status["status"] == "pruned" and "pruned by the search after 3 epoch(s)" in status["reason"]
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [(r["state"], r["epochs"], r["value"]) for r in rows] == [("pruned", "3", "")] * 2
    assert "No trial has completed yet" in (out / "search.html").read_text()


def test_a_timeout_stops_the_search_and_still_writes_its_record(files, tmp_path):
    out = tmp_path / "search"
    result = run_search(config(files, out, timeout_s=1e-6))
    assert result.stopped_by == "timeout" and result.counts == {} and result.best is None
    assert json.loads((out / "search.json").read_text())["stopped_by"] == "timeout"
    assert "not drawn, needs a complete trial" in (out / "search.html").read_text()


def test_ctrl_c_queues_the_trial_again_and_the_next_run_retries_it(files, tmp_path, monkeypatch):
    import transferlab.pipelines.search as search_module

    def interrupted(config):
        raise KeyboardInterrupt

    out = tmp_path / "search"
    monkeypatch.setattr(search_module, "run_finetune", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_search(config(files, out, trials=1))
    monkeypatch.undo()
    first = study_of(out).trials[0]
    assert first.state == TrialState.FAIL
    result = run_search(config(files, out, trials=1))
    assert result.counts == {"complete": 1, "fail": 1}
    retry = study_of(out).trials[1]
    assert retry.params == first.params and retry.user_attrs["retry_of"] == 0


def test_a_journal_file_holds_a_study_too(files, tmp_path):
    journal = tmp_path / "study.log"
    result = run_search(config(files, tmp_path / "search", trials=1, storage=f"journal:{journal}"))
    assert result.counts == {"complete": 1} and result.storage == f"journal:{journal}"
    assert (tmp_path / "search" / "best_recipe.yaml").is_file() and not (tmp_path / "search" / "search.db").exists()
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    stored = optuna.load_study(study_name="transferlab", storage=JournalStorage(JournalFileBackend(str(journal))))
    assert [t.state for t in stored.trials] == [TrialState.COMPLETE]


# --- the space file ---------------------------------------------------------------------------


@pytest.mark.parametrize("space, message", [
    ("learning_rate: {type: float, low: 0.1, high: 1}", "'learning_rate' is not a finetune setting"),
    ("lr: {type: normal, low: 0.1, high: 1}", "'lr': type must be one of categorical, int, float, log"),
    ("lr: {type: float, low: 0.1, high: 0.01}", "'lr': low (0.1) must be below high (0.01)"),
    ("lr: {type: log, low: 0, high: 0.01}", "'lr': a log distribution needs low above 0"),
    ("lr: {type: float, low: 0.1, hi: 1}", "'lr': a float distribution has no field 'hi'"),
    ("resolution: {type: int, low: 32.5, high: 64}", "'resolution': low must be a whole number"),
    ("augment: {type: categorical, choices: []}", "'augment': choices must be a non-empty list"),
    ("augment: [none, light, none]", "'augment': choice 'none' is listed twice"),
    ("augment: [none, sparkle]", "augment=sparkle"),
    ("label_smoothing: {type: float, low: 0, high: 1.5}", "label_smoothing=1.5: label_smoothing must be in [0, 1)"),
    ("processes: [1, 2]", "'processes': cannot be searched"),
    ("stages.2.lr: {type: log, low: 1e-4, high: 1e-2}", "the recipe has 1 stages"),
    ("stages.1.patience: [-1, 2]", "stages.1.patience=-1: stage 1: patience must be 0 or more"),
    ("[lr, augment]", "a search space is a mapping"),
    ("lr: {type: [float], low: 0.1, high: 1}", "'lr': type must be one of"),
    ("lr: 0.01", "'lr': give a distribution"),
    ("? [a, b]\n: [1, 2]", "not valid YAML"),
    ("lr: &a {type: float, low: 0.1, high: 1}\nmixup: *a", "anchors and aliases"),
    (f"{'x' * 500}: [1, 2]", "keys are recipe keys"),
])
def test_bad_space_files_are_one_line_errors_before_any_training(files, tmp_path, space, message):
    space_file = tmp_path / "bad space.yaml"
    space_file.write_text(space + "\n")
    out = tmp_path / "search"
    with pytest.raises(TransferlabError) as caught:
        run_search(config(files, out, space=str(space_file)))
    text = str(caught.value)
    assert message in text and "\n" not in text and str(space_file) in text
    assert not out.exists()  # refused before the study, let alone a trial


def test_non_scalar_choices_reach_optuna_as_labels_and_come_back(tmp_path):
    space_file = tmp_path / "space.yaml"
    space_file.write_text("head: [[], [{type: dropout, p: 0.3}], '[]']\nbalance: [none, weights]\n"
                          "mixup: [1, true, 1.0]\n")
    head, _, mixup = load_space(space_file).dimensions
    assert all(isinstance(label, str) for label in head.labels) and len(set(head.labels)) == 3
    assert [head.value_of(label) for label in head.labels] == [[], [{"type": "dropout", "p": 0.3}], "[]"]
    assert [type(mixup.value_of(label)) for label in mixup.labels] == [int, bool, float]
    # A stored value the space does not list (a changed or tampered database) is one line.
    with pytest.raises(TransferlabError, match="not one of the space's choices"):
        head.value_of("[{type: dropout, p: 0.9}]")


def test_duration_flags():
    from transferlab.cli.search_commands import parse_duration

    assert [parse_duration(t) for t in ("90", "90s", "30m", "2h", "1.5h")] == [90, 90, 1800, 7200, 5400]
    for text in ("0", "-5m", "ten minutes", "5d", ""):
        with pytest.raises(TransferlabError, match="--timeout must be a duration"):
            parse_duration(text)


# --- what a search folder and a storage may hold ---------------------------------------------


def test_the_search_folder_must_be_new_empty_or_this_search(files, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(TransferlabError, match="not a transferlab search"):
        run_search(config(files, other))
    assert (other / "notes.txt").read_text() == "mine" and len(list(other.iterdir())) == 1
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "search.json").write_text("[1, 2")
    with pytest.raises(TransferlabError, match="search record is not valid JSON"):
        run_search(config(files, garbage))
    (garbage / "search.json").write_text('{"kind": "finetune"}')
    with pytest.raises(TransferlabError, match="not a transferlab search record"):
        run_search(config(files, garbage))
    link = tmp_path / "link"
    link.symlink_to(other)
    with pytest.raises(TransferlabError, match="is a link"):
        run_search(config(files, link))
    first = tmp_path / "first"
    run_search(config(files, first, timeout_s=1e-6))
    with pytest.raises(TransferlabError, match="holds the search of study_name 'transferlab', not 'other'"):
        run_search(config(files, first, study_name="other"))


def test_a_foreign_or_changed_study_is_refused(files, tmp_path):
    db = tmp_path / "shared.db"
    foreign = optuna.create_study(study_name="theirs", storage=f"sqlite:///{db}", direction="maximize")
    foreign.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    with pytest.raises(TransferlabError, match="has trials that no transferlab search made"):
        run_search(config(files, tmp_path / "a", storage=f"sqlite:///{db}", study_name="theirs"))
    run_search(config(files, tmp_path / "b", storage=f"sqlite:///{db}", study_name="ours", timeout_s=1e-6))
    wider = tmp_path / "wider.yaml"
    wider.write_text(SPACE.replace("high: 0.2", "high: 0.3"))
    with pytest.raises(TransferlabError, match="was started with another search space"):
        run_search(config(files, tmp_path / "c", storage=f"sqlite:///{db}", study_name="ours", space=str(wider)))
    with pytest.raises(TransferlabError, match="was started with another seed"):
        run_search(config(files, tmp_path / "d", storage=f"sqlite:///{db}", study_name="ours", seed=1))


def test_a_journal_of_other_lines_is_refused_and_left_as_it_was(files, tmp_path):
    """Optuna appends its first operation to any file it is given: a user's notes got a JSON line."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, not JSON lines\n")
    with pytest.raises(TransferlabError, match="not an Optuna journal file") as info:
        run_search(config(files, tmp_path / "search", trials=1, storage=f"journal:{notes}"))
    assert "\n" not in str(info.value) and notes.read_text() == "my notes, not JSON lines\n"
    assert not (tmp_path / "search").exists()  # refused before the search folder is made


def test_a_search_that_fails_says_failed_not_running(files, tmp_path, monkeypatch):
    import transferlab.pipelines.search as search_module

    def broken(*args, **kwargs):
        raise TransferlabError("the study cannot be opened")

    monkeypatch.setattr(search_module, "open_study", broken)
    with pytest.raises(TransferlabError, match="cannot be opened"):
        run_search(config(files, tmp_path / "search", trials=1))
    record = json.loads((tmp_path / "search" / "search.json").read_text())
    assert record["status"] == "failed" and record["error"] == "the study cannot be opened"


def test_a_bad_storage_is_one_line_without_the_password(files, tmp_path):
    with pytest.raises(TransferlabError, match="--storage: not a database URL"):
        run_search(config(files, tmp_path / "a", storage="my database"))
    with pytest.raises(TransferlabError) as caught:
        run_search(config(files, tmp_path / "b", storage="postgresql://user:s3cret@127.0.0.1:1/nothing"))
    text = str(caught.value)
    assert "cannot open the study" in text and "s3cret" not in text and "\n" not in text


def test_the_report_escapes_what_a_shared_database_holds(tmp_path):
    from transferlab.report.search_report import write_search_report

    space_file = tmp_path / "space.yaml"
    space_file.write_text("augment: [none, light]\n")
    space = load_space(space_file)
    study = optuna.create_study(direction="maximize")
    hostile = "<script>alert(1)</script>"
    for value, augment in ((0.5, "none"), (0.7, "light")):
        study.add_trial(optuna.trial.create_trial(
            params={"augment": augment}, distributions={"augment": optuna.distributions.CategoricalDistribution(
                ["none", "light"])}, value=value, user_attrs={"worker": hostile, "run_dir": hostile}))
    rows = [trial_row(space, t) for t in study.trials]
    header = ["number", "worker", "augment"]
    page = write_search_report(tmp_path / "search.html", study=study, title=hostile, summary={"x": hostile},
                               header=header, rows=[[r["number"], r["worker"], r["params"]["augment"]] for r in rows],
                               best_recipe=hostile, plots_dir=tmp_path / "plots").read_text()
    assert "<script>" not in page and page.count("&lt;script&gt;") >= 5
    assert page.count("data:image/png;base64,") == 3  # two complete trials that differ: every plot


# --- processes: kill -9 and resume, workers sharing a study ---------------------------------


def test_kill_9_mid_trial_then_the_same_command_resumes(files, tmp_path):
    out = tmp_path / "search"
    command = cli(files, out, "--trials", "2")
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = out / "trials" / "trial-0001"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None and not (killed / "run.json").exists():
        time.sleep(0.02)
    assert process.poll() is None, "the search ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert run_status(killed)["status"] == "running"

    completed = subprocess.run(command, check=False, env=ENV, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    trials = {t.number: t for t in study_of(out).trials}
    assert sum(t.state == TrialState.COMPLETE for t in trials.values()) == 2
    # The killed trial: failed (its heartbeat stopped), its folder marked, retried with its parameters.
    assert trials[1].state == TrialState.FAIL and run_status(killed)["status"] == "interrupted"
    retry = [t for t in trials.values() if t.system_attrs.get("failed_trial") == 1]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == trials[1].params
    assert trials[0].state == TrialState.COMPLETE and run_status(out / "trials" / "trial-0000")["status"] == "complete"
    assert load_recipe(out / "best_recipe.yaml").lr == pytest.approx(study_of(out).best_trial.params["lr"])


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_storage(request, tmp_path) -> dict:
    """How two workers share one study: the same search folder (its SQLite file), or a PostgreSQL
    server with a folder each, as on two machines."""
    name = f"t{uuid.uuid4().hex[:12]}"
    if request.param == "sqlite":
        out = tmp_path / "search"
        return {"outs": [out, out], "args": ["--study-name", name], "study": (name, f"sqlite:///{out / 'search.db'}")}
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"{POSTGRES_ENV} is not set: CI must run this test against a PostgreSQL server (.ci/run)")
        pytest.skip(f"set {POSTGRES_ENV}=postgresql://... to run against a PostgreSQL server (.ci/postgres.sh)")
    return {"outs": [tmp_path / "machine-a", tmp_path / "machine-b"], "args": ["--storage", url, "--study-name", name],
            "study": (name, url.replace("postgresql://", "postgresql+psycopg2://", 1))}


def test_two_workers_share_one_study(files, shared_storage):
    workers = [subprocess.Popen(cli(files, out, "--trials", "3", *shared_storage["args"]), env=ENV, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for out in shared_storage["outs"]]
    outputs = [worker.communicate(timeout=300) for worker in workers]
    for worker, (_, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-2000:]
    name, url = shared_storage["study"]
    study = optuna.load_study(study_name=name, storage=url)
    done = sorted(t.number for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED))
    assert len(done) == 3  # as many as asked for, not one per worker more
    # Each worker printed the trials it ran: no trial ran twice, together they ran all.
    ran = [{int(line.split()[1]) for line in stderr.splitlines() if line.startswith("trial ")}
           for _, stderr in outputs]
    assert not ran[0] & ran[1] and sorted(ran[0] | ran[1]) == done
    for number in done:
        folders = [out / "trials" / f"trial-{number:04d}" for out in set(shared_storage["outs"])]
        assert sum(f.is_dir() for f in folders) == 1
    # One best: both workers end with the whole study and name the same best trial and recipe.
    best_lines = [next(line for line in stdout.splitlines() if line.startswith("best: ")) for stdout, _ in outputs]
    assert best_lines[0] == best_lines[1] and best_lines[0].startswith(f"best: trial {study.best_trial.number}, ")
    recipes = {(out / "best_recipe.yaml").read_text() for out in shared_storage["outs"]}
    assert len(recipes) == 1
