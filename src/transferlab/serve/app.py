"""The HTTP service: `create_app(run_dir)` builds a FastAPI app around one finished run.

The run folder is fixed when the app is made and the model is loaded once, in the
lifespan; the routes themselves (serve/routes.py) are shared and reach both through
dependencies. Uploads are read with limits enforced while streaming, decoded in a thread
pool (not on the event loop) within a memory budget, and predicted through the
micro-batcher. Every refusal is a 4xx (or a 503 to retry) with `{"error": "..."}`;
nothing a client sends is ever used as a path.
"""

from __future__ import annotations

import gc
import json
import math
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from transferlab import __version__
from transferlab.errors import TransferlabError
from transferlab.runs import read_json_object
from transferlab.serve.batching import MicroBatcher, Overloaded
from transferlab.serve.engines import check_engine, engine_differences, load_engine, model_card, read_export_record
from transferlab.serve.limits import (
    DEFAULT_DECODE_MEMORY_BYTES,
    DEFAULT_DECODE_WAIT_S,
    DEFAULT_MAX_CONCURRENT_BATCHES,
    BatchGate,
    DecodeBudget,
)
from transferlab.serve.routes import Service, Settings, bind_schema_to_run, busy_message, page_html, router
from transferlab.serve.schemas import RunDescription, SplitMetrics
from transferlab.serve.uploads import UploadError

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
KIND_WORDS = {"probe": "probe", "finetune": "fine-tuned", "ensemble": "ensemble"}


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
    meta = model_card(run_path).to_dict()
    try:
        return RunDescription.model_validate({k: meta.get(k) for k in RunDescription.model_fields if k in meta})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise TransferlabError(f"{run_path / 'model' / 'model.json'}: bad '{where}': {first['msg']}") from None


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _upload_error(request: Request, exc: UploadError) -> JSONResponse:
    return _error(exc.status, exc.message)


async def _overloaded(request: Request, exc: Overloaded) -> JSONResponse:
    return _error(503, busy_message(exc), {"Retry-After": "1"})


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error(exc.status_code, str(exc.detail), exc.headers)


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    # Still logged with its traceback by the server; the client gets JSON like every other error.
    return _error(500, f"internal error: {type(exc).__name__}")


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    reasons = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return _error(422, f"invalid request: {reasons}")


ERROR_HANDLERS = {UploadError: _upload_error, Overloaded: _overloaded, StarletteHTTPException: _http_error,
                  Exception: _internal, RequestValidationError: _invalid}


def _freeze_startup_objects() -> None:
    """Move everything alive after start-up (torch, the engine, ~500k objects) out of the garbage
    collector's reach. A full collection walks them all and stops every thread for ~250 ms; under
    16 clients two of those came in 20 s and set the p99 latency (165 against 131 ms frozen,
    benchmarks/serve_load.py). The lifespan unfreezes them when the app stops, so a process that
    starts many apps (the tests) still collects the ones it has finished with."""
    gc.collect()
    gc.freeze()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the model and start the batcher and decode pool for `app.state.settings`; stop them after."""
    s: Settings = app.state.settings
    predictor = load_engine(s.run_path, s.engine, s.tta)
    batcher = MicroBatcher(predictor.predict_uint8, max_batch=s.max_batch, max_wait_s=s.max_wait_ms / 1000)
    decode_pool = ThreadPoolExecutor(max_workers=s.decode_threads or min(4, os.cpu_count() or 1),
                                     thread_name_prefix="transferlab-decode")
    differences = engine_differences(s.run_path / "model", predictor.fingerprint)
    _freeze_startup_objects()
    await batcher.start()
    budget = DecodeBudget(s.decode_memory_bytes, s.decode_wait_s)
    app.state.service = Service(predictor, batcher, decode_pool, budget, BatchGate(s.max_concurrent_batches),
                                differences)
    try:
        yield
    finally:
        app.state.service = None
        await batcher.stop()
        decode_pool.shutdown(wait=False, cancel_futures=True)
        gc.unfreeze()


class RunApp(FastAPI):
    """A FastAPI app for one run: the shared routes, with this run's bounds in its OpenAPI schema."""

    def openapi(self) -> dict:
        return bind_schema_to_run(super().openapi(), self.state.settings)


