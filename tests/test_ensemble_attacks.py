"""An ensemble run folder handed over by someone else, attacked: what predict, serve, export and
explain do with a crafted model/members/ (names, links, type confusion in either card, numbers
JSON can hold but a float cannot, test-time augmentation that multiplies, heads that do not fit),
and what `transferlab ensemble` copies out of a member run. Each must be one line before heavy
work, read nothing outside the run, and write nothing outside it.

Each test pins a hole found in an attacker's review, fixed since.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import make_image_folder
from transferlab.cli import app
from transferlab.errors import TransferlabError
from transferlab.explain.run import member_explainers
from transferlab.inference.export import export_run, model_fingerprint
from transferlab.inference.predict import load_predictor
from transferlab.pipelines import auto
from transferlab.pipelines.ensemble import EnsembleConfig, run_ensemble
from transferlab.pipelines.probe import ProbeConfig, run_probe
from transferlab.serve.app import create_app
from transferlab.serve.engines import load_engine

HUGE_INT = 10**400  # a JSON integer Python reads, but no float holds
MANY_DIGITS = "1" * 5000  # more digits than Python 3.11 converts to an int (4300)


def _probe(data: Path, out: Path, **overrides) -> Path:
    config = {"data": str(data), "out": str(out), "backbone": "test_resnet", "weights": "random",
              "layers": ["stage-2", "head"], "workers": 0, "progress": False, "embed": "", "error_grid": 0,
              "precision": "fp32", "resolution": 64, "cache_dir": "", **overrides}
    return run_probe(ProbeConfig(**config)).run_dir


def _ensemble(members: list[Path], out: Path, **overrides):
    config = {"runs": [str(m) for m in members], "out": str(out), "workers": 0, "progress": False,
              "error_grid": 0, **overrides}
    return run_ensemble(EnsembleConfig(**config))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("ens-attack") / "data", per_class=8, size=40)


@pytest.fixture(scope="module")
def members(data, tmp_path_factory) -> list[Path]:
    """Two probes whose heads take features of different widths, at two resolutions (m01 is resized)."""
    root = tmp_path_factory.mktemp("ens-attack-members")
    return [_probe(data, root / "wide"), _probe(data, root / "narrow", layers=["head"], resolution=48)]


@pytest.fixture(scope="module")
def ensemble(members, tmp_path_factory) -> Path:
    return _ensemble(members, tmp_path_factory.mktemp("ens-attack-run") / "run").run_dir


def _copy(ensemble: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "handed-over"
    shutil.copytree(ensemble, copy, symlinks=True)
    return copy


def _edit(path: Path, change) -> None:
    card = json.loads(path.read_text())
    change(card)
    path.write_text(json.dumps(card))  # NaN and Infinity as JSON writes them (Python's json reads them back)


def _member(copy: Path, name: str) -> Path:
    return copy / "model" / "members" / name


def _one_line(info: pytest.ExceptionInfo) -> str:
    assert isinstance(info.value, TransferlabError), repr(info.value)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def _images(resolution: int, n: int = 2) -> torch.Tensor:
    """Random uint8 images: no mirror symmetry, so flip test-time augmentation changes the output."""
    return torch.randint(0, 256, (n, 3, resolution, resolution), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0))


def invoke(*args):
    """Run the CLI as `main()` does: TransferlabError becomes a one-line error and exit 2."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    if isinstance(result.exception, TransferlabError):
        return 2, str(result.exception)
    return result.exit_code, result.output


# --- type confusion in either card: one line naming the field -----------------------------------------


