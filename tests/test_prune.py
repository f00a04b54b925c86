"""`transferlab prune`: cut networks, each an ordinary run folder, measured and compared."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import transferlab.cli.prune_commands  # noqa: F401  (registers `prune` until cli/__init__ imports it)
from tests.conftest import make_image_folder
from transferlab.backbones.cut import cut_backbone, cut_parameter_counts, cut_points
from transferlab.backbones.shape import block_groups, sequential_units
from transferlab.card import ModelCard
from transferlab.cli import app
from transferlab.errors import TransferlabError
from transferlab.finetune.recipe import load_recipe
from transferlab.inference.export import export_run
from transferlab.inference.finetune_predictor import FinetunePredictor
from transferlab.insight.latency import measure_cost
from transferlab.pipelines.finetune import FinetuneConfig, run_finetune
from transferlab.pipelines.prune import PruneConfig, pareto_front, recipe_for_cut, run_prune
from transferlab.report.prune_report import latency_ms

EFFICIENTNET_RECIPE = ("backbone: test_efficientnet\nresolution: 48\nprecision: fp32\nbatch_size: 8\naugment: light\n"
                       "augment_draws: 1\nstages:\n  - {train: head, epochs: 1, lr: 0.01}\n"
                       "  - {train: 'blocks.4,neck,head', epochs: 1, lr: 0.001}\n")
HEAD_ONLY = ("backbone: {backbone}\nresolution: 48\nprecision: fp32\nbatch_size: 8\naugment: light\n"
             "augment_draws: 1\nstages:\n  - {{train: head, epochs: 1, lr: 0.01}}\n")
CUTS = ("blocks.1", "blocks.3")  # test_efficientnet: stem, blocks.0..blocks.4, neck


def invoke(*args):
    """Run the CLI as `main()` does: TransferlabError becomes a one-line error and exit 2."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    if isinstance(result.exception, TransferlabError):
        return 2, str(result.exception)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("prune") / "data", per_class=8, size=48)


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(EFFICIENTNET_RECIPE)
    return path


@pytest.fixture(scope="module")
def pruned(tmp_path_factory, data, recipe_file) -> tuple[Path, list]:
    """`transferlab prune` with two cuts of test_efficientnet, run once for the module."""
    out = tmp_path_factory.mktemp("pruned") / "prune"
    args = ["prune", data, "--recipe", recipe_file, "--keep", ",".join(reversed(CUTS)), "--out", out, "--quiet"]
    code, output = invoke(*args)
    assert code == 0, output
    return out, args


