"""The shape of the code (issue 21): layers import only downwards, method packages not each other, and no
module grows past 400 lines."""
import ast
from pathlib import Path

DAVIZ = Path(__file__).resolve().parents[1] / "daviz"
MAX_LINES = 400
# Bottom up. A module may import its own layer and the ones below, never one above.
LAYERS = [
    {"seeding", "systems", "metrics", "artifacts", "parallel"},  # plumbing and the dynamics
    {"filters"},                                                  # the numpy baselines
    {"experiment"},                                               # twin experiments
    {"tuning"},                                                   # tuned tables, scoring, search
    {"mnmef", "variational", "latent"},                           # the method packages
    {"methods"},                                                  # the registry of every method by name
    {"cli", "app"},                                               # what users run
]
RANK = {part: i for i, layer in enumerate(LAYERS) for part in layer}
METHOD_PACKAGES = LAYERS[4]


def _part(path: Path) -> str:
    rel = path.relative_to(DAVIZ)
    return rel.parts[0].removesuffix(".py")


def _imported_parts(path: Path) -> set[str]:
    """Top-level daviz parts that `path` imports, also inside functions (relative imports resolved)."""
    rel = path.relative_to(DAVIZ.parent).with_suffix("")
    package = list(rel.parts[:-1])
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            names = [node.module] if node.module else [a.name for a in node.names]
            targets = [".".join(base + n.split(".")) for n in names]
        elif isinstance(node, ast.ImportFrom):
            targets = [node.module or ""]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        parts |= {t.split(".")[1] for t in targets if t.startswith("daviz.") and len(t.split(".")) > 1}
    return parts


def test_every_part_of_daviz_has_a_layer():
    parts = {_part(p) for p in DAVIZ.rglob("*.py")} - {"__init__"}
    assert parts <= set(RANK), f"give these a layer in tests/test_layout.py: {sorted(parts - set(RANK))}"


def test_imports_run_only_downwards_and_method_packages_stay_apart():
    upward = []
    for path in sorted(DAVIZ.rglob("*.py")):
        part = _part(path)
        if part == "__init__":
            continue
        for target in _imported_parts(path) - {part}:
            if target not in RANK:
                continue
            if RANK[target] > RANK[part] or (part in METHOD_PACKAGES and target in METHOD_PACKAGES):
                upward.append(f"{path.relative_to(DAVIZ.parent)} imports daviz.{target}")
    assert not upward, "\n".join(upward)


def test_no_module_over_400_lines():
    long = {str(p.relative_to(DAVIZ.parent)): n for p in DAVIZ.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long
