"""Adversarial tests of the live app: malformed inputs, hostile parameters, path traversal, and raw HTTP
against Gradio's own routes (memory, server-side file reads, the queue, uploads, request bodies).

One server (tiny base + tiny editing checkpoints) runs with its TMPDIR in a sandbox folder that holds
canary files. Every malformed input must get a short message that names the problem (no class names,
paths or tracebacks), the server must keep serving, its memory must stay within 300 MB of idle through
the memory attacks, and nothing outside the app's output root may be read, created or removed —
whatever session id, file name, path or URL a client sends.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_app import free_port, stop, wait_for_page  # tests/ is on sys.path under pytest
from test_app_edit import editor_value, write_tiny_checkpoints

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "examples" / "head0_front.png"
MAP = ROOT / "examples" / "maps" / "map0_front.png"
LEAKS = ("Traceback", "/tmp", "sandbox", "ValueError", "TypeError", "RuntimeError", "KeyError", "Exception",
         "site-packages", ".py")

UPLOAD_BUDGET = 64 * 1024**2  # the test server's disk limit for outputs and uploads together
UPLOAD_GRACE_S = 8  # the test server's age below which an upload is never evicted
RSS_MARGIN = 300 * 1024**2  # memory attacks may raise the server's RSS by at most this over idle

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------------------------- server
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adversarial")
    write_tiny_checkpoints(tmp)
    sandbox = tmp / "sandbox"  # the server's whole temp dir
    sandbox.mkdir()
    canaries = [sandbox / "canary.txt", tmp / "canary-outside.txt"]
    for canary in canaries:
        canary.write_text("must survive")
    port = free_port()
    secret = sandbox / "secret_face.png"  # a readable image outside Gradio's folders: must never be processed
    secret.write_bytes(PHOTO.read_bytes())
    canaries.append(secret)
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", TMPDIR=str(sandbox),
               PERCHEAD_OUTPUT_MAX_BYTES=str(UPLOAD_BUDGET), PERCHEAD_UPLOAD_GRACE_S=str(UPLOAD_GRACE_S))
    for name in ("GRADIO_SERVER_NAME", "GRADIO_TEMP_DIR"):
        env.pop(name, None)
    log = open(tmp / "app.log", "w+")
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--model", str(tmp / "base"),
         "--edit-model", str(tmp / "editing")],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_page(url, process)
    except Exception:
        stop(process)
        raise RuntimeError(Path(tmp / "app.log").read_text()[-3000:])
    before = snapshot(sandbox)
    yield {"url": url, "process": process, "tmp": tmp, "sandbox": sandbox, "canaries": canaries, "log": tmp / "app.log",
           "before": before, "secret": secret,
           "canary_times": {str(c): c.stat().st_atime_ns for c in canaries}}
    stop(process)


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server["url"], verbose=False)


def snapshot(sandbox: Path) -> set[str]:
    """Every file and folder under the sandbox, outside Gradio's cache folder (where the app's outputs live)."""
    return {str(p.relative_to(sandbox)) for p in sandbox.rglob("*") if not p.relative_to(sandbox).parts[0] == "gradio"}


def reconstruct(client, image, remove_background=True, auto_crop=True, use_whole_image=False, frames=0, face=0,
                fit_steps=0):
    from gradio_client import handle_file

    image = handle_file(str(image)) if isinstance(image, Path) else image
    return client.predict(image, remove_background, auto_crop, use_whole_image, frames, face, fit_steps,
                          api_name="/reconstruct")


def assert_clear_error(error: Exception, pattern: str) -> None:
    import re

    text = str(error)
    assert re.search(pattern, text, re.IGNORECASE), f"expected /{pattern}/ in {text!r}"
    assert len(text) < 400, f"message too long: {text!r}"
    for leak in LEAKS:
        assert leak not in text, f"{leak!r} leaked in {text!r}"


# ---------------------------------------------------------------------------------------------- files
def _png(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _png_header(width: int, height: int, bit_depth: int = 8, color: int = 0) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _gif_bomb() -> bytes:
    return b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00" + b",\x00\x00\x00\x00" + struct.pack(
        "<HH", 65535, 65535) + b"\x00\x02\x02\x44\x01\x00;"


def _bmp_bomb() -> bytes:
    header = b"BM" + struct.pack("<IHHI", 54, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, 50000, 50000, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return header + info


def _noise(h: int, w: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))


def _photo() -> Image.Image:
    return Image.open(PHOTO).convert("RGB")


def _animated() -> bytes:
    frames = [_photo(), _photo().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


REFUSED = {  # name → (file bytes, what the message must say)
    "zero_byte.png": (lambda: b"", "empty"),
    "text.png": (lambda: b"just some text, no pixels\n" * 40, "not an image"),
    "truncated.png": (lambda: _png(_noise(240, 320))[:3000], "corrupt|truncated"),
    "truncated.jpg": (lambda: _save(_noise(240, 320), "JPEG")[:2000], "corrupt|truncated"),
    "bad_crc.png": (lambda: _png(_noise(64, 64))[:40] + b"\0\0\0\0" + _png(_noise(64, 64))[44:], "corrupt|not an image"),
    "bomb.png": (lambda: _png_header(40_000, 40_000), "decompression bomb"),
    "bomb.gif": (_gif_bomb, "decompression bomb|corrupt"),
    "bomb.bmp": (_bmp_bomb, "decompression bomb|corrupt"),
    "one_pixel.png": (lambda: _png(Image.new("RGB", (1, 1), "white")), "1×1"),
    "tiny.png": (lambda: _png(Image.new("RGB", (16, 16), (200, 160, 140))), "16×16"),
    "strip.png": (lambda: _png(Image.new("RGB", (10000, 10), (200, 160, 140))), "10000×10"),
    "transparent.png": (lambda: _png(Image.new("RGBA", (200, 200), (0, 0, 0, 0))), "transparent"),
    "no_face.png": (lambda: _png(_noise(240, 320)), "no face"),
    "drawing.svg": (lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100">'
                    b'<script>alert(1)</script><circle r="40"/></svg>', "not an image"),
    "document.pdf": (lambda: b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n", "not an image"),
    "page.html.png": (lambda: b"<html><body><img src=x onerror=alert(1)></body></html>", "not an image"),
    "archive.zip": (lambda: b"PK\x05\x06" + b"\0" * 18, "not an image"),
    "header_only.webp": (lambda: b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\0" * 20, "corrupt|not an image"),
}
ACCEPTED = {  # valid but unusual images: they must work (the reply notes what was done)
    "sixteen_bit.png": lambda: _png(Image.fromarray((np.asarray(_photo().convert("L"), np.uint16) * 257))),
    "cmyk.jpg": lambda: _save(_photo().convert("CMYK"), "JPEG"),
    "animated.gif": _animated,
    "palette.png": lambda: _png(_photo().convert("P")),
    "grayscale.jpg": lambda: _save(_photo().convert("L"), "JPEG"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_malformed_file_is_refused_clearly(client, server, name):
    from gradio_client.exceptions import AppError

    make, pattern = REFUSED[name]
    path = server["tmp"] / name
    path.write_bytes(make())
    with pytest.raises(AppError) as error:
        reconstruct(client, path)
    assert_clear_error(error.value, pattern)
    assert server["process"].poll() is None


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_unusual_but_valid_image_works(client, server, name):
    path = server["tmp"] / name
    path.write_bytes(ACCEPTED[name]())
    ply, *_ = reconstruct(client, path)
    assert ply.endswith(".ply")


# ----------------------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("case,pattern", [
    (dict(frames=7.5), "whole number"),
    (dict(frames=-1), "0 to 120|from 0|minimum|0"),
    (dict(frames=100_000), "120"),
    (dict(frames="ten"), "whole number|number"),
    (dict(remove_background="no"), "true or false"),
    (dict(auto_crop=None), "true or false"),
    (dict(use_whole_image=1), "true or false"),
    (dict(image=None), "upload a portrait"),
    (dict(fit_steps=-5), "0 to 200|from 0"),
    (dict(fit_steps=100_000), "200"),
    (dict(fit_steps=2.5), "whole number"),
    (dict(face=-1), "0 to 99|from 0"),
    (dict(face="first"), "whole number"),
])  # fmt: skip
def test_bad_parameter_is_refused_clearly(client, server, case, pattern):
    from gradio_client.exceptions import AppError

    args = dict(image=PHOTO, **case) if "image" not in case else dict(case)
    with pytest.raises(AppError) as error:
        reconstruct(client, **args)
    assert_clear_error(error.value, pattern)


# -------------------------------------------------------------------------------------------- editing
def _map_file(tmp: Path, name: str, image: Image.Image) -> Path:
    path = tmp / name
    image.save(path)
    return path


def edit(client, map_value, prompt="", style=None, snap=False, frames=0):
    from gradio_client import handle_file

    style = handle_file(str(style)) if isinstance(style, Path) else style
    return client.predict(map_value, prompt, style, snap, frames, api_name="/edit")


def _edit_cases(tmp: Path) -> dict:
    corrupt = tmp / "corrupt_style.png"
    corrupt.write_bytes(PHOTO.read_bytes()[:300])
    pdf = tmp / "map.pdf"
    pdf.write_bytes(b"%PDF-1.4\n%%EOF\n")
    base = Image.open(MAP).convert("RGB")
    return {
        "small_map": (dict(map_value=editor_value(_map_file(tmp, "small.png", base.resize((40, 40), Image.NEAREST))),
                           prompt="red hair"), "too small|at least 64"),
        "strip_map": (dict(map_value=editor_value(_map_file(tmp, "strip.png", base.resize((100, 37), Image.NEAREST))),
                           prompt="red hair"), "square"),
        "blank_map": (dict(map_value=editor_value(_map_file(tmp, "blank.png", Image.new("RGB", (128, 128), "white"))),
                           prompt="red hair"), "empty"),
        "pdf_map": (dict(map_value=editor_value(pdf), prompt="red hair"), "Bad segmentation map"),
        "no_map": (dict(map_value=None, prompt="red hair"), "segmentation map first"),
        "huge_prompt": (dict(map_value=editor_value(MAP), prompt="blonde " * 400), "characters"),
        "no_style": (dict(map_value=editor_value(MAP), prompt="  "), "no style"),
        "both_styles": (dict(map_value=editor_value(MAP), prompt="red", style=PHOTO), "not both"),
        "corrupt_style": (dict(map_value=editor_value(MAP), style=corrupt), "corrupt|truncated|cannot"),
        "bad_snap": (dict(map_value=editor_value(MAP), prompt="red", snap="yes"), "true or false"),
        "bad_frames": (dict(map_value=editor_value(MAP), prompt="red", frames=2.5), "whole number"),
    }


@pytest.mark.parametrize("case", ["small_map", "strip_map", "blank_map", "pdf_map", "no_map", "huge_prompt",
                                  "no_style", "both_styles", "corrupt_style", "bad_snap", "bad_frames"])
def test_bad_edit_input_is_refused_clearly(client, server, case):
    from gradio_client.exceptions import AppError

    args, pattern = _edit_cases(server["tmp"])[case]
    with pytest.raises(AppError) as error:
        edit(client, **args)
    assert_clear_error(error.value, pattern)


def test_long_prompt_is_read_with_a_note(client):
    *_, notes = edit(client, editor_value(MAP), prompt="long wavy " * 20 + "red hair")
    assert "tokens long" in notes


def test_style_image_without_a_face_uses_the_whole_image(client, server):
    path = server["tmp"] / "swatch.png"
    Image.new("RGB", (128, 128), (230, 40, 30)).save(path)
    ply, *_, notes = edit(client, editor_value(MAP), style=path)
    assert ply.endswith(".ply") and "whole image" in notes


@pytest.mark.parametrize("name,pattern", [("text.png", "not an image"), ("no_face.png", "no face")])
def test_bad_photo_to_segment_is_refused_clearly(client, server, name, pattern):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    path = server["tmp"] / f"segment_{name}"
    path.write_bytes(REFUSED[name][0]())
    with pytest.raises(AppError) as error:
        client.predict(handle_file(str(path)), True, True, False, api_name="/segment")
    assert_clear_error(error.value, pattern)


# ------------------------------------------------------------------------------------------ traversal
HOSTILE_SESSIONS = ["..", ".", "../../escape", "/abs/escape", "%2E%2E", "a/../../escape", "x" * 300, "..\\escape"]


@pytest.mark.parametrize("session", HOSTILE_SESSIONS)
def test_hostile_session_ids_cannot_steer_files(server, session):
    from gradio_client import Client, handle_file

    client = Client(server["url"], verbose=False)
    client.session_hash = session
    output_root = server["sandbox"] / "gradio" / "perchead"
    jobs_before = {p.name for p in output_root.iterdir()}
    try:
        client.predict(handle_file(str(PHOTO)), True, True, False, 0, api_name="/reconstruct")
    except Exception:  # Gradio itself may refuse the id: fine, as long as nothing is written outside
        return
    new = [p for p in output_root.iterdir() if p.name not in jobs_before]
    assert len(new) == 1 and (new[0] / "head.ply").is_file()  # a server-named folder under the output root
    assert session not in {p.name for p in output_root.iterdir()}
    assert not list(server["tmp"].rglob("escape")) and not Path("/abs/escape").exists()


@pytest.mark.parametrize("session", ["..", ".", "%2E%2E", "%2e%2e%2F%2e%2e", "..%2F..", "%2Ftmp", "perchead"])
def test_heartbeat_disconnect_with_hostile_session_deletes_nothing(server, session):
    import httpx

    output_root = server["sandbox"] / "gradio" / "perchead"
    keep = output_root / "a1b2c3d4e5f60718"  # looks like a job folder of another session
    keep.mkdir(parents=True, exist_ok=True)
    (keep / "head.ply").write_text("another visitor's head")
    try:
        with httpx.stream("GET", server["url"] + "gradio_api/heartbeat/" + session, timeout=5) as response:
            if response.status_code == 200:
                next(response.iter_bytes())
    except httpx.HTTPError:
        pass
    time.sleep(1.0)  # the unload handler runs after the disconnect
    assert (keep / "head.ply").exists()
    assert all(canary.exists() for canary in server["canaries"])
    assert output_root.is_dir()


@pytest.mark.parametrize("route", [
    "gradio_api/file=../../../../etc/passwd", "gradio_api/file=/etc/passwd", "gradio_api/file=%2E%2E/canary.txt",
    "gradio_api/file=..%2F..%2Fcanary-outside.txt", "gradio_api/file={sandbox}/canary.txt",
    "gradio_api/file={tmp}/canary-outside.txt", "gradio_api/file=app.py", "gradio_api/file=weights_card/config.json",
])  # fmt: skip
def test_file_routes_refuse_traversal(server, route):
    import httpx

    url = server["url"] + route.format(sandbox=server["sandbox"], tmp=server["tmp"])
    response = httpx.get(url, timeout=10)
    assert response.status_code in (403, 404), f"{route}: {response.status_code}"
    assert b"must survive" not in response.content and b"root:" not in response.content


def test_upload_names_cannot_escape_the_cache(server):
    import httpx

    png = _png(_photo())
    for name in ("../../escape.png", "/abs/escape.png", "..\\..\\escape.png"):
        response = httpx.post(server["url"] + "gradio_api/upload", files={"files": (name, png)}, timeout=30)
        assert response.status_code == 200
        (stored,) = response.json()
        assert Path(stored).resolve().is_relative_to((server["sandbox"] / "gradio").resolve())
    cache = (server["sandbox"] / "gradio").resolve()
    assert all(p.resolve().is_relative_to(cache) for p in server["tmp"].rglob("escape.png"))


# ------------------------------------------------------------------------------------ Gradio's own routes
@contextmanager
def rss_peak(server):
    """Samples the server's RSS every 20 ms; yields a dict whose "rise" is the peak over the value before."""
    import psutil

    import httpx

    process = psutil.Process(server["process"].pid)
    httpx.get(server["url"], timeout=10)  # idle = after serving the page and its config
    server["config"] = httpx.get(server["url"] + "config", timeout=10).json()
    idle = process.memory_info().rss
    record, stop_sampling = {"idle": idle, "peak": idle}, threading.Event()

    def sample():
        while not stop_sampling.is_set():
            record["peak"] = max(record["peak"], process.memory_info().rss)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield record
    finally:
        time.sleep(0.3)
        stop_sampling.set()
        sampler.join()
        record["rise"] = record["peak"] - idle


