"""The API's request and response shapes: what /docs shows and what every answer conforms to.

Response models are strict (`extra="forbid"`, so the OpenAPI schema says
`additionalProperties: false`) and match what the handlers return, field for field; the
schemathesis suite checks every answer against them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Precision = Literal["fp32", "bf16", "fp16"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Ranked(_Strict):
    label: str = Field(alias="class")
    p: float = Field(ge=0, le=1)


class PredictResponse(_Strict):
    model: str
    engine: str
    filename: str
    top: list[Ranked] = Field(min_length=1)


class BatchItem(_Strict):
    """One file of a batch: `top` when it was classified, else `error` and its HTTP `status`."""

    filename: str
    top: list[Ranked] | None = None
    error: str | None = None
    status: int | None = Field(None, ge=400, le=599)


class BatchResponse(_Strict):
    model: str
    engine: str
    results: list[BatchItem]


class ErrorBody(_Strict):
    error: str


class BatchingStats(_Strict):
    batches: int = Field(ge=0)
    images: int = Field(ge=0)
    largest: int = Field(ge=0)
    mean_batch: float = Field(ge=0)
    model_seconds: float = Field(ge=0)


class DecodeMemory(_Strict):
    total_bytes: int = Field(ge=1)
    in_use_bytes: int = Field(ge=0)
    peak_bytes: int = Field(ge=0)


class BatchRequests(_Strict):
    active: int = Field(ge=0)
    limit: int = Field(ge=1)


class HealthResponse(_Strict):
    status: Literal["ok"]
    model: str
    engine: str
    batching: BatchingStats
    decode_memory: DecodeMemory
    batch_requests: BatchRequests


class SplitMetrics(_Strict):
    accuracy: float | None = None
    macro_f1: float | None = None


class RunDescription(_Strict):
    """What model/model.json (checked when the app is made) says about the served model."""

    kind: Literal["probe", "finetune", "ensemble"]
    backbone: str
    classes: list[str] = Field(min_length=1)
    weights_source: str | None = None
    layers: list[str | int] | None = None
    pool: str | None = None
    precision: str | None = Field(None, description="the run's feature-extraction / training precision")
    inference_precision: Precision = Field("fp32", description="the precision the model is served at")


class ModelInfo(RunDescription):
    model: str
    engine: str
    run: str
    input_size: list[int] = Field(min_length=3, max_length=3)
    interpolation: str
    tta: str = Field(description="test-time augmentation each prediction averages over: none, flip, crops "
                                 "or flip-crops")
    engine_max_abs_diff: dict[str, float] = Field(
        description="per exported format whose export matches this model: the largest absolute difference "
                    "of its probabilities from PyTorch's, measured at export (model/export.json)")
    metrics: dict[str, SplitMetrics]
    top_k: int = Field(ge=1)
    max_upload_bytes: int = Field(ge=1)
    max_batch_files: int = Field(ge=1)


def error_responses(*codes: int) -> dict:
    return {code: {"model": ErrorBody} for code in codes}


def file_body(field: str, max_files: int | None = None) -> dict:
    """OpenAPI for a multipart body the handler reads itself (so /docs shows a file picker).

    `max_files` makes the field an array of 1..max_files files (the batch endpoint).
    """
    binary = {"type": "string", "format": "binary"}
    schema = binary if max_files is None else {"type": "array", "items": binary, "minItems": 1,
                                               "maxItems": max_files}
    # Nothing but the file field is accepted (uploads.read_uploads refuses any other part).
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": [field], "properties": {field: schema},
                   "additionalProperties": False}}}}}
