"""Real-browser test of the Video tab: Playwright driving Debian's Chromium, the bundled checkpoint.

As a visitor: open the Video tab, upload a 2-second clip (a synthetic head moving across the frame, made
here), click "Reconstruct every frame". The button greys out at once; the side-by-side video appears and
decodes in Chromium, twice as wide as high (input | head), with every frame reconstructed; the zip of heads
is offered. Skipped without /usr/bin/chromium unless PERCHEAD_REQUIRE_BROWSER=1 (see test_browser).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from test_app import start_app, stop  # tests/ is on sys.path under pytest
from test_browser import chromium, open_app  # noqa: F401  (the chromium fixture)
from test_sequence import FPS, SECONDS, moving_head

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def video_app(tmp_path_factory):
    from perchead.data.clips import render_clip
    from perchead.data.synthetic import make_head, split_seeds
    from perchead.export.turntable import write_mp4

    tmp = tmp_path_factory.mktemp("browser_video_app")
    clip = tmp / "moving_head.mp4"
    write_mp4(render_clip([make_head(split_seeds("test")[0])], moving_head(FPS * SECONDS)), clip, fps=FPS)
    process, url, _ = start_app(["--edit-model", "none"], tmp)  # bundled model
    yield url, clip
    stop(process)


def test_upload_a_clip_and_see_the_side_by_side_video(chromium, video_app, tmp_path):  # noqa: F811
    url, clip = video_app
    shots = Path(os.environ.get("PERCHEAD_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    page, errors = open_app(chromium, url)

    page.get_by_role("tab", name="Video").click()
    page.locator("#video-input input[type=file]").set_input_files(str(clip))
    page.wait_for_selector("#video-input video", timeout=30_000)  # the upload shows as a playable preview
    assert page.locator("#video-result video").count() == 0, "no result before the click"
    button = page.locator("#video-button")
    clicked = time.perf_counter()
    button.click()
    page.wait_for_function("() => document.querySelector('#video-button').disabled", timeout=5_000)

    page.wait_for_function(
        "() => { const v = document.querySelector('#video-result video'); return v && v.readyState >= 2 && v.videoWidth > 0 }",
        timeout=180_000,
    )  # the H.264 side-by-side decodes in Chromium
    print(f"click → side-by-side video playing: {time.perf_counter() - clicked:.2f} s")
    width, height, duration = page.evaluate(
        "() => { const v = document.querySelector('#video-result video'); return [v.videoWidth, v.videoHeight, v.duration] }")
    assert width == 2 * height, "the model input and the head, side by side"
    assert abs(duration - SECONDS) < 0.3
    page.wait_for_function("() => !document.querySelector('#video-button').disabled", timeout=30_000)
    assert f"{FPS * SECONDS} heads in" in page.locator("#video-summary").inner_text()
    links = page.locator("#video-heads a")
    hrefs = [links.nth(i).get_attribute("href") or "" for i in range(links.count())]
    assert len(hrefs) == 1 and hrefs[0].endswith(".zip"), hrefs
    response = page.request.get(hrefs[0])
    assert response.ok and response.body().startswith(b"PK"), "the zip of heads downloads"
    box = page.locator("#video-result video").bounding_box()
    assert box["width"] > 200 and box["y"] + box["height"] <= page.viewport_size["height"], f"result out of view: {box}"
    page.screenshot(path=str(shots / "app_video_tab.png"), full_page=True)
    assert errors == [], errors
    page.close()
