"""Real-browser test of the app: Playwright driving Debian's Chromium (never a downloaded browser).

Opens the app, uploads an example, clicks Reconstruct, waits for the Model3D canvas and the turntable
video, screenshots the page, checks the splat canvas is not blank (pixel variance) and the downloads
are offered. Skipped without /usr/bin/chromium unless PERCHEAD_REQUIRE_BROWSER=1 (CI), which fails.
Screenshots go to $PERCHEAD_SCREENSHOTS (default: the test's tmp folder).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "head0_front.png"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-angle=swiftshader", "--enable-unsafe-swiftshader",  # software WebGL for the Model3D canvas
]  # fmt: skip

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def chromium():
    if not Path(CHROMIUM).exists():
        message = f"Debian's Chromium is not installed at {CHROMIUM} (apt-get install -y chromium)"
        if os.environ.get("PERCHEAD_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    playwright_api = pytest.importorskip("playwright.sync_api")
    profile = tempfile.mkdtemp(prefix="perchead-chromium-")
    with playwright_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1400}
        )
        yield context
        context.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    import torch

    from perchead.models.config import PercHeadConfig
    from perchead.models.perchead import PercHead
    from test_app import start_app, stop  # tests/ is on sys.path under pytest

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("browser_model")
    PercHead(PercHeadConfig.preset("tiny")).save_pretrained(folder)
    process, url, _ = start_app(["--model", str(folder)], tmp_path_factory.mktemp("browser_app"))
    yield url
    stop(process)


def canvas_variance(png: bytes) -> float:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)  # [H, W, 3]
    return float(pixels.reshape(-1, 3).std(axis=0).mean())


def test_upload_reconstruct_view_and_download(chromium, app_url, tmp_path):
    shots = Path(os.environ.get("PERCHEAD_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    page = chromium.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(app_url, timeout=60_000)
    page.wait_for_selector("#reconstruct-button", timeout=60_000)
    # the model notice area says which model is loaded
    page.get_by_text("Model:", exact=False).first.wait_for(timeout=60_000)

    page.locator("input[type=file]").first.set_input_files(str(EXAMPLE))
    page.wait_for_selector("img[src*='head0_front'], img[src*='gradio_api/file']", timeout=30_000)
    page.click("#reconstruct-button")

    # outputs: the splat canvas, the turntable video, the downloads
    page.wait_for_selector("#turntable video", timeout=180_000)
    canvas = page.locator("#splat-viewer canvas").first
    canvas.wait_for(state="visible", timeout=60_000)
    page.wait_for_function(
        "() => { const v = document.querySelector('#turntable video'); return v && v.readyState >= 2 && v.videoWidth > 0 }",
        timeout=60_000,
    )  # the H.264 mp4 decodes in Chromium
    links = page.locator("#downloads a")
    links.first.wait_for(timeout=30_000)
    page.wait_for_timeout(2_000)  # let the splat viewer draw a few frames

    page.screenshot(path=str(shots / "app_after_reconstruct.png"), full_page=True)
    canvas_png = canvas.screenshot(path=str(shots / "app_splat_canvas.png"))
    assert canvas_variance(canvas_png) > 5.0, "the Model3D canvas is blank"

    hrefs = [links.nth(i).get_attribute("href") or "" for i in range(links.count())]
    assert sorted(Path(h).suffix for h in hrefs) == [".glb", ".ply", ".splat"]
    response = page.request.get(next(h for h in hrefs if h.endswith(".ply")))
    assert response.ok and response.body().startswith(b"ply")
    assert not errors, errors
    page.close()
