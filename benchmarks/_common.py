"""What the benchmarks share: starting app.py on a free local port, printing (and saving) results, and
``--set name=value`` overrides of a config dataclass."""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start_app(args: list[str], temp: Path, timeout: float = 180.0) -> tuple[subprocess.Popen, str]:
    """Starts ``app.py ARGS`` offline on a free 127.0.0.1 port with Gradio's files in ``temp``.

    Returns:
        (the process, its URL) once the first page answers; its log is ``temp/app.log``.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", GRADIO_TEMP_DIR=str(temp))
    log = open(Path(temp) / "app.log", "w")
    process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port), *args], cwd=ROOT, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with {process.returncode}; see {log.name}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return process, url
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise TimeoutError(f"the app did not answer within {timeout:.0f} s")


def report(results: dict, output: str | None) -> None:
    """Prints the results as JSON and writes them to ``output`` when given."""
    text = json.dumps(results, indent=2, ensure_ascii=False)
    print(text)
    if output:
        Path(output).write_text(text + "\n")


def config_overrides(cls, items: list[str] | None) -> dict:
    """``--set name=value`` items → field overrides of the dataclass ``cls`` (values read as Python literals,
    a bare word as a string); a config of groups (``cls.field_names()``, e.g. ``FitConfig``) names a field
    ``group.field``.

    Raises:
        ValueError: an item without ``=`` or naming no field of ``cls``.
    """
    names = cls.field_names() if hasattr(cls, "field_names") else list(cls.__dataclass_fields__)
    overrides = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or name not in names:
            raise ValueError(f"--set expects {cls.__name__} field=value (one of {', '.join(names)}), got {item!r}")
        try:
            overrides[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[name] = value  # a bare word: a string setting
    return overrides
