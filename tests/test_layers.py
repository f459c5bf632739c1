"""The architecture, checked: imports point downward only, and the torch-only core stays torch-only."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "loratune"

# The layers, lowest first. A module imports only from its own unit and from lower layers: the units of one
# layer are independent of each other (so serve, beside train, cannot depend on it). ``__init__`` is the
# package's public face: the engine and the preparation, nothing from train/ and above.
LAYERS = [
    ("errors",),
    ("fsutil", "hub", "device", "host_memory"),
    ("kernels",),
    ("lora",),
    ("fastpath", "data", "models"),
    ("prepare", "generate"),
    ("tasks",),
    ("__init__", "artifacts", "inspect_model"),
    ("merge",),
    ("train", "serve"),
    ("compare",),
    ("cli",),
    ("__main__",),
]
LAYER = {unit: level for level, units in enumerate(LAYERS) for unit in units}
TORCH_ONLY = {"kernels", "lora"}  # may import torch and the standard library, nothing else third-party
THIRD_PARTY_OK = {"torch", "safetensors", "numpy"}


def _unit(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _imported_units(path: Path) -> set[str]:
    """The units of ``loratune`` that ``path`` imports; ``import loratune`` and ``from loratune import name``
    (a name, not a module) import ``__init__``."""
    units = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules = [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [(node.module, [a.name for a in node.names])]
        else:
            continue
        for module, names in modules:
            parts = module.split(".")
            if parts[0] != "loratune":
                continue
            if len(parts) > 1:
                units.add(parts[1])
            else:
                units |= {name if name in LAYER else "__init__" for name in names} or {"__init__"}
    return units


def test_every_unit_has_a_layer():
    units = {_unit(p) for p in PACKAGE.rglob("*.py")}
    assert units <= set(LAYER), units - set(LAYER)


def test_imports_point_downward():
    bad = []
    for path in PACKAGE.rglob("*.py"):
        unit = _unit(path)
        for other in _imported_units(path) - {unit}:
            if LAYER[other] >= LAYER[unit]:
                bad.append(f"{path.relative_to(PACKAGE)} imports loratune.{other}")
    assert not bad, bad


def test_core_is_torch_only():
    import sys

    stdlib = set(sys.stdlib_module_names)
    bad = []
    for unit in TORCH_ONLY:
        for path in (PACKAGE / unit).rglob("*.py"):
            for name in _imports(path):
                top = name.split(".")[0]
                if top not in stdlib and top not in THIRD_PARTY_OK and top != "loratune" and top != "__future__":
                    bad.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not bad, bad


def test_no_private_name_is_imported_from_another_module():
    """``from loratune.x import _name`` reaches into another module's internals: make the name public or move it."""
    bad = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("loratune"):
                bad += [f"{path.relative_to(PACKAGE)}: {node.module}.{a.name}" for a in node.names if _private(a.name)]
    assert not bad, bad


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")
