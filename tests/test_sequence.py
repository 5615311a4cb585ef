"""Tests for perchead.pipelines.sequence: a clip → one head per frame, on a tiny model and clips made here.

The clips are synthetic heads (perchead.data.clips) that move across the frame with some jitter and turn;
the face networks find them as they find photos (skipped, with the reason, when those are unavailable).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from perchead.data.clips import render_clip
from perchead.data.synthetic import make_head, split_seeds
from perchead.models.config import PercHeadConfig
from perchead.models.perchead import PercHead
from perchead.pipelines.reconstruct import PercHeadPipeline
from perchead.pipelines.sequence import (
    ClipError, SequenceConfig, SequencePipeline, probe_clip, read_clip, smooth_crops, track_face,
)  # fmt: skip
from perchead.export.turntable import write_mp4

FPS, SECONDS = 10, 2


@pytest.fixture(scope="module")
def seq():
    torch.manual_seed(0)
    pipe = PercHeadPipeline(PercHead(PercHeadConfig.preset("tiny")), device="cpu")
    return SequencePipeline(pipe, SequenceConfig(batch_size=4, panel_size=64, fit_preset="tiny", fit_first_steps=4,
                                                 fit_next_steps=2))


def moving_head(T: int, seed: int = 0, jitter_px: float = 3.0) -> np.ndarray:
    """One head's path: left to right, turning from −20° to +20°, with per-frame jitter of the position. ``[1, T, 5]``"""
    rng = np.random.default_rng(seed)
    poses = np.zeros((1, T, 5), np.float32)
    poses[0, :, 0] = np.linspace(-20, 20, T)
    poses[0, :, 1] = 5.0
    poses[0, :, 2] = np.linspace(130, 190, T) + rng.normal(0, jitter_px, T)
    poses[0, :, 3] = 120 + rng.normal(0, jitter_px, T)
    poses[0, :, 4] = 500.0
    return poses


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A 2-second, 10-fps, 320×240 clip of one moving, turning, jittering head."""
    path = tmp_path_factory.mktemp("clips") / "moving.mp4"
    frames = render_clip([make_head(split_seeds("test")[0])], moving_head(FPS * SECONDS))
    write_mp4(frames, path, fps=FPS)
    return path


def write_frames(path: Path, frames, fps: float = FPS) -> Path:
    write_mp4(list(frames), path, fps=fps)
    return path


# ----------------------------------------------------------------------------------------------- outputs
def test_clip_gives_one_head_per_frame_a_video_and_a_zip(seq, clip, analyzer, tmp_path):
    import imageio

    from perchead.geometry.gaussians import load_ply

    seen = []
    out = seq(clip, tmp_path / "out", progress=lambda fraction, stage: seen.append((fraction, stage)))
    T = FPS * SECONDS
    assert out.frames == T and out.fps == FPS and out.crops.shape == (T, 4)
    assert all(box is not None for box in out.face_boxes), "the head is in view in every frame"
    # the zip holds one readable .ply per frame, in order
    with zipfile.ZipFile(out.heads) as archive:
        names = archive.namelist()
        assert names == [f"frame_{t:04d}.ply" for t in range(T)]
        archive.extract(names[-1], tmp_path)
    head = load_ply(tmp_path / names[-1])
    assert head.num_gaussians == seq.pipeline.model.config.template.n_gaussians
    head.validate()
    assert not (tmp_path / "out" / names[-1]).exists(), "the loose .ply files are removed once zipped"
    # the side-by-side video: T frames of 2P × P, H.264, as long as the clip
    reader = imageio.get_reader(out.video)
    meta = reader.get_meta_data()
    frames = [frame for frame in reader]
    reader.close()
    assert meta["codec"] == "h264" and len(frames) == T and frames[0].shape == (64, 128, 3)
    assert abs(meta["duration"] - SECONDS) < 0.15
    left, right = frames[T // 2][:, :64].astype(float), frames[T // 2][:, 64:].astype(float)
    assert (left < 200).mean() > 0.1, "the model input (a head over white) fills the left half"
    assert np.abs(left - right).mean() > 5, "the right half is a render, not a copy of the input"
    # progress: in order, per frame, ending at 1
    fractions = [fraction for fraction, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(f"frame {T}/{T}" in stage for _, stage in seen) and any("finding the face" in s for _, s in seen)
    assert {"decode", "track", "cut_out", "reconstruct", "fit", "render", "write", "total"} <= set(out.timings)


def test_heads_are_fitted_from_the_first_frame_on_and_the_summary_says_so(seq, clip, analyzer, tmp_path):
    """The first frame's head is fitted from the network's; every next one starts from the previous fit, so
    its Gaussians are the previous ones, moved a little; without a fit the heads are the network's, and the
    notes say which."""
    from perchead.geometry.gaussians import load_ply

    def heads(out, folder):
        with zipfile.ZipFile(out.heads) as archive:
            return [load_ply(archive.extract(name, folder)) for name in archive.namelist()]

    fitted = seq(clip, tmp_path / "fitted")
    plain_seq = SequencePipeline(seq.pipeline, SequenceConfig(batch_size=4, panel_size=64, fit_first_steps=0))
    plain = plain_seq(clip, tmp_path / "plain")
    assert fitted.fitted and not plain.fitted
    assert any("fitted to the frames: the first frame's head for 4 steps" in n and "previous frame's fitted head for 2"
               in n for n in fitted.notes), fitted.notes
    assert any("not fitted to the frames" in n for n in plain.notes) and "fit" not in plain.timings
    ours, theirs = heads(fitted, tmp_path / "a"), heads(plain, tmp_path / "b")
    assert all(h.num_gaussians == theirs[0].num_gaussians for h in ours)  # one Gaussian per template point
    assert float((ours[0].colors - theirs[0].colors).abs().mean()) > 1e-3  # the first head is fitted
    change = [float((b.colors - a.colors).abs().mean()) for a, b in zip(ours, ours[1:])]
    assert all(c > 0 for c in change)  # every frame is fitted to its own picture …
    assert np.mean(change) < float((ours[-1].colors - theirs[-1].colors).abs().mean())  # … from the last one
    config = SequenceConfig(fit_first_steps=0)
    assert config.fit_configs() is None
    first, following = SequenceConfig(fit_first_steps=30, fit_next_steps=3).fit_configs()
    assert (first.gaussians.steps, first.gaussians.split_share) == (30, 0.0) and first.latent.steps > 0
    assert (following.gaussians.steps, following.latent.steps, following.pose.search, following.camera.steps,
            following.head.enabled) == (3, 0, False, 0, False)
    for bad in ({"fit_first_steps": -1}, {"fit_next_steps": 1.5}, {"fit_preset": "nope"}):
        with pytest.raises(ValueError):
            SequenceConfig(**bad)


def test_smoothing_reduces_the_crop_jitter(seq, clip, analyzer, tmp_path):
    out = seq(clip, tmp_path / "out")
    # second differences remove the steady motion and leave the jitter (detector + the clip's own)
    raw, smooth = (np.abs(np.diff(crops[:, :3], n=2, axis=0)).mean(axis=0) for crops in (out.raw_crops, out.crops))
    assert (smooth < 0.5 * raw).all(), (raw, smooth)
    # and follows the head: the crop centre moves right by about the clip's 60 px
    assert 40 < out.crops[-1, 0] - out.crops[0, 0] < 80


def test_smooth_crops_keeps_steady_motion_and_fills_gaps():
    T = 11
    steady = np.stack([np.linspace(100, 200, T), np.full(T, 50.0), 80 * 1.02 ** np.arange(T), np.linspace(-5, 5, T)], 1)
    torch.testing.assert_close(torch.from_numpy(smooth_crops(steady, 3)), torch.from_numpy(steady))  # unchanged
    gappy = steady.copy()
    gappy[[0, 4, 5, 10]] = np.nan
    filled = smooth_crops(gappy, 0)
    assert np.isfinite(filled).all()
    np.testing.assert_allclose(filled[4:6, 0], steady[4:6, 0])  # interpolated inside
    np.testing.assert_allclose(filled[[0, 10], 0], steady[[1, 9], 0])  # held at the ends
    rolled = np.tile([[10.0, 10.0, 10.0, 179.0]], (4, 1))
    rolled[1::2, 3] = -179.0  # ±179° are 2° apart, not 358°
    assert np.abs(np.abs(smooth_crops(rolled, 1)[1:3, 3]) - 180).max() < 1.5
    truth = np.stack([np.linspace(100, 300, 41), np.full(41, 50.0), np.full(41, 80.0), np.zeros(41)], 1)
    noisy = truth + np.random.default_rng(0).normal(0, 2, truth.shape)
    error = lambda crops: np.abs(crops - truth)[:, :2].mean()  # noqa: E731
    assert error(smooth_crops(noisy, 2)) < 0.6 * error(noisy)
    with pytest.raises(ValueError, match="at least one frame"):
        smooth_crops(np.full((3, 4), np.nan), 1)


# ----------------------------------------------------------------------------------------------- tracking
def test_tracking_follows_the_same_face_when_another_grows_larger(analyzer):
    from perchead.photo.config import PreprocessConfig

    T = 12
    poses = np.zeros((2, T, 5), np.float32)
    poses[:, :, 1] = 5.0
    poses[0, :, 2], poses[1, :, 2] = 110, 300  # A on the left, B on the right
    poses[:, :, 3] = 130
    poses[0, :, 4] = np.linspace(560, 380, T)  # A shrinks …
    poses[1, :, 4] = np.linspace(380, 560, T)  # … while B grows past it
    heads = [make_head(split_seeds("test")[i]) for i in (0, 1)]
    frames = render_clip(heads, poses, size=(420, 260))
    assert analyzer.detect(frames[-1])[0].box[0] > 210, "premise: B is the largest face at the end"
    config = PreprocessConfig(size=64)
    for face_index, left in ((0, True), (1, False)):
        crops, boxes, _, notes = track_face(frames, config, face_index=face_index, analyzer=analyzer)
        centres = np.array([(b[0] + b[2]) / 2 for b in boxes])
        assert ((centres < 210) == left).all(), (face_index, centres)
        assert np.isfinite(crops).all() and any("2 faces" in note for note in notes)


# ------------------------------------------------------------------------------------------------ cancel
def test_cancel_stops_within_one_batch(seq, clip, analyzer, tmp_path):
    class Stop(Exception):
        pass

    stages = []

    def progress(fraction, stage):
        stages.append(stage)
        if stage.startswith("frame 2/"):
            raise Stop()

    with pytest.raises(Stop):
        seq(clip, tmp_path / "out", progress=progress)
    assert stages[-1].startswith("frame 2/"), "nothing runs after the stop"
    assert not any("3D head" in stage for stage in stages), "no frame of the first batch was reconstructed"


# ------------------------------------------------------------------------------------------------ refusals
def test_too_long_clip_is_refused(tmp_path):
    grey = np.full((48, 64, 3), 128, np.uint8)
    long = write_frames(tmp_path / "long.mp4", [grey] * 55, fps=5)  # 11 s
    with pytest.raises(ClipError, match=r"11.0 s long; at most 10 s"):
        probe_clip(long)
    short = write_frames(tmp_path / "short.mp4", [grey] * 10, fps=5)  # 2 s
    with pytest.raises(ClipError, match="at most 1 s"):
        read_clip(short, SequenceConfig(max_seconds=1))
    assert len(read_clip(short).frames) == 10  # 5 fps: fewer than the 10 asked for, all kept


@pytest.mark.parametrize("kind, message", [
    ("empty", "empty"), ("text", "not a video"), ("png", "not a video"), ("playlist", "not a video"),
    ("still", "single frame"), ("tiny", "16×16"), ("huge", "megapixel limit"),
])  # fmt: skip
def test_invalid_videos_are_refused_with_a_clear_message(tmp_path, clip, kind, message):
    from PIL import Image

    path = tmp_path / f"{kind}.mp4"
    config = SequenceConfig()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not a video at all\n" * 50)
    elif kind == "png":
        Image.new("RGB", (64, 64), (200, 100, 50)).save(path, format="PNG")
    elif kind == "playlist":  # a playlist would make ffmpeg read other files: its format is not allowed
        path.write_text(f"#EXTM3U\n#EXTINF:2,\nfile://{clip}\n#EXT-X-ENDLIST\n")
    elif kind == "still":
        write_frames(path, [np.zeros((64, 64, 3), np.uint8)])
    elif kind == "tiny":
        write_frames(path, [np.zeros((16, 16, 3), np.uint8)] * 4)
    else:
        write_frames(path, [np.zeros((64, 64, 3), np.uint8)] * 4)
        config = SequenceConfig(max_source_pixels=48 * 48)
    with pytest.raises(ClipError, match=message):
        read_clip(path, config)


def test_no_face_is_refused_unless_whole_frames_are_allowed(seq, analyzer, tmp_path):
    noise = np.random.default_rng(0).integers(0, 255, (6, 64, 80, 3), dtype=np.uint8)
    path = write_frames(tmp_path / "noise.mp4", noise)
    with pytest.raises(ClipError, match="no face was found in any frame"):
        seq(path, tmp_path / "out")
    out = seq(path, tmp_path / "out2", use_whole_image=True, remove_background=False)
    assert out.frames == 6 and any("whole frames" in note for note in out.notes)
    with pytest.raises(ValueError, match="face_index"):
        seq(path, tmp_path / "out3", face_index=-1)
