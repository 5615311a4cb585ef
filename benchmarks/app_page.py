"""What a visitor waits for, measured in a real browser (Debian's Chromium through Playwright).

Starts the app with the bundled checkpoints, then, per run: upload an example, click Reconstruct, and time
click → the head in the splat viewer (the viewer's canvas exists once it has the head's file; the
first head the app sends for a photo is already the person, the photo's colours on the predicted head,
and the turntable is still being rendered then) and click → the turntable video playing. Target for the head: ≤ 2 s
on 2 CPU cores. With ``--screenshots DIR`` it also saves both tabs after a run, at desktop (1366×900) and
phone (390×844) size, as JPEG (docs/results.md shows them).

    python benchmarks/app_page.py --runs 3
    python benchmarks/app_page.py --runs 1 --screenshots docs/screenshots
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from _common import ROOT, report, start_app  # benchmarks/ is on sys.path when a script in it runs

SIZES = {"desktop": {"width": 1366, "height": 900}, "phone": {"width": 390, "height": 844}}
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader",
                 "--enable-unsafe-swiftshader"]  # software WebGL, as on a machine without a GPU
TARGET_HEAD_S = 2.0


def save_jpeg(png: bytes, path: Path) -> None:
    from PIL import Image

    Image.open(io.BytesIO(png)).convert("RGB").save(path, quality=80, optimize=True)


def reconstruct_once(page, url: str, photo: Path, real_person: bool = False) -> dict[str, float]:
    page.goto(url, timeout=60_000)
    page.get_by_text("Ready:", exact=False).first.wait_for(timeout=120_000)
    if not real_person:  # a render of a synthetic head: as its example row sets it
        page.get_by_text("Options", exact=True).first.click()
        page.get_by_label("Photo of a real person").uncheck()
        page.get_by_text("Options", exact=True).first.click()
        page.evaluate("window.scrollTo(0, 0)")
    page.locator("#portrait input[type=file]").set_input_files(str(photo))
    page.wait_for_selector("#portrait img", timeout=30_000)
    clicked = time.perf_counter()
    page.click("#reconstruct-button")
    page.locator("#splat-viewer canvas").first.wait_for(state="visible", timeout=120_000)
    head = time.perf_counter() - clicked
    page.wait_for_function("() => { const v = document.querySelector('#turntable video');"
                           " return v && v.readyState >= 2 }", timeout=300_000)
    return {"head_in_viewer_s": head, "turntable_playing_s": time.perf_counter() - clicked}


def edit_once(page, url: str) -> None:
    page.goto(url, timeout=60_000)  # a fresh page: one splat viewer at a time (software WebGL is slow)
    page.get_by_text("Editing: ready", exact=False).first.wait_for(timeout=120_000)
    page.get_by_role("tab", name="Editing").click()
    page.locator("#editing-tab .gallery button, #editing-tab button.gallery-item").first.click()
    page.locator("#style-prompt").get_by_role("textbox").fill("long blonde hair")
    page.click("#edit-button")
    page.locator("#edit-splat-viewer canvas").first.wait_for(state="visible", timeout=120_000)
    page.wait_for_function("() => { const v = document.querySelector('#edit-turntable video');"
                           " return v && v.readyState >= 2 }", timeout=300_000)
    page.wait_for_timeout(3_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--photo", default=str(ROOT / "examples" / "head0_front.png"))
    parser.add_argument("--real-person", action="store_true",
                        help="the photo shows a real person (the default photo is a synthetic head: the box is unticked)")
    parser.add_argument("--screenshots", default=None, help="save both tabs at both sizes here (JPEG)")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as temp:
        process, url = start_app([], Path(temp))  # the bundled base and editing models
        runs = []
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
                page = browser.new_page(viewport=SIZES["desktop"])
                for _ in range(args.runs):
                    runs.append(reconstruct_once(page, url, Path(args.photo), args.real_person))
                    print(json.dumps({k: round(v, 2) for k, v in runs[-1].items()}), flush=True)
                page.close()
                if args.screenshots:
                    folder = Path(args.screenshots)
                    folder.mkdir(parents=True, exist_ok=True)
                    for name, size in SIZES.items():
                        page = browser.new_page(viewport=size)
                        reconstruct_once(page, url, Path(args.photo), args.real_person)
                        if name == "phone":  # the results come under the input: show them
                            page.locator("#splat-viewer").scroll_into_view_if_needed()
                        page.wait_for_timeout(3_000)  # the viewer sorts its splats
                        save_jpeg(page.screenshot(), folder / f"reconstruction_{name}.jpg")
                        page.close()
                        page = browser.new_page(viewport=size)
                        edit_once(page, url)
                        page.locator("#edit-splat-viewer" if name == "phone" else "#edit-button").scroll_into_view_if_needed()
                        page.wait_for_timeout(3_000)
                        save_jpeg(page.screenshot(), folder / f"editing_{name}.jpg")
                        page.close()
                browser.close()
        finally:
            process.terminate()
            process.wait(timeout=30)
    head = statistics.median(r["head_in_viewer_s"] for r in runs)
    summary = {"runs": runs, "cpu_count": os.cpu_count(), "head_in_viewer_median_s": round(head, 2),
               "turntable_playing_median_s": round(statistics.median(r["turntable_playing_s"] for r in runs), 2),
               "target_head_s": TARGET_HEAD_S, "met": head <= TARGET_HEAD_S}
    report(summary, args.output)


if __name__ == "__main__":
    main()
