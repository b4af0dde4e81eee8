"""An opt-in XLA setting for compressed models on a CPU: decode one layer at a time.

    prefer_memory_first_schedule()   with HEMORRHAGE_XLA_SCHEDULE=memory, appends
        --xla_cpu_enable_concurrency_optimized_scheduler=false
    to XLA_FLAGS, unless the user's XLA_FLAGS already name that flag (theirs wins).  Called
    when hemorrhage.sim is imported; it has an effect only if no JAX computation ran before
    (XLA reads XLA_FLAGS once, when its backend starts).  Off by default: see the cost below.

Why: XLA's CPU compiler orders a program with its concurrency-optimized scheduler by
default, which starts independent work as early as it can.  In a packed low-bit or N:M
model the decode of a layer's weights depends only on the parameters, never on the
activations, so that scheduler decodes every layer first and keeps all of them alive: the
forward's temporaries grow to the whole model's linear weights in fp32.  The memory-first
(list) scheduler decodes each layer just before its matmul, so the temporaries stay about
one layer's weights.  It also gives up the concurrency XLA finds between independent
instructions, so prefill, decode and compilation are slower (bench/bench_schedule.py,
bench/README.md): use it where memory, not time, is what runs out.  The flag names an XLA:CPU pass; GPU and TPU compilers ignore it.
"""

from __future__ import annotations

import os

FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"
# XLA aborts the process on a flag it does not know; jaxlib 0.6 (the oldest pyproject allows)
# and later know this one.
_MIN_JAXLIB = (0, 6)


def _jaxlib_version() -> tuple[int, ...]:
    try:
        from importlib.metadata import version

        return tuple(int(p) for p in version("jaxlib").split(".")[:2])
    except Exception:  # no metadata, or a local build with an odd version: do not guess
        return ()


def prefer_memory_first_schedule() -> bool:
    """Ask XLA:CPU for its memory-first scheduler; True when the flag was added."""
    flags = os.environ.get("XLA_FLAGS", "")
    if FLAG in flags or os.environ.get("HEMORRHAGE_XLA_SCHEDULE", "concurrency") != "memory":
        return False
    if _jaxlib_version() < _MIN_JAXLIB:
        return False
    os.environ["XLA_FLAGS"] = (flags + f" {FLAG}=false").strip()
    return True
