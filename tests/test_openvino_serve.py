"""Serving an exported run with OpenVINO (fp32, and bf16 behind the export's accuracy check),
and the ONNX loader's defences, shared by the ONNX Runtime and OpenVINO engines."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from fastapi.testclient import TestClient

from tests.test_serve import make_probe_run, one_torch_thread  # noqa: F401 (autouse fixture)
from transferlab import openvino_rt
from transferlab.data.transforms import normalise
from transferlab.errors import TransferlabError
from transferlab.inference.export import export_run
from transferlab.serve import create_app
from transferlab.serve.engines import load_engine

pytestmark = pytest.mark.skipif(not openvino_rt.available(), reason="OpenVINO is not installed")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = make_probe_run(tmp_path_factory.mktemp("openvino"))
    export_run(run, "onnx")
    return run


def export_record(run: Path) -> dict:
    return json.loads((run / "model" / "export.json").read_text())["onnx"]


def rehash(run: Path) -> None:
    """Make export.json's sha256 match model.onnx as it is now (what an attacker editing both does)."""
    from transferlab.inference.export import file_sha256

    record = json.loads((run / "model" / "export.json").read_text())
    record["onnx"]["sha256"] = file_sha256(run / "model" / "model.onnx")
    (run / "model" / "export.json").write_text(json.dumps(record))


def copy_run(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "copy"))


def test_export_records_openvino_fp32_parity_and_the_bf16_accuracy_check(run_dir):
    measured = export_record(run_dir)["openvino"]
    assert measured["fp32"]["passed"] is True
    assert measured["fp32"]["max_abs_diff"] <= 1e-4
    bf16 = measured["bf16"]
    if "images" in bf16:  # a CPU with bf16: accuracy on the run's validation rows, both precisions
        validation = sum(1 for line in (run_dir / "predictions.csv").read_text().splitlines()[1:] if ",val," in line)
        assert bf16["images"] == validation > 0
        assert 0 <= bf16["accuracy_bf16"] <= 1 and 0 <= bf16["agreement"] <= 1
        assert bf16["passed"] == (bf16["accuracy_fp32"] - bf16["accuracy_bf16"] <= bf16["max_accuracy_drop"])
    else:
        assert bf16["passed"] is False and bf16["reason"]


def test_openvino_serves_the_same_probabilities_as_torch(run_dir):
    data = run_dir.parent / "data"
    files = [("files", (p.name, p.read_bytes())) for c in ("circle", "square", "dome(inner)")
             for p in sorted((data / c).iterdir())[:2]]
    answers = {}
    for engine in ("torch", "openvino"):
        with TestClient(create_app(run_dir, engine=engine)) as client:
            assert client.get("/health").json()["engine"] == engine
            answers[engine] = client.post("/predict/batch", files=files).json()
    assert answers["torch"]["model"] == answers["openvino"]["model"]
    for ours, theirs in zip(answers["torch"]["results"], answers["openvino"]["results"]):
        assert ours["top"][0]["class"] == theirs["top"][0]["class"]
        assert ours["top"][0]["p"] == pytest.approx(theirs["top"][0]["p"], abs=1e-4)


def test_the_served_graph_normalises_uint8_images_as_the_float_graph_is_fed(run_dir):
    """Serving feeds OpenVINO the uint8 batch; the graph's own normalisation must equal
    data.transforms.normalise followed by the plain float graph."""
    card = load_engine(run_dir, "onnx").card
    data = openvino_rt.read_onnx_file(run_dir / "model" / "model.onnx")
    plain = openvino_rt.compile_onnx(data, "fp32")
    served = openvino_rt.compile_onnx(data, "fp32", image_input=openvino_rt.ImageInput.of(card.mean, card.std))
    assert served.takes_uint8 and not plain.takes_uint8
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (5, 3, 64, 64), dtype=np.uint8))
    expected = plain.run(normalise(images, card.mean, card.std).numpy())
    assert np.abs(served.run(images.numpy()) - expected).max() <= 1e-5
    # Not vacuous: other constants give other probabilities on these images.
    other = openvino_rt.compile_onnx(data, "fp32", image_input=openvino_rt.ImageInput.of((0, 0, 0), (1, 1, 1)))
    assert np.abs(other.run(images.numpy()) - expected).max() > 1e-3
    with pytest.raises(TransferlabError, match="takes uint8 images, not float32"):
        served.run(normalise(images, card.mean, card.std).numpy())


def test_the_export_check_measures_the_graph_serving_compiles(run_dir, tmp_path, monkeypatch):
    """A served graph that normalised wrongly would fail the fp32 check at export."""
    copy = copy_run(run_dir, tmp_path)
    wrong = openvino_rt.ImageInput.of((0, 0, 0), (1, 1, 1))
    monkeypatch.setattr("transferlab.inference.openvino_check.ImageInput.of", lambda mean, std: wrong)
    export_run(copy, "onnx")
    fp32 = export_record(copy)["openvino"]["fp32"]
    assert fp32["passed"] is False and fp32["max_abs_diff"] > fp32["tolerance"]


