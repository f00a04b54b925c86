"""`transferlab ensemble`: probe and fine-tuned runs combined into one run folder that predict,
serve, explain and ONNX export accept; refusals of members that cannot be combined; attacks on
what an ensemble folder asks the loader to read."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import make_image_folder
from transferlab import openvino_rt
from transferlab.data.transforms import preprocess
from transferlab.errors import TransferlabError
from transferlab.explain.run import member_explainers
from transferlab.finetune.recipe import load_recipe
from transferlab.inference.export import export_run, model_fingerprint
from transferlab.inference.predict import load_predictor
from transferlab.pipelines.ensemble import EnsembleConfig, run_ensemble
from transferlab.pipelines.finetune import FinetuneConfig, run_finetune
from transferlab.pipelines.probe import ProbeConfig, run_probe
from transferlab.serve.engines import load_engine

# Members at two resolutions, so the ensemble resizes inside its graph for one of them.
RECIPE = {"backbone": "test_efficientnet", "resolution": 48, "precision": "fp32", "batch_size": 8,
          "stages": [{"train": "all", "epochs": 1, "lr": 0.05}]}


def _probe(data: Path, out: Path, **overrides) -> Path:
    config = {"data": str(data), "out": str(out), "backbone": "test_resnet", "weights": "random",
              "layers": ["stage-2", "head"], "workers": 0, "progress": False, "embed": "", "error_grid": 0,
              "precision": "fp32", "resolution": 64, **overrides}
    return run_probe(ProbeConfig(**config)).run_dir


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("ens") / "data", per_class=8, size=40)


@pytest.fixture(scope="module")
def members(data, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("ens-members")
    ft = root / "ft"
    run_finetune(FinetuneConfig(data=str(data), out=str(ft), recipe=load_recipe(None, dict(RECIPE)), workers=0,
                                progress=False, embed="", error_grid=0))
    return [_probe(data, root / "probe"), ft]


def _ensemble(members: list[Path], out: Path, **overrides):
    config = {"runs": [str(m) for m in members], "out": str(out), "workers": 0, "progress": False,
              "error_grid": 0, **overrides}
    return run_ensemble(EnsembleConfig(**config))


@pytest.fixture(scope="module")
def mean_run(members, tmp_path_factory) -> Path:
    return _ensemble(members, tmp_path_factory.mktemp("ens-mean") / "run").run_dir


def _one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def _rows(run: Path) -> list[dict]:
    with open(run / "predictions.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# --- the ensemble run -------------------------------------------------------------------------


def test_an_ensemble_is_a_run_folder_naming_its_members(mean_run, members):
    status = json.loads((mean_run / "run.json").read_text())
    card = json.loads((mean_run / "model" / "model.json").read_text())
    metrics = json.loads((mean_run / "metrics.json").read_text())
    assert status["kind"] == "ensemble" and status["status"] == "complete"
    assert card["kind"] == "ensemble" and card["members"] == ["m00", "m01"]
    assert card["resolution"] == 64  # the larger member's; the 48 px member is resized in the graph
    assert card["combination"]["method"] == "mean" and card["combination"]["weights"] == [0.5, 0.5]
    for name, run in zip(card["members"], members):  # the members' models, copied byte for byte
        member = mean_run / "model" / "members" / name
        assert json.loads((member / "model.json").read_text())["kind"] == json.loads(
            (run / "model" / "model.json").read_text())["kind"]
    table = metrics["ensemble"]
    assert [r["run"] for r in table["members"]] == [str(m) for m in members]
    assert table["folds"] == 0 and metrics["val"]["accuracy"] == table["ensemble"]["val"]["accuracy"]
    assert "Members and ensemble" in (mean_run / "report.html").read_text(encoding="utf-8")


def test_the_mean_is_the_average_of_the_members_on_the_same_images(mean_run):
    metrics = json.loads((mean_run / "metrics.json").read_text())
    rows = _rows(mean_run)
    predictor = load_predictor(mean_run)
    paths = [r["path"] for r in rows]
    images = torch.stack([preprocess(p, predictor.resolution, predictor.interpolation) for p in paths])
    x = images.float() / 255
    with torch.inference_mode():
        members = [branch(x) for branch in predictor.network.network.branches]
    expected = (members[0] + members[1]).numpy() / 2
    saved = np.array([[float(v) for k, v in r.items() if k.startswith("p_")] for r in rows])
    np.testing.assert_allclose(predictor.predict_tensor(images), expected, atol=1e-5)
    np.testing.assert_allclose(saved, expected, atol=1e-4)  # predictions.csv is what predict gives
    labels = [r["true"] for r in rows]
    for member, row in zip(members, metrics["ensemble"]["members"]):
        accuracy = np.mean([predictor.classes[i] == t for i, t in zip(member.argmax(1).tolist(), labels)])
        assert row["val"]["accuracy"] == pytest.approx(accuracy, abs=1e-4)


@pytest.mark.parametrize("method", ["weighted", "stack"])
def test_a_fitted_combination_is_scored_out_of_fold(members, tmp_path, method):
    result = _ensemble(members, tmp_path / method, method=method, folds=2)
    table = result.metrics["ensemble"]
    card = json.loads((result.run_dir / "model" / "model.json").read_text())
    assert table["folds"] == 2 and table["val_is"] == "out-of-fold"
    assert card["combination"]["method"] == method
    assert "cross-validated" in result.summary["combination"]
    predictor = load_predictor(result.run_dir)  # the fitted combination loads and predicts
    probabilities = predictor.predict_paths([r["path"] for r in _rows(result.run_dir)][:3])
    assert all(len(p.top) == 3 and p.error is None for p in probabilities)


def test_predict_serve_and_onnx_export_agree(mean_run):
    rows = _rows(mean_run)
    target = export_run(mean_run, "onnx")
    record = json.loads((mean_run / "model" / "export.json").read_text())["onnx"]
    assert target.is_file() and record["max_abs_diff"] <= 1e-4
    assert record["samples"]["images"] > 0  # the parity check ran on real images too
    torch_engine, onnx_engine = load_engine(mean_run, "torch"), load_engine(mean_run, "onnx")
    batch = torch.stack([preprocess(r["path"], 64, torch_engine.interpolation) for r in rows[:4]]).numpy()
    np.testing.assert_allclose(onnx_engine.predict_uint8(batch), torch_engine.predict_uint8(batch), atol=1e-4)
    assert onnx_engine.classes == torch_engine.classes == load_predictor(mean_run).classes


@pytest.mark.skipif(not openvino_rt.available(), reason="OpenVINO is not installed")
def test_openvino_compiles_and_serves_a_resizing_ensemble(mean_run):
    """Members at other resolutions resize inside the graph (MatMul); OpenVINO 2026.4 refused
    that graph while the normalisation after it was a Sub and a Div."""
    export_run(mean_run, "onnx")
    record = json.loads((mean_run / "model" / "export.json").read_text())["onnx"]["openvino"]
    assert record["fp32"]["passed"] is True, record["fp32"]
    torch_engine = load_engine(mean_run, "torch")
    batch = torch.stack([preprocess(r["path"], 64, torch_engine.interpolation) for r in _rows(mean_run)[:4]]).numpy()
    np.testing.assert_allclose(load_engine(mean_run, "openvino").predict_uint8(batch),
                               torch_engine.predict_uint8(batch), atol=1e-4)


def test_the_fingerprint_covers_the_members(mean_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(mean_run, copy)
    before = model_fingerprint(copy)
    (copy / "model" / "members" / "m01" / "model.json").write_text(
        (copy / "model" / "members" / "m01" / "model.json").read_text() + " ")
    assert model_fingerprint(copy) != before  # a stale export of the old members is noticed


def test_explain_works_per_member(mean_run, tmp_path):
    explainers = member_explainers(mean_run)
    assert [name for name, _ in explainers] == ["m00", "m01"]
    path = Path(_rows(mean_run)[0]["path"])
    for name, explainer in explainers:
        result = explainer.explain_paths([path], tmp_path / name, ("gradcam",))[0]
        assert result.error is None and result.overlays["gradcam"].is_file()


# --- refusals ---------------------------------------------------------------------------------


def test_runs_of_other_classes_are_refused(members, tmp_path):
    other = make_image_folder(tmp_path / "other", per_class=8, size=40,
                              classes={"x": ((250, 0, 0), "disc"), "y": ((0, 0, 250), "square")})
    stranger = _probe(other, tmp_path / "stranger")
    with pytest.raises(TransferlabError) as info:
        _ensemble([members[0], stranger], tmp_path / "e")
    assert "classes differ" in _one_line(info) and str(stranger) in str(info.value)
    assert not (tmp_path / "e").exists()  # refused before the folder was touched


def test_runs_validated_on_other_images_are_refused(members, data, tmp_path):
    reseeded = _probe(data, tmp_path / "seed1", seed=1)
    with pytest.raises(TransferlabError) as info:
        _ensemble([members[0], reseeded], tmp_path / "e")
    message = _one_line(info)
    assert ("trained on" in message or "other images" in message) and "same data, seed" in message


@pytest.mark.parametrize("case", ["one run", "the same run twice", "an ensemble as member"])
def test_other_bad_member_lists_are_one_line(members, mean_run, tmp_path, case):
    runs = {"one run": [members[0]], "the same run twice": [members[0], members[0]],
            "an ensemble as member": [members[0], mean_run]}[case]
    with pytest.raises(TransferlabError) as info:
        _ensemble(runs, tmp_path / "e")
    _one_line(info)


# --- attacks on the ensemble loader -----------------------------------------------------------


def _tampered(mean_run: Path, tmp_path: Path, change) -> Path:
    copy = tmp_path / "tampered"
    shutil.copytree(mean_run, copy, symlinks=True)
    card_file = copy / "model" / "model.json"
    card = json.loads(card_file.read_text())
    change(card, copy)
    card_file.write_text(json.dumps(card))
    return copy


def _link_member(card, copy):
    shutil.rmtree(copy / "model" / "members" / "m01")
    os.symlink(copy / "model" / "members" / "m00", copy / "model" / "members" / "m01")


def _nested(card, copy):
    member = copy / "model" / "members" / "m01" / "model.json"
    inner = json.loads(member.read_text())
    member.write_text(json.dumps({**card, "classes": inner["classes"]}))


ATTACKS = {
    "path in a member name": (lambda c, _: c.update(members=["m00", "../../../etc"]), "member name"),
    "too many members": (lambda c, _: c.update(members=[f"m{i:02d}" for i in range(40)]), "members"),
    "no member": (lambda c, _: c.update(members=[]), "members"),
    "fewer members than weights": (lambda c, _: c.update(members=["m00"]), "weights"),
    "member linked elsewhere": (_link_member, "link"),
    "member folder missing": (lambda c, copy: shutil.rmtree(copy / "model" / "members" / "m01"), "missing"),
    "nested ensemble": (_nested, "probe or fine-tuned"),
    "weights not summing to 1": (lambda c, _: c["combination"].update(weights=[0.9, 0.9]), "weights"),
    "NaN weight": (lambda c, _: c["combination"].update(weights=[float("nan"), 1.0]), "weights"),
    "unknown method": (lambda c, _: c["combination"].update(method="vote"), "method"),
    "member of other classes": (lambda c, _: c.update(classes=list(reversed(c["classes"]))), "classes"),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_tampered_ensemble_is_one_line(mean_run, tmp_path, attack):
    change, expected = ATTACKS[attack]
    copy = _tampered(mean_run, tmp_path, change)
    with pytest.raises(TransferlabError) as info:
        load_predictor(copy)
    assert expected in _one_line(info)


def test_embed_of_an_ensemble_is_one_line(mean_run, tmp_path):
    from transferlab.insight.embed import EmbedSettings, embed_run

    with pytest.raises(TransferlabError) as info:
        embed_run(mean_run, EmbedSettings())
    assert "member" in _one_line(info)


def test_tta_on_every_member_is_copied_into_their_cards(members, tmp_path):
    result = _ensemble(members, tmp_path / "flip", tta="flip")
    for name in ("m00", "m01"):
        card = json.loads((result.run_dir / "model" / "members" / name / "model.json").read_text())
        assert card["tta"] == "flip"
    for run in members:  # the members' own folders are only read
        assert "tta" not in json.loads((run / "model" / "model.json").read_text())
    assert "flip on every member" in result.summary["test-time augmentation"]


# --- what scores the members ------------------------------------------------------------------


@pytest.mark.skipif(not openvino_rt.available(), reason="OpenVINO is not installed")
def test_openvino_fp32_scores_the_members_as_torch_does(members, mean_run, tmp_path):
    """The faster engine scores the same branches at the same precision: the same figures."""
    fast = _ensemble(members, tmp_path / "ov", engine="openvino").run_dir
    torch_rows, fast_rows = _rows(mean_run), _rows(fast)
    assert [r["path"] for r in fast_rows] == [r["path"] for r in torch_rows]
    probs = [np.array([[float(v) for k, v in r.items() if k.startswith("p_")] for r in rows])
             for rows in (torch_rows, fast_rows)]
    np.testing.assert_allclose(probs[1], probs[0], atol=1e-4)
    summaries = [json.loads((run / "report.json").read_text())["summary"] for run in (mean_run, fast)]
    assert summaries[0]["scored with"].startswith("torch fp32")
    assert summaries[1]["scored with"].startswith("openvino fp32")
    tables = [json.loads((run / "metrics.json").read_text())["ensemble"]["members"] for run in (mean_run, fast)]
    assert [(r["member"], r["run"], r["val"]) for r in tables[1]] == [(r["member"], r["run"], r["val"])
                                                                      for r in tables[0]]


def _broken_compile(data, precision="fp32", threads=1, where="model", image_input=None):
    raise TransferlabError(f"{where}: OpenVINO cannot compile it: a plugin error")  # as compile_onnx words it


@pytest.mark.skipif(not openvino_rt.available(), reason="OpenVINO is not installed")
@pytest.mark.parametrize("failure", ["compile", "wrong numbers"])
def test_a_failing_or_wrong_openvino_falls_back_to_torch_or_is_refused(members, mean_run, tmp_path, monkeypatch,
                                                                       failure):
    """auto scores a member OpenVINO fails on (or computes wrongly: checked against torch on the
    first batch) in torch, with the same figures; --engine openvino refuses, naming member and run."""
    from transferlab.inference import member_scoring

    if failure == "compile":
        monkeypatch.setattr(openvino_rt, "compile_onnx", _broken_compile)
        expected = "cannot compile it"
    else:
        right = member_scoring._openvino_scorer

        def wrong(*args, **kwargs):
            score = right(*args, **kwargs)
            return lambda x: score(x)[:, ::-1].copy()  # the classes' columns reversed

        monkeypatch.setattr(member_scoring, "_openvino_scorer", wrong)
        expected = "differ from torch's"
    fallback = _ensemble(members, tmp_path / "auto", engine="auto").run_dir
    assert json.loads((fallback / "report.json").read_text())["summary"]["scored with"].startswith("torch fp32")
    assert _rows(fallback) == _rows(mean_run)
    with pytest.raises(TransferlabError) as info:
        _ensemble(members, tmp_path / "ov", engine="openvino")
    message = _one_line(info)
    assert expected in message and message.startswith(f"member m00 ({members[0]})")


@pytest.mark.skipif(not openvino_rt.available(), reason="OpenVINO is not installed")
def test_a_member_openvino_cannot_compile_is_scored_in_torch_or_refused(data, members, tmp_path):
    """A random-forest probe stays scikit-learn inside its branch: auto scores it in torch, and
    an explicit --engine openvino says which member it cannot compile, before scoring anything,
    and the run folder says failed."""
    forest = _probe(data, tmp_path / "forest", classifier="random_forest")
    run = _ensemble([forest, members[1]], tmp_path / "auto", engine="auto").run_dir
    scored = json.loads((run / "report.json").read_text())["summary"]["scored with"]
    assert "m00: torch fp32" in scored and "m01: openvino fp32" in scored
    with pytest.raises(TransferlabError) as info:
        _ensemble([forest, members[1]], tmp_path / "ov", engine="openvino")
    assert "member m00" in _one_line(info) and "OpenVINO cannot compile it" in str(info.value)
    assert json.loads((tmp_path / "ov" / "run.json").read_text())["status"] == "failed"


def test_an_unknown_scoring_engine_is_refused_before_any_work(members, tmp_path):
    with pytest.raises(TransferlabError) as info:
        _ensemble(members, tmp_path / "bad", engine="tensorrt")
    assert "--engine" in _one_line(info) and not (tmp_path / "bad").exists()
    from typer.testing import CliRunner

    from transferlab.cli import app

    result = CliRunner().invoke(app, ["ensemble", *map(str, members), "--engine", "tensorrt",
                                      "--out", str(tmp_path / "cli")])
    assert result.exit_code != 0 and "tensorrt" in str(result.exception or result.output)
    assert not (tmp_path / "cli").exists()


def test_without_openvino_an_explicit_openvino_engine_is_refused_before_any_work(members, tmp_path, monkeypatch):
    monkeypatch.setattr(openvino_rt, "available", lambda: False)
    with pytest.raises(TransferlabError) as info:
        _ensemble(members, tmp_path / "ov", engine="openvino")
    assert "not installed" in _one_line(info) and not (tmp_path / "ov").exists()


def test_the_gain_over_the_best_member_counts_images_not_rounded_figures(mean_run):
    """A review saw 2 images in 32 reported as -6.26 points: the difference of two 4-digit figures."""
    table = json.loads((mean_run / "metrics.json").read_text())["ensemble"]
    n = json.loads((mean_run / "metrics.json").read_text())["val"]["n"]
    images = table["gain_over_best_member"] * n
    assert abs(images - round(images)) < 1e-4  # a whole number of images
    best = next(m for m in table["members"] if m["member"] == table["best_member"])
    assert table["gain_over_best_member"] == pytest.approx(
        table["ensemble"]["val"]["accuracy"] - best["val"]["accuracy"], abs=2e-4)


def test_the_cli_says_what_scored_the_members(members, tmp_path):
    from typer.testing import CliRunner

    from transferlab.cli import app

    result = CliRunner().invoke(app, ["ensemble", *map(str, members), "--engine", "torch", "--quiet",
                                      "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert "scored with: torch fp32" in result.output


def test_a_member_select_never_picked_is_not_run():
    """Weight 0 adds nothing to the mean, so forward skips that member (and an export leaves it out
    of the graph); the output is the full combination's all the same."""
    from transferlab.classifiers.ensemble_fit import Combination, combine
    from transferlab.inference.ensemble_network import EnsembleNetwork

    class Fixed(torch.nn.Module):
        def __init__(self, probabilities):
            super().__init__()
            self.probabilities, self.calls = torch.tensor(probabilities), 0

        def forward(self, x):
            self.calls += 1
            return self.probabilities.expand(x.shape[0], -1)

    rows = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]
    combination = Combination("select", np.array([0.75, 0.0, 0.25]))
    branches = [Fixed(r) for r in rows]
    network = EnsembleNetwork(branches, combination)
    out = network(torch.zeros(2, 3, 8, 8)).exp().numpy()
    assert [b.calls for b in branches] == [1, 0, 1]
    expected = combine(combination, np.array(rows)[:, None, :].repeat(2, axis=1))
    np.testing.assert_allclose(out, expected, atol=1e-6)
    stacked = Combination("stack", np.full(3, 1 / 3), np.zeros((3, 9)), np.zeros(3))
    assert EnsembleNetwork([Fixed(r) for r in rows], stacked).used == [0, 1, 2]  # the stacker reads all


