"""The HTTP service under pressure: memory, concurrency and hostile input (uploads and run files)."""

from __future__ import annotations

import asyncio
import io
import json
import math
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import bomb_png
from tests.test_serve import (  # noqa: F401 (one_torch_thread: autouse fixture)
    assert_still_serving,
    make_probe_run,
    one_torch_thread,
    post_file,
    sample_images,
)
from transferlab.errors import TransferlabError
from transferlab.serve import create_app


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_probe_run(tmp_path_factory.mktemp("serve-limits"))


@pytest.fixture(scope="module")
def client(run_dir):
    with TestClient(create_app(run_dir)) as test_client:  # `with`: runs the lifespan (model load)
        yield test_client


@pytest.fixture(scope="module")
def images(run_dir) -> dict[str, Path]:
    return sample_images(run_dir)


ELONGATED = [(1, 20_000), (1, 400_000), (20_000, 1)]


@pytest.mark.parametrize("width, height", ELONGATED, ids=["1x20000", "1x400000", "20000x1"])
def test_elongated_images_are_refused_before_decoding(client, images, width, height):
    """A 121-byte 1x20000 PNG would resize to 64x1280000 pixels (and 224x4480000 at 224)."""
    data = bomb_png(width, height)
    assert len(data) < 1024
    response = post_file(client, data=data)
    assert response.status_code == 422, response.text
    assert "aspect ratio" in response.json()["error"]
    batch = client.post("/predict/batch", files=[("files", ("strip.png", data)),
                                                 ("files", ("square.png", images["square"].read_bytes()))])
    assert batch.status_code == 200, batch.text
    strip, square = batch.json()["results"]
    assert strip["status"] == 422 and "aspect ratio" in strip["error"] and "top" not in strip
    assert len(square["top"]) == 3
    # Refused from the header: nothing near the resized size was ever reserved for decoding.
    assert client.get("/health").json()["decode_memory"]["peak_bytes"] < 64 * 1024 * 1024


@pytest.mark.parametrize("failure, status, reason", [
    (MemoryError(), 413, "too large to decode"),
    (ValueError("broken palette\nsecond line"), 422, "cannot decode: broken palette"),
    (OSError(), 422, "cannot decode: OSError"),
], ids=["memory-error", "value-error", "os-error"])
def test_any_decode_failure_is_a_4xx_and_only_fails_its_own_file(client, images, monkeypatch, failure, status,
                                                                  reason):
    import transferlab.serve.uploads as uploads

    real = uploads.preprocess

    def flaky(source, resolution, interpolation):
        if source.getvalue().startswith(b"JUNK"):
            raise failure
        return real(source, resolution, interpolation)

    monkeypatch.setattr(uploads, "preprocess", flaky)
    gif = b"JUNK" + bytes(64)  # no format PIL knows: the header check passes it on to preprocess()
    response = post_file(client, data=gif)
    assert response.status_code == status and reason in response.json()["error"]
    batch = client.post("/predict/batch", files=[("files", ("a.gif", gif)),
                                                 ("files", ("b.png", images["square"].read_bytes()))])
    assert batch.status_code == 200, batch.text
    bad, good = batch.json()["results"]
    assert bad["status"] == status and reason in bad["error"] and "\n" not in bad["error"]
    assert len(good["top"]) == 3


def test_a_model_failure_fails_the_batch_items_not_the_batch(client, images, monkeypatch):
    def broken(batch):
        raise RuntimeError("engine crashed")

    monkeypatch.setattr(client.app.state.service.batcher, "_predict", broken)
    files = [("files", ("a.png", images["square"].read_bytes())), ("files", ("b.txt", b"not an image"))]
    response = client.post("/predict/batch", files=files)
    assert response.status_code == 200, response.text
    failed, refused = response.json()["results"]
    assert failed == {"filename": "a.png", "error": "internal error: RuntimeError", "status": 500}
    assert refused["status"] == 415


