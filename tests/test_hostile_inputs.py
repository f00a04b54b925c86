"""Hostile inputs from the security review: a resumed fine-tune's checkpoint callback state
(Lightning deletes the paths it names), checkpoint paths through links, YAML alias bombs,
FIFOs and /dev/zero links in a data folder, and what decoding an upload really costs.

Whatever could block forever if a guard regressed (a FIFO, /dev/zero) runs in a fresh
interpreter with a timeout, so a regression fails the test instead of hanging the suite.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image

from tests.conftest import make_image_folder
from transferlab.data.folder import scan_folder
from transferlab.data.images import IMAGE_SUFFIXES, ImageDecodeError, load_rgb
from transferlab.errors import TransferlabError
from transferlab.finetune.recipe import load_recipe
from transferlab.finetune.resume import StageCheckpoint, checkpoint_in_run, stage_callback_state
from transferlab.insight.runinfo import read_run
from transferlab.pipelines.finetune import FinetuneConfig, resume_config, run_finetune
from transferlab.serve.uploads import UploadError, decode_cost, decode_image

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = {"backbone": "test_efficientnet", "resolution": 48, "precision": "fp32", "batch_size": 8,
        "stages": [{"train": "head", "epochs": 1, "lr": 0.01}, {"train": "all", "epochs": 2, "lr": 0.001, "patience": 5}]}


def run_python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter; one that blocks on a FIFO or an endless file fails, not hangs."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    try:
        return subprocess.run([sys.executable, "-c", code, *args], check=False, capture_output=True, text=True,
                              timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {timeout} s: a read blocked on a FIFO or an endless file")


def assert_one_line(info, *expected: str, longest: int = 600) -> None:
    message = str(info.value)
    assert "\n" not in message and len(message) < longest, message[:2000]
    for text in expected:
        assert text in message, message


# --- S2: resume must not let a checkpoint's callback state aim Lightning's deletes -----------


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished two-stage run, and a copy of stage 2's last.ckpt after its first of two epochs."""
    root = tmp_path_factory.mktemp("hostile-ft")
    data = make_image_folder(root / "data", per_class=6, size=40)
    early = root / "stage2_epoch0_last.ckpt"
    original = ModelCheckpoint._save_checkpoint

    def keep_first_epoch(self, trainer, filepath):
        original(self, trainer, filepath)
        if filepath.endswith(os.path.join("stage2", "last.ckpt")) and trainer.current_epoch == 0:
            shutil.copy(filepath, early)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ModelCheckpoint, "_save_checkpoint", keep_first_epoch)
        run_finetune(FinetuneConfig(data=str(data), out=str(root / "run"), recipe=load_recipe(None, TINY), workers=0,
                                    progress=False))
    assert early.is_file()
    return root / "run", early


def killed_after_epoch_1_of_stage_2(finished, tmp_path) -> Path:
    """A copy of the run (in another folder) as it was when killed after stage 2's first epoch."""
    source, early = finished
    run = tmp_path / "run"
    shutil.copytree(source, run)
    state = json.loads((run / "finetune_state.json").read_text())
    for stage in state["stages"]:
        stage["best_checkpoint"] = stage["best_checkpoint"].replace(str(source), str(run))
    state["stages"] = state["stages"][:1]
    (run / "finetune_state.json").write_text(json.dumps(state))
    (run / "metrics.json").unlink()
    shutil.copy(early, run / "checkpoints" / "stage2" / "last.ckpt")
    return run


def resume(run: Path):
    config = resume_config(run, progress=False)
    config.workers = 0
    return run_finetune(config, resume=True)


def victim_folder(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "precious.txt").write_text("do not delete")
    return victim


def plant_paths(last: Path, monitor: str | None, **fields) -> None:
    """Rewrite fields of the ModelCheckpoint state (of that monitor) in `last`, dirpath made current."""
    checkpoint = torch.load(last, weights_only=True)
    key = next(k for k in checkpoint["callbacks"] if k.startswith(f"ModelCheckpoint{{'monitor': {monitor!r}"))
    checkpoint["callbacks"][key].update(dirpath=str(last.parent.resolve()), **fields)
    torch.save(checkpoint, last)


