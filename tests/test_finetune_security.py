"""Attacks on what a resumed fine-tune reads back (state file, checkpoints, saved recipe), the
permissions of what it writes, and its output in a pipe (progress on stderr, per-stage hook)."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.conftest import make_image_folder
from transferlab.errors import TransferlabError
from transferlab.finetune.recipe import load_recipe
from transferlab.pipelines.finetune import FinetuneConfig, resume_config, run_finetune

TINY = {"backbone": "test_efficientnet", "resolution": 48, "precision": "fp32", "batch_size": 8,
        "stages": [{"train": "head", "epochs": 1, "lr": 0.01}, {"train": "all", "epochs": 1, "lr": 0.001}]}


class Payload:
    """Pickles as a call to exec(code): what a planted checkpoint would run when unpickled."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


def plant_checkpoint(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "epoch": 0, "x": Payload(f"open({str(marker)!r}, 'w').write('ran')")}, path)
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished two-stage run made under umask 022, and the stage outcomes its hook saw."""
    root = tmp_path_factory.mktemp("ft-security")
    data = make_image_folder(root / "data", per_class=6, size=40)
    seen: list[dict] = []
    previous = os.umask(0o022)
    try:
        run_finetune(FinetuneConfig(data=str(data), out=str(root / "run"), recipe=load_recipe(None, TINY), workers=0,
                                    progress=False, on_stage_end=seen.append))
    finally:
        os.umask(previous)
    return root / "run", seen


def killed_in_stage_2(finished, tmp_path) -> Path:
    """A copy of the finished run as it was when killed during stage 2."""
    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    state = json.loads((run / "finetune_state.json").read_text())
    # Paths in the state are absolute: point them at the copy.
    for stage in state["stages"]:
        stage["best_checkpoint"] = stage["best_checkpoint"].replace(str(finished[0]), str(run))
    state["stages"] = state["stages"][:1]
    (run / "finetune_state.json").write_text(json.dumps(state))
    (run / "metrics.json").unlink()
    return run


def resume(run: Path, **options):
    config = resume_config(run, progress=False)
    config.workers = 0
    for key, value in options.items():
        setattr(config, key, value)
    return run_finetune(config, resume=True)


def assert_one_line(info, *expected: str) -> None:
    message = str(info.value)
    assert "\n" not in message, message
    for text in expected:
        assert text in message, message


# --- pickle on resume -----------------------------------------------------------------------


def test_the_planted_checkpoint_is_live_when_unpickled(tmp_path, monkeypatch):
    """The attack: with this variable set, a load that does not say weights_only unpickles."""
    marker = tmp_path / "ran"
    path = plant_checkpoint(tmp_path / "last.ckpt", marker)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.warns(UserWarning, match="forcing weights_only=False"):
        torch.load(path)
    assert marker.read_text() == "ran"


def test_resume_refuses_a_planted_last_checkpoint(finished, tmp_path, monkeypatch):
    run = killed_in_stage_2(finished, tmp_path)
    marker = tmp_path / "pwned"
    last = plant_checkpoint(run / "checkpoints" / "stage2" / "last.ckpt", marker)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(TransferlabError) as info:
        resume(run)
    assert_one_line(info, str(last), "not a checkpoint this run wrote")
    assert not marker.exists()
    assert last.is_file()  # a user's file is never deleted


def test_resume_refuses_a_planted_best_checkpoint_of_a_finished_stage(finished, tmp_path, monkeypatch):
    run = killed_in_stage_2(finished, tmp_path)
    marker = tmp_path / "pwned"
    state = json.loads((run / "finetune_state.json").read_text())
    plant_checkpoint(Path(state["stages"][0]["best_checkpoint"]), marker)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(TransferlabError) as info:
        resume(run)
    assert_one_line(info, "not a checkpoint this run wrote")
    assert not marker.exists()


def test_resume_refuses_a_checkpoint_path_outside_the_run(finished, tmp_path):
    run = killed_in_stage_2(finished, tmp_path)
    outside = tmp_path / "elsewhere.ckpt"
    shutil.copy(json.loads((run / "finetune_state.json").read_text())["stages"][0]["best_checkpoint"], outside)
    for path in (str(outside), str(run / "checkpoints" / ".." / ".." / "elsewhere.ckpt")):
        state = json.loads((run / "finetune_state.json").read_text())
        state["stages"][0]["best_checkpoint"] = path
        (run / "finetune_state.json").write_text(json.dumps(state))
        with pytest.raises(TransferlabError) as info:
            resume(run)
        assert_one_line(info, "lies outside")


@pytest.mark.parametrize("content", [b"", b"not a zip, not a pickle", b"PK\x03\x04 truncated"])
def test_resume_refuses_a_broken_last_checkpoint_in_one_line(finished, tmp_path, content):
    run = killed_in_stage_2(finished, tmp_path)
    (run / "checkpoints" / "stage2" / "last.ckpt").write_bytes(content)
    with pytest.raises(TransferlabError) as info:
        resume(run)
    assert_one_line(info, "last.ckpt")


def test_resume_from_a_genuine_checkpoint_still_works(finished, tmp_path, monkeypatch):
    """weights_only=True restores everything a Lightning checkpoint of ours holds."""
    run = killed_in_stage_2(finished, tmp_path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # explicit weights_only=True still wins
    seen: list[dict] = []
    result = resume(run, on_stage_end=seen.append)
    assert [s["index"] for s in result.metrics["stages"]] == [1, 2]
    assert [s["index"] for s in seen] == [1, 2]  # the stage finished before the kill is reported first
    assert json.loads((run / "run.json").read_text())["status"] == "complete"


def test_every_torch_load_in_the_source_says_weights_only_true():
    source = Path(__file__).resolve().parents[1] / "src" / "transferlab"
    calls = []
    for path in source.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        start = 0
        while (at := text.find("torch.load(", start)) >= 0:
            depth, end = 0, at + len("torch.load")
            for end in range(at + len("torch.load"), len(text)):
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
            calls.append((path.name, text[at:end + 1]))
            start = end
    assert calls, "no torch.load found: the scan is broken"
    assert [c for c in calls if "weights_only=True" not in c[1]] == []


# --- the state file and the saved recipe ----------------------------------------------------


@pytest.mark.parametrize("edit", [
    lambda s: "{not json",
    lambda s: json.dumps([1, 2]),
    lambda s: json.dumps({**json.loads(s), "fingerprint": "x"}),
    lambda s: json.dumps({**json.loads(s), "stages": {"a": 1}}),
    lambda s: json.dumps({**json.loads(s), "stages": ["x"]}),
    lambda s: json.dumps({**json.loads(s), "stages": [{**json.loads(s)["stages"][0], "best_checkpoint": 3}]}),
    lambda s: json.dumps({**json.loads(s), "stages": [{**json.loads(s)["stages"][0], "index": 7}]}),
])
def test_a_damaged_state_file_is_refused_in_one_line(finished, tmp_path, edit):
    run = killed_in_stage_2(finished, tmp_path)
    state_file = run / "finetune_state.json"
    state_file.write_text(edit(state_file.read_text()))
    with pytest.raises(TransferlabError) as info:
        resume(run)
    assert_one_line(info, "finetune_state.json")


@pytest.mark.parametrize("field, value, named", [
    ("batch_size", "lots", "batch_size"), ("precision", "fp16", "precision"), ("resolution", 5000, "resolution"),
    ("augment", [{"name": "teleport"}], "teleport"), ("head", "dense", "head"), ("tta", "yes", "tta"),
    ("no_such_field", 1, "no_such_field"),
])
def test_resume_validates_the_saved_recipe(finished, tmp_path, field, value, named):
    run = killed_in_stage_2(finished, tmp_path)
    state_file = run / "finetune_state.json"
    state = json.loads(state_file.read_text())
    state["fingerprint"]["recipe"][field] = value
    state_file.write_text(json.dumps(state))
    with pytest.raises(TransferlabError) as info:
        resume_config(run)
    assert_one_line(info, named, "finetune_state.json")


# --- what the run writes --------------------------------------------------------------------


def test_model_files_get_ordinary_permissions(finished):
    run, _ = finished
    for name in ("network.safetensors", "model.json"):
        assert (run / "model" / name).stat().st_mode & 0o777 == 0o644, name
    assert not list((run / "model").glob(".*"))  # no temporary file left behind


def test_stage_hook_sees_each_stage_as_it_ends(finished):
    run, seen = finished
    stages = json.loads((run / "metrics.json").read_text())["stages"]
    assert seen == stages
    assert [s["index"] for s in seen] == [1, 2] and seen[0]["train"] == "head"


# --- progress -------------------------------------------------------------------------------


class _Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)

    def training_step(self, batch, batch_index):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_progress_bar_writes_to_stderr_and_counts_epochs_from_one(tmp_path, capsys):
    from transferlab.finetune.progress import StderrProgressBar

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,))),
                                         batch_size=4)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_model_summary=False, callbacks=[StderrProgressBar("stage 3")],
                        default_root_dir=tmp_path)
    trainer.fit(_Tiny(), loader)
    out, err = capsys.readouterr()
    assert "epoch" not in out.lower()
    assert "stage 3 epoch 1/2" in err and "stage 3 epoch 2/2" in err
    assert "epoch 0" not in err.lower()


@pytest.mark.parametrize("tty, asked, shown", [(True, True, True), (False, True, False), (True, False, False)])
def test_bars_only_on_a_terminal(monkeypatch, tty, asked, shown):
    from transferlab.finetune.progress import StderrProgressBar, bars_enabled, progress_callbacks

    class Stream(io.StringIO):
        def isatty(self):
            return tty

    monkeypatch.setattr(sys, "stderr", Stream())
    assert bars_enabled(asked) is shown
    callbacks, enabled = progress_callbacks(asked, "stage 1")
    assert enabled is shown
    assert [type(c) for c in callbacks] == ([StderrProgressBar] if shown else [])
