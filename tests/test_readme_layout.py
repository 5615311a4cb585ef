"""The README stays a front door: short, the Space's front matter first, CI's test command, a table of the docs
pages; every relative link in README.md and docs/*.md resolves; docs/architecture.md names every package folder,
module and data file, names nothing that is not there, and shows tests/test_layering.py's layers."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 250


def markdown_pages() -> list[Path]:
    """README.md and every page in docs/."""
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def without_code(text: str) -> str:
    """Markdown text without its fenced code blocks (a ``#`` comment there is no heading, a link no link)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def heading_anchors(page: Path) -> set[str]:
    """The anchors GitHub (and the Hub) give a page's headings: lower case, punctuation dropped, spaces → '-'."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", without_code(page.read_text()), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def relative_links(page: Path) -> list[str]:
    """The targets of a page's links and images that are not URLs (``path``, ``path#anchor`` or ``#anchor``)."""
    targets = re.findall(r"\]\(([^)\s]+)\)", without_code(page.read_text()))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def front_matter(text: str) -> dict[str, str]:
    """The YAML front matter at the very top of a page, as ``key → raw value`` (one line per key)."""
    assert text.startswith("---\n"), "README.md must start with the Space's front matter ('---' on line 1)"
    block = text[4:].split("\n---\n", 1)
    assert len(block) == 2, "the README's front matter has no closing '---' line"
    return dict(line.split(":", 1) for line in block[0].splitlines() if ":" in line and not line.startswith(" "))


def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move detail into docs/ (limit {MAX_README_LINES})"


def test_readme_starts_with_the_space_front_matter():
    meta = {k.strip(): v.split("#")[0].strip() for k, v in front_matter(README.read_text()).items()}
    for key in ("title", "sdk", "sdk_version", "app_file", "python_version", "license", "models"):
        assert key in meta, f"the README's front matter lacks {key}"
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and (ROOT / meta["app_file"]).is_file()
    pinned = re.search(r"^gradio==(\S+)$", (ROOT / "constraints.txt").read_text(), flags=re.M)
    assert pinned and meta["sdk_version"] == pinned.group(1), "the Space's sdk_version differs from the gradio pin"


def test_readme_shows_the_commands_ci_runs():
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    assert ci[-1] == "python3 tasks.py test", "CI's last command is no longer the README's test command"
    commands = [line.split("#")[0].strip() for block in re.findall(r"^```bash\n(.*?)^```", README.read_text(), re.S | re.M)
                for line in block.splitlines()]
    assert "python3 tasks.py test" in commands and "python3 tasks.py app" in commands


def test_readme_lists_every_docs_page():
    section = README.read_text().split("\n## Documentation\n", 1)
    assert len(section) == 2, "README.md has no '## Documentation' section"
    listed = set(re.findall(r"\]\((docs/[^)#]+\.md)\)", section[1]))
    pages = {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")}
    assert sorted(pages - listed) == [], "docs pages missing from the README's Documentation table"


def broken_links(pages: list[Path]) -> list[str]:
    """Each relative link of the pages whose file or heading does not exist, as ``page: target (why)``."""
    broken = []
    for page in pages:
        for target in relative_links(page):
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in heading_anchors(dest):
                broken.append(f"{page.name}: {target} (no such heading)")
    return broken


def test_every_relative_link_resolves():
    assert broken_links(markdown_pages()) == []


def test_link_checker_catches_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n")
    page.write_text("# Title\n\n## A `code` heading\n\n[ok](#a-code-heading) [bad](#nowhere) [gone](missing.md)\n"
                    "[there](other.md#other) [wrong](other.md#title) [web](https://example.org/x)\n"
                    "```bash\n# not a heading\n[not](a-link.md)\n```\n")
    assert heading_anchors(page) == {"title", "a-code-heading"}
    assert broken_links([page]) == ["page.md: #nowhere (no such heading)", "page.md: missing.md (no such file)",
                                    "page.md: other.md#title (no such heading)"]


ARCHITECTURE = ROOT / "docs" / "architecture.md"


def section(text: str, heading: str) -> str:
    """The text of a page's ``## heading`` section, up to the next ``## `` heading."""
    parts = text.split(f"\n## {heading}\n", 1)
    assert len(parts) == 2, f"docs/architecture.md has no '## {heading}' section"
    return parts[1].split("\n## ", 1)[0]


def first_column(rows: str) -> set[str]:
    """Every backticked name in the first column of a section's table rows."""
    return {p for row in rows.splitlines() if row.startswith("| `")
            for p in re.findall(r"`([^`]+)`", row.split("|")[1])}


def test_architecture_page_names_every_package_folder():
    named = {p.rstrip("/") for p in first_column(section(ARCHITECTURE.read_text(), "Folders"))}
    folders = {p.relative_to(ROOT).as_posix() for p in (ROOT / "perchead").iterdir()
               if p.is_dir() and any(p.glob("*.py"))}
    assert folders and sorted(folders - named) == [], "package folders missing from docs/architecture.md"


def package_files(root: Path = ROOT) -> set[str]:
    """Every module and data file of the package (``__init__.py`` files and caches aside), relative to the root."""
    files = [*(root / "perchead").rglob("*.py"), *(root / "perchead").rglob("*.json")]
    return {p.relative_to(root).as_posix() for p in files if p.name != "__init__.py" and "__pycache__" not in p.parts}


def missing_and_unknown(text: str, root: Path = ROOT) -> tuple[list[str], list[str]]:
    """The package files a page does not name, and the paths it names (``perchead/…``, or a Folders row's first
    column) that do not exist."""
    named = set(re.findall(r"`(perchead/[^`\s]*)`", text)) | first_column(section(text, "Folders"))
    missing = sorted(package_files(root) - named)
    unknown = sorted(p for p in named if not (root / p).exists())
    return missing, unknown


def test_architecture_page_names_every_module_and_only_what_exists():
    missing, unknown = missing_and_unknown(ARCHITECTURE.read_text())
    assert missing == [], "package files missing from docs/architecture.md"
    assert unknown == [], "docs/architecture.md names paths that do not exist"


def test_the_architecture_check_sees_a_stale_or_missing_row(tmp_path):
    (tmp_path / "perchead" / "photo").mkdir(parents=True)
    for name in ("__init__.py", "photo/__init__.py", "photo/crop.py", "photo/load.py", "photo/model.json"):
        (tmp_path / "perchead" / name).write_text("")
    page = ("# A\n\n## Folders\n\n| folder | what |\n|---|---|\n"
            "| `perchead/photo/` | photos |\n| `perchead/gone/` | old |\n\n## Files\n\n"
            "| `perchead/photo/crop.py` | crop |\n| `perchead/photo/faces.py` | moved away |\n")
    assert missing_and_unknown(page, tmp_path) == (["perchead/photo/load.py", "perchead/photo/model.json"],
                                                   ["perchead/gone/", "perchead/photo/faces.py"])


def test_architecture_page_shows_the_layers_of_test_layering():
    from test_layering import LAYERS  # tests/ is on sys.path under pytest

    rows = re.findall(r"^\| (\d+) \| (.+?) \|$", section(ARCHITECTURE.read_text(), "Layers"), flags=re.M)
    shown = {name: int(layer) for layer, names in rows for name in re.findall(r"`([^`]+)`", names)}
    assert shown == LAYERS, "docs/architecture.md's Layers table differs from LAYERS in tests/test_layering.py"