@pytest.mark.parametrize("monitor, field, value", [
    (None, "best_model_path", lambda stage, victim: f"local://{victim}"),  # the reviewer's reproduction
    ("val_acc", "kth_best_model_path", lambda stage, victim: f"{stage}/../../../victim"),
    ("val_acc", "last_model_path", lambda stage, victim: str(victim)),
    ("val_acc", "best_k_models", lambda stage, victim: {f"local://{victim}": torch.tensor(0.5)}),
    (None, "best_model_path", lambda stage, victim: "victim/best.ckpt"),
])
def test_resume_refuses_a_callback_state_naming_a_path_outside_the_stage(finished, tmp_path, monitor, field, value):
    victim = victim_folder(tmp_path)
    run = killed_after_epoch_1_of_stage_2(finished, tmp_path)
    last = run / "checkpoints" / "stage2" / "last.ckpt"
    plant_paths(last, monitor, **{field: value(last.parent.resolve(), victim)})
    with pytest.raises(TransferlabError) as info:
        resume(run)
    assert_one_line(info, str(last.resolve()), "callback state", "refused")
    assert (victim / "sub" / "precious.txt").read_text() == "do not delete"
    assert last.is_file()  # a user's file is never deleted


def test_a_moved_run_resumes_and_deletes_nothing_outside_it(finished, tmp_path):
    """The copied run's last.ckpt names the original folder's files: mapped onto the copy, not refused."""
    source, _ = finished
    before = sorted(p.relative_to(source) for p in source.rglob("*"))
    run = killed_after_epoch_1_of_stage_2(finished, tmp_path)
    result = resume(run)  # trains epoch 2 of stage 2: Lightning saves, and removes what it replaced
    assert [s["index"] for s in result.metrics["stages"]] == [1, 2]
    assert result.metrics["stages"][1]["best_checkpoint"].startswith(str(run.resolve()))
    assert sorted(p.relative_to(source) for p in source.rglob("*")) == before


def test_callback_state_paths_become_the_stage_folders_files(tmp_path):
    folder = tmp_path / "run" / "checkpoints" / "stage2"
    moved = {"best_model_path": "/old/place/run/checkpoints/stage2/best.ckpt", "best_model_score": None,
             "kth_best_model_path": "", "last_model_path": None,
             "best_k_models": {"/old/place/run/checkpoints/stage2/best.ckpt": torch.tensor(0.5)}}
    cleaned = stage_callback_state(moved, folder, "here")
    assert cleaned["best_model_path"] == str(folder / "best.ckpt")
    assert list(cleaned["best_k_models"]) == [str(folder / "best.ckpt")]
    assert cleaned["kth_best_model_path"] == "" and cleaned["last_model_path"] is None
    for hostile in ("/old/place/run/checkpoints/stage1/best.ckpt", "/etc/best.ckpt", "file:///x/stage2/best.ckpt",
                    f"{folder}/sub/../best.ckpt", 3):
        with pytest.raises(TransferlabError, match="callback state"):
            stage_callback_state({**moved, "best_model_path": hostile}, folder, "here")


def test_stage_checkpoint_keeps_lightnings_state_key(tmp_path):
    """Checkpoints written before StageCheckpoint existed must still restore their callback state."""
    for monitor in ("val_acc", None):
        ours = StageCheckpoint(dirpath=tmp_path, filename="best", monitor=monitor, save_top_k=1)
        plain = ModelCheckpoint(dirpath=tmp_path, filename="best", monitor=monitor, save_top_k=1)
        assert ours.state_key == plain.state_key


@pytest.mark.parametrize("folder", ["checkpoints", "checkpoints/stage2", "logs", "logs/stage2"])
def test_resume_refuses_linked_checkpoint_and_log_folders(finished, tmp_path, folder):
    run = killed_after_epoch_1_of_stage_2(finished, tmp_path)
    elsewhere = tmp_path / "elsewhere" / folder.replace("/", "_")
    shutil.move(run / folder, elsewhere)
    (run / folder).symlink_to(elsewhere, target_is_directory=True)
    before = {p: p.read_bytes() for p in elsewhere.rglob("*") if p.is_file()}
    with pytest.raises(TransferlabError) as info:
        resume(run)
    assert_one_line(info, "a link")
    assert {p: p.read_bytes() for p in elsewhere.rglob("*") if p.is_file()} == before


def test_a_fifo_last_checkpoint_is_refused_without_blocking(tmp_path):
    stage = tmp_path / "run" / "checkpoints" / "stage1"
    stage.mkdir(parents=True)
    os.mkfifo(stage / "last.ckpt")
    code = ("from pathlib import Path\nfrom transferlab.finetune.resume import resume_checkpoint\n"
            f"try:\n    resume_checkpoint(Path({str(tmp_path / 'run')!r}), 1)\n"
            "except Exception as exc:\n    print(type(exc).__name__, exc)\n")
    out = run_python(code)
    assert "TransferlabError" in out.stdout and "not a regular file" in out.stdout, out.stdout + out.stderr


# --- S8: checkpoint paths from the state file ------------------------------------------------


