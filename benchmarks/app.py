"""App benchmark: photo → downloadable .ply (without and with the photo-fit), the turntable, and process
start → first page.

Targets with the bundled model on 2 CPU cores: end to end ≤ 1 s, with the app's default photo-fit (40 steps)
≤ 5 s, a 60-frame 512² turntable ≤ 15 s, start-up ≤ 10 s. Measures exactly the app's code path
(``PercHeadPipeline`` on the photo, then ``write_outputs``).

    python benchmarks/app.py                      # bundled weights_card/ (or an untrained demo model)
    python benchmarks/app.py --model path/or/id --runs 5 --fit-steps 40 --output bench_app.json
    python benchmarks/app.py --photo examples/photo_grace_hopper.jpg --preset real   # an upload's fit

With ``--stream-every N`` (default 10) the fit is measured again as the app runs it, writing the head shown
before the fit (the photo's colours on the predicted head) and the fit's head every N steps: the time to the
first head and the extra cost of streaming.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TARGETS = {"end_to_end_s": 1.0, "end_to_end_fit_s": 5.0, "turntable_60x512_s": 15.0, "startup_first_page_s": 10.0}


def load(model: str | None):
    from perchead.models.config import PercHeadConfig
    from perchead.models.perchead import PercHead
    from perchead.pipelines.reconstruct import PercHeadPipeline

    source = model or str(ROOT / "weights_card")
    if Path(source, "model.safetensors").is_file() or (model and not Path(model).exists()):
        return PercHeadPipeline.from_pretrained(source), source
    return PercHeadPipeline(PercHead(PercHeadConfig.preset("demo"))), "untrained demo preset (no bundled checkpoint)"


def bench_end_to_end(pipeline, photo: Path, runs: int, fit_steps: int = 0, preset: str = "fast",
                     stream_every: int = 0) -> dict:
    """Photo → .ply, median of ``runs``; with ``stream_every`` the heads shown while fitting are written as the
    app writes them (the photo-coloured head before the fit, the fit's every ``stream_every`` steps)."""
    from perchead.export.outputs import write_outputs
    from perchead.fit.config import FitConfig

    times, stages, firsts, costs = [], [], [], []
    with tempfile.TemporaryDirectory() as folder:
        for i in range(runs + 1):  # the first run warms up
            shown: list[float] = []
            spent = [0.0]  # seconds inside the callbacks: what showing the heads adds to the fit

            def show(part, i=i, shown=shown, spent=spent):
                begin = time.perf_counter()
                write_outputs(pipeline.model, part.gaussians, Path(folder) / f"{i}_fitting_{len(shown)}",
                              turntable_frames=0, view_size=0, formats=("ply",), timings=part.timings)
                shown.append(time.perf_counter() - start)
                spent[0] += time.perf_counter() - begin

            streaming = {"before_fit": show, "during_fit": show, "during_fit_every": stream_every} if stream_every else {}
            start = time.perf_counter()
            rec = pipeline(photo, fit_steps=fit_steps, fit=FitConfig.preset(preset), **streaming)
            out = write_outputs(pipeline.model, rec.gaussians, Path(folder) / str(i), turntable_frames=0, view_size=0,
                                formats=("ply",), timings=rec.timings)
            elapsed = time.perf_counter() - start
            assert out.files["ply"].stat().st_size > 0
            if i:
                times.append(elapsed)
                stages.append(out.timings)
                firsts.append(shown)
                costs.append(spent[0])
    keys = [k for k in stages[0] if k != "total"]
    tag = ("_fit" if fit_steps else "") + ("_streamed" if stream_every else "")
    results = {
        f"end_to_end{tag}_s": statistics.median(times),
        f"end_to_end{tag}_runs_s": [round(t, 3) for t in times],
        f"stages{tag}_median_s": {k: round(statistics.median(s[k] for s in stages), 4) for k in keys},
    }
    if stream_every:
        results["photo_coloured_head_s"] = round(statistics.median(f[0] for f in firsts), 3)
        results["heads_shown_while_fitting_s"] = [[round(t, 2) for t in f] for f in firsts]
        results["showing_the_heads_s"] = round(statistics.median(costs), 3)  # writing them (the fit's extra)
    return results


def bench_turntable(pipeline, photo: Path) -> dict:
    from perchead.export.turntable import TurntableConfig, make_turntable

    gaussians = pipeline(photo).gaussians[0]
    app_refine = pipeline.device.type == "cuda"  # what the app does (perchead.export.outputs: refiner only on CUDA)
    results = {"turntable_refiner_in_app": app_refine}
    with tempfile.TemporaryDirectory() as folder:
        for refine in (app_refine, not app_refine):
            r = pipeline.model.config.render  # the app's framing (perchead.export.outputs)
            config = TurntableConfig(n_frames=60, size=512, refine=refine, radius=r.radius, fov_deg=r.fov_deg)
            stats = make_turntable(pipeline.model, gaussians, Path(folder) / "t.mp4", config)
            key = "turntable_60x512_s" if refine == app_refine else f"turntable_60x512_{'with' if refine else 'without'}_refiner_s"
            results[key] = stats["seconds"]
            results.setdefault("turntable_bytes", int(stats["bytes"]))
    return results


def bench_startup(model: str | None) -> dict:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = [sys.executable, str(ROOT / "app.py"), "--port", str(port)] + (["--model", model] if model else [])
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    start = time.perf_counter()
    process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"app.py exited with {process.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.05)
            if time.perf_counter() - start > 120:
                raise TimeoutError("no first page within 120 s")
        return {"startup_first_page_s": time.perf_counter() - start}
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="Hub id or folder (default: bundled weights_card/)")
    parser.add_argument("--photo", default=str(ROOT / "examples" / "head0_front.png"), help="input image")
    parser.add_argument("--runs", type=int, default=5, help="timed end-to-end runs (after one warm-up)")
    parser.add_argument("--fit-steps", type=int, default=40, help="photo-fit steps of the second end-to-end "
                        "measurement (the app's default; 0 skips it)")
    parser.add_argument("--preset", choices=["fast", "real"], default="fast",
                        help="the fit's FitConfig preset: the app uses \"real\" when \"Photo of a real person\" is "
                             "ticked (its default for uploads; try --photo examples/photo_grace_hopper.jpg), "
                             "\"fast\" for the synthetic examples")
    parser.add_argument("--stream-every", type=int, default=10, help="also measure the fit with the heads shown "
                        "while fitting written every this many steps, as the app does (0 skips it)")
    parser.add_argument("--skip-turntable", action="store_true")
    parser.add_argument("--skip-startup", action="store_true")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    import torch

    pipeline, source = load(args.model)
    results: dict = {
        "model": source,
        "device": str(pipeline.device),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "gaussians": pipeline.model.config.template.n_gaussians,
        "input_size": pipeline.model.config.render.image_size,
    }
    results.update(bench_end_to_end(pipeline, Path(args.photo), args.runs))
    if args.fit_steps:
        results.update(bench_end_to_end(pipeline, Path(args.photo), args.runs, args.fit_steps, args.preset))
        results["fit_preset"] = args.preset
        if args.stream_every:  # the app's path: the photo-coloured head first, the fit's every few steps
            results.update(bench_end_to_end(pipeline, Path(args.photo), args.runs, args.fit_steps, args.preset,
                                            args.stream_every))
            results["stream_every"] = args.stream_every
    if not args.skip_turntable:
        results.update(bench_turntable(pipeline, Path(args.photo)))
    if not args.skip_startup:
        results.update(bench_startup(args.model))
    results["targets"] = {k: {"target_s": v, "measured_s": round(results[k], 3), "met": results[k] <= v}
                          for k, v in TARGETS.items() if k in results}  # fmt: skip
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