def api(server, route: str) -> str:
    return server["url"] + "gradio_api/" + route


def component_id(server, elem_id: str) -> int:
    import httpx

    if "config" not in server:
        server["config"] = httpx.get(server["url"] + "config", timeout=10).json()
    config = server["config"]
    return next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id)


def send_blob(server, blob: bytes, index="null", kind="layer", key="attack", fn_name="accept_blobs", elem_id=None):
    import httpx

    fields = {"component_id": str(component_id(server, elem_id or "segmentation-editor")), "session_hash": "attacker",
              "fn_name": fn_name, "type": kind, "index": str(index), "id": key}
    return httpx.post(api(server, "component_server/"), data=fields, files={"blob": ("blob", blob, "image/png")},
                      timeout=60)


def call(server, endpoint: str, data: list):
    """POST /gradio_api/call/<endpoint> (the queued REST route); returns the response of the POST."""
    import httpx

    return httpx.post(api(server, f"call/{endpoint}"), json={"data": data}, timeout=30)


def call_result(server, endpoint: str, data: list) -> tuple[str, str]:
    """Runs a queued REST call to its end; returns (last event name, its data)."""
    import httpx

    response = call(server, endpoint, data)
    assert response.status_code == 200, response.text
    event_id = response.json()["event_id"]
    event = payload = None
    with httpx.stream("GET", api(server, f"call/{endpoint}/{event_id}"), timeout=120) as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                payload = line.split(":", 1)[1].strip()
                if event in ("complete", "error"):
                    break
    return event, payload


