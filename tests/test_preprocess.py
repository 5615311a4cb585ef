"""Tests for perchead.photo.preprocess: every image mode, EXIF, framing, masks and every bad input."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from perchead.photo.config import PreprocessConfig
from perchead.photo.crop import detect_face, face_to_crop, silhouette_head_box
from perchead.photo.load import PreprocessError, check_file, load_image
from perchead.photo.preprocess import preprocess

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

SIZE = 64  # small model input keeps the tests fast


def cartoon_face(width: int = 640, height: int = 480, background=(90, 140, 200)) -> np.ndarray:
    """A drawn frontal face (skin ellipse, eyes, nose, mouth) that OpenCV's frontal cascade detects. [H, W, 3]"""
    img = np.full((height, width, 3), background, np.uint8)
    cx, cy, s = width // 2, height // 2 + 10, min(width, height) / 480
    cv2.ellipse(img, (cx, cy), (int(90 * s), int(120 * s)), 0, 0, 360, (190, 160, 140), -1)
    for dx in (-35, 35):
        cv2.ellipse(img, (cx + int(dx * s), cy - int(30 * s)), (int(18 * s), int(9 * s)), 0, 0, 360, (40, 40, 40), -1)
    cv2.line(img, (cx, cy - int(20 * s)), (cx, cy + int(25 * s)), (150, 120, 100), max(1, int(4 * s)))
    cv2.ellipse(img, (cx, cy + int(60 * s)), (int(35 * s), int(12 * s)), 0, 0, 360, (120, 60, 60), -1)
    return img