def _check_limits(allowed_hosts: list[str] | None, **limits: int) -> None:
    for name, value in limits.items():
        if value < 1:
            raise TransferlabError(f"{name} must be at least 1, got {value}")
    if allowed_hosts is not None and not all(isinstance(h, str) and h for h in allowed_hosts):
        raise TransferlabError(f"allowed_hosts must be non-empty host names, got {allowed_hosts!r}")


def create_app(run_dir: str | Path, engine: str = "torch", max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               top_k: int = 3, *, max_batch_files: int = 16, max_batch: int = 32, max_wait_ms: float = 2.0,
               decode_threads: int | None = None, decode_memory_bytes: int = DEFAULT_DECODE_MEMORY_BYTES,
               decode_wait_s: float = DEFAULT_DECODE_WAIT_S,
               max_concurrent_batches: int = DEFAULT_MAX_CONCURRENT_BATCHES,
               allowed_hosts: list[str] | None = None, tta: str | None = None) -> FastAPI:
    """A FastAPI app serving the run (probe or fine-tuned) in `run_dir` with `engine` ("torch" or "onnx").

    Raises TransferlabError at once for an unusable run (incomplete, a kind that cannot be
    served, an unreadable model/model.json, no current ONNX export for engine="onnx") or a
    bad setting; the model itself is loaded when the app starts. `allowed_hosts` (e.g.
    ["example.org", "*.example.org"]) answers 400 to any other Host header; None accepts all.
    `tta`: test-time augmentation instead of the run's own (engine="onnx": the export must hold it).
    """
    run_path = Path(run_dir)
    check_engine(run_path, engine, tta)
    _check_limits(allowed_hosts, max_upload_bytes=max_upload_bytes, top_k=top_k, max_batch_files=max_batch_files,
                  max_batch=max_batch, decode_memory_bytes=decode_memory_bytes,
                  max_concurrent_batches=max_concurrent_batches)
    describe = _describe_run(run_path)
    read_export_record(run_path / "model")  # a tampered export.json fails here, in one line, not at start-up
    page_html()  # a broken install fails here too, not on the first visit to /
    app = RunApp(title="transferlab", version=__version__, lifespan=lifespan,
                 exception_handlers=ERROR_HANDLERS,  # type: ignore[arg-type]
                 description=f"Image classification with the {KIND_WORDS[describe.kind]} run "
                             f"`{run_path.resolve().name}` ({describe.backbone}).")
    app.state.settings = Settings(run_path, engine, describe, _headline_metrics(run_path), top_k, max_upload_bytes,
                                  max_batch_files, max_batch, max_wait_ms, decode_threads, decode_memory_bytes,
                                  decode_wait_s, max_concurrent_batches, tta)
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    app.include_router(router)
    return app


# `serve(workers>1)` hands uvicorn an import string; the settings travel in the environment.
_ENV_SETTINGS = "TRANSFERLAB_SERVE_SETTINGS"


def app_from_environment() -> FastAPI:
    return create_app(**json.loads(os.environ[_ENV_SETTINGS]))


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, engine: str = "torch",
          max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, top_k: int = 3, log_level: str = "info",
          allowed_hosts: list[str] | None = None, max_concurrent_batches: int = DEFAULT_MAX_CONCURRENT_BATCHES,
          decode_memory_bytes: int = DEFAULT_DECODE_MEMORY_BYTES, tta: str | None = None) -> None:
    """Run the app with uvicorn. Binds 127.0.0.1 unless told otherwise (0.0.0.0 in a container)."""
    import uvicorn  # local: creating an app in tests needs no server

    if workers < 1:
        raise TransferlabError(f"workers must be at least 1, got {workers}")
    settings = {"run_dir": str(Path(run_dir).resolve()), "engine": engine, "max_upload_bytes": max_upload_bytes,
                "top_k": top_k, "allowed_hosts": allowed_hosts, "max_concurrent_batches": max_concurrent_batches,
                "decode_memory_bytes": decode_memory_bytes, "tta": tta}
    app = create_app(**settings)  # fails here, with one line, for an unusable run
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False)
        return
    # Each worker process loads its own copy of the model (and has its own limits).
    os.environ[_ENV_SETTINGS] = json.dumps(settings)
    uvicorn.run("transferlab.serve.app:app_from_environment", factory=True, host=host, port=port,
                workers=workers, log_level=log_level, server_header=False)
