"""End-to-end tests of app.py's Editing tab (paper §3.5, supplement §8) through gradio_client.

A real server runs in a subprocess with a tiny base checkpoint and a tiny editing folder
(``edit/``, ``style/``, ``parser/``) saved by the tests; ``/segment`` and ``/edit`` are called like a user
script would, including bad inputs (the server must keep serving). A second server without editing
checkpoints must have no Editing tab and no ``/edit`` endpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_app import start_app, stop  # tests/ is on sys.path under pytest
from test_edit import make_edit_folder

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "examples" / "head0_front.png"
MAP = ROOT / "examples" / "maps" / "map0_front.png"

pytestmark = pytest.mark.slow


def write_tiny_checkpoints(tmp: Path) -> dict:
    """A tiny base checkpoint in ``tmp/base`` and a tiny editing folder in ``tmp/editing``; returns the latter's facts."""
    import torch

    from perchead.models.config import PercHeadConfig
    from perchead.models.perchead import PercHead

    torch.manual_seed(0)
    PercHead(PercHeadConfig.preset("tiny")).save_pretrained(tmp / "base")
    return make_edit_folder(tmp / "editing")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("edit_app")
    facts = write_tiny_checkpoints(tmp)
    return tmp, facts


@pytest.fixture(scope="module")
def server(folders):
    tmp, _ = folders
    process, url, startup = start_app(["--model", str(tmp / "base"), "--edit-model", str(tmp / "editing")], tmp)
    yield {"url": url, "process": process, "tmp": tmp}
    stop(process)


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server["url"], verbose=False)


def editor_value(path) -> dict:
    """The ImageEditor payload a script sends: the map as background and composite, no layers."""
    from gradio_client import handle_file

    return {"background": handle_file(str(path)), "layers": [], "composite": handle_file(str(path))}


def edit(client, map_path, prompt: str = "", image=None, snap: bool = False, frames: int = 0):
    from gradio_client import handle_file

    return client.predict(editor_value(map_path), prompt, None if image is None else handle_file(str(image)), snap,
                          frames, api_name="/edit")


# ------------------------------------------------------------------------------------------ happy path
def test_api_has_documented_segment_and_edit(client, server):
    import httpx

    config = httpx.get(server["url"] + "config", timeout=10).json()
    tabs = {c.get("props", {}).get("label"): c for c in config["components"] if c.get("type") == "tabitem"}
    assert {"Reconstruction", "Editing"} <= set(tabs)  # the Editing tab exists (shown once the models load)
    info = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert [p["parameter_name"] for p in info["/segment"]["parameters"]] == [
        "photo", "remove_background", "auto_crop", "use_whole_image", "map_source"]
    assert [p["parameter_name"] for p in info["/edit"]["parameters"]] == [
        "segmentation_map", "style_prompt", "style_image", "snap_colors", "turntable_frames"]
    returns = [r["component"].lower() for r in info["/edit"]["returns"]]
    assert returns[:2] == ["file", "model3d"]  # the canonical .ply first, then the viewer's copy
    assert "/reconstruct" in info


def test_segment_then_edit_with_text_style(client, folders):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    from perchead.geometry.gaussians import load_ply
    from perchead.geometry.segmentation import PALETTE

    map_path, editor, notes = client.predict(handle_file(str(PHOTO)), True, True, False, api_name="/segment")
    colours = np.unique(np.asarray(Image.open(map_path).convert("RGB")).reshape(-1, 3), axis=0)
    assert all((PALETTE == c).all(1).any() for c in colours)  # only palette colours
    assert "parsed in" in notes
    # the map's source can be chosen; an unknown one is refused with a short message
    _, _, parser_notes = client.predict(handle_file(str(PHOTO)), True, True, False, "parser", api_name="/segment")
    assert "map from the face parser" in parser_notes
    with pytest.raises(AppError, match="map_source must be one of|not in the list of choices"):
        client.predict(handle_file(str(PHOTO)), True, True, False, "../../etc", api_name="/segment")
    ply, viewer, video, views, model_input, downloads, timings, notes = edit(client, map_path, prompt="long blonde hair",
                                                                     frames=4)
    gaussians = load_ply(ply)
    assert gaussians.num_gaussians == folders[1]["n_gaussians"]
    gaussians.validate()
    assert video and video.endswith(".mp4")
    assert len(views) == 7 and views[0]["caption"] == "front"
    assert sorted(Path(p).suffix for p in downloads) == [".glb", ".ply", ".splat"]
    assert {"labels", "style", "encode", "decode", "export_ply", "total"} <= set(timings)
    assert "style from the text" in notes


