"""Resident memory of this process, and dropping jit's compiled programs past a limit.

    rss()              resident bytes now (/proc/self/statm; 0 where there is none)
    memory_limit()     $HEMORRHAGE_SWEEP_MEMORY_GB, else 40 % of the machine's memory
    bound_memory(log)  past the limit: jax.clear_caches() (programs recompile where needed)

Sweeps, the predictor check and the tests' module teardown share it.
"""

from __future__ import annotations

import os

from hemorrhage.errors import UserError


def rss() -> int:
    """Resident memory of this process in bytes (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def memory_limit() -> int:
    """Bytes of resident memory a sweep may hold before it frees its compiled programs:
    $HEMORRHAGE_SWEEP_MEMORY_GB, else 40 % of the machine's memory."""
    gb = os.environ.get("HEMORRHAGE_SWEEP_MEMORY_GB")
    if gb:
        try:
            return int(float(gb) * 2**30)
        except ValueError:
            raise UserError(f"HEMORRHAGE_SWEEP_MEMORY_GB must be a number, got {gb!r}") from None
    try:
        return int(0.4 * os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError):
        return 1 << 62


def bound_memory(log) -> None:
    """Every (method, bits, group size, ...) compiles its own programs for a 30-layer model
    (tens of MB each, kept by jit for reuse): a long sweep would hold them all and outgrow
    the machine (seen: 12 GB, killed by the kernel).  Past memory_limit() they are dropped
    and recompiled where needed: slower, never a lost run.  Results do not change."""
    import gc

    if rss() <= memory_limit():
        return
    import jax

    before = rss()
    jax.clear_caches()
    gc.collect()
    log(
        f"freed compiled programs: resident memory {before / 2**30:.1f} -> {rss() / 2**30:.1f} GB "
        f"(limit {memory_limit() / 2**30:.1f} GB)"
    )
