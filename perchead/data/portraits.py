"""Real portraits for the preprocessing tests and the benchmarks, taken from public packages on PyPI (never
committed).

    python -m perchead.data.portraits    # fetch them (``python3 tasks.py test`` does it first)

Each comes out of one wheel downloaded with ``pip download --no-deps`` (nothing is installed):

* ``astronaut.png``: scikit-image's ``skimage/data/astronaut.png`` (Eileen Collins, NASA, public domain).
* ``grace_hopper.jpg``: matplotlib's ``mpl-data/sample_data/grace_hopper.jpg`` (US Navy, public domain).
* ``group.jpg``: insightface's ``data/images/t1.jpg``, a group photo of six people (no licence stated:
  used in tests only, never in committed files).
* ``tight_gray.png``: insightface's ``data/images/Tom_Hanks_54745.png``, a 112² tight grayscale face crop
  (likewise tests only).

and one from a source archive (``pip download --no-binary``; nothing is installed):

* ``biden.jpg``, ``obama.jpg``, ``obama2.jpg``, ``obama3.jpg``: face_recognition's ``tests/test_images``
  (White House photographs; no licence stated for the images: tests and measurements only, never in
  committed files). ``obama3.jpg`` is a full-length photo with a small face.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from perchead.photo.mediapipe_files import fetch_wheel_members

SOURCES = {  # wheel → {local name: member}
    "scikit-image==0.25.2": {"astronaut.png": "skimage/data/astronaut.png"},
    "matplotlib==3.11.2": {"grace_hopper.jpg": "matplotlib/mpl-data/sample_data/grace_hopper.jpg"},
    "insightface==2.1": {"group.jpg": "insightface/data/images/t1.jpg",
                         "tight_gray.png": "insightface/data/images/Tom_Hanks_54745.png"},
}
SDIST_SOURCES = {  # source archive → {local name: member}
    "face_recognition==1.3.0": {name: f"face_recognition-1.3.0/tests/test_images/{name}"
                                for name in ("biden.jpg", "obama.jpg", "obama2.jpg", "obama3.jpg")},
}
PUBLIC_DOMAIN = ("astronaut.png", "grace_hopper.jpg")  # may appear in committed figures
NAMES = tuple(name for members in (*SOURCES.values(), *SDIST_SOURCES.values()) for name in members)  # every portrait


def folder() -> Path:
    """Where the portraits live: ``$PERCHEAD_TEST_PORTRAITS`` or the environment's share/perchead/portraits."""
    return Path(os.environ.get("PERCHEAD_TEST_PORTRAITS", Path(sys.prefix) / "share" / "perchead" / "portraits"))


def path(name: str) -> Path | None:
    """The portrait's path, or None when it has not been fetched."""
    candidate = folder() / name
    return candidate if candidate.is_file() else None


def fetch() -> Path:
    """Downloads the wheels and source archives still needed and extracts the portraits (nothing when all are
    there)."""
    dest = folder()
    missing = {req: members for req, members in SOURCES.items() if not all((dest / n).is_file() for n in members)}
    for requirement, members in missing.items():
        fetch_wheel_members(requirement, members, dest)
    for requirement, members in SDIST_SOURCES.items():  # benchmarks only: a failure is reported, not raised
        if not all((dest / n).is_file() for n in members):
            try:
                fetch_wheel_members(requirement, members, dest, source=True)
            except RuntimeError as error:
                print(f"portraits: {requirement} not fetched ({error}); the benchmarks skip its photos", file=sys.stderr)
    return dest


if __name__ == "__main__":
    print(fetch())