ENSEMBLE_CARD = {
    "members a string": (lambda c: c.update(members="m00m01"), "members"),
    "members nested": (lambda c: c.update(members=[["m00"], "m01"]), "members"),
    "members holding a bool": (lambda c: c.update(members=["m00", True]), "members"),
    "members repeated": (lambda c: c.update(members=["m00", "m00"]), "members"),
    "combination a list": (lambda c: c.update(combination=[0.5, 0.5]), "combination"),
    "combination missing": (lambda c: c.pop("combination"), "combination"),
    "tta a list": (lambda c: c.update(tta=["flip"]), "tta"),
    "tta an object": (lambda c: c.update(tta={"mode": "flip"}), "tta"),
    "tta a number": (lambda c: c.update(tta=1), "tta"),
    "tta in capitals": (lambda c: c.update(tta="FLIP"), "tta"),
    "tta null": (lambda c: c.update(tta=None), "tta"),
    "resolution as text": (lambda c: c.update(resolution="64"), "resolution"),
    "resolution a bool": (lambda c: c.update(resolution=True), "resolution"),
    "resolution beyond the cap": (lambda c: c.update(resolution=1 << 20), "resolution"),
    "version from the future": (lambda c: c.update(version=99), "version"),
    "version as text": (lambda c: c.update(version="3"), "version"),
    "stack without coefficients": (lambda c: c["combination"].update(method="stack"), "coef"),
    "coefficients on a mean": (lambda c: c["combination"].update(coef=[[0.0]]), "coef"),
    "temperatures as text": (lambda c: c["combination"].update(temperatures=["1", "1"]), "temperatures"),
    "weights a bool": (lambda c: c["combination"].update(weights=[True, False]), "weights"),
}


@pytest.mark.parametrize("attack", sorted(ENSEMBLE_CARD))
def test_type_confusion_in_the_ensemble_card_is_one_line(ensemble, tmp_path, attack):
    change, field = ENSEMBLE_CARD[attack]
    copy = _copy(ensemble, tmp_path)
    _edit(copy / "model" / "model.json", change)
    with pytest.raises(TransferlabError) as info:
        load_predictor(copy)
    assert field in _one_line(info)


MEMBER_CARD = {
    "resolution beyond the cap": (lambda c: c.update(resolution=4096), "resolution"),
    "tta a list": (lambda c: c.update(tta=["flip"]), "tta"),
    "classes a string": (lambda c: c.update(classes="abc"), "classes"),
    "layers not names": (lambda c: c.update(layers=[1, 2]), "layers"),
    "no layers": (lambda c: c.update(layers=[]), "layers"),
    "std of zero": (lambda c: c.update(std=[1.0, 0.0, 1.0]), "std"),
    "a cut on a probe": (lambda c: c.update(cut_after="layer1"), "cut_after"),
    "kind unknown": (lambda c: c.update(kind="onnx"), "kind"),
    "backbone not a name": (lambda c: c.update(backbone=["test_resnet"]), "backbone"),
}


@pytest.mark.parametrize("attack", sorted(MEMBER_CARD))
def test_type_confusion_in_a_member_card_is_one_line(ensemble, tmp_path, attack):
    change, field = MEMBER_CARD[attack]
    copy = _copy(ensemble, tmp_path)
    _edit(_member(copy, "m01") / "model.json", change)
    with pytest.raises(TransferlabError) as info:
        load_predictor(copy)
    message = _one_line(info)
    assert field in message and "m01" in message  # names the member's own card


def test_a_member_card_that_is_not_an_object_is_one_line(ensemble, tmp_path):
    copy = _copy(ensemble, tmp_path)
    (_member(copy, "m01") / "model.json").write_text("[]")
    with pytest.raises(TransferlabError) as info:
        load_predictor(copy)
    assert "JSON object" in _one_line(info)


@pytest.mark.parametrize("name", ["m01/", "M01", "m001", "m1", "m\u0660\u0661", "m01\n", "../m01", "/m01",
                                  " m01", "", "m01\x00"])
def test_only_plain_member_names_are_opened(ensemble, tmp_path, name):
    copy = _copy(ensemble, tmp_path)
    _edit(copy / "model" / "model.json", lambda c: c.update(members=["m00", name]))
    with pytest.raises(TransferlabError) as info:
        load_predictor(copy)
    assert "member name" in _one_line(info)


# --- every entry point refuses a crafted ensemble in one line ---------------------------------------


def _path_in_name(copy: Path) -> None:
    _edit(copy / "model" / "model.json", lambda c: c.update(members=["m00", "../../.."]))


def _nested(copy: Path) -> None:
    outer = json.loads((copy / "model" / "model.json").read_text())
    _edit(_member(copy, "m01") / "model.json", lambda c: c.update(kind="ensemble", members=outer["members"],
                                                                  combination=outer["combination"]))


