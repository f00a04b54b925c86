"""Export of a probe run (ONNX, TorchScript) with its parity check, and serving the ONNX file."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

import transferlab.inference.export as export_module
from tests.test_serve import make_probe_run, one_torch_thread  # noqa: F401 (autouse fixture)
from transferlab.errors import TransferlabError
from transferlab.inference.export import export_run
from transferlab.inference.probe_network import WithSoftmax, build_probe_network
from transferlab.inference.probe_predictor import load_probe_parts
from transferlab.serve import create_app


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_probe_run(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def onnx_file(run_dir) -> Path:
    return export_run(run_dir, "onnx")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix in (".onnx", ".pt"))


def test_onnx_export_passes_parity_with_a_dynamic_batch(run_dir, onnx_file):
    import onnxruntime as ort

    assert onnx_file == run_dir / "model" / "model.onnx"
    record = json.loads((run_dir / "model" / "export.json").read_text())["onnx"]
    assert record["max_abs_diff"] <= record["tolerance"] == 1e-4
    assert record["samples"]["images"] == 4  # real images from predictions.csv, not only noise
    assert record["input"]["shape"] == ["batch", 3, 64, 64]
    assert len(record["output"]["classes"]) == 3
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    network = WithSoftmax(build_probe_network(load_probe_parts(run_dir))).eval()
    x = torch.randn(5, 3, 64, 64)  # a batch size the export never saw
    got = session.run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - network(x).numpy()).max() < 1e-4
    assert np.allclose(got.sum(axis=1), 1, atol=1e-5)


def test_torchscript_export_passes_parity(run_dir, onnx_file, tmp_path):
    path = export_run(run_dir, "torchscript", out=tmp_path / "probe.pt")
    assert path == tmp_path / "probe.pt" and path.is_file()
    record = json.loads((run_dir / "model" / "export.json").read_text())
    assert set(record) == {"onnx", "torchscript"}  # one entry per format, merged
    assert record["torchscript"]["max_abs_diff"] <= 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path))
    with torch.no_grad():
        assert module(torch.randn(2, 3, 64, 64)).shape == (2, 3)


def test_random_forest_probe_cannot_be_exported(tmp_path):
    forest = make_probe_run(tmp_path, classifier="random_forest")
    with pytest.raises(TransferlabError, match="only a logistic-regression head folds into a network"):
        export_run(forest, "onnx")
    assert leftovers(forest / "model") == [] and not (forest / "model" / "export.json").exists()


def test_parity_failure_leaves_no_file(run_dir, tmp_path, monkeypatch):
    real = export_module._run_torchscript
    monkeypatch.setattr(export_module, "_run_torchscript", lambda path: (lambda x: real(path)(x) + 1e-3))
    out = tmp_path / "never.pt"
    with pytest.raises(TransferlabError, match="parity check"):
        export_run(run_dir, "torchscript", out=out)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary


def test_perturbed_outputs_fail_the_onnx_export(run_dir, tmp_path, monkeypatch):
    real = export_module._run_onnx
    monkeypatch.setattr(export_module, "_run_onnx", lambda path: (lambda x: real(path)(x) + 1e-3))
    out = tmp_path / "model.onnx"
    with pytest.raises(TransferlabError, match=r"max abs difference 0\.001"):
        export_run(run_dir, "onnx", out=out)
    assert list(tmp_path.iterdir()) == []


def test_export_never_writes_over_a_users_file_or_into_a_folder(run_dir, onnx_file, tmp_path, monkeypatch):
    """Found by an outside review: --out named an existing text file, which became the ONNX model;
    an existing folder ran the whole export, then crashed with a traceback."""
    monkeypatch.setattr(export_module, "_sample_inputs", lambda *a: pytest.fail("checked only after work"))
    mine = tmp_path / "notes.txt"
    mine.write_text("keep me")
    with pytest.raises(TransferlabError, match="exists and is not an earlier onnx export of this run"):
        export_run(run_dir, "onnx", out=mine)
    assert mine.read_text() == "keep me"
    with pytest.raises(TransferlabError, match="is a folder"):
        export_run(run_dir, "onnx", out=tmp_path)
    link = tmp_path / "link.onnx"
    link.symlink_to(onnx_file)
    with pytest.raises(TransferlabError, match="is a link"):
        export_run(run_dir, "onnx", out=link)
    with pytest.raises(TransferlabError, match="is not a folder"):
        export_run(run_dir, "onnx", out=mine / "sub" / "m.onnx")
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(TransferlabError, match="--tolerance"):
            export_run(run_dir, "onnx", tolerance=bad)


def test_a_run_is_exported_again_over_its_own_earlier_export(run_dir, onnx_file, tmp_path):
    elsewhere = tmp_path / "probe.onnx"
    assert export_run(run_dir, "onnx", out=elsewhere) == elsewhere
    assert export_run(run_dir, "onnx", out=elsewhere) == elsewhere  # recorded in export.json: its own
    assert export_run(run_dir, "onnx") == onnx_file  # the default file is always its own


def test_unknown_format(run_dir):
    with pytest.raises(TransferlabError, match="unknown export format 'tflite'"):
        export_run(run_dir, "tflite")


def test_onnx_engine_serves_the_same_top_class_as_torch(run_dir, onnx_file):
    data = run_dir.parent / "data"
    files = [("files", (p.name, p.read_bytes())) for c in ("circle", "square", "dome(inner)")
             for p in sorted((data / c).iterdir())[:2]]
    answers = {}
    for engine in ("torch", "onnx"):
        with TestClient(create_app(run_dir, engine=engine)) as client:
            assert client.get("/health").json()["engine"] == engine
            answers[engine] = client.post("/predict/batch", files=files).json()
    assert answers["torch"]["model"] == answers["onnx"]["model"]  # same model, whichever engine
    for ours, theirs in zip(answers["torch"]["results"], answers["onnx"]["results"]):
        assert ours["top"][0]["class"] == theirs["top"][0]["class"]
        assert ours["top"][0]["p"] == pytest.approx(theirs["top"][0]["p"], abs=1e-4)


def test_onnx_engine_refuses_a_stale_export(run_dir, onnx_file, tmp_path):
    copy = Path(shutil.copytree(run_dir, tmp_path / "copy"))
    record = json.loads((copy / "model" / "export.json").read_text())
    record["onnx"]["source_model"] = "0" * 16  # as if the probe had been re-run since
    (copy / "model" / "export.json").write_text(json.dumps(record))
    with pytest.raises(TransferlabError, match="not exported from this run's current model"):
        create_app(copy, engine="onnx")


@pytest.mark.parametrize("damage", ["truncated", "linked"])
def test_onnx_engines_refuse_a_damaged_or_linked_model_file_in_one_line(run_dir, onnx_file, tmp_path, damage):
    """A review found serve printing "serving ..." and then a lifespan traceback for a bad model.onnx."""
    from transferlab.serve.engines import check_engine

    copy = Path(shutil.copytree(run_dir, tmp_path / "copy"))
    model = copy / "model" / "model.onnx"
    if damage == "truncated":
        model.write_bytes(model.read_bytes()[:1000])
    else:
        model.unlink()
        model.symlink_to(onnx_file)
    expected = "not the file export.json describes" if damage == "truncated" else "is a link"
    for engine in ("onnx", "openvino"):
        with pytest.raises(TransferlabError, match=expected) as info:
            check_engine(copy, engine)
        assert "\n" not in str(info.value)
