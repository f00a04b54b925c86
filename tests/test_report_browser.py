"""A probe run's report.html in a real browser: every plot is there and actually renders.

Opens the self-contained page from disk in the system Chromium (through Playwright) and
checks the confusion matrix, the embedding map, the error grid with Grad-CAM overlays and
the per-class F1 plot are images the browser decoded. Skipped where Chromium is missing.
"""

from __future__ import annotations

import pytest

from tests.conftest import make_image_folder
from tests.test_serve_browser import CHROMIUM, CHROMIUM_ARGS
from transferlab.probe import ProbeConfig, run_probe


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
