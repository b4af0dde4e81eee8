"""The jitted programs each command compiles, on abstract arguments: what sim.memory_plan
compiles and measures (its docstring lists the programs of each command)."""

from __future__ import annotations


def tokens(shape, mesh):
    """Abstract int32 tokens [B T], B split over the mesh's "data" axis where it divides."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from hemorrhage.sim.shard import axis_size

    if mesh is None:
        return jax.ShapeDtypeStruct(shape, jnp.int32)
    spec = P("data") if shape[0] % axis_size(mesh, "data") == 0 else P()
    return jax.ShapeDtypeStruct(shape, jnp.int32, sharding=NamedSharding(mesh, spec))


def programs(command: str, graphdef, state, cfg, sh, mesh, floor_state=None) -> dict:
    """name -> (function, abstract args, index of the args that are weights) of the jitted
    programs `command` runs (sim.memory_plan's docstring); `floor_state`: the fp32 model measure loads
    first for the dtype floor (its forward runs with only that model resident)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.experimental import jet

    from hemorrhage.sim.generate import generate
    from hemorrhage.sim.models.base import forward

    gen_len = sh.prompt_len + sh.new_tokens
    progs = {}
    ev, pr = tokens((sh.windows, sh.seqlen), mesh), tokens((sh.prompts, sh.prompt_len), mesh)
    if command in ("measure", "compress"):
        progs["forward"] = (lambda s, t: forward(nnx.merge(graphdef, s), t), (state, ev), (0,))
    if command == "measure" and floor_state is not None:
        progs["dtype_floor"] = (lambda s, t: forward(nnx.merge(graphdef, s), t), (floor_state, ev), (0,))
    if command == "measure":
        progs["trace"] = (lambda s, t: nnx.merge(graphdef, s).trace(t), (state, ev), (0,))
    if command in ("measure", "predict") and sh.prompts:
        progs["decode"] = (lambda s, p: generate(nnx.merge(graphdef, s), p, sh.new_tokens), (state, pr), (0,))
    if command == "predict":
        from hemorrhage.sim.predict import block_linear_paths

        model = nnx.merge(graphdef, state)
        wanted = {p + ".w" for p in block_linear_paths(model)}
        gd, lin, rest = nnx.split(model, lambda path, _: ".".join(map(str, path)) in wanted, ...)

        def h_last(lin_, rest_, t):
            return nnx.merge(gd, lin_, rest_)(t, collect_h=True)[2][-1]

        sets = (ev,) + ((tokens((sh.prompts, gen_len - 1), mesh),) if sh.prompts else ())

        def jvp(lin_, rest_, tangent, *toks):
            return tuple(jax.jvp(lambda w: h_last(w, rest_, t), (lin_,), (tangent,)) for t in toks)

        def taylor(lin_, rest_, tangent, t):
            leaves, td = jax.tree_util.tree_flatten(lin_)
            fn = lambda *ls: h_last(jax.tree_util.tree_unflatten(td, list(ls)), rest_, t)  # noqa: E731
            return jet.jet(fn, tuple(leaves), tuple((d, jnp.zeros_like(d)) for d in jax.tree_util.tree_leaves(tangent)))

        progs["jvp"] = (jvp, (lin, rest, lin) + sets, (0, 1))
        progs["taylor"] = (taylor, (lin, rest, lin, ev), (0, 1))
    if command == "compress":
        cal = tokens((sh.calib_samples, sh.calib_seqlen), mesh)
        progs["calibration"] = (lambda s, t: nnx.merge(graphdef, s)(t, collect_h=True)[2], (state, cal), (0,))
        d_in = max(cfg.d_model, cfg.d_ff, cfg.moe_d_ff or 0)
        x = jax.ShapeDtypeStruct((sh.calib_samples * sh.calib_seqlen, d_in), state_dtype(state))

        def hessian(x_):
            xf = x_.astype(jnp.float32)
            h = xf.T @ xf
            return h, jnp.linalg.cholesky(h + 0.01 * jnp.mean(jnp.diag(h)) * jnp.eye(d_in, dtype=h.dtype))

        progs["hessian"] = (hessian, (x,), ())
    return progs


def state_dtype(state):
    import jax
    import jax.numpy as jnp

    return next((s.dtype for s in jax.tree.leaves(state) if jnp.issubdtype(s.dtype, jnp.floating)), jnp.float32)