ENTRY_POINTS = {
    "predict": lambda run: load_predictor(run),
    "serve (torch engine)": lambda run: load_engine(run, "torch"),
    "export": lambda run: export_run(run, "onnx"),
    "explain": lambda run: member_explainers(run),
}


@pytest.mark.parametrize("attack", [_path_in_name, _nested], ids=["path in a member name", "nested ensemble"])
@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_every_entry_point_refuses_a_crafted_ensemble_in_one_line(ensemble, tmp_path, entry, attack):
    copy = _copy(ensemble, tmp_path)
    attack(copy)
    with pytest.raises(TransferlabError) as info:
        ENTRY_POINTS[entry](copy)
    _one_line(info)
    assert not (copy / "model" / "model.onnx").exists()


def test_serve_checks_the_members_before_start_up(ensemble, tmp_path):
    copy = _copy(ensemble, tmp_path)
    _path_in_name(copy)
    with pytest.raises(TransferlabError) as info:
        create_app(copy)  # `transferlab serve` makes the app first: the one place a one-line refusal is printed
    assert "member name" in _one_line(info)


# --- reading outside the run: links -----------------------------------------------------------------


def test_a_member_folder_that_is_a_link_is_refused(ensemble, tmp_path):
    copy = _copy(ensemble, tmp_path)
    outside = tmp_path / "outside-m01"
    shutil.move(str(_member(copy, "m01")), outside)
    _member(copy, "m01").symlink_to(outside, target_is_directory=True)
    with pytest.raises(TransferlabError) as info:
        load_predictor(copy)
    assert "link" in _one_line(info)


def test_a_members_folder_that_is_a_link_is_refused(ensemble, tmp_path):
    copy = _copy(ensemble, tmp_path)
    outside = tmp_path / "elsewhere" / "members"
    outside.parent.mkdir()
    shutil.move(str(copy / "model" / "members"), outside)
    (copy / "model" / "members").symlink_to(outside, target_is_directory=True)
    with pytest.raises(TransferlabError) as info:
        load_predictor(copy)
    assert "link" in _one_line(info)


@pytest.mark.parametrize("file", ["model.json", "backbone.safetensors", "classifier.skops"])
def test_a_member_file_that_is_a_link_is_refused(ensemble, tmp_path, file):
    copy = _copy(ensemble, tmp_path)
    outside = tmp_path / "outside" / file
    outside.parent.mkdir()
    shutil.move(str(_member(copy, "m00") / file), outside)
    (_member(copy, "m00") / file).symlink_to(outside)
    with pytest.raises(TransferlabError) as info:
        load_predictor(copy)
    assert "link" in _one_line(info)


def test_the_fingerprint_reads_only_what_the_model_loads(ensemble, tmp_path):
    copy = _copy(ensemble, tmp_path)
    before = model_fingerprint(copy)
    stray = {copy / "model" / "backbone.safetensors": b"an ensemble loads no backbone of its own",
             _member(copy, "m00") / "network.safetensors": b"a probe member loads no network",
             _member(copy, "m42") / "model.json": b"no card names m42"}
    for path, content in stray.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    assert model_fingerprint(copy) == before  # a stray (or sparse terabyte) file is never read


@pytest.mark.skipif(not os.path.isfile("/proc/self/mem"), reason="needs Linux's /proc/self/mem (a file read() fails on)")
def test_an_unreadable_stray_file_does_not_break_serving(ensemble, tmp_path):
    copy = _copy(ensemble, tmp_path)
    stray = _member(copy, "m42")
    stray.mkdir()
    (stray / "model.json").symlink_to("/proc/self/mem")
    try:
        engine = load_engine(copy, "torch")
    except TransferlabError as exc:
        assert "\n" not in str(exc)
    else:
        assert engine.classes == load_predictor(ensemble).classes


# --- numbers JSON holds and a float does not; bounds checked before heavy work --------------------


@pytest.mark.parametrize("file", ["run.json", "model/model.json", "model/members/m01/model.json"])
def test_an_integer_of_too_many_digits_is_one_line(ensemble, tmp_path, file):
    copy = _copy(ensemble, tmp_path)
    (copy / file).write_text('{"resolution": ' + MANY_DIGITS + "}")
    with pytest.raises(TransferlabError) as info:
        load_predictor(copy)
    assert "JSON" in _one_line(info)


