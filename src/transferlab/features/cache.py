"""On-disk feature cache, keyed by everything that changes a feature vector.

Key: backbone name, weights hash, layers, pooling, resolution, preprocessing and the
precision; rows inside are keyed by the image's content hash, so renamed or re-split
files still hit. Each extraction writes shards atomically as it goes, so a killed run
keeps what it finished and the next run resumes from there. Files are .npz read with
allow_pickle=False.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path

import numpy as np

from transferlab.atomic import atomic_path, write_json

CACHE_FORMAT = 1


def default_cache_root() -> Path:
    env = os.environ.get("TRANSFERLAB_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "transferlab"


class FeatureCache:
    def __init__(self, root: str | os.PathLike, key_fields: dict):
        fields = {"format": CACHE_FORMAT, **key_fields}
        self.key = hashlib.blake2b(json.dumps(fields, sort_keys=True).encode(), digest_size=10).hexdigest()
        self.directory = Path(root).expanduser() / "features" / self.key
        self.key_fields = fields

    def load(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """All cached rows (digest -> feature vector) and cached failures (digest -> reason)."""
        rows: dict[str, np.ndarray] = {}
        failures: dict[str, str] = {}
        if not self.directory.is_dir():
            return rows, failures
        for shard in sorted(self.directory.glob("shard-*.npz")):
            try:
                with np.load(shard, allow_pickle=False) as data:
                    digests = data["digests"].astype(str)
                    features = data["features"]
                    rows.update(zip(digests, features))
                    failure_digests = data["failure_digests"].astype(str)
                    failure_reasons = data["failure_reasons"].astype(str)
                    failures.update(zip(failure_digests, failure_reasons))
            except Exception:  # truncated zip, missing arrays: only costs re-extraction of its rows
                continue
        return rows, failures

    def add(self, digests: list[str], features: np.ndarray, failures: dict[str, str]) -> None:
        if not digests and not failures:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        meta = self.directory / "key.json"
        if not meta.exists():
            write_json(meta, self.key_fields)
        name = f"shard-{time.time_ns()}-{uuid.uuid4().hex[:6]}.npz"
        with atomic_path(self.directory / name) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(
                    handle,
                    digests=np.array(digests, dtype="S32"),
                    features=np.asarray(features, dtype=np.float32),
                    failure_digests=np.array(list(failures), dtype="S32"),
                    failure_reasons=np.array(list(failures.values()), dtype=str),
                )
