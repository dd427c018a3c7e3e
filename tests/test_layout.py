"""The package's tree shows its architecture: imports run downward only, the root holds the public face.

Every import statement of every module counts (lazy imports inside functions and TYPE_CHECKING blocks
included): a module may import from its own folder or from a lower tier, never sideways or up.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "neuroprobe"

# Lower tiers first; a unit is a subpackage (or a root module).
TIERS = [
    ["errors", "version", "progress"],
    ["data", "training"],
    ["models"],
    ["store"],
    ["engine"],
    ["analysis"],
    ["exports", "maps"],
    ["retina", "attention", "synthesis", "finetune"],
    ["atlas"],  # shows the other capabilities' results (--synthesize runs synthesis)
    ["cli"],
    ["__init__", "__main__"],
]
TIER = {unit: level for level, units in enumerate(TIERS) for unit in units}


def _exists(module: str) -> bool:
    path = PACKAGE.parent / module.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _unit(module: str) -> str:
    """'neuroprobe.maps.occlusion' -> 'maps'; 'neuroprobe' -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        yield path, ".".join(parts), is_package


def _imports(path: Path, module: str, is_package: bool):
    """(line, imported module) for every neuroprobe import in the file, relative ones resolved."""
    package = module if is_package else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "neuroprobe" or target.startswith("neuroprobe."):
                for alias in node.names:  # 'from . import plots' imports a module of the folder
                    submodule = f"{target}.{alias.name}"
                    yield node.lineno, submodule if _exists(submodule) else target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("neuroprobe"):
                    yield node.lineno, alias.name


def test_every_unit_has_a_tier():
    units = {_unit(module) if not (is_package and module == "neuroprobe") else "__init__"
             for _, module, is_package in _modules()}
    assert units <= set(TIER), f"folders or root modules without a tier in this test: {sorted(units - set(TIER))}"


def test_imports_run_downward_only():
    wrong = []
    for path, module, is_package in _modules():
        unit = "__init__" if module == "neuroprobe" else _unit(module)
        if path.name == "__main__.py" and module.count(".") == 1:
            unit = "__main__"
        for line, target in _imports(path, module, is_package):
            if not _exists(target):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}, which does not exist")
                continue
            other = _unit(target)
            if other in ("__init__",) and target != "neuroprobe":
                continue
            if other == unit:
                continue
            if TIER.get(other, -1) >= TIER[unit]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({unit}, tier {TIER[unit]}) imports {target} "
                             f"({other}, tier {TIER.get(other)})")
    assert not wrong, "imports that run sideways or up:\n" + "\n".join(wrong)


def test_the_root_is_the_public_face():
    root = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root) <= 8, root
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    for folder in folders:
        doc = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text()))
        assert doc, f"neuroprobe/{folder}/__init__.py has no docstring saying what lives there"
    for folder in folders:
        doc = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text()))
        assert "May import" in doc, f"neuroprobe/{folder}/__init__.py does not say what it may import"


@pytest.mark.parametrize("name", ["extract", "load_model", "open_layer", "read_images", "summary", "probe", "Capture",
                                  "NeuroprobeError", "__version__"])
def test_public_names_keep_working(name):
    import neuroprobe

    assert getattr(neuroprobe, name) is not None