def test_edit_example_map_with_image_style(client, folders):
    from perchead.geometry.gaussians import load_ply

    ply, _, _, _, model_input, _, timings, notes = edit(client, MAP, image=PHOTO)
    assert load_ply(ply).num_gaussians == folders[1]["n_gaussians"]
    size = folders[1]["image_size"]
    assert Image.open(model_input).size == (2 * size, size)  # map | cropped style image
    assert "style_preprocess" in timings and "style from the image" in notes


# ------------------------------------------------------------------------------------------- bad input
def _write_foreign(tmp: Path) -> Path:
    image = np.asarray(Image.open(MAP).convert("RGB")).copy()
    image[100:140, 100:140] = (12, 200, 90)  # not a palette colour, not a blend
    path = tmp / "foreign.png"
    Image.fromarray(image).save(path)
    return path


def test_foreign_colours_error_and_snap(client, server):
    from gradio_client.exceptions import AppError

    path = _write_foreign(server["tmp"])
    with pytest.raises(AppError, match="not segmentation-palette colours.*Snap"):
        edit(client, path, prompt="red hair")
    ply, *_ = edit(client, path, prompt="red hair", snap=True)
    assert ply.endswith(".ply")


@pytest.mark.parametrize("case,message", [
    ("empty_map", "empty"), ("no_style", "no style"), ("both_styles", "not both"),
    ("corrupt_map", "Bad segmentation map"), ("corrupt_style", "Bad style image: .*corrupt")])
def test_bad_inputs_give_clear_errors(client, server, case, message):
    from gradio_client.exceptions import AppError

    tmp = server["tmp"]
    white = tmp / "white.png"
    Image.new("RGB", (128, 128), "white").save(white)
    corrupt = tmp / "corrupt.png"
    corrupt.write_bytes(MAP.read_bytes()[:200])
    args = {
        "empty_map": dict(map_path=white, prompt="red hair"),
        "no_style": dict(map_path=MAP, prompt="   "),
        "both_styles": dict(map_path=MAP, prompt="red hair", image=PHOTO),
        "corrupt_map": dict(map_path=corrupt, prompt="red hair"),
        "corrupt_style": dict(map_path=MAP, image=corrupt),
    }[case]
    with pytest.raises(AppError, match=message):
        edit(client, **args)
    assert server["process"].poll() is None, "the server must survive bad input"


def test_segment_bad_photo_and_server_survives(client, server):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    bad = server["tmp"] / "text.png"
    bad.write_text("no pixels here\n" * 20)
    with pytest.raises(AppError, match="not an image"):
        client.predict(handle_file(str(bad)), True, True, False, api_name="/segment")
    ply, *_ = edit(client, MAP, prompt="short black hair")  # still serving
    assert ply.endswith(".ply")


# ------------------------------------------------------------------------------------------ no editing
def test_without_editing_checkpoints_there_is_no_editing_tab(folders, tmp_path):
    import httpx

    base = folders[0] / "base"
    process, url, _ = start_app(["--model", str(base), "--edit-model", str(tmp_path / "empty")], tmp_path)
    try:
        config = httpx.get(url + "config", timeout=10).json()
        labels = {c.get("props", {}).get("label") for c in config["components"]}
        assert "Editing" not in labels and "Reconstruction" in labels
        info = httpx.get(url + "gradio_api/info", timeout=10).json()["named_endpoints"]
        assert "/reconstruct" in info and "/edit" not in info and "/segment" not in info
    finally:
        stop(process)


def test_status_line_names_what_is_missing(tmp_path, folders):
    import sys

    sys.path.insert(0, str(ROOT))
    from app import load_edit_holder

    line = load_edit_holder(str(tmp_path)).status_line()
    assert line.startswith("ℹ️ No Editing tab") and "edit/, style/, parser/" in line
    assert "python -m perchead.training.train --task edit" in line and "python -m perchead.training.train --task parser" in line
    assert "\n" not in line  # one line
    assert "disabled" in load_edit_holder("none").status_line()
    holder = load_edit_holder(str(folders[0] / "editing"), device="cpu")
    assert holder.ready() and holder.status_line().startswith("Editing: ready")
