"""End to end on CUDA with the bundled model: reconstruction, the photo-fit (gsplat's backward pass), editing,
video and the app through gradio_client, and CPU-vs-CUDA agreement of the same head's renders.

Every test is marked ``cuda`` and skipped without a CUDA GPU. Run them where one is lent::

    python -m pytest -q -s -m cuda tests/test_cuda.py

``-s`` shows the figures each test prints (photo → fitted head, render 512², edit, video frames per second).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "weights_card"
PHOTO = ROOT / "examples" / "head0_front.png"
PORTRAIT = ROOT / "examples" / "photo_grace_hopper.jpg"
MIN_PSNR_DB = 35.0  # CPU (torch kernel) vs CUDA (gsplat) renders of the same head
FIT_STEPS = 50

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (pipeline, gsplat photo-fit, "
                       "editing, video and the app on CUDA); none is visible to torch here"),
]


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two [..., 3, H, W] image stacks in [0, 1], over all of them."""
    from perchead.models.similarity import psnr

    a, b = a.detach().float().cpu().flatten(0, -4), b.detach().float().cpu().flatten(0, -4)
    return float(psnr(a.clamp(0, 1), b.clamp(0, 1)).clamp(max=100).mean())


def seconds(fn, *args, **kwargs):
    """(result, seconds) with the GPU synchronised on both sides."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    torch.cuda.synchronize()
    return out, time.perf_counter() - start


@pytest.fixture(scope="module")
def pipes():
    from perchead.pipelines.reconstruct import PercHeadPipeline

    return PercHeadPipeline.from_pretrained(BUNDLED, device="cpu"), PercHeadPipeline.from_pretrained(BUNDLED, device="cuda")


# ------------------------------------------------------------------------------------------ agreement
def test_cpu_and_cuda_render_the_same_head_alike(pipes):
    cpu, gpu = pipes
    cameras = cpu.model.default_cameras([0.0, 45.0, -45.0, 180.0], 10.0, size=256)
    rec = cpu(PHOTO, cameras=cameras)
    same_head = gpu.model.render_views(rec.gaussians.to("cuda"), cameras)  # gsplat, the CPU run's Gaussians
    renderer_db = psnr_db(rec.views.rgb, same_head.rgb)
    rec_gpu = gpu(PHOTO, cameras=cameras)  # the whole pipeline on CUDA (bf16 autocast in the networks)
    pipeline_db = psnr_db(rec.views.rgb, rec_gpu.views.rgb)
    print(f"\nCPU vs CUDA: same Gaussians {renderer_db:.1f} dB, whole pipeline {pipeline_db:.1f} dB "
          f"({torch.cuda.get_device_name()})")
    assert rec_gpu.gaussians.means.device.type == "cuda"
    assert renderer_db >= MIN_PSNR_DB, f"renderers disagree: {renderer_db:.1f} dB"
    assert pipeline_db >= MIN_PSNR_DB, f"CPU and CUDA pipelines disagree: {pipeline_db:.1f} dB"


def test_render_512_on_cuda(pipes):
    _, gpu = pipes
    rec = gpu(PHOTO)
    cameras = gpu.model.default_cameras([0.0, 90.0, 180.0, 270.0], size=512)
    gpu.model.render_views(rec.gaussians, cameras)  # warm-up
    out, took = seconds(gpu.model.render_views, rec.gaussians, cameras)
    assert out.rgb.shape == (1, 4, 3, 512, 512) and torch.isfinite(out.rgb).all()
    print(f"\nrender 512²: {took / 4 * 1000:.1f} ms per view ({torch.cuda.get_device_name()})")


# ------------------------------------------------------------------------------------------ photo-fit
def test_photo_fit_runs_gsplat_backward_on_cuda(pipes, monkeypatch):
    import gsplat

    _, gpu = pipes
    calls = {"grad": 0}
    original = gsplat.rasterization

    def counting(*args, **kwargs):
        out = original(*args, **kwargs)
        calls["grad"] += int(out[0].requires_grad)
        return out

    monkeypatch.setattr(gsplat, "rasterization", counting)
    plain = gpu(PORTRAIT)
    fitted, took = seconds(gpu, PORTRAIT, fit_steps=FIT_STEPS)
    assert calls["grad"] >= FIT_STEPS  # every fit step rendered through gsplat with gradients
    assert fitted.gaussians.means.device.type == "cuda" and torch.isfinite(fitted.gaussians.means).all()
    assert fitted.gaussians.num_gaussians >= plain.gaussians.num_gaussians  # the fit may split Gaussians
    assert "fit" in fitted.timings
    print(f"\nphoto → fitted head ({FIT_STEPS} steps): {took:.2f} s (fit {fitted.timings['fit']:.2f} s) "
          f"({torch.cuda.get_device_name()})")


# ------------------------------------------------------------------------------------------ editing
def test_editing_on_cuda():
    from perchead.pipelines.edit import PercHeadEditPipeline

    pipe = PercHeadEditPipeline.from_pretrained(BUNDLED, device="cuda")
    labels = pipe.segment(PHOTO)
    assert labels.shape[-1] == pipe.image_size
    cameras = pipe.editor.default_cameras([0.0, 60.0], size=256)
    dark = pipe(labels, style_text="short black hair", cameras=cameras)  # also the warm-up
    edit, took = seconds(pipe, labels, style_text="long blonde hair", cameras=cameras)
    assert edit.gaussians.means.device.type == "cuda" and torch.isfinite(edit.views.rgb).all()
    assert edit.style_source == "text" and not torch.equal(edit.style, dark.style)
    assert psnr_db(edit.views.rgb, dark.views.rgb) < 100  # another prompt, another head
    print(f"\nedit (map + text → head + 2 views): {took * 1000:.0f} ms ({torch.cuda.get_device_name()})")


# ------------------------------------------------------------------------------------------ video
def test_video_on_cuda(pipes, analyzer, tmp_path):
    from perchead.data.clips import render_clip
    from perchead.data.synthetic import make_head, split_seeds
    from perchead.pipelines.sequence import SequenceConfig, SequencePipeline
    from perchead.export.turntable import write_mp4
    from test_sequence import FPS, SECONDS, moving_head

    clip = tmp_path / "moving.mp4"
    write_mp4(render_clip([make_head(split_seeds("test")[0])], moving_head(FPS * SECONDS)), clip, fps=FPS)
    seq = SequencePipeline(pipes[1], SequenceConfig(batch_size=8))
    out, took = seconds(seq, clip, tmp_path / "out")
    assert out.frames == FPS * SECONDS and out.video.is_file() and out.heads.is_file()
    print(f"\nvideo: {out.frames} frames in {took:.2f} s = {out.frames / took:.1f} frames/s "
          f"(reconstruct {out.timings['reconstruct']:.2f} s) ({torch.cuda.get_device_name()})")


# ------------------------------------------------------------------------------------------ the app
@pytest.mark.slow
def test_app_on_cuda_through_gradio_client(tmp_path):
    from gradio_client import Client, handle_file

    from perchead.geometry.gaussians import load_ply
    from test_app import reconstruct, start_app, stop

    process, url, startup = start_app(["--device", "cuda"], tmp_path)
    try:
        client = Client(url, verbose=False)
        ply, *_, timings, notes = reconstruct(client, PORTRAIT)
        gaussians = load_ply(ply)
        gaussians.validate()
        assert "fitting to the photo" in notes and "Could not load" not in notes
        map_path, _, segment_notes = client.predict(handle_file(str(PHOTO)), True, True, False, api_name="/segment")
        assert "parsed in" in segment_notes
        log = next(tmp_path.glob("app-*.log")).read_text()
        assert "Traceback" not in log
        print(f"\napp on CUDA: start {startup:.1f} s, /reconstruct timings {timings}")
    finally:
        stop(process)