def test_decode_memory_budget(run_dir, images):
    # 40x40 -> 64x64 at resolution 64: about 45 KiB reserved; a 200x200 image about 350 KiB.
    app = create_app(run_dir, decode_memory_bytes=128 * 1024, decode_wait_s=0)
    buffer = io.BytesIO()
    Image.new("RGB", (200, 200), (9, 99, 199)).save(buffer, format="PNG")
    with TestClient(app) as small:
        response = post_file(small, data=buffer.getvalue(), name="big.png")
        assert response.status_code == 413, response.text
        assert "big.png" in response.json()["error"] and "decode memory" in response.json()["error"]
        budget = small.app.state.service.budget
        budget.in_use = budget.total - 1024  # as if other uploads were being decoded right now
        busy = post_file(small, images["square"])
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1", busy.text
        batch = small.post("/predict/batch", files=[("files", ("a.png", images["square"].read_bytes()))])
        assert batch.json()["results"][0]["status"] == 503
        budget.in_use = 0
        assert_still_serving(small, images["square"])
        health = small.get("/health").json()["decode_memory"]
        assert health["in_use_bytes"] == 0 and 0 < health["peak_bytes"] <= health["total_bytes"]


def test_decode_cost_is_read_from_the_header_and_follows_the_jpeg_decoder():
    from transferlab.serve.uploads import decode_cost

    costs = {}
    for fmt in ("JPEG", "PNG"):
        buffer = io.BytesIO()
        Image.new("RGB", (4000, 3000), (20, 120, 220)).save(buffer, format=fmt)
        costs[fmt] = decode_cost(buffer.getvalue(), 224)
    # 12 Mpx: PNG decodes every pixel (~92 MiB estimated); JPEG decodes at 1/8 scale (~2 MiB).
    assert costs["PNG"] > 8 * 12_000_000 > 32 * costs["JPEG"] > 0
    assert decode_cost(b"not an image", 224) == 0  # decode_image() says why it is refused


def test_decode_budget_waits_in_turn_and_gives_back():
    from transferlab.serve.batching import Overloaded
    from transferlab.serve.limits import DecodeBudget
    from transferlab.serve.uploads import UploadError

    async def scenario():
        budget = DecodeBudget(100, wait_s=30)
        await budget.reserve(60, "a")
        waiting = asyncio.create_task(budget.reserve(60, "b"))
        await asyncio.sleep(0)
        assert not waiting.done()  # 60 + 60 > 100: it waits for the first decode
        budget.release(60)
        await asyncio.wait_for(waiting, 10)  # a safety net, not a timing: release wakes it at once
        assert budget.in_use == 60 and budget.peak == 60
        with pytest.raises(UploadError, match="more than this server's decode memory"):
            await budget.reserve(101, "huge")
        impatient = DecodeBudget(100, wait_s=0)
        await impatient.reserve(100, "a")
        with pytest.raises(Overloaded):
            await impatient.reserve(1, "b")

    asyncio.run(scenario())


def test_concurrent_batches_are_limited(run_dir, images):
    with TestClient(create_app(run_dir, max_concurrent_batches=1)) as small:
        gate = small.app.state.service.batches
        gate.active = gate.limit  # one batch in progress
        files = [("files", ("a.png", images["square"].read_bytes()))]
        response = small.post("/predict/batch", files=files)
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "batch requests" in response.json()["error"]
        assert_still_serving(small, images["square"])  # single images are not held up
        gate.active = 0
        assert small.post("/predict/batch", files=files).status_code == 200
        assert small.get("/health").json()["batch_requests"] == {"active": 0, "limit": 1}


def test_allowed_hosts(run_dir):
    with TestClient(create_app(run_dir, allowed_hosts=["classify.example.org"])) as strict:
        assert strict.get("/health").status_code == 400  # TestClient's Host is "testserver"
        assert strict.get("/health", headers={"host": "classify.example.org"}).status_code == 200
    with pytest.raises(TransferlabError, match="allowed_hosts"):
        create_app(run_dir, allowed_hosts=[""])


def _tamper(run_dir: Path, tmp_path: Path, name: str, text: str) -> Path:
    run = Path(shutil.copytree(run_dir, tmp_path / "tampered"))
    (run / name).write_text(text)
    return run


@pytest.mark.parametrize("name, edit, reason", [
    ("model/model.json", lambda m: {**m, "inference_precision": "fp64"}, "inference_precision"),
    ("model/model.json", lambda m: {**m, "backbone": ["not", "a", "name"]}, "backbone"),
    ("model/model.json", lambda m: {**m, "classes": []}, "classes"),
    ("model/model.json", lambda m: "{not json", "not valid JSON"),
    ("model/model.json", lambda m: [1, 2], "not a JSON object"),
    ("model/export.json", lambda m: "{not json", "not valid JSON"),
    ("model/export.json", lambda m: ["onnx"], "not a JSON object"),
    ("metrics.json", lambda m: "{not json", "not valid JSON"),
], ids=["precision", "backbone", "no-classes", "model-json", "model-list", "export-json", "export-list",
        "metrics-json"])