@pytest.mark.parametrize("field,value", [("mean", [math.nan, 0.0, 0.0]), ("std", [1.0, math.inf, 1.0]),
                                         ("std", [1.0, math.nan, 1.0]), ("mean", [HUGE_INT, 0, 0])],
                         ids=["NaN mean", "Infinity std", "NaN std behind a number", "huge integer mean"])
def test_a_member_card_of_non_finite_numbers_is_refused(ensemble, tmp_path, field, value):
    copy = _copy(ensemble, tmp_path)
    _edit(_member(copy, "m01") / "model.json", lambda c: c.update({field: value}))
    with pytest.raises(TransferlabError) as info:
        load_predictor(copy)
    assert field in _one_line(info)


def test_a_huge_integer_in_a_member_head_is_one_line(ensemble, tmp_path):
    copy = _copy(ensemble, tmp_path)
    _edit(_member(copy, "m01") / "model.json",
          lambda c: c.update(kind="finetune", head=[{"type": "dropout", "p": HUGE_INT}]))
    with pytest.raises(TransferlabError) as info:
        load_predictor(copy)
    assert "p must be a number" in _one_line(info)


class _Built(Exception):
    """Raised by the guard below instead of allocating a layer this test must never allocate."""


def test_a_member_head_of_gigabytes_is_refused_before_it_is_built(ensemble, tmp_path, monkeypatch):
    from transferlab.finetune import head as head_module

    class GuardedNN:  # torch.nn, except that a layer over 64 MiB is not built but reported
        def __getattr__(self, name):
            return getattr(torch.nn, name)

        @staticmethod
        def Linear(n_in, n_out, *args, **kwargs):  # stands in for nn.Linear
            if n_in * n_out > 1 << 24:
                raise _Built(f"a {n_in} x {n_out} dense layer was built")
            return torch.nn.Linear(n_in, n_out, *args, **kwargs)

    monkeypatch.setattr(head_module, "nn", GuardedNN())
    copy = _copy(ensemble, tmp_path)
    # 64 GiB of float32 asked for by 2 KB of JSON (unguarded, this is the OOM killer).
    _edit(_member(copy, "m01") / "model.json",
          lambda c: c.update(kind="finetune", head=[{"type": "dense", "units": 16384}] * 64))
    with pytest.raises(TransferlabError) as info:
        load_predictor(copy)
    assert "head" in _one_line(info)


def test_the_class_count_is_bounded_before_any_member_is_opened(ensemble, tmp_path):
    copy = _copy(ensemble, tmp_path)
    _edit(copy / "model" / "model.json", lambda c: c.update(classes=[f"c{i}" for i in range(20_000)]))
    with pytest.raises(TransferlabError) as info:
        load_predictor(copy)
    assert "out of bounds" in _one_line(info)  # not "the member's classes differ": no member was read


def test_stacking_coefficients_beyond_float32_are_refused(ensemble, tmp_path):
    copy = _copy(ensemble, tmp_path)
    n = len(json.loads((copy / "model" / "model.json").read_text())["classes"])
    _edit(copy / "model" / "model.json", lambda c: c["combination"].update(
        method="stack", coef=[[1e39] * (2 * n)] * n, intercept=[0.0] * n))
    with pytest.raises(TransferlabError) as info:
        predictor = load_predictor(copy)
        assert np.isfinite(predictor.predict_tensor(_images(predictor.resolution))).all()
    assert "coef" in _one_line(info)


def test_a_huge_member_name_gives_a_short_line(ensemble, tmp_path):
    copy = _copy(ensemble, tmp_path)
    _edit(copy / "model" / "model.json", lambda c: c.update(members=["m00", "x" * 100_000]))
    with pytest.raises(TransferlabError) as info:
        load_predictor(copy)
    assert len(_one_line(info)) < 1000


# --- a member's head and backbone must fit each other --------------------------------------------------