def white_png(side: int) -> bytes:
    """A white ``side``² PNG, a few hundred KB for 9000² (a memory attack when decoded: 4 bytes per pixel)."""
    row = b"\0" + b"\xff" * side
    compressor, parts = zlib.compressobj(9), []
    for _ in range(side):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def upload(server, name: str, content: bytes):
    import httpx

    return httpx.post(api(server, "upload"), files={"files": (name, content)}, timeout=60)


def file_data(path: str, meta: bool = True) -> dict:
    value = {"path": path, "orig_name": Path(path).name}
    return {**value, "meta": {"_type": "gradio.FileData"}} if meta else value


def test_editor_upload_helper_cannot_exhaust_memory(server):
    """Case 1: accept_blobs with a huge layer index, odd parts, non-images, bombs and many ids."""
    small = _png(Image.new("RGB", (8, 8), "white"))
    big = _png(_noise(1150, 1150))  # ≈ 3.8 MiB that PNG cannot shrink
    assert send_blob(server, small, index=0).status_code == 200  # idle = after one ordinary request of each kind
    assert send_blob(server, big, kind="background", key="warm").status_code == 200
    with rss_peak(server) as memory:
        for index in (50_000_000, "1e9", -1, 4, "x"):
            response = send_blob(server, small, index=index)
            assert response.status_code == 400 and "index" in response.json()["detail"], response.text
        assert send_blob(server, small, kind="mask").status_code == 400
        assert send_blob(server, small, key="../../etc").status_code == 400
        assert send_blob(server, b"not an image at all").status_code == 400
        assert send_blob(server, white_png(9000)).status_code == 400  # 81 MP declared
        assert send_blob(server, small, index=3).status_code == 200  # the largest allowed layer
        assert send_blob(server, os.urandom(5 * 1024**2)).status_code == 413  # over one editor image
        for key in range(24):  # 90 MiB of pending values under different ids: the oldest are dropped
            assert send_blob(server, big, kind="background", key=f"id{key}").status_code == 200
    assert memory["rise"] < RSS_MARGIN, f"RSS rose {memory['rise'] / 2**20:.0f} MB"
    for fn_name in ("preprocess", "postprocess", "__init__", "accept_blobs_", "ls", "_load"):  # what comes next
        assert send_blob(server, small, fn_name=fn_name).status_code == 404
    assert send_blob(server, small, elem_id="portrait").status_code == 404  # other components have no helper
    import httpx

    response = httpx.post(api(server, "component_server"), json={"component_id": component_id(
        server, "segmentation-editor"), "session_hash": "x", "fn_name": "accept_blobs", "data": {"type": "layer"}})
    assert response.status_code == 400  # the JSON form of the call is refused, not a crash
    assert server["process"].poll() is None


