"""Every bundled example through the live app, with the bundled checkpoints and the UI's default settings.

The photos in examples/ go through ``/reconstruct`` exactly as a visitor's click on an example does
(background removal, auto-crop, a 60-frame turntable); the maps in examples/maps/ through ``/edit`` with a
text prompt (the editor's other defaults). The bundled model's size matters: a crop-box bug once broke two
examples only at its 128² input size.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from test_app import start_app, stop  # tests/ is on sys.path under pytest

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = sorted([*(ROOT / "examples").glob("*.png"), *(ROOT / "examples").glob("*.jpg")])
MAPS = sorted((ROOT / "examples" / "maps").glob("*.png"))
UI_DEFAULTS = dict(remove_background=True, auto_crop=True, use_whole_image=False, turntable_frames=72, face_index=0)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from gradio_client import Client

    if not (ROOT / "weights_card" / "model.safetensors").is_file():
        pytest.fail("the bundled checkpoint weights_card/model.safetensors is missing")
    process, url, _ = start_app([], tmp_path_factory.mktemp("examples"))  # bundled weights, default settings
    yield Client(url, verbose=False)
    stop(process)


def test_there_are_examples():
    assert len(PHOTOS) >= 8 and len(MAPS) >= 3
    assert {p.suffix for p in (ROOT / "examples").iterdir() if p.is_file()} <= {".png", ".jpg", ".py"}


@pytest.mark.parametrize("photo", PHOTOS, ids=lambda p: p.name)
def test_example_photo_reconstructs_with_default_settings(client, photo):
    import imageio
    from gradio_client import handle_file

    from perchead.geometry.gaussians import load_ply

    ply, viewer, video, views, model_input, downloads, timings, summary = client.predict(
        handle_file(str(photo)), *UI_DEFAULTS.values(), api_name="/reconstruct")
    load_ply(ply).validate()
    reader = imageio.get_reader(video)
    assert sum(1 for _ in reader) == UI_DEFAULTS["turntable_frames"]
    reader.close()
    assert len(views) == 7 and len(downloads) == 3


@pytest.mark.parametrize("map_path", MAPS, ids=lambda p: p.name)
def test_example_map_edits_with_default_settings(client, map_path):
    from gradio_client import handle_file

    value = {"background": handle_file(str(map_path)), "layers": [], "composite": handle_file(str(map_path))}
    ply, viewer, video, *_ = client.predict(value, "blonde", None, False, 72, api_name="/edit")
    assert ply.endswith(".ply") and video.endswith(".mp4")
