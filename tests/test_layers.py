"""The architecture, checked: imports point downward only, and the torch-only core stays torch-only."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "loratune"

# Lower number = lower layer. A module may import only from its own layer or below.
LAYERS = {
    "errors": 0, "fsutil": 0,
    "kernels": 1,
    "lora": 2,
    "hub": 3, "data": 3, "models": 3, "fastpath": 3, "prepare": 3, "tasks": 3, "artifacts": 3, "inspect_model": 3,
    "generate": 3, "merge": 3,
    "train": 4,
    "compare": 5, "serve": 5,
    "cli": 6, "__main__": 7,
}  # fmt: skip
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


def test_every_unit_has_a_layer():
    units = {_unit(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert units <= set(LAYERS), units - set(LAYERS)


def test_imports_point_downward():
    bad = []
    for path in PACKAGE.rglob("*.py"):
        unit = _unit(path)
        if unit == "__init__":
            continue
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "loratune" and len(parts) > 1 and LAYERS[parts[1]] > LAYERS[unit]:
                bad.append(f"{path.relative_to(PACKAGE)} imports {name}")
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
