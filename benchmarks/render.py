"""Benchmark of the CPU renderer (perchead.render, torch backend) on a head-like scene.

Prints forward and forward+backward time (median of several runs) and peak resident memory growth for
16,384 and 65,536 Gaussians at 256² and 512², threads pinned to the machine's cores. Targets on a
2-core CPU (targets): 65,536 @ 512² forward <= 0.4 s; 16,384 @ 256² forward+backward <= 0.15 s.

    python benchmarks/render.py [--runs 7] [--backend torch|torch-pure] [--batch 1] [--views 1]
    python benchmarks/render.py --batch 4 --views 4 --cases 16384x128,16384x256   # a training step

Measured (torch backend, 2 threads; 2 CPU cores shared with another job, which left this benchmark about
one core: wall and CPU time agree), the C kernels before and after their vector-lane rewrite, run back to
back in one session, median of 3 interleaved processes of 7 runs each, seconds forward / forward+backward:

    gaussians  size   before          after           speed-up
    16384      256²   0.021 / 0.050   0.008 / 0.022   2.6x / 2.3x
    16384      512²   0.041 / 0.113   0.016 / 0.045   2.6x / 2.5x
    65536      256²   0.057 / 0.121   0.022 / 0.053   2.6x / 2.3x
    65536      512²   0.083 / 0.202   0.032 / 0.090   2.6x / 2.2x
    16384      128²   0.012 / 0.028   0.006 / 0.015   2.0x / 1.9x   (the photo-fit's size)

Peak RSS growth of forward+backward rose by up to 9 MB (65,536 Gaussians: the per-Gaussian records and
gradient records the kernels keep for the backward).
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import subprocess
import sys
import time

if "--spin" not in sys.argv:
    # Idle OpenMP threads sleep instead of spinning: on a shared, oversubscribed CPU spinning threads steal
    # the cores the next parallel region needs (measured: 5-7x more CPU time at load ~6 on 2 cores).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from perchead.geometry.cameras import orbit_cameras  # noqa: E402
from perchead.geometry.gaussians import Gaussians  # noqa: E402
from perchead.render import render  # noqa: E402


def head_scene(n: int, seed: int = 0) -> Gaussians:
    """Gaussians on an ellipsoid about 0.2 m wide (a head), flattened along the surface normal.

    Args:
        n: number of Gaussians.
        seed: random seed.

    Returns:
        An unbatched set with surface-covering scales (about half the mean spacing, 20 % along the normal).
    """
    gen = torch.Generator().manual_seed(seed)
    axes = torch.tensor([0.09, 0.12, 0.10])  # [3] semi-axes: width 0.18 m, height 0.24 m, depth 0.2 m
    d = torch.randn(n, 3, generator=gen)
    d = d / d.norm(dim=-1, keepdim=True)  # [N, 3] directions on the unit sphere
    means = d * axes  # [N, 3]
    normal = d / axes
    normal = normal / normal.norm(dim=-1, keepdim=True)  # [N, 3]
    area = 4 * math.pi * (((axes[0] * axes[1]) ** 1.6 + (axes[0] * axes[2]) ** 1.6 + (axes[1] * axes[2]) ** 1.6) / 3) ** (1 / 1.6)
    spacing = math.sqrt(float(area) / n)
    # rotation taking +z to the normal (quaternion wxyz), plus a random twist about the normal
    z = torch.tensor([0.0, 0.0, 1.0]).expand(n, 3)
    axis = torch.linalg.cross(z, normal, dim=-1)
    w = 1 + normal[:, 2:3]
    quats = torch.cat([w, axis], dim=-1)
    quats = quats / quats.norm(dim=-1, keepdim=True)  # [N, 4]
    twist = torch.rand(n, generator=gen) * math.pi
    tq = torch.stack([torch.cos(twist / 2), torch.zeros(n), torch.zeros(n), torch.sin(twist / 2)], -1)  # [N, 4]
    qw, qx, qy, qz = quats.unbind(-1)
    rw, rx, ry, rz = tq.unbind(-1)
    quats = torch.stack(
        [qw * rw - qx * rx - qy * ry - qz * rz, qw * rx + qx * rw + qy * rz - qz * ry,
         qw * ry - qx * rz + qy * rw + qz * rx, qw * rz + qx * ry - qy * rx + qz * rw], -1
    )  # [N, 4]
    tangent = spacing * (0.4 + 0.4 * torch.rand(n, 2, generator=gen))  # [N, 2]
    scales = torch.cat([tangent, 0.2 * tangent[:, :1]], dim=-1)  # [N, 3]
    opacities = 0.5 + 0.45 * torch.rand(n, generator=gen)
    colors = torch.rand(n, 3, generator=gen)
    return Gaussians(means, quats, scales, opacities, colors)


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench(n: int, size: int, runs: int, backend: str, views: int, batch: int = 1) -> dict:
    g = head_scene(n)
    if batch > 1:
        g = Gaussians.stack([g] * batch)
    cams = orbit_cameras(torch.linspace(0, 360, views + 1)[:-1] + 20.0, 10.0, radius=0.7, fov_deg=30.0, size=size)
    # warm-up (builds the kernel, fills allocator caches)
    render(g, cams.viewmats, cams.Ks, size, size, background=1.0, backend=backend)
    rss0 = _maxrss_mb()
    fwd, fwd_cpu = [], []
    with torch.no_grad():
        for _ in range(runs):
            t, c = time.perf_counter(), time.process_time()
            out = render(g, cams.viewmats, cams.Ks, size, size, background=1.0, backend=backend)
            fwd.append(time.perf_counter() - t)
            fwd_cpu.append(time.process_time() - c)
    rss_fwd = _maxrss_mb() - rss0
    params = [t.clone().requires_grad_() for t in (g.means, g.quats, g.scales, g.opacities, g.colors)]
    target = torch.rand(batch, views, 3, size, size)
    fb, fb_cpu = [], []
    for _ in range(runs):
        t, c = time.perf_counter(), time.process_time()
        out = render(Gaussians(*params), cams.viewmats, cams.Ks, size, size, background=1.0, backend=backend)
        loss = (out.rgb - target).abs().mean()
        loss.backward()
        fb.append(time.perf_counter() - t)
        fb_cpu.append(time.process_time() - c)
    rss_fb = _maxrss_mb() - rss0
    cover = float(out.alpha.detach().mean())
    return dict(n=n, size=size, fwd=statistics.median(fwd), fb=statistics.median(fb), rss_fwd=rss_fwd,
                rss_fb=rss_fb, cover=cover, fwd_min=min(fwd), fb_min=min(fb),
                fwd_cpu=statistics.median(fwd_cpu), fb_cpu=statistics.median(fb_cpu))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs per case (median reported)")
    parser.add_argument("--backend", default="torch", choices=["torch", "torch-pure"])
    parser.add_argument("--views", type=int, default=1, help="views per render call")
    parser.add_argument("--batch", type=int, default=1, help="Gaussian sets per render call (B)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: os.cpu_count())")
    parser.add_argument("--spin", action="store_true", help="keep OpenMP's default spin-waiting policy")
    parser.add_argument("--cases", default="16384x256,16384x512,65536x256,65536x512", help="NxSIZE,...")
    parser.add_argument("--row-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    if args.row_only:  # one case in this fresh process, so that maxrss is this case's peak
        n, size = (int(v) for v in args.cases.split("x"))
        r = bench(n, size, args.runs, args.backend, args.views, args.batch)
        print(f"{r['n']:>9} {r['size']:>4}² {r['fwd']:7.3f} {r['fb']:9.3f} {r['fwd_min']:6.3f}/{r['fb_min']:6.3f}"
              f" {r['fwd_cpu']:6.3f}/{r['fb_cpu']:6.3f} {r['rss_fwd']:8.1f}/{r['rss_fb']:8.1f} {r['cover']:8.3f}")
        return
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, backend {args.backend}, batch {args.batch} x views {args.views}")
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(default)')}; load before: {load}")
    print("wall: median (min) seconds; cpu: median process CPU seconds (all threads; robust to other load)")
    print(f"{'gaussians':>9} {'size':>5} {'fwd s':>7} {'fwd+bwd s':>9} {'min fwd/fb':>13} {'cpu fwd/fb':>13}"
          f" {'peak RSS Δ fwd/fb MB':>18} {'coverage':>8}")
    for case in args.cases.split(","):
        argv = [sys.executable, __file__, "--row-only", "--cases", case, "--runs", str(args.runs), "--backend",
                args.backend, "--views", str(args.views), "--batch", str(args.batch), "--threads",
                str(args.threads)] + (["--spin"] if args.spin else [])
        print(subprocess.run(argv, capture_output=True, text=True, check=True).stdout.rstrip())
    print(f"load after:  {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print("targets (2-core CPU): 65536 @ 512² fwd <= 0.4 s; 16384 @ 256² fwd+bwd <= 0.15 s")


if __name__ == "__main__":
    main()
