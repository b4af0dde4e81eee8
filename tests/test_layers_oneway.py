"""Dependencies point one way: theory <- sim <- validate <- hemorrhage (the CLI).

An AST walk over every module of the four layers, every import included (those inside
functions too, where a wrong-way import used to hide): no module imports a layer above its
own, none reaches into another module for an underscore name, and only `__init__` files
re-export (import a name they do not use).  hemorrhage.errors (UserError) sits below every
layer: sim and theory raise it, the CLI prints it.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the rank of each import root; a module may import its own rank or lower
BASE = {"hemorrhage.errors": -1, "hemorrhage": -1}
LAYERS = {
    "hemorrhage.theory": 0,
    "hemorrhage.sim": 1,
    "hemorrhage.validate": 2,
    "hemorrhage.cli": 3,
    "hemorrhage.commands": 3,
    "hemorrhage.__main__": 3,
}


def package_dirs() -> dict[str, Path]:
    """Import root -> folder, as pyproject.toml maps them (what the installed package imports)."""
    dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    return {name: ROOT / folder for name, folder in dirs.items()}


def modules(dirs: dict[str, Path]) -> dict[str, Path]:
    """Every module's dotted name -> file, each under its most specific root."""
    out = {}
    for root, folder in sorted(dirs.items(), key=lambda kv: len(kv[0])):
        for path in folder.rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            rel = path.relative_to(folder).with_suffix("").parts
            name = ".".join((root,) + rel[:-1] if rel[-1] == "__init__" else (root,) + rel)
            out[name] = path
    return out


def rank(module: str) -> int | None:
    """The layer of a hemorrhage module (None: not ours)."""
    best = None
    for table in (BASE, LAYERS):
        for root, r in table.items():
            if (module == root or module.startswith(root + ".")) and (best is None or len(root) > len(best[0])):
                best = (root, r)
    return None if best is None else best[1]


def imports(tree: ast.AST, name: str, is_pkg: bool):
    """(line, imported module, imported names or None) for every import statement, any depth;
    relative imports resolved against `name`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, None
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                parts = name.split(".") if is_pkg else name.split(".")[:-1]
                base = parts[: len(parts) - node.level + 1]
                mod = ".".join(base + ([mod] if mod else []))
            yield node.lineno, mod, [(a.name, a.asname or a.name) for a in node.names]


def used_names(tree: ast.AST) -> set[str]:
    """Names the module reads (including in __all__, strings of type annotations aside)."""
    out = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            out |= {e.value for e in getattr(node.value, "elts", []) if isinstance(e, ast.Constant)}
    return out


def violations(mods: dict[str, Path]) -> list[str]:
    out = []
    for name, path in sorted(mods.items()):
        own = rank(name)
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), str(path))
        used = used_names(tree)
        where = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
        for line, mod, names in imports(tree, name, is_pkg):
            r = rank(mod)
            if r is None:
                continue
            if own is not None and r > own:
                out.append(f"{where}:{line}: {name} (layer {own}) imports {mod} (layer {r})")
            # from package import module: the module is what is imported
            for imported, bound in names or ():
                target = f"{mod}.{imported}"
                if imported.startswith("_") and not imported.startswith("__") and target not in mods:
                    out.append(f"{where}:{line}: imports the private name {imported} of {mod}")
                if not is_pkg and bound not in used and imported != "annotations":
                    out.append(f"{where}:{line}: re-exports {imported} of {mod} (only __init__ files re-export)")
            if any(p.startswith("_") and not p.startswith("__") for p in mod.split(".")):
                out.append(f"{where}:{line}: imports the private module {mod}")
    return out


def test_every_layer_imports_only_downward_and_only_public_names():
    mods = modules(package_dirs())
    assert {
        "hemorrhage.sim.predict",
        "hemorrhage.validate.measure",
        "hemorrhage.theory.noise",
        "hemorrhage.cli",
    } <= set(mods), "the walk must see every layer"
    found = violations(mods)
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    "source, expect",
    [
        ("def f():\n    from hemorrhage.validate.measure import measure\n    return measure\n", "layer 2"),
        ("from hemorrhage.sim.predict.tangents import _hidden\nprint(_hidden)\n", "private name"),
        ("from hemorrhage.theory import kl_exact  # noqa: F401\n", "re-exports"),
        ("from ..validate import sweep\nprint(sweep)\n", "layer 2"),
    ],
)
def test_the_walk_catches_a_planted_violation(tmp_path, source, expect):
    """A module planted in sim/ (named hemorrhage.sim.planted, its file in tmp_path) with one
    wrong import is reported: a function-local upward import, a private name, a re-export, a
    relative upward import."""
    planted = tmp_path / "planted.py"
    planted.write_text(source)
    found = violations({"hemorrhage.sim.planted": planted, **modules(package_dirs())})
    assert any(expect in f and "planted" in f for f in found), found
