"""The page at `/` in a real browser: pick a generated PNG, see the predicted class.

Runs uvicorn on 127.0.0.1 in a thread and drives the system Chromium through Playwright.
Skipped when /usr/bin/chromium or the playwright package is missing (never downloads a browser).
"""

from __future__ import annotations

import io
import socket
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import draw_image
from tests.test_serve import make_probe_run, one_torch_thread  # noqa: F401 (autouse fixture)
from transferlab.serve import create_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    import uvicorn

    run_dir = make_probe_run(tmp_path_factory.mktemp("browser"))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(run_dir), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def page(base_url):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed: the browser test needs the system Chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context()
            # The page must work offline: refuse every request that is not to our server.
            blocked: list[str] = []

            def only_local(route):
                if route.request.url.startswith(base_url):
                    route.continue_()
                else:
                    blocked.append(route.request.url)
                    route.abort()

            context.route("**/*", only_local)
            page = context.new_page()
            page.blocked = blocked
            yield page
        finally:
            browser.close()


def test_pick_an_image_and_see_the_top_class(page, base_url, tmp_path):
    png = draw_image(tmp_path / "square.png", (40, 200, 60), "rectangle", size=48, seed=3)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(base_url + "/")
    # A locator wait, not wait_for_function: that polls with eval, which the page's CSP
    # (no 'unsafe-eval') refuses whenever the model line is not there at the first check.
    page.locator("#model").filter(has_text="test_resnet").wait_for(timeout=20_000)

    # Keyboard first: the skip link leads to a real, focusable file input with a label.
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "file"
    assert page.get_by_label("Choose an image to classify").count() == 1

    page.set_input_files("#file", str(png))
    status = page.locator("#status")
    status.filter(has_text="Most likely:").wait_for(timeout=20_000)
    text = status.inner_text()
    assert any(name in text for name in ("circle", "square", "dome(inner)")), text
    assert page.locator("#top li").count() == 3
    assert page.locator("#results").get_attribute("aria-live") == "polite"
    assert page.locator("#preview").is_visible()
    assert not errors and not page.blocked


def test_a_bad_file_shows_the_servers_reason(page, base_url, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is text, not a PNG")
    page.goto(base_url + "/")
    page.set_input_files("#file", str(bad))
    page.locator("#status.error").wait_for(timeout=20_000)
    assert "not an image" in page.locator("#status").inner_text()
    # ...and the next image works.
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), (220, 40, 40)).save(buffer, format="PNG")
    page.set_input_files("#file", files=[{"name": "red.png", "mimeType": "image/png", "buffer": buffer.getvalue()}])
    page.locator("#status").filter(has_text="Most likely:").wait_for(timeout=20_000)


@pytest.mark.parametrize("kind, expected, absent", [("finetune", "fine-tuned test_resnet", "probe"),
                                                     ("probe", "test_resnet probe", "fine-tuned")])
def test_the_page_names_the_kind_of_run(page, base_url, kind, expected, absent):
    """The model line follows /model's `kind` (a fine-tuned run is never called a probe)."""
    described = {}

    def with_kind(route):
        response = route.fetch()
        body = response.json()
        body.update(kind=kind, engine_max_abs_diff={"onnx": 2.5e-7})
        described.update(body)
        route.fulfill(response=response, json=body)

    page.route("**/model", with_kind)
    try:
        page.goto(base_url + "/")
        line = page.locator("#model").filter(has_text="served by")
        line.wait_for(timeout=20_000)
        text = line.inner_text()
    finally:
        page.unroute("**/model")
    assert expected in text and absent not in text, text
    assert "served by torch at fp32" in text and "onnx export within 2.5e-7 of PyTorch" in text, text
    assert described["kind"] == kind
