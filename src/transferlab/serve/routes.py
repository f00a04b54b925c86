"""The HTTP routes, shared by every app: they find their run through FastAPI dependencies.

`create_app` puts the run's fixed `Settings` on `app.state.settings`; the lifespan puts the
loaded model and its helpers (`Service`) on `app.state.service`. Handlers take both through
`Depends`, so one module-level router serves any run. What the OpenAPI schema must say
about one run (the top_k bound, the batch size) is filled in by `bind_schema_to_run`.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse

from transferlab.serve.batching import MicroBatcher, Overloaded
from transferlab.serve.engines import Predictor
from transferlab.serve.limits import BatchGate, DecodeBudget
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

# The page loads nothing from elsewhere: everything is inline, and the browser is told so.
PAGE_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' blob:; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PREDICT_ERRORS = error_responses(400, 413, 415, 422, 503)

log = logging.getLogger("transferlab.serve")


@dataclass
class Settings:
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
    tta: str | None = None  # test-time augmentation asked for; None: the run's own (or the export's)


@dataclass
class Service:
    """What the lifespan loads and starts; handlers get it through `Depends(get_service)`."""

    predictor: Predictor
    batcher: MicroBatcher
    decode_pool: ThreadPoolExecutor
    budget: DecodeBudget
    batches: BatchGate
    differences: dict[str, float] = field(default_factory=dict)


# Both dependencies are `async def`: a plain `def` would be sent to the thread pool on every request.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_service(request: Request) -> Service:
    found = getattr(request.app.state, "service", None)
    if found is None:
        raise UploadError(503, "the model is not loaded (start the app with its lifespan)")
    return found


SettingsDep = Annotated[Settings, Depends(get_settings)]
ServiceDep = Annotated[Service, Depends(get_service)]


async def requested_top_k(s: SettingsDep, top_k: Annotated[int | None, Query(
        ge=1, description="how many classes to return")] = None) -> int:
    """The `top_k` query, or the app's default. Its upper bound is the run's class count, which
    a shared route cannot declare: checked here (the same 422 pydantic gives) and added to the
    schema by `bind_schema_to_run`."""
    if top_k is None:
        return s.top_k
    n_classes = len(s.describe.classes)
    if top_k > n_classes:
        raise RequestValidationError([{"type": "less_than_equal", "loc": ("query", "top_k"), "input": top_k,
                                       "msg": f"Input should be less than or equal to {n_classes}",
                                       "ctx": {"le": n_classes}}])
    return top_k


TopK = Annotated[int, Depends(requested_top_k)]


def bind_schema_to_run(schema: dict, s: Settings) -> dict:
    """Write this run's bounds into the shared routes' OpenAPI, in place: `schema` is the app's own
    (FastAPI builds a fresh one per app), and writing it again changes nothing."""
    for path in ("/predict", "/predict/batch"):
        for parameter in schema["paths"][path]["post"]["parameters"]:
            if parameter["name"] == "top_k":
                for option in parameter["schema"]["anyOf"]:
                    if option.get("type") == "integer":
                        option["maximum"] = len(s.describe.classes)
    body = schema["paths"]["/predict/batch"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    body["properties"]["files"]["maxItems"] = s.max_batch_files
    return schema


def busy_message(exc: Overloaded) -> str:
    return f"server busy: {exc}; retry shortly"


def _ranked(row: np.ndarray, k: int, classes: list[str]) -> list[dict]:
    best = np.argsort(-row, kind="stable")[:k]
    return [{"class": classes[i], "p": min(1.0, max(0.0, round(float(row[i]), 6)))} for i in best]


async def _decode(svc: Service, upload: Upload) -> np.ndarray:
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
        return {"filename": filename, "error": busy_message(exc), "status": 503}
    log.error("batch item %r failed", filename, exc_info=exc)
    return {"filename": filename, "error": f"internal error: {type(exc).__name__}", "status": 500}


async def _classify_all(svc: Service, uploads: list[Upload], k: int) -> list[dict]:
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


@cache
def page_html() -> str:
    return resources.files("transferlab.serve").joinpath("static/index.html").read_text(encoding="utf-8")


router = APIRouter()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> HTMLResponse:
    return HTMLResponse(page_html(), headers={"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff"})


@router.get("/health", response_model=HealthResponse, responses=error_responses(503))
async def health(svc: ServiceDep) -> dict:
    return {"status": "ok", "model": svc.predictor.model_id, "engine": svc.predictor.engine,
            "batching": svc.batcher.stats.as_dict(), "decode_memory": svc.budget.as_dict(),
            "batch_requests": {"active": svc.batches.active, "limit": svc.batches.limit}}


@router.get("/model", response_model=ModelInfo, responses=error_responses(503))
async def model(s: SettingsDep, svc: ServiceDep) -> dict:
    p = svc.predictor
    return {**s.describe.model_dump(), "model": p.model_id, "engine": p.engine, "run": s.run_path.resolve().name,
            "classes": p.classes, "input_size": [3, p.resolution, p.resolution],
            "interpolation": p.interpolation, "tta": p.tta, "engine_max_abs_diff": svc.differences,
            "metrics": {k: v.model_dump() for k, v in s.metrics.items()}, "top_k": s.top_k,
            "max_upload_bytes": s.max_upload_bytes, "max_batch_files": s.max_batch_files}


@router.post("/predict", response_model=PredictResponse, responses=PREDICT_ERRORS, openapi_extra=file_body("file"))
async def predict(request: Request, top_k: TopK, s: SettingsDep, svc: ServiceDep) -> dict:
    """Classify one image (multipart field `file`): the top-k classes with probabilities."""
    upload = (await read_uploads(request, "file", s.max_upload_bytes, max_files=1))[0]
    row = await svc.batcher.predict(await _decode(svc, upload))
    p = svc.predictor
    return {"model": p.model_id, "engine": p.engine, "filename": upload.filename,
            "top": _ranked(row, top_k, p.classes)}


# maxItems here is a placeholder: bind_schema_to_run writes the app's max_batch_files.
@router.post("/predict/batch", response_model=BatchResponse, response_model_exclude_none=True,
             responses=PREDICT_ERRORS, openapi_extra=file_body("files", max_files=1))
async def predict_batch(request: Request, top_k: TopK, s: SettingsDep, svc: ServiceDep) -> dict:
    """Classify several images (repeated multipart field `files`); a bad file gets its own error entry."""
    # The slot is taken before reading: it also bounds the memory of batch bodies being buffered.
    async with svc.batches.slot():
        uploads = await read_uploads(request, "files", s.max_upload_bytes, max_files=s.max_batch_files)
        results = await _classify_all(svc, uploads, top_k)
    return {"model": svc.predictor.model_id, "engine": svc.predictor.engine, "results": results}
