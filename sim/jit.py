"""`jit`: nnx.jit that returns only the variables a call changed.

nnx.jit's default (graph updates on) makes every parameter of every module argument an
output of the compiled program, to write back whatever the function mutated.  For a forward
that mutates nothing XLA still copies each weight into a fresh output buffer: a whole copy
of the model per call (bench/README.md, "`measure` within issue 29's memory budget").  With
`graph_updates=False` (flax ≥ 0.12.8, pinned) only variables whose value changed come back, so a
forward's outputs are its results and an optimizer step still returns its new parameters.
What it gives up: structural changes to a module inside the call (a new attribute kept after
it); our functions make none, sown values are popped before they return.
"""

from __future__ import annotations

from functools import partial

from flax import nnx


def jit(fun=None, /, **options):
    """nnx.jit(fun, graph_updates=False, **options); usable as @jit and @jit(static_argnums=...)."""
    if fun is None:
        return partial(jit, **options)
    return nnx.jit(fun, graph_updates=False, **options)
