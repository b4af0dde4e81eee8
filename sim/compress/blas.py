"""Run LAPACK single-threaded while compressing.

JAX's CPU Cholesky / triangular solves call the OpenBLAS bundled with scipy and numpy.
Its worker threads spin while waiting; on a small shared machine (2 cores, other jobs
running) a threaded Cholesky then costs far more CPU than the serial one (bench/README.md,
"Numbers moved out of docstrings").  GPTQ and SparseGPT factor one Hessian per group of
linears (4 per block), and the predictor one per input, so this matters.
`single_thread_blas()` sets every loaded OpenBLAS to one thread (what threadpoolctl
does, without the dependency) and restores the previous count afterwards.  XLA's own
matmuls use their own thread pool and are not affected.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import threading

_LOCK = threading.Lock()
_SUFFIXES = ("", "64_", "_64")
_PREFIXES = ("", "scipy_")


def _openblas_handles() -> list[tuple]:
    try:
        maps = open("/proc/self/maps").read()
    except OSError:  # not Linux: leave the threads alone
        return []
    out = []
    for path in sorted(set(re.findall(r"(/\S*openblas\S*\.so[\d.]*)", maps))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for pre in _PREFIXES:
            for suf in _SUFFIXES:
                setter = getattr(lib, f"{pre}openblas_set_num_threads{suf}", None)
                getter = getattr(lib, f"{pre}openblas_get_num_threads{suf}", None)
                if setter is not None and getter is not None:
                    getter.restype = ctypes.c_int
                    out.append((setter, getter))
                    break
            else:
                continue
            break
    return out


def _load_lapack() -> None:
    """JAX loads scipy's LAPACK (and its OpenBLAS) on the first CPU factorization: do one
    tiny one now, so the libraries are mapped before we look for them."""
    import jax
    import jax.numpy as jnp

    jax.block_until_ready(jnp.linalg.cholesky(jnp.eye(2, dtype=jnp.float32)))


@contextlib.contextmanager
def single_thread_blas():
    _load_lapack()
    with _LOCK:
        handles = _openblas_handles()
        old = []
        for setter, getter in handles:
            try:
                old.append((setter, int(getter())))
                setter(1)
            except Exception:  # a foreign build without these symbols working: skip it
                continue
    try:
        yield
    finally:
        with _LOCK:
            for setter, n in old:
                try:
                    setter(n)
                except Exception:
                    pass
