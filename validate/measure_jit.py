"""The jitted pieces of a measurement, chunked over tokens so a 262k vocabulary fits.

chunked(fn, n, chunk, *arrays)   fn on `chunk` rows at a time (lax.map), dict of [n]
nll(model, h, targets)           −log p(target) from final residuals h [n d]
final(base, comp, hb, hc)        validate.metrics.compare_final at the last layer (fp32), with
                                 finite_b / finite_c: 1 where base / compressed logits are all finite
"""

from __future__ import annotations

_JIT: dict = {}


def chunked(fn, n: int, chunk: int, *arrays):
    """Apply fn to `chunk` rows at a time of arrays [n, ...] (lax.map, padded); dict of [n]."""
    import jax
    import jax.numpy as jnp

    pad = (-n) % chunk
    xs = tuple(jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)).reshape(-1, chunk, *a.shape[1:]) for a in arrays)
    out = jax.lax.map(lambda x: fn(*x), xs)
    return {k: v.reshape(-1)[:n] for k, v in out.items()}


def chunk_size(n: int, cap: int) -> int:
    """Rows per lax.map step: ≤ cap, and little padding (n = 62 -> 62, 508 -> 127)."""
    steps = -(-n // cap)
    return -(-n // steps)


def _nll_impl(model, h, targets, chunk: int = 128):
    import jax
    import jax.numpy as jnp

    def one(hc, tc):
        lp = jax.nn.log_softmax(model.unembed(hc).astype(jnp.float32))  # per-token NLL in fp32
        return {"nll": -jnp.take_along_axis(lp, tc[:, None], axis=-1)[:, 0]}

    return chunked(one, h.shape[0], chunk, h, targets)["nll"]


def _final_impl(base, comp, hb, hc, chunk: int = 128):
    from hemorrhage.validate.metrics import compare_final, compare_hidden

    import jax.numpy as jnp

    def one(xb, xc):
        zb, zc = base.unembed(xb), comp.unembed(xc)
        # which positions have finite logits on each side: the reasons a metric is not computable
        fin = {
            "finite_b": jnp.all(jnp.isfinite(zb), -1).astype(jnp.float32),
            "finite_c": jnp.all(jnp.isfinite(zc), -1).astype(jnp.float32),
        }
        return {**compare_hidden(xb, xc), **compare_final(zb, zc), **fin}

    return chunked(one, hb.shape[0], chunk, hb, hc)


def _build():
    if not _JIT:
        from hemorrhage.sim.jit import jit

        _JIT.update(nll=jit(_nll_impl, static_argnames=("chunk",)), final=jit(_final_impl, static_argnames=("chunk",)))
    return _JIT


def nll(model, h, targets, chunk: int = 128):
    return _build()["nll"](model, h, targets, chunk=chunk)


def final(base, comp, hb, hc, chunk: int = 128):
    return _build()["final"](base, comp, hb, hc, chunk=chunk)