def test_a_member_head_of_other_features_is_one_line(ensemble, tmp_path):
    copy = _copy(ensemble, tmp_path)
    # m01's head takes the pooled "head" features only; m00's backbone gives "stage-2" + "head".
    shutil.copyfile(_member(copy, "m01") / "classifier.skops", _member(copy, "m00") / "classifier.skops")
    with pytest.raises(TransferlabError) as info:
        predictor = load_predictor(copy)
        predictor.predict_tensor(_images(predictor.resolution, 1))
    assert "classifier" in _one_line(info)


# --- test-time augmentation: what --tta means on an ensemble, and how many passes it costs -------------


def _member_tta(copy: Path, mode: str) -> None:
    for name in ("m00", "m01"):
        _edit(_member(copy, name) / "model.json", lambda c: c.update(tta=mode))


def test_tta_none_on_an_ensemble_means_no_augmentation(ensemble, tmp_path):
    copy = _copy(ensemble, tmp_path)
    _member_tta(copy, "flip")  # as `transferlab ensemble --tta flip` (or auto's flip ensemble) writes them
    images = _images(64)
    plain = load_predictor(ensemble).predict_tensor(images)
    assert not np.allclose(load_predictor(copy).predict_tensor(images), plain, atol=1e-6)  # flip does show
    np.testing.assert_allclose(load_predictor(copy, tta="none").predict_tensor(images), plain, atol=1e-6)


def _passes_per_member(predictor) -> list[int]:
    """Forward passes each member's model makes for one image."""
    counts = []
    for branch in predictor.network.network.branches:
        counts.append(0)
        index = len(counts) - 1

        def count(module, inputs, output, index=index):
            counts[index] += 1

        branch.probabilities.register_forward_hook(count)
    predictor.predict_tensor(_images(predictor.resolution, 1))
    return counts


@pytest.mark.parametrize("outer", ["card", "option"])
def test_test_time_augmentation_never_multiplies(ensemble, tmp_path, outer):
    copy = _copy(ensemble, tmp_path)
    _member_tta(copy, "flip-crops")
    if outer == "card":  # transferlab never writes a mode into an ensemble's own card
        _edit(copy / "model" / "model.json", lambda c: c.update(tta="flip-crops"))
    try:
        predictor = load_predictor(copy, tta="flip-crops" if outer == "option" else None)
    except TransferlabError as exc:  # refusing a mode on the ensemble's own card is as good
        assert outer == "card" and "tta" in str(exc) and "\n" not in str(exc)
        return
    assert max(_passes_per_member(predictor)) <= 10  # flip-crops: ten views, once


# --- writing outside the run ---------------------------------------------------------------------------


@pytest.mark.parametrize("linked", ["explain", "explain/m00"])
def test_explain_writes_nothing_through_a_link_in_the_run(ensemble, data, tmp_path, linked):
    copy = _copy(ensemble, tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("the user's own file")
    (copy / linked).parent.mkdir(parents=True, exist_ok=True)
    (copy / linked).symlink_to(victim, target_is_directory=True)
    image = next((data / "circle").iterdir())
    code, output = invoke("explain", copy, image, "--method", "gradcam")
    assert code == 2, output
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]


def test_ensemble_copies_only_what_a_member_loads(members, tmp_path):
    stray_run = tmp_path / "member-with-stray"
    shutil.copytree(members[0], stray_run)
    (stray_run / "model" / "network.safetensors").write_bytes(b"not read by a probe")
    result = _ensemble([stray_run, members[1]], tmp_path / "ensemble")
    assert (result.run_dir / "model" / "members" / "m00" / "backbone.safetensors").is_file()
    assert not (result.run_dir / "model" / "members" / "m00" / "network.safetensors").exists()


def test_ensemble_refuses_a_split_class_the_card_lacks(members, tmp_path):
    copies = []
    for index, run in enumerate(members):  # both edited alike: they still share their validation images
        copy = tmp_path / f"member{index}"
        shutil.copytree(run, copy)

        def stray_class(split):
            split["classes"].append("zzz")
            split["val"][0][1] = "zzz"

        _edit(copy / "split.json", stray_class)
        copies.append(copy)
    with pytest.raises(TransferlabError) as info:
        _ensemble(copies, tmp_path / "ensemble")
    assert "zzz" in _one_line(info)
    assert not (tmp_path / "ensemble").exists()  # refused before the folder was touched