@pytest.mark.parametrize("copies,pattern", [(16, "at most 6 images"), (3, "megapixels")])
def test_editor_layers_are_budgeted_before_decoding(client, server, copies, pattern):
    """Case 2: /edit with many copies of one small-on-disk 9000² PNG in its layers."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    path = server["tmp"] / "white9000.png"
    if not path.exists():
        path.write_bytes(white_png(9000))
    layer = handle_file(str(path))
    value = {"background": handle_file(str(MAP)), "layers": [layer] * copies, "composite": handle_file(str(MAP))}
    with rss_peak(server) as memory:
        with pytest.raises(AppError) as error:
            edit(client, value, prompt="red hair")
    assert_clear_error(error.value, pattern)
    assert memory["rise"] < RSS_MARGIN, f"RSS rose {memory['rise'] / 2**20:.0f} MB"


SERVER_PATHS = ["{secret}", "/etc/passwd", "/proc/self/environ", "/etc", "/no/such/file.png", "{sandbox}/canary.txt",
                "{tmp}/canary-outside.txt", "{gradio}/../secret_face.png", "app.py", "examples/../app.py",
                "{gradio}/perchead/../../secret_face.png", "file://{secret}", "~/.bashrc", "", "\u0000"]


@pytest.mark.parametrize("meta", [True, False])
@pytest.mark.parametrize("endpoint", ["reconstruct", "decoder_layers", "segment", "edit_style", "edit_map",
                                      "reconstruct_video"])
def test_file_arguments_must_be_files_this_server_stored(server, endpoint, meta):
    """Case 3: a path to any readable file on the server, with or without ``meta``, on every file input;
    the answer is the same whether the path exists, is a folder, or is not an image."""
    answers = set()
    jobs = server["sandbox"] / "gradio" / "perchead"
    before = set(os.listdir(jobs))
    for template in SERVER_PATHS:
        path = template.format(secret=server["secret"], sandbox=server["sandbox"], tmp=server["tmp"],
                               gradio=server["sandbox"] / "gradio")
        arg = file_data(path, meta)
        data = {
            "reconstruct": [arg, True, True, False, 0, 0, 0, True],
            "decoder_layers": [arg, True, True, False, 0],
            "segment": [arg, True, True, False, "auto"],
            "edit_style": [{"background": file_data(str(MAP)), "layers": [], "composite": None}, "", arg, False, 0],
            "edit_map": [{"background": arg, "layers": [arg], "composite": arg}, "red hair", None, False, 0],
            "reconstruct_video": [arg, 0, True, False],
        }[endpoint]
        response = call(server, endpoint.split("_")[0] if endpoint.startswith("edit") else endpoint, data)
        assert response.status_code == 400, f"{path!r}: {response.status_code} {response.text[:200]}"
        answers.add(response.json()["detail"])
    assert len(answers) == 1 and "uploaded to this server" in answers.pop()
    assert set(os.listdir(jobs)) == before  # no job ran


def test_file_argument_shapes_attackers_try_next(server):
    """Other shapes: a data: URL, a url-only value, nested lists, a path inside a URL, odd types."""
    secret = str(server["secret"])
    png = _png(_photo())
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    for arg in ({"url": data_url, "meta": {"_type": "gradio.FileData"}}, {"path": None, "url": data_url},
                {"url": " DATA:image/png;base64,AAAA"}, {"path": [secret]}, {"path": 7}, {"path": {"path": secret}}):
        response = call(server, "reconstruct", [arg, True, True, False, 0, 0, 0, True])
        assert response.status_code == 400, f"{arg!r:.80}: {response.status_code}"
        assert secret not in response.text and "Traceback" not in response.text
    import httpx

    fn_index = next(d["id"] for d in httpx.get(server["url"] + "config", timeout=10).json()["dependencies"]
                    if d.get("api_name") == "reconstruct")
    for route, body in (("call/v2/reconstruct", {"image": {"path": secret}}),
                        ("queue/join", {"data": [{"path": secret}, True, True, False, 0, 0, 0, True],
                                        "fn_index": fn_index, "session_hash": "abcdef123"})):
        response = httpx.post(api(server, route), json=body, timeout=30)
        assert response.status_code == 400 and "uploaded to this server" in response.text, route
    event, payload = call_result(server, "reconstruct", [{"path": f"{server['sandbox']}/gradio/nothing-here.png"},
                                                          True, True, False, 0, 0, 0, True])  # in the cache, never stored
    assert event == "error" and "nothing-here" not in payload and "Traceback" not in payload


@pytest.mark.parametrize("route", ["run/reconstruct", "api/reconstruct", "run/reconstruct_video", "run/edit",
                                   "run/segment", "run/decoder_layers", "api/reconstruct_video/"])
def test_model_endpoints_cannot_skip_the_queue(server, route):
    """Case 4: the direct REST routes run nothing that does model work (they used to skip the queue)."""
    import httpx

    jobs = server["sandbox"] / "gradio" / "perchead"
    before = set(os.listdir(jobs))
    upload_path = upload(server, "face.png", PHOTO.read_bytes()).json()[0]
    data = [file_data(upload_path), True, True, False, 0, 0, 0, True]
    response = httpx.post(api(server, route), json={"data": data}, timeout=60)
    assert response.status_code in (403, 404), f"{route}: {response.status_code} {response.text[:200]}"
    assert "queue" in response.text.lower()
    assert set(os.listdir(jobs)) == before


def test_queue_bypass_by_function_index_is_refused(server):
    import httpx

    config = httpx.get(server["url"] + "config", timeout=10).json()
    queued = [d["id"] for d in config["dependencies"] if d.get("api_name") in ("reconstruct", "edit", "segment")]
    assert queued
    for fn_index in queued:
        response = httpx.post(api(server, "run/predict"), json={"data": [None] * 8, "fn_index": fn_index}, timeout=30)
        assert response.status_code in (403, 404), response.text[:200]


@pytest.mark.parametrize("route", ["process_recording", "vibe-edit", "undo-vibe-edit", "stream/abc", "run-history/connect",
                                   "mcp/messages/", "login"])
def test_unused_post_routes_are_closed(server, route):
    import httpx

    response = httpx.post(api(server, route), content=b"{}", headers={"content-type": "application/json"}, timeout=10)
    assert response.status_code == 404


def cache_bytes(server) -> int:
    root = server["sandbox"] / "gradio"
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def test_uploads_count_against_the_disk_limit(server):
    """Case 5: a flood of uploads without a job is refused once outputs and uploads reach the limit, and
    uploads past the grace age make room again."""
    mib = os.urandom(1024**2)
    accepted = refused = 0
    for k in range(UPLOAD_BUDGET // 1024**2 + 20):
        response = upload(server, f"flood{k}.bin", mib[:-8] + k.to_bytes(8, "big"))
        if response.status_code == 507:
            refused += 1
            assert "full" in response.text
        else:
            assert response.status_code == 200
            accepted += 1
        assert cache_bytes(server) <= UPLOAD_BUDGET + 1024**2 + 64 * 1024
    assert refused > 0 and accepted < UPLOAD_BUDGET // 1024**2 + 20
    import httpx

    many = [("files", (f"f{k}.bin", mib)) for k in range(40)]  # 40 MiB in one request: over the body limit
    assert httpx.post(api(server, "upload"), files=many, timeout=60).status_code == 413
    time.sleep(UPLOAD_GRACE_S + 0.5)
    assert upload(server, "after.png", _png(_photo())).status_code == 200  # the old flood was evicted


def raw_post(server, route: str, headers: dict, body: bytes = b"") -> tuple[int, bytes]:
    """A POST written on a socket (to declare any Content-Length); returns (status, response bytes)."""
    host, port = server["url"].split("//")[1].strip("/").split(":")
    lines = [f"POST /gradio_api/{route} HTTP/1.1", f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in headers.items()),
             "", ""]
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall("\r\n".join(lines).encode() + body)
        reply = b""
        while b"\r\n\r\n" not in reply:
            part = connection.recv(65536)
            if not part:
                break
            reply += part
    return int(reply.split()[1]), reply


def test_data_urls_and_huge_bodies_are_refused_before_decoding(server):
    """Case 6: a data: URL over the upload limit, a 12000² PNG as a data URL, a 100 MiB JSON body."""
    import httpx

    with rss_peak(server) as memory:
        big = base64.b64encode(os.urandom(33 * 1024**2)).decode()
        response = httpx.post(api(server, "call/reconstruct"), timeout=60, json={"data": [
            {"url": "data:image/png;base64," + big, "meta": {"_type": "gradio.FileData"}}, True, True, False, 0, 0, 0,
            True]})
        assert response.status_code == 413
        wide = base64.b64encode(white_png(12000)).decode()
        response = call(server, "reconstruct", [{"url": "data:image/png;base64," + wide, "path": None}, True, True,
                                                False, 0, 0, 0, True])
        assert response.status_code in (400, 413) and "Traceback" not in response.text
        status, _ = raw_post(server, "queue/join", {"Content-Type": "application/json", "Content-Length": 100 * 1024**2},
                             b"{")
        assert status == 413
        status, _ = raw_post(server, "queue/join", {"Content-Type": "application/json",
                                                    "Transfer-Encoding": "chunked"}, b"1\r\n{\r\n")
        assert status == 411
        status, _ = raw_post(server, "upload", {"Content-Type": "multipart/form-data; boundary=x",
                                                "Content-Length": 200 * 1024**2}, b"--x")
        assert status == 413
        for route in ("upload", "component_server"):  # a JSON body is held to the small limit on every route
            status, _ = raw_post(server, route, {"Content-Type": "application/json", "Content-Length": 1024**2}, b"[")
            assert status == 413
    assert memory["rise"] < RSS_MARGIN, f"RSS rose {memory['rise'] / 2**20:.0f} MB"
    assert server["process"].poll() is None


def test_empty_head_mask_is_a_clear_refusal(client, server):
    """Case 7: the app's own model_input.png fed back, and a test pattern with the whole image, get a message."""
    from gradio_client.exceptions import AppError

    pattern = server["tmp"] / "pattern.png"
    bars = np.zeros((256, 256, 3), np.uint8)
    for k, colour in enumerate([(255, 255, 255), (255, 255, 0), (0, 255, 255), (0, 255, 0), (255, 0, 255),
                                (255, 0, 0), (0, 0, 255), (0, 0, 0)]):
        bars[:, k * 32:(k + 1) * 32] = colour
    Image.fromarray(bars).save(pattern)
    _, _, _, _, model_input, *_ = reconstruct(client, PHOTO)
    for image, whole in ((Path(model_input), False), (pattern, True)):
        try:
            reconstruct(client, image, use_whole_image=whole)
        except AppError as error:
            assert "unexpectedly" not in str(error)
            assert_clear_error(error, "no face|mask|background|nothing of the head")
    from gradio_client import handle_file

    from perchead.export.turntable import write_mp4

    clip = server["tmp"] / "pattern.mp4"
    write_mp4([bars] * 10, clip, fps=10)
    try:
        client.predict(handle_file(str(clip)), 0, True, True, api_name="/reconstruct_video")
    except AppError as error:
        assert "unexpectedly" not in str(error)
        assert_clear_error(error, "no face|mask|background|nothing of the head")


