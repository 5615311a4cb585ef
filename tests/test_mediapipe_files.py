"""Tests for perchead.photo.mediapipe_files: where the face-network files are looked for, and taking them out
of a wheel without installing it (a local wheel: no network)."""

from __future__ import annotations

import pytest

from perchead.photo import mediapipe_files


def test_model_folders_are_searched_in_order(monkeypatch, tmp_path):
    monkeypatch.setenv(mediapipe_files.ENV_DIR, str(tmp_path))
    assert mediapipe_files.model_dirs()[0] == tmp_path
    for name in mediapipe_files.MODEL_FILES:
        (tmp_path / name).write_bytes(b"x")
    assert mediapipe_files.find_models() == tmp_path
    assert mediapipe_files.fetch_models(tmp_path) == tmp_path  # already there: nothing is downloaded


def test_files_are_taken_out_of_a_wheel_without_installing_it(tmp_path, monkeypatch):
    import zipfile

    monkeypatch.setenv("PIP_NO_INDEX", "1")  # never ask a package index here

    wheel = tmp_path / "fakefaces-1.0-py3-none-any.whl"  # a local wheel: pip copies it, no network
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("fakefaces/models/net.tflite", b"weights")
        archive.writestr("fakefaces-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: fakefaces\nVersion: 1.0\n")
        archive.writestr("fakefaces-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr("fakefaces-1.0.dist-info/RECORD", "")
    dest = mediapipe_files.fetch_wheel_members(str(wheel), {"net.tflite": "fakefaces/models/net.tflite"}, tmp_path / "out")
    assert (dest / "net.tflite").read_bytes() == b"weights"
    with pytest.raises(RuntimeError, match="not inside"):
        mediapipe_files.fetch_wheel_members(str(wheel), {"x": "fakefaces/missing.bin"}, tmp_path / "out2")
