"""The HTTP service on a tiny probe run: every endpoint, every kind of bad upload, the batcher."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import logging
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import bomb_png, make_image_folder
from transferlab.errors import TransferlabError
from transferlab.inference.probe_predictor import ProbePredictor
from transferlab.pipelines.probe import ProbeConfig, run_probe
from transferlab.serve import create_app, serve
from transferlab.serve.batching import MicroBatcher
from transferlab.serve.engines import load_engine

CLASSES = {"circle", "square", "dome(inner)"}


def make_probe_run(root: Path, classifier: str = "logreg") -> Path:
    """A complete probe run on generated images; offline, no feature cache, no CAM grid."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFERLAB_OFFLINE", "1")
        data = make_image_folder(root / "data")
        run_probe(ProbeConfig(data=str(data), out=str(root / "run"), backbone="test_resnet", resolution=64,
                              workers=0, progress=False, precision="fp32", classifier=classifier,
                              cache_dir="", error_grid=0))
    return root / "run"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread while these tests run: on a shared 2-core machine, two threads
    spin-waiting for a busy core make the tiny test model 20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_probe_run(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def client(run_dir):
    with TestClient(create_app(run_dir)) as test_client:  # `with`: runs the lifespan (model load)
        yield test_client


def sample_images(run_dir: Path) -> dict[str, Path]:
    """One training image per class of a `make_probe_run` run."""
    data = run_dir.parent / "data"
    return {"square": next((data / "square").glob("*.png")), "circle": next((data / "circle").glob("*.jpg")),
            "dome": next((data / "dome(inner)").glob("*.png"))}


@pytest.fixture(scope="module")
def images(run_dir) -> dict[str, Path]:
    return sample_images(run_dir)


def post_file(client, path: Path | None = None, data: bytes | None = None, name: str = "x.png", **kw):
    body = path.read_bytes() if path is not None else data
    return client.post("/predict", files={"file": (name, body, "application/octet-stream")}, **kw)


def assert_still_serving(client, image: Path) -> None:
    response = post_file(client, image)
    assert response.status_code == 200, response.text


def test_the_server_keeps_its_start_up_objects_out_of_the_collector(run_dir):
    """A full collection over torch and the model stopped every thread for ~250 ms under load:
    the app freezes what start-up left alive, and hands it back to the collector when it stops."""
    gc.unfreeze()
    with TestClient(create_app(run_dir)):
        assert gc.get_freeze_count() > 10_000  # torch alone is hundreds of thousands of objects
    assert gc.get_freeze_count() == 0


def test_health_and_model(client, run_dir):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["engine"] == "torch"
    assert health["model"].startswith("run-")
    info = client.get("/model").json()
    assert set(info["classes"]) == CLASSES
    assert info["backbone"] == "test_resnet"
    assert info["input_size"] == [3, 64, 64]
    assert info["model"] == health["model"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert info["metrics"]["val"] == {"accuracy": metrics["val"]["accuracy"], "macro_f1": metrics["val"]["macro_f1"]}
    assert "test" not in info["metrics"]  # this run had no test folder


def test_predict_matches_the_cli_predictor(client, run_dir, images):
    response = post_file(client, images["square"], name="square.png")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["filename"] == "square.png" and body["model"] == client.get("/health").json()["model"]
    assert len(body["top"]) == 3
    assert abs(sum(item["p"] for item in body["top"]) - 1) < 1e-4
    assert [item["p"] for item in body["top"]] == sorted((item["p"] for item in body["top"]), reverse=True)
    expected = ProbePredictor(run_dir).predict_paths([images["square"]], top_k=3)[0].top
    assert [item["class"] for item in body["top"]] == [name for name, _ in expected]
    assert body["top"][0]["p"] == pytest.approx(expected[0][1], abs=1e-5)
    assert len(post_file(client, images["square"], params={"top_k": 1}).json()["top"]) == 1


def test_batch_predicts_each_file_and_reports_bad_ones(client, images):
    files = [("files", (f"{name}.img", path.read_bytes())) for name, path in images.items()]
    files.insert(1, ("files", ("notes.txt", b"not an image at all")))
    response = client.post("/predict/batch", files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["filename"] for r in results] == ["square.img", "notes.txt", "circle.img", "dome.img"]
    assert results[1]["status"] == 415 and "not an image" in results[1]["error"] and "top" not in results[1]
    single = post_file(client, images["circle"]).json()["top"]
    assert [t["class"] for t in results[2]["top"]] == [t["class"] for t in single]
    assert results[2]["top"][0]["p"] == pytest.approx(single[0]["p"], abs=1e-5)
    # The three good images were decoded concurrently and shared forward passes.
    assert client.get("/health").json()["batching"]["largest"] >= 2


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(
    "make_body, status, reason",
    [
        (lambda good: b"%PDF-1.4 definitely not an image", 415, "not an image"),
        (lambda good: b"", 400, "empty file"),
        (lambda good: good[: len(good) // 2], 422, "cannot decode"),
        (lambda good: bomb_png(30000, 30000), 413, "decompression bomb"),
        # Between PIL's warning and error thresholds: refused all the same.
        (lambda good: bomb_png(10000, 10000), 413, "decompression bomb"),
    ],
    ids=["not-an-image", "empty", "truncated", "bomb-30000px", "bomb-10000px"],
)
def test_bad_uploads_get_a_4xx_json_error_and_serving_goes_on(client, images, make_body, status, reason):
    response = post_file(client, data=make_body(images["square"].read_bytes()))
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert reason in response.json()["error"]
    assert_still_serving(client, images["circle"])


@pytest.mark.parametrize(
    "kwargs, status, reason",
    [
        ({"content": b"\x89PNG...", "headers": {"content-type": "image/png"}}, 415, "multipart/form-data"),
        ({"json": {"path": "/etc/passwd"}}, 415, "multipart/form-data"),
        ({"data": {"note": "no file here"}, "files": {"other": ("a.png", b"abc")}}, 422, "unexpected form field"),
        # A file over 16 KB under the wrong name: the documented 422, not "too large".
        ({"files": {"image": ("a.png", b"\x89PNG" + b"\0" * 40_000)}}, 422, "unexpected form field 'image'"),
        ({"content": b'--B\r\nContent-Disposition: form-data; name="file"\r\n\r\na text value\r\n--B--\r\n',
          "headers": {"content-type": "multipart/form-data; boundary=B"}}, 422, "is not a file"),
        ({"files": {"file": ("a.png", b"GIF89a")}, "data": {"note": "extra"}}, 422, "unexpected form field 'note'"),
        ({"content": b"--B--\r\n", "headers": {"content-type": "multipart/form-data; boundary=B"}}, 422,
         "no file in form field"),
        ({"content": b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\nabc',
          "headers": {"content-type": "multipart/form-data; boundary=xyz"}}, 400, "incomplete multipart"),
        ({"content": b"", "headers": {"content-type": "multipart/form-data"}}, 400, "boundary"),
    ],
    ids=["raw-body", "json-path", "wrong-field", "wrong-field-big-file", "text-in-file-field", "extra-field",
         "no-parts", "unterminated", "no-boundary"],
)
def test_malformed_requests(client, images, kwargs, status, reason):
    response = client.post("/predict", **kwargs)
    assert response.status_code == status, response.text
    assert reason in response.json()["error"]
    assert_still_serving(client, images["square"])


def test_upload_over_the_limit_is_413(client, images):
    response = post_file(client, data=b"\x89PNG" + b"\0" * (10 * 1024 * 1024))
    assert response.status_code == 413, response.text
    assert "larger than the limit" in response.json()["error"]
    assert_still_serving(client, images["square"])


def test_too_many_files_in_a_batch(run_dir, images):
    app = create_app(run_dir, max_upload_bytes=64 * 1024, top_k=1)
    with TestClient(app) as small:
        files = [("files", (f"{i}.png", images["square"].read_bytes())) for i in range(17)]
        response = small.post("/predict/batch", files=files)
        assert response.status_code == 422 and "at most 16" in response.json()["error"]
        assert len(post_file(small, images["square"]).json()["top"]) == 1  # top_k=1 from create_app


UPLOAD_HEAD = (b'--B\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
               b"Content-Type: image/png\r\n\r\n")


def call_asgi(app, receive) -> list[dict]:
    """POST /predict straight through ASGI (with the lifespan), pulling the body from `receive`."""
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/predict", "raw_path": b"/predict", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"multipart/form-data; boundary=B"), (b"host", b"test")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}

    async def call() -> None:
        async with app.router.lifespan_context(app):
            await app(scope, receive, send)

    asyncio.run(call())
    return sent


def test_huge_upload_is_refused_while_streaming(run_dir):
    """No Content-Length and an endless body: the server must stop reading at the limit."""
    limit = 64 * 1024
    chunk = 16 * 1024
    pulled = {"chunks": 0}

    async def receive() -> dict:
        pulled["chunks"] += 1
        if pulled["chunks"] == 1:
            return {"type": "http.request", "body": UPLOAD_HEAD, "more_body": True}
        if pulled["chunks"] > 10_000:  # 160 MB: the test has failed long before this
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": b"\0" * chunk, "more_body": True}

    sent = call_asgi(create_app(run_dir, max_upload_bytes=limit), receive)
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 413
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert "larger than the limit" in json.loads(body)["error"]
    assert pulled["chunks"] <= limit // chunk + 3  # stopped right after the limit


def test_client_disconnecting_mid_upload_logs_one_line(run_dir, caplog):
    messages = iter([{"type": "http.request", "body": UPLOAD_HEAD + b"\x89PNG", "more_body": True},
                     {"type": "http.disconnect"}])

    async def receive() -> dict:
        return next(messages)

    with caplog.at_level(logging.INFO):
        call_asgi(create_app(run_dir), receive)  # raises if the disconnect escapes as an exception
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    lines = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING and lines[0].exc_info is None
    assert "127.0.0.1" in lines[0].getMessage() and "/predict" in lines[0].getMessage()


def test_no_endpoint_takes_a_path(client):
    paths = set(client.get("/openapi.json").json()["paths"])
    assert paths == {"/health", "/model", "/predict", "/predict/batch"}
    # A file name is only echoed back, never opened.
    response = post_file(client, data=b"GIF89a", name="../../../../etc/passwd")
    assert response.status_code == 415 and "passwd" not in response.json()["error"]


def test_page_is_self_contained_and_accessible(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    html = response.text
    assert re.search(r'<label[^>]*for="file"', html) and re.search(r'<input type="file" id="file"', html)
    assert 'aria-live="polite"' in html and ":focus-visible" in html
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', html), "the page must load nothing from elsewhere"
    assert "<link" not in html
    assert client.get("/docs").status_code == 200


def test_unusable_runs_fail_at_create_app(run_dir, tmp_path):
    with pytest.raises(TransferlabError, match="not a transferlab run folder"):
        create_app(tmp_path)
    with pytest.raises(TransferlabError, match=r"transferlab export .* --format onnx` first"):
        create_app(run_dir, engine="onnx")  # this module's run was never exported
    with pytest.raises(TransferlabError, match="unknown engine"):
        create_app(run_dir, engine="tensorrt")
    with pytest.raises(TransferlabError, match="max_upload_bytes"):
        create_app(run_dir, max_upload_bytes=0)


def test_model_loads_without_pickle(run_dir, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while loading a served model")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    predictor = load_engine(run_dir, "torch")
    assert predictor.predict_uint8(np.zeros((1, 3, 64, 64), np.uint8)).shape == (1, 3)


def test_serve_binds_localhost_by_default(run_dir, monkeypatch):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append(kwargs))
    serve(run_dir)
    assert calls[0]["host"] == "127.0.0.1" and calls[0]["port"] == 8000
    # Several workers get their settings through the environment, the new limits included.
    monkeypatch.setenv("TRANSFERLAB_SERVE_SETTINGS", "{}")  # so the test puts the environment back
    serve(run_dir, workers=2, allowed_hosts=["classify.example.org"], max_concurrent_batches=3)
    settings = json.loads(os.environ["TRANSFERLAB_SERVE_SETTINGS"])
    assert settings["allowed_hosts"] == ["classify.example.org"] and settings["max_concurrent_batches"] == 3
    assert calls[1]["workers"] == 2


def test_micro_batcher_groups_concurrent_requests_and_survives_failures():
    seen: list[int] = []

    def predict(batch: np.ndarray) -> np.ndarray:
        seen.append(len(batch))
        if (batch == 255).any():
            raise RuntimeError("model failed")
        return batch.reshape(len(batch), -1)[:, :2].astype(np.float32)

    async def scenario():
        batcher = MicroBatcher(predict, max_batch=4, max_wait_s=0.01)
        await batcher.start()
        try:
            images = [np.full((3, 2, 2), i, np.uint8) for i in range(10)]
            rows = await asyncio.gather(*(batcher.predict(image) for image in images))
            assert [int(row[0]) for row in rows] == list(range(10))  # each caller gets its own row
            assert max(seen) == 4 and len(seen) == 3  # 10 images in batches of at most 4
            with pytest.raises(RuntimeError, match="model failed"):
                await batcher.predict(np.full((3, 2, 2), 255, np.uint8))
            assert (await batcher.predict(np.ones((3, 2, 2), np.uint8)))[0] == 1  # still serving
            assert batcher.stats.images == 11
        finally:
            await batcher.stop()

    asyncio.run(scenario())


def test_page_image_decodes_like_predict(client, images):
    """A PNG made in memory (as the browser test sends) gets the same answer as the file."""
    buffer = io.BytesIO()
    Image.open(images["dome"]).save(buffer, format="PNG")
    from_memory = post_file(client, data=buffer.getvalue()).json()["top"][0]
    from_file = post_file(client, images["dome"]).json()["top"][0]
    assert from_memory["class"] == from_file["class"]


def test_model_shows_kind_precision_and_engine_differences(run_dir, tmp_path):
    from transferlab.inference.export import export_run

    run = Path(shutil.copytree(run_dir, tmp_path / "exported"))
    export_run(run, "onnx")
    record = json.loads((run / "model" / "export.json").read_text())
    record["torchscript"] = {**record["onnx"], "source_model": "an-older-model", "max_abs_diff": 0.5}
    (run / "model" / "export.json").write_text(json.dumps(record))
    for engine in ("torch", "onnx"):
        with TestClient(create_app(run, engine=engine)) as exported:
            info = exported.get("/model").json()
            assert info["kind"] == "probe" and info["inference_precision"] == "fp32" and info["engine"] == engine
            # Only the export of this very model counts; the stale torchscript entry does not.
            assert info["engine_max_abs_diff"] == {"onnx": record["onnx"]["max_abs_diff"]}
            assert 0 <= info["engine_max_abs_diff"]["onnx"] <= 1e-4
    meta = json.loads((run / "model" / "model.json").read_text())
    meta.pop("inference_precision", None)  # runs made before the field existed
    (run / "model" / "model.json").write_text(json.dumps(meta))
    assert create_app(run).description.startswith("Image classification with the probe run")


def test_a_fine_tuned_run_is_served_and_described_as_one(tmp_path):
    from transferlab.finetune.recipe import load_recipe
    from transferlab.pipelines.finetune import FinetuneConfig, run_finetune

    data = make_image_folder(tmp_path / "data", per_class=4, size=32)
    recipe = load_recipe(None, {"backbone": "test_efficientnet", "resolution": 32, "precision": "fp32",
                                "batch_size": 8, "stages": "head-only"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFERLAB_OFFLINE", "1")
        run_finetune(FinetuneConfig(data=str(data), out=str(tmp_path / "ft"), recipe=recipe, workers=0,
                                    progress=False))
    app = create_app(tmp_path / "ft")
    assert "fine-tuned run" in app.description and "probe" not in app.description
    with TestClient(app) as fine_tuned:
        info = fine_tuned.get("/model").json()
        assert info["kind"] == "finetune" and info["inference_precision"] == "fp32" and info["layers"] is None
        assert post_file(fine_tuned, data=bomb_png(40, 40)).status_code == 200
