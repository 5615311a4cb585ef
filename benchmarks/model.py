"""Benchmark of the PercHead model (paper §3.1–3.3): parameter counts, CPU latency and peak memory.

For each preset (``tiny``, ``demo``, ``paper``) a fresh subprocess builds the model — the ``paper``
architecture with a randomly initialised DINOv2-giant built from its published config, since no weights
can be downloaded here — and reports:

- parameters: trainable / frozen, per component, and the float32 checkpoint size (frozen DINOv2 loaded by
  id is not stored);
- CPU forward latency at batch 1 (image + mask → Gaussians, no rendering), median of several runs, with
  the model's own frontal silhouette as the mask;
- peak resident memory (RSS) of the process;
- for ``demo``: one training step's forward + backward at batch 4 (no rendering, no loss network).

Usage::

    python benchmarks/model.py                    # all presets
    python benchmarks/model.py --presets demo     # only some
    python benchmarks/model.py --json out.json    # also write the figures as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RUNS = {"tiny": (2, 10), "demo": (2, 10), "paper": (1, 2)}  # (warm-up, timed) forward passes


def _silhouette_mask(model, torch):
    S = model.config.render.image_size
    with torch.no_grad():
        tokens = torch.zeros(1, 1, model.config.decoder.width)
        g = model.to_gaussians(model.decode(tokens, cross_attn_until=-1))  # the template
        alpha = model.render_views(g, model.default_cameras([0], size=S), refine=False).alpha[:, 0]
    return (alpha > 0.5).float()  # [1, 1, S, S]


def worker(preset: str) -> dict:
    """Builds one preset and measures it; runs in its own process so that peak RSS is per preset."""
    import torch

    from perchead.geometry.images import over_white
    from perchead.models.config import PercHeadConfig
    from perchead.models.lift_encoder import count_foreground_patches
    from perchead.models.perchead import PercHead

    cfg = PercHeadConfig.preset(preset)
    if cfg.encoder.dino is not None:
        cfg.encoder.dino.pretrained = False  # random weights from the architecture (offline)
    t = time.perf_counter()
    model = PercHead(cfg).eval()
    build_s = time.perf_counter() - t

    def count(module, trainable=None):
        if module is None:
            return 0
        return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)

    enc = model.encoder
    components = {
        "task_vit": count(enc.task_vit),
        "dino (frozen)": count(enc.dino),
        "fusion_mlp": count(enc.fuse) + count(enc.fuse_norm),
        "decoder": count(model.decoder),
        "gaussian_head": count(model.head),
        "refiner": count(model.refiner),
    }
    dino_stored = cfg.encoder.dino is not None and preset == "tiny"  # tiny has no id: its DINOv2 is stored
    stored = model.num_parameters(True) + (model.num_parameters(False) if dino_stored else 0)

    S = cfg.render.image_size
    mask = _silhouette_mask(model, torch)
    image = over_white(torch.rand(1, 3, S, S), mask)
    warm, runs = RUNS[preset]
    times = []
    with torch.no_grad():
        for i in range(warm + runs):
            t = time.perf_counter()
            g = model(image, mask)
            if i >= warm:
                times.append(time.perf_counter() - t)
    result = {
        "preset": preset,
        "threads": torch.get_num_threads(),
        "build_s": round(build_s, 2),
        "params_trainable": model.num_parameters(True),
        "params_frozen": model.num_parameters(False),
        "components": components,
        "checkpoint_mb_fp32": round(4 * stored / 1e6, 2),
        "n_gaussians": g.num_gaussians,
        "input": f"{S}x{S}",
        "foreground_patches": int(count_foreground_patches(mask, cfg.encoder.patch_size)[0]),
        "all_patches": (S // cfg.encoder.patch_size) ** 2,
        "forward_b1_ms_median": round(1000 * statistics.median(times), 1),
        "forward_b1_ms_min": round(1000 * min(times), 1),
    }
    if preset == "demo":
        model.train()
        img4, mask4 = image.expand(4, -1, -1, -1).contiguous(), mask.expand(4, -1, -1, -1).contiguous()
        steps = []
        for i in range(12):
            t = time.perf_counter()
            g = model(img4, mask4)
            (g.means.square().mean() + g.colors.mean() + g.scales.mean() + g.opacities.mean() + g.quats.mean()).backward()
            model.zero_grad(set_to_none=True)
            if i >= 2:
                steps.append(time.perf_counter() - t)
        result["train_fwd_bwd_b4_ms_median"] = round(1000 * statistics.median(steps), 1)
        result["train_fwd_bwd_b4_ms_min"] = round(1000 * min(steps), 1)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "demo", "paper"], choices=["tiny", "demo", "paper"])
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return
    results = []
    for preset in args.presets:
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", preset], capture_output=True, text=True, env=os.environ.copy()
        )
        if proc.returncode != 0:
            print(f"{preset}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        line = (
            f"{preset:6s} trainable {r['params_trainable']:>13,d}  frozen {r['params_frozen']:>13,d}  "
            f"ckpt {r['checkpoint_mb_fp32']:8.2f} MB  gaussians {r['n_gaussians']:6d}  input {r['input']} "
            f"({r['foreground_patches']}/{r['all_patches']} patches)  forward b1 {r['forward_b1_ms_median']:9.1f} ms  "
            f"peak RSS {r['peak_rss_mb']:8.1f} MB"
        )
        if "train_fwd_bwd_b4_ms_median" in r:
            line += f"  train fwd+bwd b4 {r['train_fwd_bwd_b4_ms_median']:.1f} ms"
        print(line, flush=True)
        print("        components: " + ", ".join(f"{k} {v:,d}" for k, v in r["components"].items()), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
