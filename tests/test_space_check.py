"""The fast parts of ``python3 tasks.py space-check``: front matter, large files, total size, packages.txt.

(The requirements check resolves the pins against PyPI in a clean venv; CI runs it through .ci/run.)
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import tasks  # noqa: E402 - stdlib only


def space_copy(tmp: Path) -> Path:
    """The files space-check reads, copied to ``tmp`` (not a git checkout: every file counts)."""
    for name in ("README.md", "constraints.txt", "requirements.txt", "packages.txt", "app.py"):
        shutil.copy(ROOT / name, tmp / name)
    return tmp


def test_this_repo_passes_the_fast_checks():
    problems, facts = tasks.space_problems(ROOT)
    assert problems == []
    meta = tasks.front_matter((ROOT / "README.md").read_text())
    assert meta["sdk_version"] == tasks.pinned(ROOT, "gradio") and meta["app_file"] == "app.py"
    assert meta["models"] and all(tasks.REPO_ID.match(m) for m in meta["models"])
    assert any("MB in all" in fact for fact in facts)


def test_front_matter_mistakes_are_named(tmp_path):
    root = space_copy(tmp_path)
    readme = root / "README.md"
    text = readme.read_text()
    pin = tasks.pinned(ROOT, "gradio")
    readme.write_text(text.replace(f"sdk_version: {pin}", "sdk_version: 5.0.0").replace("app_file: app.py", "app_file: main.py")
                      .replace('python_version: "3.11"', "python_version: three"))
    text = readme.read_text()
    readme.write_text(text[: text.index("models:")] + "models: []\n" + text[text.index("\ntags:") + 1:])
    problems, _ = tasks.space_problems(root)
    assert len(problems) == 4
    assert f"sdk_version '5.0.0' differs from the gradio pin '{pin}'" in problems[0]
    assert "python_version 'three'" in problems[1] and "app_file 'main.py' does not exist" in problems[2]
    assert "models [] must list" in problems[3]
    readme.write_text("# no front matter\n")
    with pytest.raises(ValueError, match="no front matter"):
        tasks.space_problems(root)


def test_large_files_need_an_lfs_pattern(tmp_path):
    root = space_copy(tmp_path)
    (root / "weights").mkdir()
    (root / "weights" / "big.safetensors").write_bytes(b"\0" * (tasks.MAX_PLAIN_FILE + 1))
    (root / "weights" / "small.bin").write_bytes(b"\0" * 10)
    problems, _ = tasks.space_problems(root)
    assert problems == ["weights/big.safetensors is 10.0 MiB, over 10 MiB and not matched by an LFS pattern in "
                        ".gitattributes"]
    (root / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    assert tasks.space_problems(root)[0] == []


def test_packages_txt_names(tmp_path):
    root = space_copy(tmp_path)
    (root / "packages.txt").write_text("# system packages\nffmpeg\n\nBad_Name!\n")
    assert tasks.debian_packages(root) == ["ffmpeg", "Bad_Name!"]
    assert tasks.space_problems(root)[0] == ["packages.txt: 'Bad_Name!' is not a Debian package name"]
    assert tasks.check_debian([]) == ([], "packages.txt: empty (nothing for apt to install)")
    if shutil.which("apt-cache"):
        unknown, note = tasks.check_debian(["coreutils", "no-such-package-perchead"])
        assert unknown == ["no-such-package-perchead"] and "1/2 names known" in note