def test_checkpoint_in_run_refuses_a_checkpoints_link_to_the_root(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").symlink_to("/")
    with pytest.raises(TransferlabError, match="lies outside"):
        checkpoint_in_run("/etc/hostname", run, "state")
    with pytest.raises(TransferlabError) as info:
        checkpoint_in_run(str(run / "checkpoints" / "etc" / "hostname"), run, "state")
    assert_one_line(info, "a link")


def test_checkpoint_in_run_refuses_a_linked_checkpoint_file(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "stage1").mkdir(parents=True)
    outside = tmp_path / "outside.ckpt"
    outside.write_bytes(b"x")
    (run / "checkpoints" / "stage1" / "best.ckpt").symlink_to(outside)
    with pytest.raises(TransferlabError) as info:
        checkpoint_in_run(str(run / "checkpoints" / "stage1" / "best.ckpt"), run, "state")
    assert_one_line(info, "a link")


def test_checkpoint_in_run_reads_relative_paths_from_the_run_folder(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "checkpoints" / "stage1").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "checkpoints" / "stage1").mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    found = checkpoint_in_run("checkpoints/stage1/best.ckpt", run, "state")
    assert found == run.resolve() / "checkpoints" / "stage1" / "best.ckpt"
    for path in ("../elsewhere/checkpoints/stage1/best.ckpt", "checkpoints/../../x.ckpt", "checkpoints"):
        with pytest.raises(TransferlabError, match="lies outside"):
            checkpoint_in_run(path, run, "state")


# --- S5: YAML alias bombs and numbers int() refuses -------------------------------------------