def test_bf16_engine_follows_the_export_check(run_dir, tmp_path):
    copy = copy_run(run_dir, tmp_path)
    record = json.loads((copy / "model" / "export.json").read_text())
    record["onnx"]["openvino"]["bf16"] = {"images": 10, "accuracy_fp32": 0.9, "accuracy_bf16": 0.8,
                                          "agreement": 0.8, "max_accuracy_drop": 0.01, "passed": False}
    (copy / "model" / "export.json").write_text(json.dumps(record))
    with pytest.raises(TransferlabError, match=r"bf16 failed its check at export \(validation accuracy 0.8"):
        create_app(copy, engine="openvino-bf16")
    record["onnx"]["openvino"]["bf16"]["passed"] = True
    (copy / "model" / "export.json").write_text(json.dumps(record))
    engine = load_engine(copy, "openvino-bf16")
    assert engine.engine == "openvino-bf16"
    batch = np.random.default_rng(0).integers(0, 256, (3, 3, 64, 64), dtype=np.uint8)
    probabilities = engine.predict_uint8(batch)
    assert probabilities.shape == (3, 3) and np.allclose(probabilities.sum(1), 1, atol=2e-2)


def test_openvino_engines_need_the_export_measurement(run_dir, tmp_path):
    copy = copy_run(run_dir, tmp_path)
    record = json.loads((copy / "model" / "export.json").read_text())
    del record["onnx"]["openvino"]  # an export from before OpenVINO was installed
    (copy / "model" / "export.json").write_text(json.dumps(record))
    for engine in ("openvino", "openvino-bf16"):
        with pytest.raises(TransferlabError, match="has no OpenVINO"):
            create_app(copy, engine=engine)
    with pytest.raises(TransferlabError, match="unknown engine 'openvino-int4'"):
        create_app(copy, engine="openvino-int4")


def with_external_weights(model_file: Path, target: Path) -> None:
    """Rewrite the export so its largest tensor claims to live in `target` (another file of the user's)."""
    model = onnx.load(str(model_file))
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=str(target))
    model_file.write_bytes(model.SerializeToString())


@pytest.mark.parametrize("engine", ["onnx", "openvino"])
def test_a_model_reading_weights_from_another_file_is_refused(run_dir, tmp_path, engine):
    copy = copy_run(run_dir, tmp_path)
    secret = tmp_path / "id_rsa"
    secret.write_bytes(os.urandom(4096))
    with_external_weights(copy / "model" / "model.onnx", secret)
    # A hostile folder edits export.json to match (its sha256 of model.onnx is only a check
    # against accidents): the loader itself must refuse the graph.
    rehash(copy)
    with pytest.raises(TransferlabError, match="keeps its data in another file"):
        load_engine(copy, engine)


@pytest.mark.parametrize("engine", ["onnx", "openvino"])
def test_a_linked_or_garbage_model_file_is_refused(run_dir, tmp_path, engine):
    copy = copy_run(run_dir, tmp_path)
    model_file = copy / "model" / "model.onnx"
    elsewhere = tmp_path / "elsewhere.onnx"
    shutil.move(model_file, elsewhere)
    model_file.symlink_to(elsewhere)
    with pytest.raises(TransferlabError, match="is a link"):
        load_engine(copy, engine)
    model_file.unlink()
    model_file.write_bytes(b"\x08\x07" + os.urandom(256))
    rehash(copy)  # as a hostile folder would, so the ONNX reader itself is what refuses
    with pytest.raises(TransferlabError, match="not an ONNX model|cannot compile"):
        load_engine(copy, engine)


def test_an_oversized_model_file_is_refused_before_it_is_read(run_dir, tmp_path, monkeypatch):
    copy = copy_run(run_dir, tmp_path)
    monkeypatch.setattr(openvino_rt, "MAX_ONNX_BYTES", 1024)
    with pytest.raises(TransferlabError, match="more than an exported model can be"):
        load_engine(copy, "openvino")


def test_importing_the_runtime_sends_no_telemetry(tmp_path):
    """`import openvino` alone imports its converter, which records and sends a usage event
    unless the user opted out; openvino_rt imports the runtime without it."""
    code = ("import sys; from transferlab import openvino_rt; assert openvino_rt.available(); "
            "assert 'openvino.tools.ovc' not in sys.modules and 'openvino_telemetry' not in sys.modules; "
            "openvino_rt.compile_onnx.__name__")
    env = {**os.environ, "HOME": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    assert not (tmp_path / "intel").exists()
