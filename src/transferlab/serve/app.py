"""The HTTP service: `create_app(run_dir)` builds a FastAPI app around one finished run.

The run folder is fixed when the app is made and the model is loaded once, in the
lifespan. Uploads are read with limits enforced while streaming, decoded in a thread pool
(not on the event loop) within a memory budget, and predicted through the micro-batcher.
Every refusal is a 4xx (or a 503 to retry) with `{"error": "..."}`; nothing a client
sends is ever used as a path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from transferlab import __version__
from transferlab.errors import TransferlabError
from transferlab.runs import read_json_object
from transferlab.serve.batching import MicroBatcher, Overloaded
from transferlab.serve.engines import (
    Predictor,
    check_engine,
    engine_differences,
    load_engine,
    model_meta,
    read_export_record,
)
from transferlab.serve.limits import (
    DEFAULT_DECODE_MEMORY_BYTES,
    DEFAULT_DECODE_WAIT_S,
    DEFAULT_MAX_CONCURRENT_BATCHES,
    BatchGate,
    DecodeBudget,
)
from transferlab.serve.schemas import (
    BatchResponse,
    HealthResponse,
    ModelInfo,
    PredictResponse,
    RunDescription,
    SplitMetrics,
    error_responses,
    file_body,
)
from transferlab.serve.uploads import Upload, UploadError, decode_cost, decode_image, read_uploads

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# The page loads nothing from elsewhere: everything is inline, and the browser is told so.
PAGE_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' blob:; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
KIND_WORDS = {"probe": "probe", "finetune": "fine-tuned"}

log = logging.getLogger("transferlab.serve")


@dataclass
class _Settings:
    """Everything fixed when the app is made: the run, its checked description, the limits."""

    run_path: Path
    engine: str
    describe: RunDescription
    metrics: dict[str, SplitMetrics]
    top_k: int
    max_upload_bytes: int
    max_batch_files: int
    max_batch: int
    max_wait_ms: float
    decode_threads: int | None
    decode_memory_bytes: int
    decode_wait_s: float
    max_concurrent_batches: int


@dataclass
class _Service:
    """What the lifespan loads and starts; handlers find it on `app.state.service`."""

    predictor: Predictor
    batcher: MicroBatcher
    decode_pool: ThreadPoolExecutor
    budget: DecodeBudget
    batches: BatchGate
    differences: dict[str, float] = field(default_factory=dict)


def _headline_metrics(run_path: Path) -> dict[str, SplitMetrics]:
    """Val/test accuracy and macro F1 from metrics.json; anything but a finite number is dropped."""
    path = run_path / "metrics.json"
    if not path.is_file():
        return {}
    metrics = read_json_object(path, "metrics")

    def number(value: object) -> float | None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return float(value) if ok else None  # type: ignore[arg-type]

    return {split: SplitMetrics(**{k: number(metrics[split].get(k)) for k in ("accuracy", "macro_f1")})
            for split in ("val", "test") if isinstance(metrics.get(split), dict)}


def _describe_run(run_path: Path) -> RunDescription:
    meta = model_meta(run_path)
    try:
        return RunDescription.model_validate({k: meta.get(k) for k in RunDescription.model_fields if k in meta})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise TransferlabError(f"{run_path / 'model' / 'model.json'}: bad '{where}': {first['msg']}") from None


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _busy(exc: Overloaded) -> JSONResponse:
    return _error(503, f"server busy: {exc}; retry shortly", {"Retry-After": "1"})


def _install_error_handlers(app: FastAPI) -> None:
    async def upload_error(request: Request, exc: UploadError) -> JSONResponse:
        return _error(exc.status, exc.message)

    async def overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        return _busy(exc)

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), exc.headers)

    async def internal(request: Request, exc: Exception) -> JSONResponse:
        # Still logged with its traceback by the server; the client gets JSON like every other error.
        return _error(500, f"internal error: {type(exc).__name__}")

    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return _error(422, f"invalid request: {reasons}")

    for kind, handler in ((UploadError, upload_error), (Overloaded, overloaded),
                          (StarletteHTTPException, http_error), (Exception, internal),
                          (RequestValidationError, invalid)):
        app.add_exception_handler(kind, handler)  # type: ignore[arg-type]


def _service(request: Request) -> _Service:
    found = getattr(request.app.state, "service", None)
    if found is None:
        raise UploadError(503, "the model is not loaded (start the app with its lifespan)")
    return found


def _ranked(row: np.ndarray, k: int, classes: list[str]) -> list[dict]:
    best = np.argsort(-row, kind="stable")[:k]
    return [{"class": classes[i], "p": min(1.0, max(0.0, round(float(row[i]), 6)))} for i in best]


async def _decode(svc: _Service, upload: Upload) -> np.ndarray:
    """One upload -> the model's uint8 input, within the decode memory budget."""
    loop = asyncio.get_running_loop()
    p = svc.predictor
    cost = await loop.run_in_executor(svc.decode_pool, decode_cost, upload.data, p.resolution)
    await svc.budget.reserve(cost, f"image '{upload.filename}'")
    try:
        work = svc.decode_pool.submit(decode_image, upload.data, p.resolution, p.interpolation)
    except RuntimeError:  # the pool has shut down: the app is stopping
        svc.budget.release(cost)
        raise

    def give_back(_) -> None:
        # On the worker's own future, not the awaiting task's: if the client goes away the
        # memory stays reserved until the thread has really finished with it.
        try:
            loop.call_soon_threadsafe(svc.budget.release, cost)
        except RuntimeError:
            pass  # the loop has closed: the server is gone, and its budget with it

    work.add_done_callback(give_back)
    return await asyncio.wrap_future(work)


