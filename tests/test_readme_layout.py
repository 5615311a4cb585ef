"""The README's layout table names every file of the package, one line each, and nothing that is not there."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def layout_paths() -> list[str]:
    """The backticked paths in the first column of the README's Layout table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [p for row in rows for p in re.findall(r"`([^`]+)`", row.split("|")[1])]


def package_files() -> set[str]:
    """The package's source files that git tracks (every file on disk outside a git checkout)."""
    try:
        out = subprocess.run(["git", "ls-files", "perchead"], cwd=ROOT, capture_output=True, text=True, check=True)
        files = [ROOT / line for line in out.stdout.splitlines()]
    except (OSError, subprocess.CalledProcessError):
        files = [p for p in (ROOT / "perchead").rglob("*") if p.is_file()]
    return {p.relative_to(ROOT).as_posix() for p in files
            if p.suffix in (".py", ".c", ".h", ".json") and "__pycache__" not in p.parts
            and not (p.name == "__init__.py" and p.parent not in (ROOT / "perchead", ROOT / "perchead" / "render"))}


def test_layout_table_lists_every_package_file_once():
    listed = layout_paths()
    assert len(listed) == len(set(listed)), "a path appears twice in the README's layout table"
    package = package_files()
    assert sorted(package - set(listed)) == [], "files missing from the README's layout table"
    missing = [p for p in listed if not (ROOT / p.rstrip("/")).exists()]
    assert missing == [], "the README's layout table names paths that do not exist"