def rgba_head(size: int = 200) -> Image.Image:
    """A stylised head silhouette on a transparent background (no face for the cascades)."""
    rgb = np.full((size, size, 3), 255, np.uint8)
    alpha = np.zeros((size, size), np.uint8)
    cv2.ellipse(rgb, (size // 2, size // 2), (size // 5, size // 4), 0, 0, 360, (120, 90, 70), -1)
    cv2.ellipse(alpha, (size // 2, size // 2), (size // 5, size // 4), 0, 0, 360, 255, -1)
    return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")


def png_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()


def config(**kwargs) -> PreprocessConfig:
    return PreprocessConfig(size=SIZE, **kwargs)


def check_output(result, size: int = SIZE) -> None:
    assert result.image.shape == (1, 3, size, size) and result.image.dtype == torch.float32
    assert result.mask.shape == (1, 1, size, size)
    assert 0.0 <= result.image.min() and result.image.max() <= 1.0
    assert 0.0 <= result.mask.min() and result.mask.max() <= 1.0
    background = result.mask[0, 0] < 0.01
    assert background.any(), "some background is expected around a head"
    # composited over white: wherever the mask is 0 the image is white
    assert torch.allclose(result.image[0][:, background], torch.ones(1), atol=0.011)
    preview = result.preview()
    assert preview.size == (2 * size, size) and preview.mode == "RGB"


# ---------------------------------------------------------------------------------------------- modes
def test_cartoon_face_is_detected():
    box = detect_face(cartoon_face())
    assert box is not None
    x0, y0, x1, y1 = box
    assert x0 < 320 < x1 and y0 < 250 < y1


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK", "I;16", "P", "1", "YCbCr", "F", "I"])
def test_opaque_modes_are_cropped_around_the_face(mode):
    rgb = cartoon_face()
    image = Image.fromarray(rgb)
    if mode == "I;16":
        image = Image.fromarray((np.asarray(image.convert("L")).astype(np.uint16) * 257), "I;16")
    elif mode == "F":
        image = Image.fromarray(np.asarray(image.convert("L")).astype(np.float32) / 255.0, "F")
    elif mode == "I":
        image = Image.fromarray(np.asarray(image.convert("L")).astype(np.int32) * 256, "I")
    elif mode == "P":
        image = image.quantize(64)
    elif mode == "1":
        image = image.convert("L").point(lambda v: 255 if v > 120 else 0).convert("1")
    else:
        image = image.convert(mode)
    assert image.mode == mode
    if mode == "1":  # a binary picture has no face left: the whole-image path must still take it
        result = preprocess(image, config(use_whole_image=True))
        assert result.head_source in ("face", "whole")
    else:
        result = preprocess(image, config())
        assert result.head_source == "face", mode
        assert result.mask_source in ("network", "grabcut")
        # the face sits in the middle of the crop
        ys, xs = torch.nonzero(result.mask[0, 0] > 0.5, as_tuple=True)
        assert abs(xs.float().mean().item() - SIZE / 2) < SIZE * 0.12
    check_output(result)


def test_sixteen_bit_is_rescaled_not_clipped():
    gray = np.linspace(0, 65535, 128 * 128).reshape(128, 128).astype(np.uint16)
    rgb, alpha, _, _ = load_image(Image.fromarray(gray, "I;16"))
    assert alpha is None and rgb.dtype == np.uint8
    assert rgb.min() == 0 and rgb.max() == 255 and len(np.unique(rgb)) > 200


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA_transparency"])
def test_alpha_is_the_mask_and_frames_the_head(mode):
    image = rgba_head()
    if mode == "LA":
        image = image.convert("LA")
    elif mode == "PA_transparency":  # palette with per-entry alpha (PNG tRNS), as saved by many tools
        image = image.quantize(32, method=Image.Quantize.FASTOCTREE)
        assert image.mode == "P"
    result = preprocess(Image.open(io.BytesIO(png_bytes(image))), config())
    assert result.head_source == "alpha" and result.mask_source == "alpha"
    check_output(result)
    # the head's width fills alpha_width_fill of the frame, its crown sits alpha_top below the top
    cfg = PreprocessConfig()
    columns = torch.nonzero(result.mask[0, 0].amax(dim=0) > 0.5)
    rows = torch.nonzero(result.mask[0, 0].amax(dim=1) > 0.5)
    assert abs((columns.max() - columns.min() + 1).item() / SIZE - cfg.alpha_width_fill) < 0.05
    assert abs(rows.min().item() / SIZE - cfg.alpha_top) < 0.05


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.png")), ids=lambda p: p.stem)
def test_training_framed_renders_map_onto_themselves(path):
    # examples/ holds renders made with the training cameras: the crop must be (nearly) the identity.
    result = preprocess(path, config())
    assert result.head_source == "alpha"
    x0, y0, x1, y1 = result.crop_box
    width, height = result.working_size
    assert abs((x1 - x0) / width - 1) < 0.2
    assert abs(x0) / width < 0.12 and abs(y0) / height < 0.12


def test_silhouette_with_shoulders_ignores_the_body():
    alpha = np.zeros((400, 400), np.uint8)
    cv2.ellipse(alpha, (200, 150), (60, 75), 0, 0, 360, 255, -1)  # head: 120 wide, crown at y = 75
    cv2.rectangle(alpha, (175, 215), (225, 300), 255, -1)  # neck
    cv2.rectangle(alpha, (40, 290), (360, 400), 255, -1)  # shoulders, cut by the image border
    x0, top, x1, bottom = silhouette_head_box(alpha)
    assert (x0, top, x1) == (140, 75, 261) and bottom - top == 121


def test_opaque_alpha_channel_is_ignored():
    rgba = np.dstack([cartoon_face(), np.full((480, 640), 255, np.uint8)])
    result = preprocess(Image.fromarray(rgba, "RGBA"), config())
    assert result.head_source == "face" and result.mask_source in ("network", "grabcut")


@pytest.mark.parametrize("orientation, rotate", [(6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270), (3, Image.Transpose.ROTATE_180)])
def test_exif_orientation_is_honoured(orientation, rotate):
    # The camera stored the pixels rotated and says so in EXIF: preprocessing must turn them upright.
    stored = Image.fromarray(cartoon_face()).transpose(rotate)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    stored.save(buffer, format="PNG", exif=exif.tobytes())
    rgb, _, original, _ = load_image(buffer.getvalue())
    assert original == stored.size
    assert rgb.shape[:2] == (480, 640), "upright after exif_transpose"
    assert np.array_equal(rgb, cartoon_face())
    result = preprocess(buffer.getvalue(), config())
    assert result.head_source == "face"


# ----------------------------------------------------------------------------------------- framing
def test_face_box_maps_to_training_framing():
    cfg = PreprocessConfig()
    assert cfg.frame_m == pytest.approx(2 * 0.7 * np.tan(np.radians(15)), rel=1e-6)
    assert 0.55 < cfg.head_fill < 0.65
    x0, y0, x1, y1 = face_to_crop((100, 100, 200, 200), cfg)
    assert x1 - x0 == pytest.approx(100 * cfg.frame_m / cfg.face_box_m) == pytest.approx(y1 - y0)
    assert (x0 + x1) / 2 == pytest.approx(150)
    assert (y0 + y1) / 2 == pytest.approx(150 - cfg.face_center_shift * 100)  # moved up to the head centre


def test_config_from_model_render_config():
    from perchead.models.config import PercHeadConfig

    render = PercHeadConfig.preset("tiny").render
    cfg = PreprocessConfig.from_model_config(render, use_whole_image=True)
    assert cfg.size == render.image_size and cfg.fov_deg == render.fov_deg and cfg.radius == render.radius
    assert cfg.use_whole_image


def test_options_auto_crop_off_and_background_kept():
    result = preprocess(cartoon_face(), config(auto_crop=False, remove_background=False))
    assert result.head_source == "whole" and result.mask_source == "none"
    # 640×480 padded to a square: the top and bottom bands are padding (mask 0, white)
    assert result.mask[0, 0, 0].max() == 0 and result.mask[0, 0, SIZE // 2].min() == 1
    assert torch.allclose(result.image[0, :, 0], torch.ones(1))


def test_face_parser_hook_provides_the_mask():
    calls = []

    def parser(rgb):
        calls.append(rgb.shape)
        labels = np.zeros(rgb.shape[:2], np.int64)
        labels[rgb.shape[0] // 4 : rgb.shape[0] // 2, :] = 13  # "hair" band
        return labels

    result = preprocess(cartoon_face(), config(parser=parser))
    assert calls == [(SIZE, SIZE, 3)]
    assert result.mask_source == "parser"
    assert result.mask[0, 0, SIZE // 4 + 1].min() == 1 and result.mask[0, 0, 3 * SIZE // 4].max() == 0


def test_failing_parser_falls_back_to_matting_with_a_note():
    def parser(rgb):
        raise RuntimeError("weights not reachable")

    result = preprocess(cartoon_face(), config(parser=parser))
    assert result.mask_source in ("network", "grabcut")
    assert any("weights not reachable" in note for note in result.notes)
    result = preprocess(cartoon_face(), config(parser=parser, matting="grabcut"))
    assert result.mask_source == "grabcut"
    assert any("weights not reachable" in note for note in result.notes)


# ----------------------------------------------------------------------------------------- bad input
def test_no_face_is_a_clear_error_unless_whole_image_allowed():
    noise = np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    with pytest.raises(PreprocessError, match="no face"):
        preprocess(noise, config())
    assert issubclass(PreprocessError, ValueError)
    result = preprocess(noise, config(use_whole_image=True))
    assert result.head_source == "whole"
    assert any("whole image" in note for note in result.notes)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(PreprocessError, match="empty"):
        preprocess(path)
    with pytest.raises(PreprocessError, match="empty"):
        check_file(path)
    with pytest.raises(PreprocessError, match="empty"):
        preprocess(b"")


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is a text file, not a picture\n" * 20)
    with pytest.raises(PreprocessError, match="not an image"):
        preprocess(path)


def test_corrupt_file(tmp_path):
    data = png_bytes(Image.fromarray(cartoon_face()))
    path = tmp_path / "truncated.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PreprocessError, match="corrupt|truncated"):
        preprocess(path)
    garbled = bytearray(data)
    garbled[200:400] = b"\x00" * 200
    with pytest.raises(PreprocessError, match="corrupt|truncated"):
        preprocess(bytes(garbled))


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width × height`` pixels (a decompression bomb)."""
    raw = zlib.compress(b"\x00" * 64)
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [10_000, 40_000])  # above PIL's warning limit, above its error limit
def test_decompression_bomb_is_refused(tmp_path, side):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(side, side))
    assert path.stat().st_size < 1000
    with pytest.raises(PreprocessError, match="decompression bomb"):
        check_file(path)
    with pytest.raises(PreprocessError, match="decompression bomb") as refused:
        preprocess(path)
    message = str(refused.value)  # one limit, in the app's words: no second figure from the library
    assert "89 megapixels" in message and "Image size" not in message and "DOS" not in message, message


def test_tiny_image_is_refused():
    with pytest.raises(PreprocessError, match="16×16"):
        preprocess(Image.new("RGB", (16, 16), (200, 150, 120)))
    with pytest.raises(PreprocessError, match="16×16"):
        check_file_bytes = png_bytes(Image.new("RGB", (16, 16)))
        preprocess(check_file_bytes)


def test_fully_transparent_image_is_refused():
    with pytest.raises(PreprocessError, match="transparent"):
        preprocess(Image.new("RGBA", (128, 128), (255, 0, 0, 0)))


def test_huge_image_is_downscaled_early(tmp_path):
    # 50 megapixels (8660 × 5774) as a JPEG, as a phone would send it; decoded in draft mode.
    small = cartoon_face(866, 578)
    big = cv2.resize(small, (8660, 5774), interpolation=cv2.INTER_NEAREST)
    path = tmp_path / "big.jpg"
    Image.fromarray(big).save(path, quality=80)
    del big
    cfg = config()
    rgb, _, original, notes = load_image(path, cfg)
    assert original == (8660, 5774)
    assert max(rgb.shape[:2]) <= cfg.max_side
    assert any("downscaled" in note for note in notes)
    result = preprocess(path, cfg)
    assert result.head_source == "face"
    check_output(result)


def test_huge_png_is_downscaled(tmp_path):
    # PNG has no draft mode: decoded once, then resized to max_side before anything else runs.
    path = tmp_path / "big.png"
    Image.fromarray(cv2.resize(cartoon_face(640, 480), (6400, 4800), interpolation=cv2.INTER_NEAREST)).save(path, compress_level=1)
    result = preprocess(path, config())
    assert result.working_size[0] <= 2048 and result.original_size == (6400, 4800)