def _item_error(filename: str, exc: BaseException) -> dict:
    """A failed file of a batch, as its own entry: the batch itself still answers 200."""
    if isinstance(exc, UploadError):
        return {"filename": filename, "error": exc.message, "status": exc.status}
    if isinstance(exc, Overloaded):
        return {"filename": filename, "error": f"server busy: {exc}; retry shortly", "status": 503}
    log.error("batch item %r failed", filename, exc_info=exc)
    return {"filename": filename, "error": f"internal error: {type(exc).__name__}", "status": 500}


async def _classify_all(svc: _Service, uploads: list[Upload], k: int) -> list[dict]:
    decoded = await asyncio.gather(*(_decode(svc, u) for u in uploads), return_exceptions=True)
    good = [image for image in decoded if isinstance(image, np.ndarray)]
    rows = iter(await asyncio.gather(*(svc.batcher.predict(image) for image in good), return_exceptions=True))
    results = []
    for upload, outcome in zip(uploads, decoded):
        if isinstance(outcome, np.ndarray):
            outcome = next(rows)
        if isinstance(outcome, BaseException):
            results.append(_item_error(upload.filename, outcome))
        else:
            results.append({"filename": upload.filename, "top": _ranked(outcome, k, svc.predictor.classes)})
    return results


def _info_routes(s: _Settings, router: APIRouter) -> None:
    @router.get("/health", response_model=HealthResponse, responses=error_responses(503))
    async def health(request: Request) -> dict:
        svc = _service(request)
        return {"status": "ok", "model": svc.predictor.model_id, "engine": svc.predictor.engine,
                "batching": svc.batcher.stats.as_dict(), "decode_memory": svc.budget.as_dict(),
                "batch_requests": {"active": svc.batches.active, "limit": svc.batches.limit}}

    @router.get("/model", response_model=ModelInfo, responses=error_responses(503))
    async def model(request: Request) -> dict:
        svc = _service(request)
        p = svc.predictor
        return {**s.describe.model_dump(), "model": p.model_id, "engine": p.engine, "run": s.run_path.resolve().name,
                "classes": p.classes, "input_size": [3, p.resolution, p.resolution],
                "interpolation": p.interpolation, "engine_max_abs_diff": svc.differences,
                "metrics": {k: v.model_dump() for k, v in s.metrics.items()}, "top_k": s.top_k,
                "max_upload_bytes": s.max_upload_bytes, "max_batch_files": s.max_batch_files}


def _predict_routes(s: _Settings, router: APIRouter, n_classes: int) -> None:
    # Bounded by the run's class count, so the schema says what the server accepts.
    top_k_query = Query(None, alias="top_k", ge=1, le=n_classes, description="how many classes to return")

    @router.post("/predict", response_model=PredictResponse, responses=error_responses(400, 413, 415, 422, 503),
                 openapi_extra=file_body("file"))
    async def predict(request: Request, top_k_: int | None = top_k_query) -> dict:
        """Classify one image (multipart field `file`): the top-k classes with probabilities."""
        svc = _service(request)
        upload = (await read_uploads(request, "file", s.max_upload_bytes, max_files=1))[0]
        row = await svc.batcher.predict(await _decode(svc, upload))
        p = svc.predictor
        return {"model": p.model_id, "engine": p.engine, "filename": upload.filename,
                "top": _ranked(row, top_k_ or s.top_k, p.classes)}

    @router.post("/predict/batch", response_model=BatchResponse, response_model_exclude_none=True,
                 responses=error_responses(400, 413, 415, 422, 503),
                 openapi_extra=file_body("files", s.max_batch_files))
    async def predict_batch(request: Request, top_k_: int | None = top_k_query) -> dict:
        """Classify several images (repeated multipart field `files`); a bad file gets its own error entry."""
        svc = _service(request)
        # The slot is taken before reading: it also bounds the memory of batch bodies being buffered.
        async with svc.batches.slot():
            uploads = await read_uploads(request, "files", s.max_upload_bytes, max_files=s.max_batch_files)
            results = await _classify_all(svc, uploads, top_k_ or s.top_k)
        return {"model": svc.predictor.model_id, "engine": svc.predictor.engine, "results": results}


