"""End-to-end tests of app.py: a real server in a subprocess, driven through gradio_client.

The server runs a tiny-preset checkpoint saved by the test (``--model <folder>``), offline
(HF_HUB_OFFLINE=1). One server serves every test of the module; bad inputs must each give a clear
error while the server keeps answering.
"""

from __future__ import annotations

import io
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "head2_profile.png"

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_page(url: str, process: subprocess.Popen, timeout: float = 90.0) -> float:
    """Seconds until ``url`` answers 200 (fails if the process dies or time runs out)."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with {process.returncode}:\n{process.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.perf_counter() - start
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def start_app(args: list[str], tmp: Path, env: dict | None = None):
    """Starts app.py with ``args`` (offline unless ``env`` says otherwise); returns (process, url, startup seconds)."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "GRADIO_TEMP_DIR": str(tmp / "gradio"), **(env or {})}
    env.pop("GRADIO_SERVER_NAME", None)
    log = open(tmp / f"app-{port}.log", "w+")
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), "--port", str(port), *args],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    process.stdout = log
    url = f"http://127.0.0.1:{port}/"
    try:
        startup = wait_for_page(url, process)
    except Exception:
        stop(process)
        log.seek(0)
        raise RuntimeError(log.read()[-3000:])
    return process, url, startup


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch

    from perchead.models.config import PercHeadConfig
    from perchead.models.perchead import PercHead

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_model")
    config = PercHeadConfig.preset("tiny")
    PercHead(config).save_pretrained(folder)
    return folder, config.template.n_gaussians


def fitted_count(n: int, preset: str = "real") -> int:
    """Gaussians in a head the app returns: the photo-fit (on by default; the real-photo preset unless "Photo
    of a real person" is unticked) splits a share of them into four."""
    from perchead.fit.config import FitConfig

    return n + 3 * int(FitConfig.preset(preset).gaussians.split_share * n)


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app")
    process, url, startup = start_app(["--model", str(tiny_model[0])], tmp)
    yield {"url": url, "startup": startup, "process": process, "tmp": tmp}
    stop(process)


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server["url"], verbose=False)


def reconstruct(client, path, frames: int = 0, **options):
    from gradio_client import handle_file

    return client.predict(
        handle_file(str(path)),
        options.get("remove_background", True),
        options.get("auto_crop", True),
        options.get("use_whole_image", False),
        frames,
        api_name="/reconstruct",
    )


# ------------------------------------------------------------------------------------------ happy path
def test_server_starts_fast_on_localhost(server):
    assert server["url"].startswith("http://127.0.0.1:")
    assert server["startup"] < 30.0  # the 10-s target is measured by benchmarks/app.py, not on a busy CI box


def test_api_is_named_and_documented(client, server):
    import httpx

    info = client.view_api(return_format="dict", print_info=False)
    endpoint = info["named_endpoints"]["/reconstruct"]
    names = [p["parameter_name"] for p in endpoint["parameters"]]
    assert names == ["image", "remove_background", "auto_crop", "use_whole_image", "turntable_frames", "face_index",
                     "fit_steps", "real_person"]
    returns = [r["component"].lower() for r in endpoint["returns"]]
    assert returns[:2] == ["file", "model3d"]  # the canonical .ply first, then the viewer's copy
    raw = httpx.get(server["url"] + "gradio_api/info", timeout=10).json()["named_endpoints"]["/reconstruct"]
    assert raw["description"].startswith("Reconstructs a 3D head")  # from the handler's docstring


def test_reconstruct_example_returns_a_parsable_ply(client, tiny_model):
    import imageio

    from perchead.geometry.gaussians import load_ply

    ply, viewer, video, views, model_input, downloads, timings, notes = reconstruct(client, EXAMPLE, frames=12)
    assert viewer.endswith(".splat") and Path(viewer).stat().st_size == 32 * fitted_count(tiny_model[1])
    assert ply.endswith(".ply")
    gaussians = load_ply(ply)
    assert gaussians.num_gaussians == fitted_count(tiny_model[1])
    gaussians.validate()
    # the turntable is an H.264 mp4 with the requested number of frames
    reader = imageio.get_reader(video)
    assert reader.get_meta_data()["codec"] == "h264"
    assert sum(1 for _ in reader) == 12
    reader.close()
    assert [view["caption"] for view in views] == [
        "front", "¾ left", "¾ right", "left profile", "right profile", "back", "top",
    ]  # fmt: skip
    assert Image.open(model_input).size[0] == 2 * Image.open(model_input).size[1]
    assert sorted(Path(p).suffix for p in downloads) == [".glb", ".ply", ".splat"]
    assert Path([p for p in downloads if p.endswith(".splat")][0]).stat().st_size == 32 * fitted_count(tiny_model[1])
    assert {"preprocess", "encode", "decode", "fit", "export_ply", "total"} <= set(timings)  # the fit is on by default
    assert "fitting to the photo" in notes