def test_members_of_weight_0_are_left_out_of_the_model(members, mean_run, tmp_path, monkeypatch):
    """A member select never picked changes no prediction, so the ensemble folder does not keep it:
    predict, serve and export load only what they use, and predict exactly what the fit combined."""
    import transferlab.pipelines.ensemble as pipeline
    from transferlab.classifiers.ensemble_fit import Combination
    from transferlab.inference.ensemble_network import EnsembleNetwork, load_ensemble

    fitted = Combination("select", np.array([0.0, 1.0]))
    monkeypatch.setattr(pipeline, "fit_combination", lambda *args, **kwargs: fitted)
    run = _ensemble(members, tmp_path / "run", method="select").run_dir
    assert sorted(p.name for p in (run / "model" / "members").iterdir()) == ["m01"]
    card = json.loads((run / "model" / "model.json").read_text())
    assert card["members"] == ["m01"] and card["combination"]["weights"] == [1.0]
    assert card["resolution"] == 64  # the figures were measured at the dropped probe's resolution: it stays
    metrics = json.loads((run / "metrics.json").read_text())
    assert [r["weight"] for r in metrics["ensemble"]["members"]] == [0.0, 1.0]  # the table still shows both
    assert "m01 (the others have weight 0" in (run / "report.html").read_text(encoding="utf-8")
    # The same output as the full combination over both members' branches (the mean run's copies).
    full = EnsembleNetwork(list(load_ensemble(mean_run).network.branches), fitted).eval()
    images = (torch.rand(3, 3, 64, 64) * 255).to(torch.uint8)
    with torch.no_grad():
        expected = full(images.float() / 255).exp().numpy()
    np.testing.assert_allclose(load_predictor(run).predict_tensor(images), expected, atol=1e-5)
