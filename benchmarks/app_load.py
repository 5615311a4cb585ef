"""Load benchmark of the live app: N concurrent gradio_client clients for R rounds against one server.

Each client sends one /reconstruct per round (an example photo, the UI's default settings). Per round it
prints p50 / p95 latency, errors, the server's RSS and the disk used by the app's outputs and Gradio's cache.
The app runs one model job at a time, so a round's latency grows with the number of clients; what must not
grow from round to round is memory (RSS after the last round within 10 % of the first) and disk (bounded by
the clean-up policy).

    python benchmarks/app_load.py                       # 8 clients × 3 rounds, bundled weights
    python benchmarks/app_load.py --clients 4 --rounds 5 --frames 0 --output load.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from _common import ROOT, report, start_app  # benchmarks/ is on sys.path when a script in it runs


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.exists() else 0


def run_round(url: str, photo: Path, clients: int, frames: int) -> tuple[list[float], list[str]]:
    from gradio_client import Client, handle_file

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        start = time.perf_counter()
        try:
            Client(url, verbose=False).predict(handle_file(str(photo)), True, True, False, frames,
                                               api_name="/reconstruct")
            with lock:
                latencies.append(time.perf_counter() - start)
        except Exception as error:  # counted, not raised: the benchmark reports them
            with lock:
                errors.append(str(error)[:200])

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="Hub id or folder (default: bundled weights_card/)")
    parser.add_argument("--photo", default=str(ROOT / "examples" / "head0_front.png"))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=60, help="turntable frames per request (the UI default)")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    import psutil

    with tempfile.TemporaryDirectory() as temp:
        process, url = start_app(["--edit-model", "none"] + (["--model", args.model] if args.model else []), Path(temp))
        server = psutil.Process(process.pid)
        rows = []
        try:
            for round_index in range(1, args.rounds + 1):
                start = time.perf_counter()
                latencies, errors = run_round(url, Path(args.photo), args.clients, args.frames)
                time.sleep(1.0)  # let the last job's clean-up finish
                ordered = sorted(latencies) or [float("nan")]
                row = {
                    "round": round_index,
                    "wall_s": round(time.perf_counter() - start, 2),
                    "p50_s": round(statistics.median(ordered), 2),
                    "p95_s": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2),
                    "errors": len(errors),
                    "rss_mb": round(server.memory_info().rss / 2**20, 1),
                    "outputs_mb": round(folder_bytes(Path(temp) / "perchead") / 2**20, 1),
                    "gradio_cache_mb": round(folder_bytes(Path(temp)) / 2**20, 1),
                    "first_error": errors[0] if errors else None,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            process.terminate()
            process.wait(timeout=30)
    growth = rows[-1]["rss_mb"] / rows[0]["rss_mb"] - 1
    summary = {"clients": args.clients, "rounds": args.rounds, "frames": args.frames, "cpu_count": os.cpu_count(),
               "rounds_detail": rows, "rss_growth_first_to_last": round(growth, 3),
               "targets": {"no_errors": all(r["errors"] == 0 for r in rows), "rss_within_10_percent": growth <= 0.10}}
    report(summary, args.output)


if __name__ == "__main__":
    main()
