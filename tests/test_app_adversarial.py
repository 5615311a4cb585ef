"""Adversarial tests of the live app: malformed inputs, hostile parameters and path traversal.

One server (tiny base + tiny editing checkpoints) runs with its TMPDIR in a sandbox folder that holds
canary files. Every malformed input must get a short message that names the problem (no class names,
paths or tracebacks), the server must keep serving, and nothing outside the app's output root may be
created or removed — whatever session id, file name or URL a client sends.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import time
import zlib
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
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", TMPDIR=str(sandbox))
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
           "before": before}
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


# ------------------------------------------------------------------------------------------ aftermath
def test_zz_nothing_outside_the_output_root_changed_and_the_server_serves(client, server):
    """Runs last (module order): canaries intact, no new files outside Gradio's cache, no tracebacks logged."""
    assert all(canary.read_text() == "must survive" for canary in server["canaries"])
    created = snapshot(server["sandbox"]) - server["before"]
    assert not created, f"files created outside the output root: {sorted(created)[:10]}"
    ply, *_ = reconstruct(client, PHOTO)
    assert ply.endswith(".ply") and server["process"].poll() is None
    log = server["log"].read_text()
    assert log.count("Traceback") == 0, log[log.find("Traceback") - 200 : log.find("Traceback") + 1500]
    refused = [line for line in log.splitlines() if " refused" in line]
    assert len(refused) >= 20  # one line per bad input
