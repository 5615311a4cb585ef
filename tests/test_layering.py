"""The package's imports point one way: app → pipelines → fit / export → photo → models → render → geometry;
data, then training and evaluation, sit above what they use; and no two modules import each other, directly or
round a longer circle. Parses every module of ``perchead/`` (no import is executed)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "perchead"

# Each part of the package (its first name under perchead) and its layer, bottom first. A module may import
# its own part and parts of LOWER layers only: parts that share a layer never import each other.
LAYERS = {
    "geometry": 0,  # Gaussians, cameras, template, segmentation palette, shared image helpers
    "progress": 0,  # the progress callback every long stage takes
    "render": 1,  # render() and its kernels
    "models": 2,  # networks and checkpoints
    "photo": 3,  # a photo → model input: loading, crop, face networks, framing, matting, label map
    "fit": 4,  # the photo-fit: config, stages, face shape
    "export": 4,  # files, views and the turntable of a head
    "pipelines": 5,  # photo or tensors in, typed result out: reconstruct, edit, sequence
    "data": 6,  # synthetic heads, multi-view folders, figures of them
    "training": 7,
    "evaluation": 7,
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


def imported_modules(path: Path, root: Path = PACKAGE, names: bool = False) -> list[tuple[int, str]]:
    """Every perchead module a file imports (top-level, inside functions and under TYPE_CHECKING alike); with
    ``names``, ``from perchead.x import y`` gives ``perchead.x.y`` (a module or a name in one)."""
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
            elif names:
                out += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
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


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module → the perchead modules it imports (top-level and inside functions alike; ``from perchead.x import
    y`` counts as an import of ``perchead.x.y`` when that is a module, else of ``perchead.x``)."""
    modules = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for _, target in imported_modules(path, root, names=True):
            while target not in modules and "." in target:  # "perchead.x.name" → "perchead.x"
                target = target.rsplit(".", 1)[0]
            if target in modules and target != module:
                targets.add(target)
        graph[module] = targets
    return graph


def import_circles(root: Path = PACKAGE) -> list[list[str]]:
    """Every import circle between modules, each as the modules round it (``[a, b, a]``), found by a depth-first
    search of :func:`import_graph`; a package's ``__init__`` importing its own modules is part of the graph."""
    graph = import_graph(root)
    circles, state, stack = [], {}, []  # state: 1 = on the current path, 2 = done

    def visit(module: str):
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                circles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return circles


def test_no_import_circles():
    circles = import_circles()
    assert not circles, "modules that import each other:\n" + "\n".join(" → ".join(c) for c in circles)


def test_the_checker_sees_import_circles(tmp_path):
    root = tmp_path / "perchead"
    (root / "photo").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "photo" / "__init__.py").write_text("")
    (root / "photo" / "crop.py").write_text("def f():\n    from perchead.photo.framing import refine\n")
    (root / "photo" / "framing.py").write_text("from perchead.photo import matting\n")
    (root / "photo" / "matting.py").write_text("from .crop import f\n")
    (root / "photo" / "load.py").write_text("from perchead.photo.crop import f\n")  # into the circle, not part of it
    assert import_circles(root) == [["perchead.photo.crop", "perchead.photo.framing", "perchead.photo.matting",
                                     "perchead.photo.crop"]]
    (root / "photo" / "matting.py").write_text("import numpy\n")
    assert import_circles(root) == []
