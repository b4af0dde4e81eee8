"""Bytes of abstract models and compiled programs, nothing allocated (for sim/memory_plan.py).

graphdef, state = abstract_model(cfg, "bfloat16")    # ShapeDtypeStructs, via nnx.eval_shape
nbytes(state), per_device_bytes(sharded(state, mesh))
analyse(fn, args, weight_args)                       # XLA's memory_analysis() of jit(fn)
"""

from __future__ import annotations

import math

from hemorrhage.errors import UserError


def abstract_model(cfg, dtype: str):
    """(graphdef, state) of the model with every floating variable a ShapeDtypeStruct in
    `dtype` (as sim.models.load_checkpoint holds it), nothing allocated."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from hemorrhage.sim.models.loader import build

    graphdef, state = nnx.split(nnx.eval_shape(lambda: build(cfg)))
    dt = jnp.dtype(dtype)
    state = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, dt) if jnp.issubdtype(s.dtype, jnp.floating) else s, state
    )
    return graphdef, state


def nbytes(tree) -> int:
    import jax

    return int(sum(math.prod(s.shape) * s.dtype.itemsize for s in jax.tree.leaves(tree)))


def bytes_by_dtype(tree) -> dict[str, int]:
    import jax

    out: dict[str, int] = {}
    for s in jax.tree.leaves(tree):
        out[str(s.dtype)] = out.get(str(s.dtype), 0) + math.prod(s.shape) * s.dtype.itemsize
    return out


def sharded(state, mesh):
    """The same abstract state, each leaf annotated with its NamedSharding (sim.shard)."""
    import jax
    from flax import nnx
    from jax.sharding import NamedSharding

    from hemorrhage.sim.shard import axis_size, param_spec

    m = axis_size(mesh, "model")
    flat = nnx.to_flat_state(state)
    for path, var in flat:
        s = var.get_value()
        var.set_value(
            jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=NamedSharding(mesh, param_spec(path, tuple(s.shape), m)))
        )
    return nnx.from_flat_state(flat)


def per_device_bytes(tree) -> int:
    """Bytes one device holds of an abstract tree: each leaf's shard shape."""
    import jax

    total = 0
    for s in jax.tree.leaves(tree):
        shape = s.sharding.shard_shape(s.shape) if getattr(s, "sharding", None) is not None else s.shape
        total += math.prod(shape) * s.dtype.itemsize
    return int(total)


def analyse(fn, args, weight_args) -> dict:
    """XLA's memory analysis of `fn` compiled on the abstract `args` (per device)."""
    import jax

    ma = jax.jit(fn).lower(*args).compile().memory_analysis()
    if ma is None:  # a backend without the analysis
        raise UserError(f"this JAX backend ({jax.default_backend()}) gives no memory analysis of compiled programs")
    weights = sum(per_device_bytes(args[i]) for i in weight_args)
    return {
        "argument_bytes": int(ma.argument_size_in_bytes),
        "output_bytes": int(ma.output_size_in_bytes),
        "temp_bytes": int(ma.temp_size_in_bytes),
        "alias_bytes": int(ma.alias_size_in_bytes),
        "weight_argument_bytes": int(weights),
    }


def linear_bytes(graphdef, state) -> int:
    """Per-device bytes of the block linears' weights: the compressed model's copy of them."""
    from flax import nnx

    from hemorrhage.sim.predict import block_linear_paths

    wanted = {p + ".w" for p in block_linear_paths(nnx.merge(graphdef, state))}
    return sum(
        per_device_bytes(var.get_value())
        for path, var in nnx.to_flat_state(state)
        if ".".join(map(str, path)) in wanted
    )