def _lifespan(s: _Settings):
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        predictor = load_engine(s.run_path, s.engine)
        batcher = MicroBatcher(predictor.predict_uint8, max_batch=s.max_batch, max_wait_s=s.max_wait_ms / 1000)
        decode_pool = ThreadPoolExecutor(max_workers=s.decode_threads or min(4, os.cpu_count() or 1),
                                         thread_name_prefix="transferlab-decode")
        differences = engine_differences(s.run_path / "model", predictor.fingerprint)
        await batcher.start()
        budget = DecodeBudget(s.decode_memory_bytes, s.decode_wait_s)
        app.state.service = _Service(predictor, batcher, decode_pool, budget, BatchGate(s.max_concurrent_batches),
                                     differences)
        try:
            yield
        finally:
            app.state.service = None
            await batcher.stop()
            decode_pool.shutdown(wait=False, cancel_futures=True)

    return lifespan


def create_app(run_dir: str | Path, engine: str = "torch", max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               top_k: int = 3, *, max_batch_files: int = 16, max_batch: int = 32, max_wait_ms: float = 2.0,
               decode_threads: int | None = None, decode_memory_bytes: int = DEFAULT_DECODE_MEMORY_BYTES,
               decode_wait_s: float = DEFAULT_DECODE_WAIT_S,
               max_concurrent_batches: int = DEFAULT_MAX_CONCURRENT_BATCHES,
               allowed_hosts: list[str] | None = None) -> FastAPI:
    """A FastAPI app serving the run (probe or fine-tuned) in `run_dir` with `engine` ("torch" or "onnx").

    Raises TransferlabError at once for an unusable run (incomplete, a kind that cannot be
    served, an unreadable model/model.json, no current ONNX export for engine="onnx") or a
    bad setting; the model itself is loaded when the app starts. `allowed_hosts` (e.g.
    ["example.org", "*.example.org"]) answers 400 to any other Host header; None accepts all.
    """
    run_path = Path(run_dir)
    check_engine(run_path, engine)
    for name, value in (("max_upload_bytes", max_upload_bytes), ("top_k", top_k),
                        ("max_batch_files", max_batch_files), ("max_batch", max_batch),
                        ("decode_memory_bytes", decode_memory_bytes),
                        ("max_concurrent_batches", max_concurrent_batches)):
        if value < 1:
            raise TransferlabError(f"{name} must be at least 1, got {value}")
    if allowed_hosts is not None and not all(isinstance(h, str) and h for h in allowed_hosts):
        raise TransferlabError(f"allowed_hosts must be non-empty host names, got {allowed_hosts!r}")
    describe = _describe_run(run_path)
    read_export_record(run_path / "model")  # a tampered export.json fails here, in one line, not at start-up
    s = _Settings(run_path, engine, describe, _headline_metrics(run_path), top_k, max_upload_bytes, max_batch_files,
                  max_batch, max_wait_ms, decode_threads, decode_memory_bytes, decode_wait_s, max_concurrent_batches)
    page = resources.files("transferlab.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    app = FastAPI(title="transferlab", version=__version__, lifespan=_lifespan(s),
                  description=f"Image classification with the {KIND_WORDS[describe.kind]} run "
                              f"`{run_path.resolve().name}` ({describe.backbone}).")
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    _install_error_handlers(app)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff"})

    router = APIRouter()
    _info_routes(s, router)
    _predict_routes(s, router, len(describe.classes))
    app.include_router(router)
    return app


# `serve(workers>1)` hands uvicorn an import string; the settings travel in the environment.
_ENV_SETTINGS = "TRANSFERLAB_SERVE_SETTINGS"


def app_from_environment() -> FastAPI:
    return create_app(**json.loads(os.environ[_ENV_SETTINGS]))


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, engine: str = "torch",
          max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, top_k: int = 3, log_level: str = "info",
          allowed_hosts: list[str] | None = None, max_concurrent_batches: int = DEFAULT_MAX_CONCURRENT_BATCHES,
          decode_memory_bytes: int = DEFAULT_DECODE_MEMORY_BYTES) -> None:
    """Run the app with uvicorn. Binds 127.0.0.1 unless told otherwise (0.0.0.0 in a container)."""
    import uvicorn  # local: creating an app in tests needs no server

    if workers < 1:
        raise TransferlabError(f"workers must be at least 1, got {workers}")
    settings = {"run_dir": str(Path(run_dir).resolve()), "engine": engine, "max_upload_bytes": max_upload_bytes,
                "top_k": top_k, "allowed_hosts": allowed_hosts, "max_concurrent_batches": max_concurrent_batches,
                "decode_memory_bytes": decode_memory_bytes}
    app = create_app(**settings)  # fails here, with one line, for an unusable run
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False)
        return
    # Each worker process loads its own copy of the model (and has its own limits).
    os.environ[_ENV_SETTINGS] = json.dumps(settings)
    uvicorn.run("transferlab.serve.app:app_from_environment", factory=True, host=host, port=port,
                workers=workers, log_level=log_level, server_header=False)
