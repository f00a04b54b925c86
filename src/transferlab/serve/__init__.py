"""Serving a finished run (probe or fine-tuned) over HTTP: `create_app` (FastAPI) and `serve` (uvicorn)."""

from transferlab.serve.app import create_app, serve
from transferlab.serve.engines import (
    ENGINES,
    OnnxEngine,
    Predictor,
    TorchEngine,
    load_engine,
)

__all__ = ["ENGINES", "OnnxEngine", "Predictor", "TorchEngine", "create_app", "load_engine", "serve"]
