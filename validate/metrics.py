"""Measured damage in the three spaces, per token, and the theorems' predictions of it.

Notation (seeds): base h, z, p; compressed h + Δh, z + Δz, q; T = 1.
    cos_h, cos_z, cos_p    cosine similarity base vs compressed, per token
    kl                     KL(p ‖ q)
    var_p, var_r           Var_p(Δz), Var_r(Δz) with r = p²/‖p‖²
    kl_pred = var_p / 2            Theorem 3 (arXiv 2603.24652)
    one_minus_cos_p_pred = var_r/2 Theorem 2
    one_minus_cos_h_pred = ‖Δh⊥‖²/(2‖h‖²)  Theorem 1 (Taylor cosine)
    one_minus_cos_z_pred = ‖Δz⊥‖²/(2‖z‖²)  Theorem 1 applied to the logits
NaN/inf from a collapsed model propagate into the numbers: they are results.  top1 is the
exception that needs care, since argmax of NaN logits is 0 (see `top1_agreement`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from hemorrhage.sim.jit import jit
from jaxtyping import Array, Float

from hemorrhage.theory.compounding import top1_agreement
from hemorrhage.theory.cosine import cos_sim, one_minus_cos_taylor
from hemorrhage.theory.softmax import cosine_pq, kl_exact, reverse_kl_exact, var_p, var_r


def compare_logits(z: Float[Array, "N V"], z_c: Float[Array, "N V"]) -> dict[str, Float[Array, " N"]]:
    """Per-token damage from base logits z to compressed logits z_c (T = 1), with the
    softmax theorems' predictions (theory/softmax.py) beside the exact values."""
    dz = z_c - z
    vp, vr = var_p(z, dz), var_r(z, dz)
    return {
        "cos_z": cos_sim(z, z_c),
        "one_minus_cos_z_pred": one_minus_cos_taylor(z, dz),
        "cos_p": cosine_pq(z, dz),
        "kl": kl_exact(z, dz),
        "var_p": vp,
        "var_r": vr,
        "kl_pred": vp / 2.0,
        "one_minus_cos_p_pred": vr / 2.0,
        "top1": top1_agreement(z, z_c),
    }


def compare_final(z: Float[Array, "N V"], z_c: Float[Array, "N V"]) -> dict[str, Float[Array, " N"]]:
    """`compare_logits` plus KL(q ‖ p) per token, all in fp32 whatever the models' dtype: the
    per-token arrays measure's statistics (validate/token_stats.py) are drawn from.  Only at
    the final layer: the per-layer lens does not need the reverse KL."""
    z, z_c = z.astype(jnp.float32), z_c.astype(jnp.float32)
    return {**compare_logits(z, z_c), "kl_reverse": reverse_kl_exact(z, z_c - z)}


def compare_hidden(h: Float[Array, "N d"], h_c: Float[Array, "N d"]) -> dict[str, Float[Array, " N"]]:
    return {"cos_h": cos_sim(h, h_c), "one_minus_cos_h_pred": one_minus_cos_taylor(h, h_c - h)}


@jit(static_argnames=("chunk",))
def per_layer(base, comp, hs: Float[Array, "L1 N d"], hs_c: Float[Array, "L1 N d"], chunk: int = 256):
    """Token-mean of every metric at every layer's logit lens: dict of [L+1] arrays.

    Tokens go through the head `chunk` at a time so a 262k vocabulary fits in memory; fewer
    tokens than a chunk go as one chunk of their own size (padding them would only add work)."""
    n = hs.shape[1]
    chunk = max(1, min(chunk, n))
    pad = (-n) % chunk
    valid = jnp.arange(n + pad) < n

    def layer(args):
        h, h_c = args
        h = jnp.pad(h, ((0, pad), (0, 0))).reshape(-1, chunk, h.shape[-1])
        h_c = jnp.pad(h_c, ((0, pad), (0, 0))).reshape(-1, chunk, h_c.shape[-1])

        def one(xs):
            hb, hc = xs
            return {**compare_hidden(hb, hc), **compare_logits(base.unembed(hb), comp.unembed(hc))}

        per_tok = jax.lax.map(one, (h, h_c))
        return {k: jnp.sum(jnp.where(valid, v.reshape(-1), 0.0)) / n for k, v in per_tok.items()}

    return jax.lax.map(layer, (hs, hs_c))
