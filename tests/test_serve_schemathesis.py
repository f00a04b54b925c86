"""Property-based API tests: schemathesis drives every operation of the app in-process (ASGI).

The engine behind `schemathesis run` generates positive and negative requests from the
app's own OpenAPI schema (examples, coverage and fuzzing phases, all default checks):
every answer must conform to the schema (status documented, body and headers matching),
schema-valid requests must be accepted, invalid ones refused, and nothing may be a 5xx.
A schema cannot say "a decodable image", so positive file fields get small real images of
assorted sizes and modes (a hook); negative ones keep whatever schemathesis made.
Examples are few and derandomised: the suite is quick and the same on every run.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed (pip install -e '.[test]')")
from schemathesis.engine import events  # noqa: E402

from tests.test_serve import make_probe_run, one_torch_thread  # noqa: E402,F401 (autouse fixture)
from transferlab.serve import create_app  # noqa: E402

MAX_EXAMPLES = 25
MODES = ("RGB", "L", "1", "P", "RGBA", "LA", "I;16")


def image_from(seed: bytes) -> bytes:
    """A small valid PNG whose size, mode and pixels all follow from `seed` (aspect within 16:1)."""
    digest = hashlib.blake2b(seed, digest_size=8).digest()
    width, height = 1 + digest[0] % 48, 1 + digest[1] % 48
    width, height = max(width, -(-height // 16)), max(height, -(-width // 16))
    pixels = ((seed or b"\x80") * (2 * width * height))[: 2 * width * height]
    mode = MODES[digest[2] % len(MODES)]
    if mode == "I;16":
        image = Image.frombytes("I;16", (width, height), pixels)
    else:
        image = Image.frombytes("L", (width, height), pixels[: width * height]).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def real_images(context, case):
    """map_case hook: in a schema-valid body, every file becomes an image the server can decode."""
    if case.media_type != "multipart/form-data" or not isinstance(case.body, dict) \
            or case.meta is None or case.meta.is_negative_at("body"):
        return case
    for key, value in case.body.items():
        files = value if isinstance(value, list) else [value]
        images = [image_from(bytes(getattr(f, "data", b""))) for f in files]
        case.body[key] = images if isinstance(value, list) else images[0]
    return case


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_probe_run(tmp_path_factory.mktemp("schemathesis"))


@pytest.fixture()
def api_schema(run_dir):
    # Small limits, so generated bodies reach them; the batch limit is the schema's maxItems.
    app = create_app(run_dir, max_upload_bytes=256 * 1024, max_batch_files=4)
    loaded = schemathesis.openapi.from_asgi("/openapi.json", app)
    loaded.config.generation.update(max_examples=MAX_EXAMPLES, database="none", deterministic=True)
    loaded.hook("map_case")(real_images)
    yield loaded
    schemathesis.python.asgi.shutdown_lifespans()  # the engine started the app's lifespan (model load)


def test_every_operation_conforms_to_its_schema_with_no_server_error(api_schema):
    problems: list[str] = []
    statuses: Counter = Counter()
    operations: set[str] = set()
    for event in schemathesis.engine.from_schema(api_schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            for interaction in recorder.interactions.values():
                if interaction.response is not None:
                    statuses[interaction.response.status_code] += 1
                    operations.add(recorder.label)
            for case_id, checks in recorder.checks.items():
                for check in checks:
                    if check.failure_info is not None:
                        case = recorder.cases[case_id].value
                        problems.append(f"{recorder.label} [{event.phase}] {check.name}: "
                                        f"{check.failure_info.failure.title} -- {case.query} {str(case.body)[:200]}")
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            problems.append(f"schemathesis error: {getattr(event, 'value', None) or getattr(event, 'exception', None)}")
    assert not problems, "\n".join(problems)
    assert operations == {"GET /health", "GET /model", "POST /predict", "POST /predict/batch"}
    assert not [code for code in statuses if code >= 500], statuses
    # Not vacuous: generated images were classified, and generated junk was refused.
    assert statuses[200] >= 10 and statuses[422] >= 1, statuses