def test_tampered_run_files_fail_create_app_in_one_line(run_dir, tmp_path, name, edit, reason):
    meta = json.loads((run_dir / "model" / "model.json").read_text())
    edited = edit(meta)
    run = _tamper(run_dir, tmp_path, name, edited if isinstance(edited, str) else json.dumps(edited))
    with pytest.raises(TransferlabError, match=reason) as caught:
        create_app(run)
    assert "\n" not in str(caught.value) and name.split("/")[-1] in str(caught.value)


def test_odd_values_in_metrics_and_export_records_are_dropped_not_served(run_dir, tmp_path):
    metrics = {"val": {"accuracy": math.nan, "macro_f1": "0.9"}, "test": {"accuracy": 0.5, "macro_f1": True}}
    run = _tamper(run_dir, tmp_path, "metrics.json", json.dumps(metrics))
    from transferlab.inference.export import model_fingerprint

    fingerprint = model_fingerprint(run)
    (run / "model" / "export.json").write_text(json.dumps({
        "onnx": {"source_model": fingerprint, "max_abs_diff": "1e-9"}, "torchscript": "nonsense",
        "other": {"source_model": fingerprint, "max_abs_diff": -1}}))
    with TestClient(create_app(run)) as odd:
        response = odd.get("/model")
        assert response.status_code == 200, response.text
        info = response.json()
    assert info["metrics"] == {"val": {"accuracy": None, "macro_f1": None},
                               "test": {"accuracy": 0.5, "macro_f1": None}}
    assert info["engine_max_abs_diff"] == {}


def test_each_app_states_and_enforces_its_own_bounds(run_dir, images, tmp_path):
    """The routes are shared by every app: each app's schema and checks follow its own run and limits."""
    from tests.conftest import CLASS_STYLES, make_image_folder
    from transferlab.pipelines.probe import ProbeConfig, run_probe

    two = {name: CLASS_STYLES[name] for name in ("circle", "square")}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFERLAB_OFFLINE", "1")
        data = make_image_folder(tmp_path / "data", per_class=4, classes=two)
        run_probe(ProbeConfig(data=str(data), out=str(tmp_path / "run"), backbone="test_resnet", resolution=64,
                              workers=0, progress=False, precision="fp32", cache_dir="", error_grid=0))
    three, binary = create_app(run_dir, max_batch_files=5), create_app(tmp_path / "run", max_batch_files=2, top_k=1)
    # Both schemas made before either is checked: one app's bounds must not leak into the other's.
    for schema, n_classes, max_files in [(three.openapi(), 3, 5), (binary.openapi(), 2, 2)]:
        paths = schema["paths"]
        body = paths["/predict/batch"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert body["properties"]["files"]["maxItems"] == max_files
        for path in ("/predict", "/predict/batch"):
            (top_k,) = paths[path]["post"]["parameters"]
            assert {"type": "integer", "minimum": 1, "maximum": n_classes} in top_k["schema"]["anyOf"]
    square = [("files", ("a.png", images["square"].read_bytes()))]
    with TestClient(binary) as client:
        assert len(post_file(client, images["square"]).json()["top"]) == 1  # this app's default top_k
        assert len(post_file(client, images["square"], params={"top_k": 2}).json()["top"]) == 2
        for path in ("/predict", "/predict/batch"):
            refused = client.post(path, params={"top_k": 3}, files=square if "batch" in path else
                                  {"file": ("a.png", images["square"].read_bytes())})
            assert refused.status_code == 422
            assert refused.json() == {"error": "invalid request: query.top_k: Input should be less than or equal to 2"}
        assert "at most 2" in client.post("/predict/batch", files=square * 3).json()["error"]
    with TestClient(three) as client:
        assert len(post_file(client, images["square"], params={"top_k": 3}).json()["top"]) == 3
        assert client.post("/predict/batch", files=square * 5).status_code == 200


def test_without_its_lifespan_the_app_answers_503(run_dir, images):
    unstarted = TestClient(create_app(run_dir))  # no `with`: the model is never loaded
    for response in (unstarted.get("/health"), unstarted.get("/model"), post_file(unstarted, images["square"])):
        assert response.status_code == 503 and "not loaded" in response.json()["error"]
