"""Attention entropy and attention-pattern change per layer, base vs compressed, same tokens.

For every query row r of head h at layer l (the probabilities a over the visible keys):

    entropy        H(a) = −Σ_s a_s ln a_s   (nats; ln n for a uniform row over n keys)
    pattern TV     ½ Σ_s |a_base,s − a_comp,s|                  total variation, in [0, 1]
    pattern JS     ½ KL(a_b ‖ m) + ½ KL(a_c ‖ m),  m = (a_b + a_c)/2   Jensen–Shannon, nats, ≤ ln 2

each averaged over heads and query positions (all tokens of all windows).  The compressed
model's layer j is compared with the base's layer layer_map[j] (the identity for every method
but `expand`, sim/compress/expand.py: an added block is compared with the block it copies).
Where the two layers have different head counts (head pruning) the rows are compared head-mean
against head-mean (`pattern_heads` says "head-mean"), since the heads no longer pair up.
A dropped attention has no rows: its entropy and pattern change are NaN (not computable).

The probabilities come from sim.models.base.attention_probs (a traced forward of its own); one
window at a time goes through it, so only one window's [H T T] rows per layer are held.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hemorrhage.sim.jit import jit
from hemorrhage.sim.models.base import attention_probs


def row_entropy(a):
    """−Σ a ln a over the last axis (nats); 0·ln 0 = 0."""
    return -jnp.sum(a * jnp.log(jnp.where(a > 0, a, 1.0)), axis=-1)


def _kl(p, q):
    return jnp.sum(
        jnp.where(p > 0, p * (jnp.log(jnp.where(p > 0, p, 1.0)) - jnp.log(jnp.where(q > 0, q, 1.0))), 0.0), axis=-1
    )


def pattern_change(pb, pc):
    """(TV, JS) per row of two attention distributions over the same keys."""
    tv = 0.5 * jnp.sum(jnp.abs(pb - pc), axis=-1)
    m = 0.5 * (pb + pc)
    return tv, 0.5 * _kl(pb, m) + 0.5 * _kl(pc, m)


@jit(static_argnums=(3,))
def _window_stats(base, comp, tokens, lmap: tuple):
    """Per compressed layer: (entropy base, entropy comp, TV, JS), means over one window's rows."""
    pb_all, pc_all = attention_probs(base, tokens), attention_probs(comp, tokens)
    out = []
    for j, i in enumerate(lmap):
        pb, pc = pb_all[i], pc_all[j]  # [B H T S]
        eb, ec = row_entropy(pb).mean(), row_entropy(pc).mean()
        if pb.shape != pc.shape:
            pb, pc = pb.mean(axis=1), pc.mean(axis=1)
        tv, js = pattern_change(pb, pc)
        out.append(jnp.stack([eb, ec, tv.mean(), js.mean()]))
    return jnp.stack(out)


def attention_change(base, comp, tokens, layer_map: list[int] | None = None) -> dict:
    """Per compressed layer: entropy_base, entropy_comp (nats), tv, js; lists of floats."""
    tokens = np.asarray(tokens)
    lmap = tuple(range(len(comp.layers))) if layer_map is None else tuple(int(i) for i in layer_map)
    acc = np.zeros((len(lmap), 4), np.float64)
    for w in range(tokens.shape[0]):  # one window at a time: equal sizes, so the mean of means is the mean
        acc += np.asarray(jax.device_get(_window_stats(base, comp, jnp.asarray(tokens[w : w + 1]), lmap)), np.float64)
    acc /= tokens.shape[0]
    heads_equal = [_heads(base.layers[i]) == _heads(comp.layers[j]) for j, i in enumerate(lmap)]
    return {
        "attn_entropy_base_nats": acc[:, 0].tolist(),
        "attn_entropy_comp_nats": acc[:, 1].tolist(),
        "attn_tv": acc[:, 2].tolist(),
        "attn_js": acc[:, 3].tolist(),
        "pattern_heads": ["per-head" if e else "head-mean" for e in heads_equal],
        "base_layer": list(lmap),
    }


def _heads(block) -> int:
    return int(getattr(block.attn, "H", 0))
