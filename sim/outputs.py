"""Writing what the user asked for without ever destroying what the user owns.

    check_path(path, want="dir"|"file", flag)       a usable output location, or UserError
    check_output_dir(path, overwrite=, flag)        ... and a folder hemorrhage may write into
    check_output_file(path, flag, is_ours=)         ... and a file hemorrhage may replace
    owned_dir(out, command)                         context manager: build aside, publish only our files
    atomic_dir(final)                               context manager: swap a folder hemorrhage wholly owns
    atomic_file(path) / atomic_write_text / atomic_write_bytes

The rule.  hemorrhage removes or replaces only what it wrote.  A folder it exports into
(`compress --out`, `recover --out`) receives a marker file, MARKER, listing the files it
wrote there.  A non-empty folder without that marker belongs to the user and is refused
(one line, exit 2) unless `--overwrite` is given; even then, and even in our own folder,
only the files this export writes are replaced, and of the files an earlier marker listed
only those the new export no longer writes are removed.  Nothing else in the folder is
touched.  Every check runs before the model loads: a typo costs a second, not a minute.

Atomicity.  A file is written to a temporary name beside it, fsynced, given the mode the
umask allows (mkstemp's 0600 is a temporary file's mode, not a result's) and published by
one rename, after which its directory is fsynced.  `atomic_dir` (the cache's folders,
wholly ours) is a real swap: the new folder is built and fsynced aside, the old one renamed
away, the new one renamed in, then the old one removed, so a failed build leaves the old
folder whole and a crash between the two renames leaves the old folder beside its name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from hemorrhage.errors import UserError

MARKER = ".hemorrhage-output.json"


def jsonable(x):
    """json.dump's `default` for what the results hold besides plain Python: numpy scalars and
    arrays (and JAX arrays) as numbers and lists, anything else as its str()."""
    import numpy as np  # here, not at the top: the CLI imports this module before any work

    if isinstance(x, np.generic):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


# ------------------------------------------------------------------ modes and fsync ----


def umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask would set
    it for a moment, racing the sweep's worker threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(folder: Path) -> None:
    """Make a folder's entries (a rename, a new file) durable; a no-op where a folder
    cannot be opened for it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            if not p.is_symlink():
                _fsync_file(p)
        fsync_dir(Path(dirpath))


# ------------------------------------------------------------------ files --------------


@contextlib.contextmanager
def atomic_file(path: Path):
    """Yield a temporary path beside `path` (same suffix, so writers that infer a format
    from it still do); on success it is fsynced, given umask permissions and renamed onto
    `path`.  On failure it is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


# ------------------------------------------------------------------ checks -------------


def check_path(path, *, want: str, flag: str = "--out") -> Path:
    """`path` as an output location of kind `want` ("dir" or "file"): not below a regular
    file, not of the other kind, and writable (itself if it exists, else the nearest
    folder above it that does, where the missing ones will be made)."""
    path = Path(path).expanduser()
    if want not in ("dir", "file"):
        raise ValueError(f"want must be 'dir' or 'file', got {want!r}")
    for up in path.absolute().parents:
        if up.exists() and not up.is_dir():
            raise UserError(f"{flag} {path}: {up} is a file, not a folder; choose another {flag}")
    if path.exists():
        if want == "dir" and not path.is_dir():
            raise UserError(f"{flag} {path} is a file; a folder is needed here")
        if want == "file" and path.is_dir():
            raise UserError(f"{flag} {path} is a folder; a file is needed here")
        if want == "file" and not path.is_file():
            raise UserError(f"{flag} {path} is not a regular file")
        # a file is replaced by a rename in its folder, so that folder must be writable
        target = path if want == "dir" else path.parent
        need = os.W_OK | os.X_OK
    else:
        target = next(up for up in path.absolute().parents if up.exists())
        need = os.W_OK | os.X_OK
    if not os.access(target, need):
        raise UserError(f"{flag} {path}: {target} is not writable")
    return path


def owned_files(folder: Path) -> list[str] | None:
    """The files a hemorrhage marker in `folder` lists, or None where there is no readable
    marker (then the folder is not ours).  Only plain names count: a marker never makes
    anything outside its own folder ours."""
    marker = Path(folder) / MARKER
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("written_by") != "hemorrhage" or not isinstance(data.get("files"), list):
        return None
    files = data["files"]
    return [f for f in files if _plain_name(f)]


def _plain_name(name) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..", MARKER) and "/" not in name and "\0" not in name


def check_output_dir(path, *, overwrite: bool = False, flag: str = "--out") -> Path:
    """A folder hemorrhage may export into: absent, empty, one of its own exports (MARKER),
    or the user's with `overwrite` (only our file names will be written there)."""
    path = check_path(path, want="dir", flag=flag)
    if path.is_dir() and any(path.iterdir()) and owned_files(path) is None and not overwrite:
        raise UserError(
            f"{flag} {path} is a folder with files that hemorrhage did not write; "
            f"choose an empty or new folder, or add --overwrite to write hemorrhage's files "
            f"into it (nothing else there is touched)"
        )
    return path


