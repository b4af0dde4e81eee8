"""Package discovery for the one import root (`hemorrhage`) over the repository's top-level
folders: pyproject.toml's [tool.setuptools.package-dir] maps each root (hemorrhage.sim -> sim/,
...); every folder below a root that holds an __init__.py is installed as its subpackage, so a
new folder (sim/predict/, a new sim/compress/ module) needs no edit here or in pyproject.toml.
Everything else is in pyproject.toml."""

import tomllib
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
ROOTS = tomllib.loads((HERE / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]


def packages() -> list[str]:
    out = []
    for name, folder in ROOTS.items():
        if not (HERE / folder / "__init__.py").is_file():
            raise SystemExit(f"pyproject.toml maps {name} to {folder}/, which is not a package")
        out += [name] + [f"{name}.{sub}" for sub in find_packages(str(HERE / folder))]
    return sorted(set(out))


setup(packages=packages())
