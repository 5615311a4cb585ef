"""The package's imports point one way: app → pipelines → models → render → geometry; data, then training and
evaluation, sit above what they use. Parses every module of ``perchead/`` (no import is executed)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "perchead"

# Each part of the package (its first name under perchead) and its layer, bottom first. A module may import
# its own part and parts of LOWER layers only: parts that share a layer never import each other.
LAYERS = {
    "geometry": 0,  # Gaussians, cameras, template, segmentation palette
    "render": 1,  # render() and its kernels
    "models": 2,  # networks and checkpoints
    "pipelines": 3,  # photo or tensors in, typed result and files out
    "data": 4,  # synthetic heads, multi-view folders, figures of them
    "training": 5,
    "evaluation": 5,
}


def part_of(module: str) -> str | None:
    """``perchead.models.base`` → ``models``; ``perchead.pipelines.reconstruct`` → ``pipelines``; ``perchead`` → None."""
    names = module.split(".")
    return names[1] if len(names) > 1 else None


def module_name(path: Path, root: Path = PACKAGE) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    names = list(rel.parts)
    if names[-1] == "__init__":
        names.pop()
    return ".".join(names)


def imported_modules(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """Every perchead module a file imports (top-level, inside functions and under TYPE_CHECKING alike)."""
    module = module_name(path, root)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "perchead"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] != "perchead":
                continue
            if name == "perchead":  # "from perchead import render": the names are modules
                out += [(node.lineno, f"perchead.{alias.name}") for alias in node.names]
            else:
                out.append((node.lineno, name))
    return out


def test_every_part_has_a_layer():
    parts = {part_of(f"perchead.{p.stem if p.is_file() else p.name}") for p in PACKAGE.iterdir()
             if (p.suffix == ".py" and p.name != "__init__.py") or (p.is_dir() and (p / "__init__.py").is_file())}
    assert parts - set(LAYERS) == set(), "add new parts of perchead to LAYERS in tests/test_layering.py"


def violations(root: Path = PACKAGE) -> list[str]:
    """``file:line (part) imports module (part)`` for every import that does not point to a lower layer."""
    wrong = []
    for path in sorted(root.rglob("*.py")):
        source = part_of(module_name(path, root))
        for line, target in imported_modules(path, root):
            dest = part_of(target)
            if source is None or dest is None or dest == source:
                continue  # the package root, or a module of the same part
            if dest not in LAYERS or source not in LAYERS or LAYERS[dest] >= LAYERS[source]:
                wrong.append(f"{path.relative_to(root.parent)}:{line} ({source}) imports {target} ({dest})")
    return wrong


def test_imports_point_down():
    wrong = violations()
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_checker_sees_upward_and_sideways_imports(tmp_path):
    root = tmp_path / "perchead"
    (root / "models").mkdir(parents=True)
    (root / "training").mkdir()
    (root / "models" / "bad.py").write_text("def f():\n    from perchead.training.train import train\n")
    (root / "training" / "bad.py").write_text("from ..evaluation import metrics\nfrom perchead.render import render\n")
    assert violations(root) == ["perchead/models/bad.py:2 (models) imports perchead.training.train (training)",
                                "perchead/training/bad.py:1 (training) imports perchead.evaluation (evaluation)"]
