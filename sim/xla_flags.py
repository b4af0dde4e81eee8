"""XLA:CPU's scheduler: decode or up-cast one layer at a time where memory runs out.

    prefer_memory_first_schedule(held=None)   appends
        --xla_cpu_enable_concurrency_optimized_scheduler=false
        --xla_disable_hlo_passes=while-loop-invariant-code-motion
    to XLA_FLAGS when HEMORRHAGE_XLA_SCHEDULE=memory, or when it is unset (`auto`) and the
    model is held in bfloat16/float16 (`held`); never when it is `concurrency`, nor when the
    user's XLA_FLAGS already name that flag (theirs wins).  Called when hemorrhage.sim is
    imported (held unknown: only the explicit `memory` acts) and by the CLI once it knows the
    dtype the model will be held in; it has an effect only if no JAX computation ran before
    (XLA reads XLA_FLAGS once, when its backend starts).

Why: XLA's CPU compiler orders a program with its concurrency-optimized scheduler by
default, which starts independent work as early as it can.  Work that depends only on the
parameters, never on the activations, therefore runs first and stays alive to the end:
  - a packed low-bit or N:M layer's decode: the temporaries grow to the whole model's
    linear weights in fp32;
  - a bf16/fp16 model's matmuls, which XLA:CPU computes in fp32 after converting both
    operands: every weight's fp32 copy is made up front, twice the weights' bytes.
The memory-first (list) scheduler runs each decode or convert just before its matmul, so the
temporaries stay about one layer's weights.  A loop (token-by-token decoding, chunked
metrics) has the same problem once more: loop-invariant code motion lifts each weight's
decode or convert out of the loop body, all of them alive for the whole loop; without that
pass they are redone at every step, one layer at a time.

The price is time: the concurrency XLA finds between independent instructions, and for a
loop the per-step decode or convert (bench/bench_schedule.py; bench/README.md has the
measured ratios).  Hence opt-in for fp32 models, on by default for bf16/fp16 ones, whose
fp32 copies would undo the point of holding them in half the bytes.  The flags name XLA:CPU
passes; GPU and TPU compilers ignore them (their matmuls take bf16 as it is).
"""

from __future__ import annotations

import os

FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"
LOOP_FLAG = "--xla_disable_hlo_passes"  # a list: named once, so a user's own list is left alone
_LOOP_PASS = "while-loop-invariant-code-motion"
# XLA aborts the process on a flag it does not know; jaxlib 0.6 (the oldest pyproject allows)
# and later know this one.
_MIN_JAXLIB = (0, 6)


def _jaxlib_version() -> tuple[int, ...]:
    try:
        from importlib.metadata import version

        return tuple(int(p) for p in version("jaxlib").split(".")[:2])
    except Exception:  # no metadata, or a local build with an odd version: do not guess
        return ()


LOW_PRECISION = ("bfloat16", "float16")


def _backend_started() -> bool:
    """Whether XLA's backend already read XLA_FLAGS: a flag added now would not act in this
    process, only leak into the environment of every subprocess it starts."""
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except Exception:  # a JAX without this (private) query: assume not started, as before
        return False


def prefer_memory_first_schedule(held: str | None = None) -> bool:
    """Ask XLA:CPU for its memory-first scheduler (module docstring); True when the flag was added."""
    flags = os.environ.get("XLA_FLAGS", "")
    mode = os.environ.get("HEMORRHAGE_XLA_SCHEDULE", "auto")
    wanted = mode == "memory" or (mode == "auto" and held in LOW_PRECISION)
    if FLAG in flags or not wanted or _jaxlib_version() < _MIN_JAXLIB or _backend_started():
        return False
    added = f" {FLAG}=false" + ("" if LOOP_FLAG in flags else f" {LOOP_FLAG}={_LOOP_PASS}")
    os.environ["XLA_FLAGS"] = (flags + added).strip()
    return True