def yaml_bomb(key: str, depth: int = 6) -> str:
    """`depth` levels of 9 aliases each: a few hundred bytes that expand to 9**depth strings."""
    anchors = ['&a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    anchors += [f"&a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, depth)]
    return f"{key}: [" + ", ".join(anchors) + "]\n"


def finished_run_folder(root: Path, config_text: str) -> Path:
    root.mkdir(parents=True)
    (root / "run.json").write_text(json.dumps({"kind": "probe", "status": "complete"}))
    (root / "metrics.json").write_text("{}")
    (root / "config.yaml").write_text(config_text)
    return root


def test_a_recipe_alias_bomb_is_refused_in_one_short_line(tmp_path):
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(yaml_bomb("weight_decay"))
    with pytest.raises(TransferlabError) as info:
        load_recipe(recipe)
    assert_one_line(info, str(recipe), "anchors and aliases")


@pytest.mark.parametrize("text, named", [
    ("seed: " + "7" * 5000 + "\n", "not valid YAML"),  # int() refuses: a ValueError, not a traceback
    ("head: " + "[" * 5000 + "\n", "not valid YAML"),
    ("backbone: [" + ", ".join(["x" * 50] * 5000) + "]\n", "backbone must be a backbone name"),
])
def test_hostile_recipe_values_give_one_short_line(tmp_path, text, named):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    with pytest.raises(TransferlabError) as info:
        load_recipe(recipe)
    assert_one_line(info, str(recipe), named)


def test_a_run_config_alias_bomb_is_refused_in_one_short_line(tmp_path):
    run = finished_run_folder(tmp_path / "run", yaml_bomb("backbone"))
    with pytest.raises(TransferlabError) as info:
        read_run(run)
    assert_one_line(info, "config.yaml", "anchors and aliases")


@pytest.mark.parametrize("text", ["backbone: [1, 2, 3]\n", "classifier: {a: 1}\n", "resolution: 'big'\n",
                                  "backbone: " + "9" * 5000 + "\n"])
def test_run_config_fields_of_the_wrong_type_are_refused(tmp_path, text):
    run = finished_run_folder(tmp_path / "run", text)
    with pytest.raises(TransferlabError) as info:
        read_run(run)
    assert_one_line(info, "config.yaml")


def test_a_written_style_run_config_still_reads(tmp_path):
    run = finished_run_folder(tmp_path / "run", "data: /some/data\nbackbone: test_resnet\nclassifier: logistic\n"
                                                "resolution: 64\ngrid: false\n")
    info = read_run(run)
    assert (info.backbone, info.method, info.config["resolution"]) == ("test_resnet", "logistic", 64)


# --- S9: links to devices, FIFOs and broken links in a data folder ----------------------------


@pytest.fixture
def hostile_data(tmp_path) -> Path:
    root = make_image_folder(tmp_path / "data", per_class=3, size=40)
    (root / "circle" / "zero.jpg").symlink_to("/dev/zero")
    os.mkfifo(root / "square" / "pipe.png")
    (root / "square" / "gone.png").symlink_to(tmp_path / "no-such-file.png")
    return root


def test_the_scan_skips_what_is_not_a_regular_file_with_a_reason(hostile_data):
    scan = scan_folder(hostile_data)
    reasons = {s.path.name: s.reason for s in scan.skipped}
    assert reasons == {"zero.jpg": "not a regular file: a character device",
                       "pipe.png": "not a regular file: a named pipe (FIFO)",
                       "gone.png": "broken link: its target does not exist"}
    assert not {"zero.jpg", "pipe.png", "gone.png"} & {s.path.name for s in scan.samples}
    assert len(scan.samples) == 9


def test_file_digest_refuses_a_link_to_dev_zero(hostile_data):
    code = ("from transferlab.data.images import file_digest\n"
            f"try:\n    file_digest({str(hostile_data / 'circle' / 'zero.jpg')!r})\n"
            "except OSError as exc:\n    print('refused:', exc.strerror)\n")
    out = run_python(code)
    assert "refused: not a regular file: a character device" in out.stdout, out.stdout + out.stderr


def test_load_rgb_refuses_a_fifo(hostile_data):
    code = ("from transferlab.data.images import ImageDecodeError, load_rgb\n"
            f"try:\n    load_rgb({str(hostile_data / 'square' / 'pipe.png')!r})\n"
            "except ImageDecodeError as exc:\n    print('refused:', exc)\n")
    out = run_python(code)
    assert "refused: not a regular file: a named pipe (FIFO)" in out.stdout, out.stdout + out.stderr


def test_doctor_lists_the_fifo_and_the_device_link_and_finishes(hostile_data):
    code = ("import json\nfrom transferlab.data.doctor import run_doctor\n"
            f"report = run_doctor({str(hostile_data)!r}, near_distance=None)\n"
            "print(json.dumps({p.name: why for p, why in report.unreadable}))\n")
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    unreadable = json.loads(out.stdout.strip().splitlines()[-1])
    assert "character device" in unreadable["zero.jpg"] and "FIFO" in unreadable["pipe.png"]


# --- S7: decode budget per mode, and only the accepted formats --------------------------------


MEASURE = """
import gc, sys
from transferlab.serve.uploads import decode_cost, decode_image

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

data = open(sys.argv[1], "rb").read()
cost = decode_cost(data, 224)
gc.collect()
try:  # reset the peak RSS (Linux 4.0+): imports peaked far above what decoding adds
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
except OSError:
    sys.exit(3)
before = status("VmRSS")
decode_image(data, 224, "bicubic")
print(cost, status("VmHWM") - before)
"""
# Allocator arenas and the small tensors of preprocess: a fixed amount, whatever the image size.
FIXED_OVERHEAD = 8 << 20


def _image(kind: str, side: int) -> Image.Image:
    if kind == "I;16":
        return Image.fromarray(np.full((side, side), 40000, dtype=np.uint16))
    if kind == "F":
        return Image.fromarray(np.tile(np.arange(side, dtype=np.float32), (side, 1)))
    if kind == "P+transparency":
        image = Image.new("P", (side, side), 3)
        image.info["transparency"] = 0
        return image
    return Image.new(kind, (side, side), (10, 20, 30, 128)[:len(kind)])


@pytest.mark.skipif(sys.platform != "linux", reason="reads the peak RSS from /proc")
@pytest.mark.parametrize("kind, fmt", [("RGBA", "PNG"), ("I;16", "PNG"), ("F", "TIFF"), ("RGB", "WEBP"),
                                       ("P+transparency", "GIF")])
def test_decode_cost_covers_the_measured_peak(tmp_path, kind, fmt):
    upload = tmp_path / f"upload.{fmt.lower()}"
    image = _image(kind, 2000)
    image.save(upload, fmt, **({"transparency": 0} if kind == "P+transparency" else {}))
    out = run_python(MEASURE, str(upload))
    if out.returncode == 3:
        pytest.skip("the peak RSS cannot be reset here (/proc/self/clear_refs)")
    assert out.returncode == 0, out.stderr
    cost, peak = map(int, out.stdout.split())
    assert 0 < peak <= cost + FIXED_OVERHEAD, f"{kind} {fmt}: estimated {cost >> 20} MiB, peak {peak >> 20} MiB"


@pytest.mark.parametrize("fmt", ["ICO", "PCX", "TGA"])
def test_formats_outside_the_accepted_list_are_not_decoded(tmp_path, fmt):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buffer, fmt)
    data = buffer.getvalue()
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    with pytest.raises(ImageDecodeError, match="not an image"):
        load_rgb(path)
    assert decode_cost(data, 224) == 0
    with pytest.raises(UploadError) as info:
        decode_image(data, 224, "bicubic")
    assert info.value.status == 415


@pytest.mark.parametrize("suffix", sorted(IMAGE_SUFFIXES))
def test_every_image_suffix_still_decodes(tmp_path, suffix):
    path = tmp_path / f"image{suffix}"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(path)
    assert load_rgb(path).size == (40, 30)
    assert decode_cost(path.read_bytes(), 224) > 0