# ------------------------------------------------------------------------------------------- bad input
def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _bomb(side: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


_NOISE = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
BAD_INPUTS = {
    "zero_byte.png": (lambda: b"", "empty"),
    "not_an_image.png": (lambda: b"just some text, no pixels\n" * 40, "not an image"),
    "corrupt.png": (lambda: _png(Image.fromarray(_NOISE))[:3000], "corrupt|truncated"),
    "bomb.png": (lambda: _bomb(40_000), "decompression bomb"),
    "tiny.png": (lambda: _png(Image.new("RGB", (16, 16), (200, 160, 140))), "16×16"),
    "transparent.png": (lambda: _png(Image.new("RGBA", (200, 200), (0, 0, 0, 0))), "transparent"),
    "no_face.png": (lambda: _png(Image.fromarray(_NOISE)), "no face"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_gives_a_clear_error(client, server, name):
    from gradio_client.exceptions import AppError

    make, message = BAD_INPUTS[name]
    path = server["tmp"] / name
    path.write_bytes(make())
    with pytest.raises(AppError, match=message):
        reconstruct(client, path)
    assert server["process"].poll() is None, "the server must survive bad input"


def test_no_face_works_with_whole_image_option(client, server):
    path = server["tmp"] / "no_face_whole.png"
    path.write_bytes(BAD_INPUTS["no_face.png"][0]())
    ply, *_, notes = reconstruct(client, path, use_whole_image=True)
    assert ply.endswith(".ply") and "whole image" in notes


def test_fifty_megapixel_image_is_downscaled(client, server):
    import cv2

    from test_preprocess import cartoon_face  # tests/ is on sys.path under pytest

    path = server["tmp"] / "fifty_megapixels.jpg"
    Image.fromarray(cv2.resize(cartoon_face(866, 578), (8660, 5774), interpolation=cv2.INTER_NEAREST)).save(path, quality=80)
    ply, *_, notes = reconstruct(client, path)
    assert ply.endswith(".ply") and "downscaled from 8660×5774" in notes


def test_oversized_upload_is_refused_by_the_server(server):
    import httpx

    payload = b"\0" * (33 * 1024 * 1024)  # above the app's 32 MB max_file_size
    response = httpx.post(server["url"] + "gradio_api/upload", files={"files": ("big.png", payload)}, timeout=60)
    assert response.status_code == 413


def test_real_person_fits_with_the_real_photo_preset_and_is_checked(client, server, tiny_model):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    from perchead.geometry.gaussians import load_ply
    from perchead.photo.faces import REAL_FACE_PITCH_DEG

    raised = f"pitch {REAL_FACE_PITCH_DEG:+.0f}° for a real face's proportions"
    ply, *_, notes = client.predict(handle_file(str(EXAMPLE)), True, True, False, 0, 0, 2, api_name="/reconstruct")
    ply_synthetic, *_, synthetic = client.predict(handle_file(str(EXAMPLE)), True, True, False, 0, 0, 2, False,
                                                  api_name="/reconstruct")
    # each preset splits its own share of the face's Gaussians
    assert load_ply(ply).num_gaussians == fitted_count(tiny_model[1], "real")
    assert load_ply(ply_synthetic).num_gaussians == fitted_count(tiny_model[1], "fast") < fitted_count(tiny_model[1])
    if "head pose from the face landmarks" in notes:  # a landmark pose: on by default, off when asked
        assert raised in notes and "head pose from the face landmarks" in synthetic and raised not in synthetic
    else:  # no face mesh in this environment: nothing to raise
        assert raised not in notes
    # the real-photo preset also asks for the face mesh's depth profile (applied, or said why not)
    assert "photo-fit: face shape" in notes or "face shape skipped" in notes
    assert "face shape" not in synthetic
    with pytest.raises(AppError, match="real_person must be true or false"):
        client.predict(handle_file(str(EXAMPLE)), True, True, False, 0, 0, 2, "yes", api_name="/reconstruct")
    assert server["process"].poll() is None


def test_server_still_serves_after_bad_inputs(client, server, tiny_model):
    from perchead.geometry.gaussians import load_ply

    ply, *_ = reconstruct(client, EXAMPLE)
    assert load_ply(ply).num_gaussians == fitted_count(tiny_model[1])
    with urllib.request.urlopen(server["url"], timeout=5) as response:
        assert response.status == 200


# ---------------------------------------------------------------------------------------------- fallback
def test_unloadable_model_falls_back_with_a_visible_notice(tmp_path):
    from gradio_client import Client

    process, url, _ = start_app(["--model", str(tmp_path / "no_such_model")], tmp_path)
    try:
        client = Client(url, verbose=False)
        ply, *_, notes = reconstruct(client, EXAMPLE)
        assert ply.endswith(".ply")
        assert "Could not load the requested model" in notes
    finally:
        stop(process)


# -------------------------------------------------------------------------------- inside the model (supp. §7)
def decoder_layers(client, path, *flags):
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), *(flags or (True, True, False, 0)), api_name="/decoder_layers")


def test_decoder_layers_endpoint_one_column_per_layer(client, server, tiny_model):
    import torch
    from gradio_client import handle_file

    from perchead.geometry.gaussians import load_ply
    from perchead.models.config import PercHeadConfig

    L = PercHeadConfig.preset("tiny").decoder.depth
    info = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/decoder_layers"]
    assert [p["parameter_name"] for p in info["parameters"]] == [
        "image", "remove_background", "auto_crop", "use_whole_image", "face_index"]
    strip, layers, files, timings, summary = decoder_layers(client, EXAMPLE)
    assert Image.open(strip).size == (L * 256, 2 * 256)  # a column per layer; front above ¾ left
    assert [item["caption"] for item in layers] == [f"layer {k} of {L}" for k in range(1, L + 1)]
    columns = [np.asarray(Image.open(item["image"]).convert("RGB"), dtype=np.float32) for item in layers]
    assert all(c.shape == (512, 256, 3) for c in columns)
    assert min(np.abs(a - b).mean() for a, b in zip(columns, columns[1:])) > 0  # each layer changes the picture
    names = sorted(Path(f).name for f in files)
    assert names == ["decoder_layers.png", *(f"layer_{k}.ply" for k in range(1, L + 1))]
    assert {"encode", "decode", "render", "export", "total"} <= set(timings) and f"{L} decoder layers" in summary
    # the last layer's head is the head /reconstruct gives without the photo-fit
    ply, *_ = client.predict(handle_file(str(EXAMPLE)), True, True, False, 0, 0, 0, api_name="/reconstruct")
    last = load_ply([f for f in files if f.endswith(f"layer_{L}.ply")][0])
    torch.testing.assert_close(last.means, load_ply(ply).means)
    torch.testing.assert_close(last.colors, load_ply(ply).colors)
    assert server["process"].poll() is None


@pytest.mark.parametrize("case, message", [
    ("no_image", "upload a portrait"),
    ("corrupt.png", "corrupt|truncated"),
    ("no_face.png", "no face"),
    ("flag", "remove_background must be true or false"),
    ("face_index", "face_index must be .*0 to 99"),
])  # fmt: skip
def test_decoder_layers_endpoint_refuses_bad_input(client, server, case, message):
    from gradio_client.exceptions import AppError

    path, flags = EXAMPLE, ()
    if case in BAD_INPUTS:
        path = server["tmp"] / f"layers_{case}"
        path.write_bytes(BAD_INPUTS[case][0]())
    with pytest.raises(AppError, match=message):
        if case == "no_image":
            client.predict(None, True, True, False, 0, api_name="/decoder_layers")
        else:
            decoder_layers(client, path, *{"flag": ("yes", True, False, 0), "face_index": (True, True, False, 100)}
                           .get(case, flags))
    assert server["process"].poll() is None
