"""glibc malloc settings for a process that runs XLA on a CPU: keep the resident set near
what is live.

    tune_malloc()   at most 2 arenas; blocks ≥ 256 KiB from mmap (returned to the OS when
                    freed); trim the heap's top as soon as it is free.  No-op off glibc, or
                    when the user set any MALLOC_*_ variable (theirs wins), or with
                    HEMORRHAGE_MALLOC=0.

Why: XLA's CPU client and its compiler allocate from many threads; glibc then grows one
arena per thread (up to 8 × cores) and keeps every freed block for reuse, so each program
compiled or run leaves its peak behind in the resident set.  On `hemorrhage measure`
the resident set grew with every new program while the live arrays stayed at the weights'
size (figures with and without these settings: bench/README.md, "Peak RSS of measure").
These are the settings glibc's own MALLOC_ARENA_MAX /
MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ variables give, set from inside the process
(mallopt) before XLA starts its threads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# glibc's mallopt parameter numbers (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
SETTINGS = {_M_ARENA_MAX: 2, _M_MMAP_THRESHOLD: 256 << 10, _M_TRIM_THRESHOLD: 0}


def tune_malloc() -> bool:
    """Apply SETTINGS with mallopt; True when all were taken."""
    if os.environ.get("HEMORRHAGE_MALLOC", "1") == "0" or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