def check_output_file(path, *, flag: str = "--out", is_ours=None, what: str = "file") -> Path:
    """A file hemorrhage may write or append to: absent, or (with `is_ours`) one that
    `is_ours(path)` recognises as its own.  Read only: the file is left byte for byte."""
    path = check_path(path, want="file", flag=flag)
    if path.exists() and is_ours is not None and not is_ours(path):
        raise UserError(f"{flag} {path} exists and is not a {what}; it was left untouched: choose another {flag}")
    return path


# ------------------------------------------------------------------ folders ------------


@contextlib.contextmanager
def atomic_dir(final: Path):
    """Yield a temporary folder beside `final`; on success it replaces `final` by a swap.
    Only for folders hemorrhage wholly owns (the cache): the old folder is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.new.", dir=final.parent))
    old = None
    try:
        yield tmp
        _fsync_tree(tmp)
        tmp.chmod(0o777 & ~umask())
        if final.exists() or final.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
            os.replace(final, old / "x")  # into a fresh folder of ours: never onto a name someone holds
        try:
            os.replace(tmp, final)
        except OSError:
            if old is not None:
                os.replace(old / "x", final)
            raise
        fsync_dir(final.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _write_marker(folder: Path, files, command: str) -> None:
    text = json.dumps({"written_by": "hemorrhage", "command": command, "files": sorted(set(files))}, indent=2) + "\n"
    atomic_write_text(folder / MARKER, text)


@contextlib.contextmanager
def owned_dir(out: Path, *, command: str, overwrite: bool = False):
    """Yield a temporary folder to write an export's files into (plain files at its top
    level); on success they are published into `out` under the rule above.

    `out` absent: the built folder, marker included, is renamed into place (appears at
    once).  `out` present (ours, or the user's with `overwrite`): the marker first lists
    the old and the new files (a crash part-way leaves everything we may have written
    listed), each new file replaces its name by a rename, files the old marker listed that
    this export no longer writes are removed, and the marker is rewritten to the new list."""
    out = check_output_dir(out, overwrite=overwrite)
    present = out.is_dir()
    if not present:
        out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".hemorrhage-tmp.", dir=out if present else out.parent))
    try:
        yield tmp
        names = sorted(p.name for p in tmp.iterdir())
        bad = [n for n in names if not (tmp / n).is_file() or (tmp / n).is_symlink() or not _plain_name(n)]
        if bad:
            raise ValueError(f"owned_dir: only plain files may be written, got {bad}")
        for n in names:  # copies keep their source's mode; a result gets the umask's
            os.chmod(tmp / n, 0o666 & ~umask())
        if not present:
            _write_marker(tmp, names, command)
            _fsync_tree(tmp)
            tmp.chmod(0o777 & ~umask())
            os.rename(tmp, out)  # a non-empty folder made meanwhile is refused by the kernel, never replaced
            fsync_dir(out.parent)
            return
        clash = [n for n in names if (out / n).exists() and not (out / n).is_file()]
        if clash:
            raise UserError(f"--out {out}: {clash[0]} is a folder there, where hemorrhage writes a file")
        old = owned_files(out) or []
        stale = [n for n in old if n not in names]
        _write_marker(out, old + names, command)
        for n in names:
            _fsync_file(tmp / n)
            os.replace(tmp / n, out / n)
        for n in stale:
            if (out / n).is_file() or (out / n).is_symlink():
                (out / n).unlink()
        _write_marker(out, names, command)
        fsync_dir(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
