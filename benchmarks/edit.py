"""Editing benchmark: the Editing tab's three actions on this machine, against the paper's app.

The PercHead paper's editing web app (supplement §8) needed 25 s to parse a photo into a segmentation
map, 28 s for an image-styled edit and 10 s for a text-styled edit, on a GPU. This script times exactly the
app's code path (``PercHeadEditPipeline.segment``; the pipeline on a painted map, then
``perchead.export.outputs.write_outputs``), median of a few runs after one warm-up:

1. photo → segmentation map (crop + mask, face parser);
2. painted map + text prompt → 3D head + files (.ply, .splat, .glb) + the 7 novel views;
3. painted map + reference image → 3D head + files + views.

The turntable is left out (it is the same for reconstruction: see benchmarks/app.py). Without bundled
editing checkpoints (``weights_card/{edit,style,parser}``) it times UNTRAINED models of the bundled sizes
(editor from the ``demo`` preset, ``demo`` style CLIP and parser) and says so: speed does not depend on
the weights.

    python benchmarks/edit.py                          # bundled weights_card/ (or untrained demo-size models)
    python benchmarks/edit.py --folder path --runs 5 --output bench_edit.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PAPER_S = {"segment_s": 25.0, "edit_image_style_s": 28.0, "edit_text_style_s": 10.0}  # paper's app, on a GPU


def load(folder: str):
    """The editing pipeline from ``folder``, else untrained demo-size models (described in the second value)."""
    import torch
    from transformers import SegformerForSemanticSegmentation

    from perchead.models.config import PercHeadConfig
    from perchead.models.editor import PercHeadEditor
    from perchead.models.face_parser import FaceParser, segformer_config
    from perchead.models.perchead import PercHead
    from perchead.models.style_encoder import StyleEncoder
    from perchead.pipelines.edit import PercHeadEditPipeline, missing_parts

    if not missing_parts(folder):
        return PercHeadEditPipeline.from_pretrained(folder), f"{folder} (edit, style, parser)"
    torch.manual_seed(0)
    base_folder = ROOT / "weights_card"
    if (base_folder / "model.safetensors").is_file():
        base, base_text = PercHead.from_pretrained(str(base_folder)), "bundled base"
    else:
        base, base_text = PercHead(PercHeadConfig.preset("demo")), "untrained demo base"
    style = StyleEncoder.from_config("demo")
    editor = PercHeadEditor.from_base(base, style_dim=style.embed_dim)
    size = editor.config.render.image_size
    parser = FaceParser(SegformerForSemanticSegmentation(segformer_config("demo", size)), (size, size))
    text = (f"UNTRAINED models of the bundled sizes ({base_text} → editor, demo style CLIP, demo parser): "
            f"{folder} lacks {', '.join(missing_parts(folder))}; timings are valid, outputs are not")
    return PercHeadEditPipeline(editor, style, parser), text


def timed(fn, runs: int) -> tuple[float, list[float], object]:
    """Median seconds of ``runs`` calls after one warm-up; also the per-run times and the last result."""
    fn()
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), [round(t, 3) for t in times], result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", default=str(ROOT / "weights_card"), help="editing checkpoint folder")
    parser.add_argument("--photo", default=str(ROOT / "examples" / "head0_front.png"), help="photo to parse")
    parser.add_argument("--map", default=str(ROOT / "examples" / "maps" / "map0_front.png"), help="painted map")
    parser.add_argument("--style-image", default=str(ROOT / "examples" / "head1_three_quarter.png"))
    parser.add_argument("--prompt", default="long blonde hair")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per action (after one warm-up)")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    import torch
    from PIL import Image

    from perchead.export.outputs import write_outputs

    start = time.perf_counter()
    pipeline, source = load(args.folder)
    results: dict = {
        "models": source,
        "load_s": round(time.perf_counter() - start, 3),
        "device": str(pipeline.device),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "gaussians": pipeline.editor.config.template.n_gaussians,
        "map_size": pipeline.image_size,
    }
    painted = Image.open(args.map).convert("RGB")
    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(10**6))

        def edit(**style):  # what the app's /edit does: colours → labels → head, then the shared writer
            result = pipeline(pipeline.labels_from_color(painted), **style)
            return write_outputs(pipeline.editor, result.gaussians, Path(tmp) / str(next(counter)),
                                 turntable_frames=0, timings=result.timings)

        results["segment_s"], results["segment_runs_s"], _ = timed(lambda: pipeline.segment(args.photo), args.runs)
        for key, style in (("edit_text_style_s", {"style_text": args.prompt}),
                           ("edit_image_style_s", {"style_image": args.style_image})):
            results[key], results[key[:-2] + "_runs_s"], out = timed(lambda: edit(**style), args.runs)
            results[key[:-2] + "_stages_s"] = {k: round(v, 4) for k, v in out.timings.items()}
    results["paper"] = {k: {"paper_gpu_s": v, "ours_s": round(results[k], 3), "faster": results[k] < v,
                            "speed-up": round(v / max(results[k], 1e-9), 1)} for k, v in PAPER_S.items()}
    text = json.dumps(results, indent=2, ensure_ascii=False)
    print(text)
    print(f"\nmodels: {source}")
    for key, row in results["paper"].items():
        print(f"{key:<22} ours {row['ours_s']:7.3f} s   paper (GPU) {row['paper_gpu_s']:5.1f} s   "
              f"×{row['speed-up']} {'faster' if row['faster'] else 'SLOWER'}")
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