def test_documented_values_work_and_undocumented_are_refused(client, server):
    """Case 8: map_source="landmarks" (documented) works; face_index true and 1e-7 are refused."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    photo = sorted((ROOT / "examples").glob("photo_*.jpg"))[0]
    parsed, _, notes = client.predict(handle_file(str(photo)), True, True, True, "landmarks", api_name="/segment")
    assert parsed.endswith(".png")
    for face in (True, 1e-7, 0.5, "1"):
        with pytest.raises(AppError) as error:
            reconstruct(client, PHOTO, face=face)
        assert_clear_error(error.value, "whole number")
    with pytest.raises(AppError) as error:
        client.predict(handle_file(str(photo)), True, True, True, "lips", api_name="/segment")
    assert_clear_error(error.value, "auto, landmarks, parser")


def test_style_prompt_is_shown_literally(client):
    """Case 9 (summary): Markdown and HTML in the style prompt are escaped in the summary."""
    prompt = "**bold** [link](http://evil.example) <img src=x onerror=alert(1)> red hair"
    *_, summary = edit(client, editor_value(MAP), prompt=prompt)
    assert "\\*\\*bold\\*\\*" in summary and "\\[link\\]" in summary and "<img" not in summary
    assert "&lt;img" in summary


def test_gradio_level_refusals_give_a_message(server):
    """Case 9 (messages): refusals that Gradio itself used to raise name the problem (no "error": null)."""
    upload_path = upload(server, "face.png", PHOTO.read_bytes()).json()[0]
    for endpoint, data, pattern in [
        ("segment", [file_data(upload_path), True, True, False, "lips"], "map_source"),
        ("reconstruct", [file_data(upload_path), True, True, False, 0, True, 0, True], "face_index"),
        ("reconstruct", [file_data(upload_path), True, True, False, 0, 1e-7, 0, True], "face_index"),
    ]:
        event, payload = call_result(server, endpoint, data)
        assert event == "error" and payload not in ("null", None) and pattern in payload, payload


def test_a_job_killed_mid_way_leaves_nothing_after_a_restart(tmp_path):
    """Case 9 (leftovers): kill -9 during a job; the restarted server removes the half-written folder."""
    from gradio_client import Client, handle_file

    from test_app import start_app

    write_tiny_checkpoints(tmp_path)
    args = ["--model", str(tmp_path / "base"), "--edit-model", "none"]
    process, url, _ = start_app(args, tmp_path)
    jobs = tmp_path / "gradio" / "perchead"
    try:
        job = Client(url, verbose=False).submit(handle_file(str(PHOTO)), True, True, False, 120, 0, 200, True,
                                                api_name="/reconstruct")
        deadline = time.time() + 60
        while time.time() < deadline and not any(jobs.glob("*/.running")):
            time.sleep(0.1)
        assert any(jobs.glob("*/.running")), "the job never started"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        half = [p.parent for p in jobs.glob("*/.running")]
        finished = jobs / "0123456789abcdef"  # a finished job of the earlier run: kept until its age limit
        finished.mkdir()
        (finished / "head.ply").write_text("done")
        del job
    finally:
        stop(process)
    process, url, _ = start_app(args, tmp_path)
    try:
        assert half and not any(p.exists() for p in half)
        assert (finished / "head.ply").exists()
    finally:
        stop(process)


# ------------------------------------------------------------------------------------------ aftermath
def test_zz_nothing_outside_the_output_root_changed_and_the_server_serves(client, server):
    """Runs last (module order): canaries intact, no new files outside Gradio's cache, no tracebacks logged."""
    atimes = {str(c): c.stat().st_atime_ns for c in server["canaries"]}
    assert atimes == server["canary_times"], "a canary outside the output root was read"
    assert all(canary.read_bytes() in (b"must survive", PHOTO.read_bytes()) for canary in server["canaries"])
    created = snapshot(server["sandbox"]) - server["before"]
    assert not created, f"files created outside the output root: {sorted(created)[:10]}"
    ply, *_ = reconstruct(client, PHOTO)
    assert ply.endswith(".ply") and server["process"].poll() is None
    log = server["log"].read_text()
    assert log.count("Traceback") == 0, log[log.find("Traceback") - 200 : log.find("Traceback") + 1500]
    refused = [line for line in log.splitlines() if " refused" in line]
    assert len(refused) >= 20  # one line per bad input
