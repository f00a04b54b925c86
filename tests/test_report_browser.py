"""A probe run's report.html in a real browser: every plot is there and actually renders.

Opens the self-contained page from disk in the system Chromium (through Playwright) and
checks the confusion matrix, the embedding map, the error grid with Grad-CAM overlays and
the per-class F1 plot are images the browser decoded. Skipped where Chromium is missing.
"""

from __future__ import annotations

import pytest

from tests.conftest import make_image_folder
from tests.test_serve_browser import CHROMIUM, CHROMIUM_ARGS
from transferlab.atomic import write_json
from transferlab.pipelines.probe import ProbeConfig, run_probe
from transferlab.report.html import render_report


def test_probe_report_renders_every_plot(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed: the report screenshot test needs the system Chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    # Two classes drawn alike cannot be told apart, so the error grid is never empty.
    twins = {"twin a": ((120, 120, 120), "ellipse"), "twin b": ((120, 120, 120), "ellipse"),
             "square": ((40, 200, 60), "rectangle")}
    data = make_image_folder(tmp_path / "data", per_class=10, classes=twins)
    baseline = tmp_path / "paper.csv"
    baseline.write_text("class,f1\ntwin a,0.9\ntwin b,0.9\nsquare,0.9\n")
    result = run_probe(ProbeConfig(data=str(data), out=str(tmp_path / "run"), backbone="test_resnet", resolution=32,
                                   workers=0, progress=False, precision="fp32", baseline=str(baseline)))
    errors = sum(v for i, row in enumerate(result.metrics["val"]["confusion"]) for j, v in enumerate(row) if i != j)
    report = result.run_dir / "report.html"
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(report.as_uri())
            images = page.eval_on_selector_all(
                "img", "els => els.map(e => ({alt: e.alt + ' ' + (e.closest('figure')?.innerText || ''),"
                       " ok: e.complete && e.naturalWidth > 0}))")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    captions = " ".join(i["alt"] for i in images)
    assert images and all(i["ok"] for i in images), images
    for plot in ("confusion", "embed", "per class f1"):
        assert plot in captions.lower().replace("_", " "), captions
    assert errors > 0 and "errors" in captions.lower()
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_no_script_runs_from_an_edited_report_record(tmp_path):
    """report.json's section bodies are kept as HTML: the page's policy must stop what they inject."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed: the report browser test needs the system Chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    run_dir = tmp_path / "run"
    write_json(run_dir / "metrics.json", {"val": {"accuracy": 1.0, "n": 1, "per_class": {}}})
    injected = ('<script>document.title = "pwned"; window.pwned = 1;</script>'
                '<img src="x.png" onerror="document.title = \'pwned\'; window.pwned = 1">'
                '<p id="marker">section body</p>')
    write_json(run_dir / "report.json", {"title": "safe", "sections": [["edited", injected]]})
    report = render_report(run_dir)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(report.as_uri())
            page.wait_for_load_state("load")
            marker = page.locator("#marker").inner_text()  # the section itself did render
            title, untouched = page.title(), page.evaluate("() => window.pwned === undefined")
        finally:
            browser.close()
    assert marker == "section body"
    assert title == "safe" and untouched