def _rows(out: Path) -> list[dict]:
    with open(out / "prune.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# --- cutting -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["test_efficientnet", "test_resnet"])
def test_a_cut_keeps_the_groups_up_to_k_and_ends_in_pooled_features(name):
    groups = list(block_groups(timm.create_model(name)))
    for group in groups[1:-1]:
        model = cut_backbone(timm.create_model(name), group)
        assert list(block_groups(model)) == groups[:groups.index(group) + 1]
        model.reset_classifier(0)
        out = model(torch.randn(2, 3, 48, 48))
        assert out.shape == (2, model.num_features)
        units = sequential_units(model, warn=False)  # the cached-prefix path still cuts it into units
        assert units is not None and [g for g, _ in units] == groups[:groups.index(group) + 1]
    counts = list(cut_parameter_counts(name).values())
    assert counts == sorted(counts) and len(set(counts)) == len(counts)  # fewer groups, fewer parameters
    assert cut_points(timm.create_model(name)) == groups


def test_a_group_the_backbone_lacks_is_one_line():
    with pytest.raises(TransferlabError, match="'layer2' is not a block group of test_efficientnet; groups: stem"):
        cut_backbone(timm.create_model("test_efficientnet"), "layer2")


def test_stages_that_train_removed_groups_train_the_top_groups_left():
    groups = ["stem", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4", "neck"]
    recipe = load_recipe(None, {"stages": [{"train": "head"}, {"train": "blocks.4,neck,head"},
                                           {"train": "blocks.1,head"}, {"train": "all"}]})
    cut = recipe_for_cut(recipe, groups, groups[:4])  # cut after blocks.2
    assert [s["train"] for s in cut.stages] == ["head", "blocks.1,blocks.2,head", "blocks.1,head",
                                                "stem,blocks.0,blocks.1,blocks.2,head"]
    preset = load_recipe(None, {"stages": "three-step"})
    assert recipe_for_cut(preset, groups, groups[:4]).stages == "three-step"  # presets use the cut's own groups


def test_the_pareto_front_keeps_only_cuts_nothing_beats():
    rows = [{"parameters": 10, "val_accuracy": 0.7}, {"parameters": 20, "val_accuracy": 0.9},
            {"parameters": 30, "val_accuracy": 0.8}, {"parameters": 40, "val_accuracy": 0.9}]
    assert pareto_front(rows, lambda r: r["parameters"]) == [True, True, False, False]


def test_cost_figures_of_a_small_network():
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    network(torch.zeros(1, 3, 8, 8))
    cost = measure_cost(network, 8, batches=(1, 4), repeats={1: 3, 4: 2})
    # conv: 4 out x 6 x 6 positions x 27 taps; linear: 144 x 2
    assert cost.multiply_adds == 4 * 6 * 6 * 27 + 144 * 2
    assert cost.parameters == sum(p.numel() for p in network.parameters())
    assert [entry.batch for entry in cost.latency] == [1, 4] and all(e.median_ms > 0 for e in cost.latency)


# --- the command ---------------------------------------------------------------------------


def test_prune_writes_a_run_per_cut_a_table_and_a_curve(pruned):
    out, _ = pruned
    rows = _rows(out)
    assert [r["cut"] for r in rows] == list(CUTS)  # input side first, whatever order --keep gave
    parameters = [int(r["parameters"]) for r in rows]
    assert parameters[0] < parameters[1]  # the earlier cut is the smaller network
    for row in rows:
        run = Path(row["run_dir"])
        assert json.loads((run / "run.json").read_text())["status"] == "complete"
        card = json.loads((run / "model" / "model.json").read_text())
        assert card["cut_after"] == row["cut"]
        assert float(row["latency_ms_batch1"]) > 0 and float(row["latency_ms_batch64"]) > 0
        assert int(row["multiply_adds"]) > 0 and 0 <= float(row["val_accuracy"]) <= 1
    assert rows[0]["pareto"] == "True"  # the smallest cut: nothing has fewer parameters
    # The retargeted stage trained the two top groups left by each cut.
    stages = json.loads((Path(rows[0]["run_dir"]) / "metrics.json").read_text())["stages"]
    assert stages[1]["train"] == "blocks.0,blocks.1,head"
    page = (out / "prune.html").read_text()
    assert "Content-Security-Policy" in page and "data:image/png;base64," in page and "blocks.3" in page
    assert (out / "plots" / "prune_curve.png").is_file()
    state = json.loads((out / "prune.json").read_text())
    assert state["status"] == "complete" and set(state["cuts"]) == set(CUTS)


def test_predict_on_a_pruned_run_gives_its_predictions_csv(pruned):
    run = Path(_rows(pruned[0])[0]["run_dir"])
    with open(run / "predictions.csv", newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if r["split"] == "val")
    predictor = FinetunePredictor(run)
    expected = np.array([float(row[f"p_{name}"]) for name in predictor.classes])
    got = predictor.predict_tensor(torch.stack([_preprocess(predictor, row["path"])]))[0]
    assert np.abs(got - expected).max() < 1e-4


def _preprocess(predictor, path):
    from transferlab.data.transforms import preprocess

    return preprocess(Path(path), predictor.resolution, predictor.interpolation)


def test_onnx_export_of_a_pruned_run_passes_parity(pruned):
    run = Path(_rows(pruned[0])[1]["run_dir"])
    assert export_run(run, "onnx").is_file()
    record = json.loads((run / "model" / "export.json").read_text())["onnx"]
    assert record["max_abs_diff"] <= record["tolerance"]


def test_rerunning_the_command_keeps_finished_cuts(pruned):
    out, args = pruned
    stamps = {r["cut"]: (Path(r["run_dir"]) / "metrics.json").stat().st_mtime_ns for r in _rows(out)}
    code, output = invoke(*args)
    assert code == 0, output
    assert "2 cuts were finished earlier and kept" in output
    assert {r["cut"]: (Path(r["run_dir"]) / "metrics.json").stat().st_mtime_ns for r in _rows(out)} == stamps


def test_a_tampered_row_in_prune_json_is_measured_again(pruned, tmp_path):
    import shutil

    out, args = pruned
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    state = json.loads((copy / "prune.json").read_text())
    state["cuts"]["blocks.1"]["row"] |= {"parameters": "lots", "latency": [{"batch": 1, "median_ms": "<b>"}]}
    (copy / "prune.json").write_text(json.dumps(state))
    code, output = invoke(*[copy if a == out else a for a in args])
    assert code == 0, output
    assert "1 cuts were finished earlier and kept" in output  # blocks.3; blocks.1 was measured again
    rows = {r["cut"]: r for r in _rows(copy)}
    assert rows["blocks.1"]["parameters"] == _rows(out)[0]["parameters"]
    assert all(Path(r["run_dir"]).parent == copy / "runs" for r in rows.values())


def test_another_recipe_in_the_same_prune_folder_is_refused(pruned, data, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text(EFFICIENTNET_RECIPE.replace("lr: 0.01", "lr: 0.02"))
    code, message = invoke("prune", data, "--recipe", other, "--keep", "blocks.1", "--out", pruned[0], "--quiet")
    assert code == 2 and "holds a prune of another backbone, recipe or data" in message and "\n" not in message


@pytest.mark.parametrize("keep, says", [("blocks.9", "'blocks.9' is not a block group of test_efficientnet"),
                                        ("layer2", "'layer2' is not a block group"),
                                        ("", "--keep: give one or more block groups"),
                                        (" , ", "--keep: give one or more block groups")])
def test_a_bad_keep_is_one_line_before_any_training(data, recipe_file, tmp_path, keep, says):
    out = tmp_path / "prune"
    code, message = invoke("prune", data, "--recipe", recipe_file, "--keep", keep, "--out", out, "--quiet")
    assert code == 2 and says in message and "\n" not in message
    assert not out.exists()  # refused before the folder, or any image, was touched


def test_list_groups_prints_the_parameters_each_cut_keeps(recipe_file):
    code, output = invoke("prune", "--recipe", recipe_file, "--list-groups")
    counts = cut_parameter_counts("test_efficientnet")
    assert code == 0 and all(f"{n:,}" in output for n in counts.values())


# --- pruned run folders are hostile input ---------------------------------------------------


def _tampered_copy(run: Path, tmp_path: Path, **card_changes) -> Path:
    import shutil

    copy = tmp_path / "tampered"
    shutil.copytree(run, copy)
    card_file = copy / "model" / "model.json"
    card_file.write_text(json.dumps(json.loads(card_file.read_text()) | card_changes))
    return copy


@pytest.mark.parametrize("cut, says", [("blocks.9", "field 'cut_after': 'blocks.9' is not a block group"),
                                       ("layer2", "field 'cut_after': 'layer2' is not a block group"),
                                       ("blocks.3", "weights do not fit the architecture"),
                                       (7, "field 'cut_after' must be a block group name"),
                                       ("x" * 500, "field 'cut_after' must be a block group name")])
def test_a_tampered_cut_in_the_card_is_one_line(pruned, tmp_path, cut, says):
    run = Path(_rows(pruned[0])[0]["run_dir"])  # cut after blocks.1
    tampered = _tampered_copy(run, tmp_path, cut_after=cut)
    with pytest.raises(TransferlabError, match=says) as caught:
        FinetunePredictor(tampered)
    assert "\n" not in str(caught.value) and str(tampered / "model") in str(caught.value)  # names the file


def test_a_probe_card_cannot_carry_a_cut():
    card = {"kind": "probe", "classes": ["a", "b"], "backbone": "test_resnet", "resolution": 48,
            "mean": [0.5] * 3, "std": [0.5] * 3, "layers": ["head"], "cut_after": "layer2"}
    with pytest.raises(TransferlabError, match="field 'cut_after'"):
        ModelCard.from_dict(card, "model.json")
    uncut = ModelCard.from_dict({**card, "kind": "finetune", "cut_after": None}, "model.json")
    assert "cut_after" not in uncut.to_dict()  # an uncut card reads as cards did before pruning


# --- another backbone, and --from-run -------------------------------------------------------


def test_prune_from_a_finetuned_run_starts_from_its_backbone(data, tmp_path):
    recipe = load_recipe(None, {"backbone": "test_resnet", "resolution": 48, "precision": "fp32", "batch_size": 8,
                                "augment_draws": 1, "stages": [{"train": "all", "epochs": 1, "lr": 0.01}]})
    source = run_finetune(FinetuneConfig(data=str(data), out=str(tmp_path / "source"), recipe=recipe, workers=0,
                                         progress=False, error_grid=0, embed="")).run_dir
    head_only = dataclasses.replace(recipe, stages=[{"train": "head", "epochs": 1, "lr": 0.01}])
    result = run_prune(PruneConfig(data=str(data), out=str(tmp_path / "prune"), recipe=head_only,
                                   keep=["layer1", "layer2"], from_run=str(source), workers=0, progress=False,
                                   latency_batches=(1, 8), latency_repeats={1: 2, 8: 2}))
    assert [r["cut"] for r in result.rows] == ["layer1", "layer2"] and not result.failed
    assert result.rows[0]["parameters"] < result.rows[1]["parameters"]
    assert all(latency_ms(r, 8) > 0 for r in result.rows)
    # Head-only training on frozen BN: the cut's backbone is exactly the source run's, up to the cut.
    tuned = load_file(str(source / "model" / "network.safetensors"))
    cut = load_file(str(Path(result.rows[1]["run_dir"]) / "model" / "network.safetensors"))
    kept = [k for k in cut if k.startswith("backbone.")]
    assert kept and all(torch.equal(cut[k], tuned[k]) for k in kept)
    assert json.loads((Path(result.rows[1]["run_dir"]) / "model" / "model.json").read_text())["weights_source"] == "file"
    # A pruned run is not a source: its backbone is not whole.
    with pytest.raises(TransferlabError, match="is not the whole test_resnet .cut after layer1.; prune the run"):
        run_prune(PruneConfig(data=str(data), out=str(tmp_path / "again"), recipe=head_only, keep=["layer1"],
                              from_run=result.rows[0]["run_dir"], workers=0, progress=False))
    assert not (tmp_path / "again").exists()
