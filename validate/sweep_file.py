"""The sweep's JSON Lines file: reading it, appending to it, proving a file is one.

    read_rows(path, repair=True)     the complete rows; a torn last line cut off (sweep files only)
    sweep_file_problem(path)         why `path` is not provably a sweep file, or None
    check_sweep_out(out)             `sweep --out` checked before the model loads (UserError)
    base_path_for(out)               the phase-1 cache beside it, <out stem>.base.npz
    append_row(path, row, fd)        one row, one write() of the whole line, then fsync
    lock_for_append(out)             an append fd holding an exclusive flock for the whole run

A sweep appends to its --out and repairs a line a kill left unfinished by truncating the
file to its last newline.  Both would damage a file that is not a sweep's, so a file is
written to only once it is proven to be one: every complete line is a JSON object with the
sweep's `key` (canonical JSON [model, method, settings], validate.sweep.row_key) and
`grid`, and at least one such line exists (or the file is empty).  Anything else is refused
before the model loads, and left byte for byte as it was.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from hemorrhage.errors import UserError
from hemorrhage.sim.outputs import jsonable


def is_sweep_row(row) -> bool:
    """A row as validate.sweep writes it: `key` the canonical [model, method, settings]."""
    if not isinstance(row, dict) or not isinstance(row.get("key"), str) or not isinstance(row.get("grid"), dict):
        return False
    try:
        key = json.loads(row["key"])
    except json.JSONDecodeError:
        return False
    return (
        isinstance(key, list)
        and len(key) == 3
        and isinstance(key[0], str)
        and isinstance(key[1], str)
        and isinstance(key[2], dict)
    )


def _parse(path: Path, data: bytes) -> list:
    rows = []
    for i, line in enumerate(data.splitlines()):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(
                f"{path}: line {i + 1} is not JSON: not a sweep file (or a damaged one); it was left untouched"
            ) from None
    return rows


def _problem(data: bytes) -> str | None:
    if not data:
        return None
    end = data.rfind(b"\n") + 1
    try:
        rows = [json.loads(line) for line in data[:end].splitlines() if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "holds a line that is not JSON, so it is not a sweep file"
    if not rows:
        return "holds no complete sweep row, so it is not provably a sweep file"
    if not all(is_sweep_row(r) for r in rows):
        return "holds JSON lines that are not sweep rows (no key/grid), so it is not a sweep file"
    return None


def sweep_file_problem(path) -> str | None:
    """Why the file at `path` may not be appended to or repaired as a sweep file; None if
    it may (absent, empty, or proven).  Reads only."""
    path = Path(path)
    if not path.exists():
        return None
    return _problem(path.read_bytes())


def read_rows(path, *, repair: bool = True) -> list[dict]:
    """The complete rows of a sweep file.  With `repair`, a trailing unfinished line (a run
    killed mid-write) is cut off, but only from a file proven to be a sweep file: another
    file is refused untouched."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    rows = _parse(path, data[:end])
    if end < len(data) and repair:
        problem = _problem(data)
        if problem:
            raise UserError(f"{path} ends in an unfinished line and {problem}; it was left untouched")
        with open(path, "r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    return rows


def base_path_for(out: Path) -> Path:
    out = Path(out)
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    return out.with_name(f"{stem}.base.npz")


def _is_base_cache(path: Path) -> bool:
    """An .npz as validate.base_phase.BaseCache.save writes it (a zip holding meta.npy)."""
    try:
        with zipfile.ZipFile(path) as z:
            return "meta.npy" in z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def check_sweep_out(out, flag: str = "--out") -> Path:
    """`out` usable by a sweep, checked before the model loads: a writable file location
    (not a folder, not below a file), absent or a proven sweep file, and its base cache
    beside it absent or one of ours (a rerun replaces a stale one)."""
    from hemorrhage.sim.outputs import check_path

    out = check_path(out, want="file", flag=flag)
    problem = sweep_file_problem(out)
    if problem:
        raise UserError(f"{flag} {out} {problem}; it was left untouched: choose another {flag}")
    base = base_path_for(out)
    if base.exists() and (not base.is_file() or not _is_base_cache(base)):
        raise UserError(
            f"{base} (where the sweep keeps its base phase) is not a base cache hemorrhage wrote; "
            f"it was left untouched: move it or choose another {flag}"
        )
    return out


def dumps_row(row: dict) -> str:
    return json.dumps(row, sort_keys=True, allow_nan=True, default=jsonable, separators=(",", ":"))


def append_row(path: Path, row: dict, fd: int | None = None) -> None:
    """One row, one write() of the whole line, then fsync (through `fd` when given)."""
    path = Path(path)
    new = not path.exists()
    line = (dumps_row(row) + "\n").encode()
    own = fd is None
    if own:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        n = os.write(fd, line)
        if n != len(line):
            raise OSError(f"short write to {path}")
        os.fsync(fd)
    finally:
        if own:
            os.close(fd)
    if new:  # make the file's directory entry durable too
        _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def lock_for_append(out: Path) -> int:
    """Open `out` for appending and hold an exclusive flock on it for the whole run: a second
    sweep on the same file is refused instead of duplicating rows (the kernel drops the lock
    when a process dies, even by SIGKILL)."""
    import fcntl

    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise UserError(f"another sweep is writing {out}; wait for it or use another --out") from None
    _fsync_dir(out.parent)
    return fd