def test_ensemble_refuses_a_member_split_of_too_many_digits(members, tmp_path):
    copy = tmp_path / "member"
    shutil.copytree(members[1], copy)
    (copy / "split.json").write_text('{"seed": ' + MANY_DIGITS + "}")
    with pytest.raises(TransferlabError) as info:
        _ensemble([members[0], copy], tmp_path / "ensemble")
    assert "split" in _one_line(info)


def test_ensemble_refuses_a_member_run_whose_model_file_is_a_link(members, tmp_path):
    linked_run = tmp_path / "member-with-link"
    shutil.copytree(members[0], linked_run)
    head = linked_run / "model" / "classifier.skops"
    head.unlink()
    head.symlink_to(members[0] / "model" / "classifier.skops")
    with pytest.raises(TransferlabError) as info:
        _ensemble([linked_run, members[1]], tmp_path / "ensemble")
    assert "link" in _one_line(info)
    assert (members[0] / "model" / "classifier.skops").is_file()  # the link's target is only read


# --- auto's state file --------------------------------------------------------------------------------


def _auto_folder(tmp_path: Path, **state) -> tuple[Path, auto.AutoConfig]:
    config = auto.AutoConfig(data=str(tmp_path / "data"), out=str(tmp_path / "auto"))
    folder = tmp_path / "auto-real"
    folder.mkdir()
    (folder / auto.STATE_FILE).write_text(json.dumps({"fingerprint": auto._fingerprint(config), "config": {},
                                                      "spent_s": 0.0, **state}))
    return folder, config


def test_auto_refuses_a_folder_of_another_command(tmp_path):
    folder, config = _auto_folder(tmp_path, fingerprint="0" * 16)
    (folder / "runs" / "probe-lite0").mkdir(parents=True)  # it got as far as a run
    with pytest.raises(TransferlabError) as info:
        auto._open_state(folder, config)
    assert "another command" in _one_line(info)
    assert json.loads((folder / auto.STATE_FILE).read_text())["fingerprint"] == "0" * 16  # left as it was


def test_auto_starts_afresh_where_another_command_failed_before_any_run(tmp_path):
    """A one-class folder or a bad --backbones fails in the ranking: the corrected command must not
    be told the folder holds another command's auto (an outside review had to delete it by hand)."""
    folder, config = _auto_folder(tmp_path, fingerprint="0" * 16, spent_s=12.0)
    (folder / "throughput.json").write_text(json.dumps({"order": ["resnet50"]}))  # the other command's ranking
    state = auto._open_state(folder, config)
    assert state["fingerprint"] == auto._fingerprint(config) and state["spent_s"] == 0.0
    assert json.loads((folder / auto.STATE_FILE).read_text())["fingerprint"] == auto._fingerprint(config)
    assert not (folder / "throughput.json").exists()


def test_auto_never_takes_over_a_users_folder_with_a_file_named_auto_json(tmp_path):
    folder = tmp_path / "my-project"
    folder.mkdir()
    (folder / "auto.json").write_text('{"project": "mine"}')
    (folder / "tta.json").write_text('{"mine": true}')
    config = auto.AutoConfig(data=str(tmp_path / "data"), out=str(folder))
    with pytest.raises(TransferlabError) as info:
        auto._open_state(folder, config)
    assert "not the state of a `transferlab auto`" in _one_line(info)
    assert (folder / "auto.json").read_text() == '{"project": "mine"}' and (folder / "tta.json").is_file()


def test_auto_refuses_a_linked_out_folder_even_to_resume(tmp_path):
    folder, config = _auto_folder(tmp_path)
    link = Path(config.out)
    link.symlink_to(folder, target_is_directory=True)
    with pytest.raises(TransferlabError) as info:
        auto._open_state(link, config)
    assert "link" in _one_line(info)


@pytest.mark.parametrize("spent", ["12", [1], None, -5.0, math.nan, HUGE_INT],
                         ids=["text", "list", "null", "negative", "NaN", "huge integer"])
def test_auto_refuses_a_state_of_odd_spent_seconds(tmp_path, spent):
    folder, config = _auto_folder(tmp_path, spent_s=spent)
    with pytest.raises(TransferlabError) as info:
        auto._open_state(folder, config)
    assert "spent_s" in _one_line(info)
