"""End-to-end tests of the Video tab's endpoint ``/reconstruct_video``: app.py in a subprocess, gradio_client.

A tiny-preset checkpoint saved here; the clip is a synthetic head moving across the frame (as in
test_sequence). Bad uploads and parameters must each get a short message naming the problem while the
server keeps answering.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from test_app import start_app, stop  # tests/ is on sys.path under pytest
from test_sequence import FPS, SECONDS, moving_head

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import torch

    from perchead.models.config import PercHeadConfig
    from perchead.models.perchead import PercHead

    tmp = tmp_path_factory.mktemp("video_app")
    torch.manual_seed(0)
    PercHead(PercHeadConfig.preset("tiny")).save_pretrained(tmp / "base")
    process, url, _ = start_app(["--model", str(tmp / "base"), "--edit-model", "none"], tmp)
    yield {"url": url, "process": process, "tmp": tmp}
    stop(process)


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server["url"], verbose=False)


@pytest.fixture(scope="module")
def clip(server) -> Path:
    from perchead.data.clips import render_clip
    from perchead.data.synthetic import make_head, split_seeds
    from perchead.export.turntable import write_mp4

    path = server["tmp"] / "moving.mp4"
    write_mp4(render_clip([make_head(split_seeds("test")[0])], moving_head(FPS * SECONDS)), path, fps=FPS)
    return path


def reconstruct_video(client, path, face_index=0, remove_background=True, use_whole_image=False):
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), face_index, remove_background, use_whole_image,
                          api_name="/reconstruct_video")


def test_endpoint_is_named_and_documented(client):
    endpoint = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/reconstruct_video"]
    assert [p["parameter_name"] for p in endpoint["parameters"]] == ["video", "face_index", "remove_background",
                                                                     "use_whole_image"]
    assert [r["component"].lower() for r in endpoint["returns"]][:2] == ["video", "file"]


def test_clip_gives_a_side_by_side_video_and_a_zip_of_heads(client, clip):
    import imageio

    from perchead.geometry.gaussians import load_ply

    video, heads, timings, summary = reconstruct_video(client, clip)
    video = video["video"] if isinstance(video, dict) else video
    reader = imageio.get_reader(video)
    assert reader.get_meta_data()["codec"] == "h264" and sum(1 for _ in reader) == FPS * SECONDS
    reader.close()
    with zipfile.ZipFile(heads) as archive:
        names = archive.namelist()
        assert len(names) == FPS * SECONDS
        archive.extract(names[0], Path(heads).parent)
    load_ply(Path(heads).parent / names[0]).validate()
    assert {"decode", "track", "reconstruct", "total"} <= set(timings)
    assert f"{FPS * SECONDS} heads in" in summary


@pytest.mark.parametrize("kind, message", [
    ("text", "not a video"), ("png", "not a video"), ("long", "11.0 s long"), ("playlist", "not a video"),
    ("noise", "no face was found in any frame"),
])  # fmt: skip
def test_bad_videos_get_a_short_message_and_the_server_keeps_serving(client, server, clip, kind, message):
    from gradio_client.exceptions import AppError

    from perchead.export.turntable import write_mp4

    path = server["tmp"] / f"bad_{kind}.mp4"
    if kind == "text":
        path.write_text("no video here\n" * 100)
    elif kind == "png":
        from PIL import Image

        Image.new("RGB", (64, 64)).save(path, format="PNG")
    elif kind == "long":
        write_mp4([np.full((48, 64, 3), 128, np.uint8)] * 55, path, fps=5)
    elif kind == "playlist":
        path.write_text(f"#EXTM3U\n#EXTINF:2,\nfile://{clip}\n#EXT-X-ENDLIST\n")
    else:
        write_mp4(list(np.random.default_rng(0).integers(0, 255, (4, 64, 80, 3), dtype=np.uint8)), path, fps=FPS)
    with pytest.raises(AppError, match=message) as raised:
        reconstruct_video(client, path)
    assert "Traceback" not in str(raised.value) and str(server["tmp"]) not in str(raised.value)
    assert server["process"].poll() is None


@pytest.mark.parametrize("args, message", [
    ((-1, True, False), "face_index"), ((0, "yes", False), "remove_background must be true or false"),
])  # fmt: skip
def test_bad_parameters_are_named(client, clip, args, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        reconstruct_video(client, clip, *args)
