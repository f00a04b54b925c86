"""The HTTP service: `create_app(run_dir)` builds a FastAPI app around one finished run.

The run folder is fixed when the app is made and the model is loaded once, in the
lifespan. Uploads are read with limits enforced while streaming, decoded in a thread pool
(not on the event loop) and predicted through the micro-batcher. Every refusal is a 4xx
with `{"error": "..."}`; nothing a client sends is ever used as a path.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from transferlab import __version__
from transferlab.errors import TransferlabError
from transferlab.serve.batching import MicroBatcher, Overloaded
from transferlab.serve.engines import Predictor, check_engine, load_engine
from transferlab.serve.uploads import UploadError, decode_image, read_uploads

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# The page loads nothing from elsewhere: everything is inline, and the browser is told so.
PAGE_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' blob:; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class Ranked(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    label: str = Field(alias="class")
    p: float


class PredictResponse(BaseModel):
    model: str
    engine: str
    filename: str
    top: list[Ranked]


class BatchItem(BaseModel):
    filename: str
    top: list[Ranked] | None = None
    error: str | None = None
    status: int | None = None


class BatchResponse(BaseModel):
    model: str
    engine: str
    results: list[BatchItem]


class ErrorBody(BaseModel):
    error: str


_ERRORS = {code: {"model": ErrorBody} for code in (400, 413, 415, 422, 503)}


def _file_body(field: str, many: bool) -> dict:
    """OpenAPI for a multipart body the handler reads itself (so /docs shows a file picker)."""
    binary = {"type": "string", "format": "binary"}
    schema = {"type": "array", "items": binary} if many else binary
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": [field], "properties": {field: schema}}}}}}


@dataclass
class _Service:
    predictor: Predictor
    batcher: MicroBatcher
    decode_pool: ThreadPoolExecutor


def _headline_metrics(run_path: Path) -> dict:
    path = run_path / "metrics.json"
    metrics = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return {split: {k: metrics[split].get(k) for k in ("accuracy", "macro_f1")}
            for split in ("val", "test") if isinstance(metrics.get(split), dict)}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(run_dir: str | Path, engine: str = "torch", max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               top_k: int = 3, *, max_batch_files: int = 16, max_batch: int = 32, max_wait_ms: float = 2.0,
               decode_threads: int | None = None) -> FastAPI:
    """A FastAPI app serving the probe in `run_dir` with `engine` ("torch" or "onnx").

    Raises TransferlabError at once for an unusable run (incomplete, not a probe, no ONNX
    export for engine="onnx"); the model itself is loaded when the app starts.
    """
    run_path = Path(run_dir)
    check_engine(run_path, engine)
    for name, value in (("max_upload_bytes", max_upload_bytes), ("top_k", top_k),
                        ("max_batch_files", max_batch_files), ("max_batch", max_batch)):
        if value < 1:
            raise TransferlabError(f"{name} must be at least 1, got {value}")
    meta = json.loads((run_path / "model" / "model.json").read_text(encoding="utf-8"))
    headline = _headline_metrics(run_path)
    page = resources.files("transferlab.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        predictor = load_engine(run_path, engine)
        batcher = MicroBatcher(predictor.predict_uint8, max_batch=max_batch, max_wait_s=max_wait_ms / 1000)
        decode_pool = ThreadPoolExecutor(max_workers=decode_threads or min(4, os.cpu_count() or 1),
                                         thread_name_prefix="transferlab-decode")
        await batcher.start()
        app.state.service = _Service(predictor, batcher, decode_pool)
        try:
            yield
        finally:
            app.state.service = None
            await batcher.stop()
            decode_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="transferlab", version=__version__, lifespan=lifespan,
                  description=f"Image classification with the probe run `{run_path.name}` ({meta['backbone']}).")

    def service(request: Request) -> _Service:
        found = getattr(request.app.state, "service", None)
        if found is None:
            raise UploadError(503, "the model is not loaded (start the app with its lifespan)")
        return found

    def ranked(row: np.ndarray, k: int, classes: list[str]) -> list[dict]:
        best = np.argsort(-row, kind="stable")[:k]
        return [{"class": classes[i], "p": round(float(row[i]), 6)} for i in best]

    async def decode(svc: _Service, data: bytes) -> np.ndarray:
        loop = asyncio.get_running_loop()
        p = svc.predictor
        return await loop.run_in_executor(svc.decode_pool, decode_image, data, p.resolution, p.interpolation)

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, exc: UploadError) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        return JSONResponse({"error": f"server busy: {exc}; retry shortly"}, status_code=503,
                            headers={"Retry-After": "1"})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        # Still logged with its traceback by the server; the client gets JSON like every other error.
        return _error(500, f"internal error: {type(exc).__name__}")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return _error(422, f"invalid request: {reasons}")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff"})

    @app.get("/health")
    async def health(request: Request) -> dict:
        svc = service(request)
        return {"status": "ok", "model": svc.predictor.model_id, "engine": svc.predictor.engine,
                "batching": svc.batcher.stats.as_dict()}

    @app.get("/model")
    async def model(request: Request) -> dict:
        p = service(request).predictor
        return {"model": p.model_id, "engine": p.engine, "run": run_path.resolve().name, "classes": p.classes,
                "backbone": meta["backbone"], "weights_source": meta.get("weights_source"),
                "input_size": [3, p.resolution, p.resolution], "interpolation": p.interpolation,
                "layers": meta.get("layers"), "pool": meta.get("pool"), "precision": meta.get("precision"),
                "metrics": headline, "top_k": top_k, "max_upload_bytes": max_upload_bytes,
                "max_batch_files": max_batch_files}

    @app.post("/predict", response_model=PredictResponse, responses=_ERRORS,
              openapi_extra=_file_body("file", many=False))
    async def predict(request: Request, top_k_: int | None = Query(None, alias="top_k", ge=1)) -> dict:
        """Classify one image (multipart field `file`): the top-k classes with probabilities."""
        svc = service(request)
        upload = (await read_uploads(request, "file", max_upload_bytes, max_files=1))[0]
        row = await svc.batcher.predict(await decode(svc, upload.data))
        p = svc.predictor
        return {"model": p.model_id, "engine": p.engine, "filename": upload.filename,
                "top": ranked(row, top_k_ or top_k, p.classes)}

    @app.post("/predict/batch", response_model=BatchResponse, response_model_exclude_none=True, responses=_ERRORS,
              openapi_extra=_file_body("files", many=True))
    async def predict_batch(request: Request, top_k_: int | None = Query(None, alias="top_k", ge=1)) -> dict:
        """Classify several images (repeated multipart field `files`); a bad file gets its own error entry."""
        svc = service(request)
        uploads = await read_uploads(request, "files", max_upload_bytes, max_files=max_batch_files)
        decoded = await asyncio.gather(*(decode(svc, u.data) for u in uploads), return_exceptions=True)
        for outcome in decoded:
            if isinstance(outcome, BaseException) and not isinstance(outcome, UploadError):
                raise outcome
        good = [image for image in decoded if isinstance(image, np.ndarray)]
        rows = iter(await asyncio.gather(*(svc.batcher.predict(image) for image in good)))
        p = svc.predictor
        results = []
        for upload, outcome in zip(uploads, decoded):
            if isinstance(outcome, UploadError):
                results.append({"filename": upload.filename, "error": outcome.message, "status": outcome.status})
            else:
                results.append({"filename": upload.filename, "top": ranked(next(rows), top_k_ or top_k, p.classes)})
        return {"model": p.model_id, "engine": p.engine, "results": results}

    return app


# `serve(workers>1)` hands uvicorn an import string; the settings travel in the environment.
_ENV_SETTINGS = "TRANSFERLAB_SERVE_SETTINGS"


def app_from_environment() -> FastAPI:
    return create_app(**json.loads(os.environ[_ENV_SETTINGS]))


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, engine: str = "torch",
          max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, top_k: int = 3, log_level: str = "info") -> None:
    """Run the app with uvicorn. Binds 127.0.0.1 unless told otherwise (0.0.0.0 in a container)."""
    import uvicorn  # local: creating an app in tests needs no server

    if workers < 1:
        raise TransferlabError(f"workers must be at least 1, got {workers}")
    settings = {"run_dir": str(Path(run_dir).resolve()), "engine": engine, "max_upload_bytes": max_upload_bytes,
                "top_k": top_k}
    app = create_app(**settings)  # fails here, with one line, for an unusable run
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False)
        return
    # Each worker process loads its own copy of the model.
    os.environ[_ENV_SETTINGS] = json.dumps(settings)
    uvicorn.run("transferlab.serve.app:app_from_environment", factory=True, host=host, port=port,
                workers=workers, log_level=log_level, server_header=False)
