r"""Logit space of the linear response: the head applied to Δh_L, in chunks of tokens.

Δz = J_unembed(h_L)·Δh_L (the final norm's JVP, then the head W [vocab d]); every quantity the
predictor scores per token and grid point lives here: exact KL and top-1 along a ray c·Δz of
the linear and of the dephased change (`logit_metrics`), the dephasing rate of the logit
velocity (`dephasing_rates`, theory.dephasing), the base margins and pair responses along the
generation paths, and the nonlinearity check's Fisher-metric terms.  sim.linear_response
re-exports these names.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx
from jax.experimental import jet

from hemorrhage.theory import dephasing_factor, dephasing_rate, kl_exact, var_p


def _chunks(x, chunk):
    n = x.shape[0]
    pad = (-n) % chunk
    return jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape(-1, chunk, *x.shape[1:]), n


@nnx.jit
def base_logits(model, h):
    """z = W·norm(h) of the base at h [N d]: [N vocab] (computed once, shared by every point)."""
    return model.unembed(h)


def _log_p(z):
    """(log p, p) of p = softmax(z) over the last axis."""
    lp = jax.nn.log_softmax(z, -1)
    return lp, jnp.exp(lp)


def _centred(dz, p):
    """Δz − E_p Δz per token: KL, argmax and every Var_p / Cov_p are blind to a shift common
    to all logits, and centring makes ⟨u, v⟩_p a plain p-weighted sum."""
    return dz - jnp.sum(p * dz, -1, keepdims=True)


@partial(nnx.jit, static_argnames=("chunk",))
def logit_metrics(model, h, z, dhs, which, scales, rates, chunk: int = 64):
    """Per token, for every point i with Δz_i = s_i·J_unembed(h)·Δh_{which_i}: KL(p‖q) exact,
    its second order ½Var_p(Δz_i), whether the argmax survives, and the same three for the
    dephased change √R(s_i²x)·Δz_i (`*_dephased`), x = rates[which_i] the token's dephasing
    rate at scale 1 (theory.dephasing; x(c) = c²x).  h [N d], z [N vocab] the base logits at
    h, dhs [A N d] (A responses), which [S] int, scales [S], rates [A N].  Each response is
    taken through the head once per chunk of tokens; the points only rescale it.  Returns
    dict of [S N]."""
    w = head_weight(model)
    hc, n = _chunks(h, chunk)
    zc, _ = _chunks(z, chunk)
    dc, _ = _chunks(jnp.moveaxis(dhs, 0, 1), chunk)  # [C chunk A d]
    rc, _ = _chunks(jnp.moveaxis(rates, 0, 1), chunk)  # [C chunk A]

    def one(args):
        hb, zb, db, rb = args
        dhn = jax.vmap(lambda d: jax.jvp(model.norm, (hb,), (d,))[1], in_axes=1)(db)  # [A chunk d]
        lp, p = _log_p(zb)
        dz = _centred(jnp.einsum("acd,vd->acv", dhn, w), p)  # [A chunk vocab]
        top = jnp.argmax(zb, -1)
        k2 = 0.5 * jnp.sum(p * dz * dz, -1)  # [A chunk] ½Var_p(Δz), Theorem 3

        def at(args):
            a, s = args
            r = dephasing_factor(s * s * rb[:, a])

            def ray(c):
                # KL(p‖softmax(z + cΔz)) = log E_p e^{cΔz} − c·E_p Δz (theory.kl_cgf), E_p Δz = 0 here:
                # one reduction over the vocabulary per point, no cancellation against log Z
                y = lp + c[:, None] * dz[a]
                return jax.nn.logsumexp(y, -1), (jnp.argmax(y, -1) == top).astype(jnp.float32)

            kl, t1 = ray(jnp.full_like(r, s))
            kd, td = ray(s * jnp.sqrt(r))
            return kl, s * s * k2[a], t1, kd, r * s * s * k2[a], td

        return jax.lax.map(at, (which, scales))

    out = jax.lax.map(one, (hc, zc, dc, rc))  # each [C S chunk]
    f = lambda a: jnp.moveaxis(a, 1, 0).reshape(scales.shape[0], -1)[:, :n]  # noqa: E731
    return dict(zip(METRIC_NAMES, map(f, out)))


METRIC_NAMES = ("kl", "kl2", "top1", "kl_dephased", "kl2_dephased", "top1_dephased")


@partial(nnx.jit, static_argnames=("chunk",))
def dephasing_rates(model, h, z, dh1, dh2, chunk: int = 64):
    """Per token x = ‖b⊥‖²_p/‖a‖²_p (theory.dephasing_rate) of the logit velocity a = z' and
    its derivative b = z'' along W + tΔW, from h_L's (dh1, dh2) = (h', h'') at h [N d], z [N
    vocab] the base logits there: the head's own second order enters through the final norm
    (Taylor mode, `jet`).  [N]."""
    w = head_weight(model)
    hc, n = _chunks(h, chunk)
    zc, _ = _chunks(z, chunk)
    c1, _ = _chunks(dh1, chunk)
    c2, _ = _chunks(dh2, chunk)

    def one(args):
        hb, zb, d1, d2 = args
        _, (n1, n2) = jet.jet(model.norm, (hb,), ((d1, d2),))
        _, p = _log_p(zb)
        a, b = _centred(n1 @ w.T, p), _centred(n2 @ w.T, p)
        return dephasing_rate(jnp.sum(p * a * a, -1), jnp.sum(p * b * b, -1), jnp.sum(p * a * b, -1))

    return jax.lax.map(one, (hc, zc, c1, c2)).reshape(-1)[:n]


@partial(nnx.jit, static_argnames=("k",))
def base_margins(model, h, k: int = 8):
    """Margins m_j = z_top1 − z_j to the next k−1 tokens [N k−1] and the top-k ids [N k]
    of the base logits at h [N d] (m[:, 0] is theory.top2_margin's m)."""
    vals, idx = jax.lax.top_k(model.unembed(h), k)
    return vals[:, :1] - vals[:, 1:], idx


def head_weight(model):
    """The head's W [vocab d] of z = W·norm(h) (tied: the embedding)."""
    return model.embed.w[...] if model.lm_head is None else model.lm_head.weight()


@nnx.jit
def pair_response(model, h, dh, idx):
    """Δz_top1 − Δz_j (first order) at h [N d] for the competitors j of idx [N k]: [N k−1].
    Only the k head rows are touched: Δz_j = W_j·J_norm(h)Δh."""
    _, dhn = jax.jvp(model.norm, (h,), (dh,))
    sel = jnp.einsum("nd,nkd->nk", dhn, head_weight(model)[idx])
    return sel[:, :1] - sel[:, 1:]


@nnx.jit
def nonlinearity_terms(model, h, dh, z_true):
    """Σ_t Var_p(Δz_true − Δz_lin), Σ_t Var_p(Δz_lin) and mean exact KL of both, over
    tokens h [N d] (p the base distribution; Var_p is blind to shifts common to all logits)."""
    z, dz = jax.jvp(model.unembed, (h,), (dh,))
    dz_true = z_true - z
    return (jnp.sum(var_p(z, dz_true - dz)), jnp.sum(var_p(z, dz)),
            jnp.mean(kl_exact(z, dz_true)), jnp.mean(kl_exact(z, dz)))
