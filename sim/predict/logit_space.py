r"""Logit space of the linear response: the head applied to Δh_L, in chunks of tokens.

Δz = J_unembed(h_L)·Δh_L (the final norm's JVP, then the head W [vocab d]); every quantity the
predictor scores per token and grid point lives here: exact KL and top-1 along a ray c·Δz of
the linear and of the dephased change (`logit_metrics`), the dephasing rate of the logit
velocity (`dephasing_rates`, theory.dephasing), the base margins and pair responses along the
generation paths, and the nonlinearity check's Fisher-metric terms.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx
from jax.experimental import jet

from hemorrhage.errors import UserError
from hemorrhage.theory import dephasing_factor, dephasing_rate, kl_exact, var_p


def _split_head(model):
    """(norm graphdef, norm state, head W [vocab d], head bias or None): what z = W·norm(h) + b
    needs of a model.  The jitted functions below take these, not the model: nnx.jit over the
    whole model flattened every block's graph on each call, for a head it does not touch."""
    if (
        getattr(getattr(model, "cfg", None), "final_softcap", None) is not None
    ):  # z = c·tanh(W·norm(h)/c) is not this form
        raise UserError(
            "the linear-response estimate needs logits z = W·norm(h) + b; this model soft-caps its "
            "logits (final_logit_softcapping, Gemma 2), which is not implemented here"
        )
    gd, st = nnx.split(model.norm)
    b = None if model.lm_head is None or getattr(model.lm_head, "b", None) is None else model.lm_head.b[...]
    div = getattr(getattr(model, "cfg", None), "logit_divisor", 1.0)
    return gd, st, head_weight(model), (b if b is None or div == 1.0 else b / div)


def _unembed(norm, w, b, h):
    z = norm(h) @ w.T
    return z if b is None else z + b


def _chunks(x, chunk):
    n = x.shape[0]
    pad = (-n) % chunk
    return jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape(-1, chunk, *x.shape[1:]), n


def base_logits(model, h):
    """z = W·norm(h) of the base at h [N d]: [N vocab] (computed once, shared by every point)."""
    return _base_logits(*_split_head(model), h)


@partial(jax.jit, static_argnums=0)
def _base_logits(gd, st, w, b, h):
    return _unembed(nnx.merge(gd, st), w, b, h)


def _log_p(z):
    """(log p, p) of p = softmax(z) over the last axis."""
    lp = jax.nn.log_softmax(z, -1)
    return lp, jnp.exp(lp)


def _centred(dz, p):
    """Δz − E_p Δz per token: KL, argmax and every Var_p / Cov_p are blind to a shift common
    to all logits, and centring makes ⟨u, v⟩_p a plain p-weighted sum."""
    return dz - jnp.sum(p * dz, -1, keepdims=True)


def logit_metrics(model, h, z, dhs, which, scales, rates=None, dh2s=None, chunk: int = 64):
    """Per token, for every point i with Δz_i = s_i·J_unembed(h)·Δh_{which_i}: KL(p‖q) exact,
    its second order ½Var_p(Δz_i), whether the argmax survives, and the same three for the
    dephased change √R(s_i²x)·Δz_i (`*_dephased`), x the token's dephasing rate of response
    which_i at scale 1 (theory.dephasing; x(c) = c²x).  h [N d], z [N vocab] the base logits at
    h, dhs [A N d] (A responses), which [S] int, scales [S].  The rates: given, rates [A N]; or
    computed here from the second orders dh2s [A N d] (h_L'' along W + tΔW, `dephasing_rates`)
    with the same head product as Δz, and returned as "rate" [A N]; or neither: 0 (R = 1).
    Each response is taken through the head once per chunk of tokens; the points only rescale
    it.  Returns dict of [S N] (and "rate")."""
    gd, st, w, _ = _split_head(model)  # a head bias does not enter Δz
    fused = dh2s is not None
    if not fused and rates is None:
        rates = jnp.zeros(dhs.shape[:2], jnp.float32)
    out = _logit_metrics(gd, st, w, h, z, dhs, which, scales, dh2s if fused else rates, fused, chunk)
    return out if fused else {k: v for k, v in out.items() if k != "rate"}


def _velocity(norm, w, hb, p, d1, d2):
    """(a, x) for one chunk: the centred logit velocity a = z' [chunk vocab] and the dephasing
    rate x = ‖b⊥‖²_p/‖a‖²_p [chunk], b = z'' (Taylor mode through the final norm, `jet`)."""
    _, (n1, n2) = jet.jet(norm, (hb,), ((d1, d2),))
    a, b = _centred(n1 @ w.T, p), _centred(n2 @ w.T, p)
    return a, dephasing_rate(jnp.sum(p * a * a, -1), jnp.sum(p * b * b, -1), jnp.sum(p * a * b, -1))


@partial(jax.jit, static_argnums=(0, 9, 10))
def _logit_metrics(gd, st, w, h, z, dhs, which, scales, extra, fused, chunk):
    norm = nnx.merge(gd, st)
    hc, n = _chunks(h, chunk)
    zc, _ = _chunks(z, chunk)
    dc, _ = _chunks(jnp.moveaxis(dhs, 0, 1), chunk)  # [C chunk A d]
    ec, _ = _chunks(jnp.moveaxis(extra, 0, 1), chunk)  # [C chunk A d] second orders, or [C chunk A] rates

    def one(args):
        hb, zb, db, eb = args
        lp, p = _log_p(zb)
        if fused:
            dz, rb = jax.vmap(lambda d1, d2: _velocity(norm, w, hb, p, d1, d2), in_axes=1, out_axes=(0, 1))(db, eb)
        else:
            dhn = jax.vmap(lambda d: jax.jvp(norm, (hb,), (d,))[1], in_axes=1)(db)  # [A chunk d]
            dz, rb = _centred(jnp.einsum("acd,vd->acv", dhn, w), p), eb  # [A chunk vocab], [chunk A]
        top = jnp.argmax(zb, -1)
        half_var_p = 0.5 * jnp.sum(p * dz * dz, -1)  # [A chunk] ½Var_p(Δz), Theorem 3

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
            return kl, s * s * half_var_p[a], t1, kd, r * s * s * half_var_p[a], td

        return jax.lax.map(at, (which, scales)), rb

    out, rate = jax.lax.map(one, (hc, zc, dc, ec))  # each [C S chunk]; rate [C chunk A]
    f = lambda a: jnp.moveaxis(a, 1, 0).reshape(scales.shape[0], -1)[:, :n]  # noqa: E731
    return dict(zip(METRIC_NAMES, map(f, out))) | {"rate": jnp.moveaxis(rate.reshape(-1, rate.shape[-1])[:n], 1, 0)}


METRIC_NAMES = ("kl", "half_var_p", "top1", "kl_dephased", "half_var_p_dephased", "top1_dephased")


def dephasing_rates(model, h, z, dh1, dh2, chunk: int = 64):
    """Per token x = ‖b⊥‖²_p/‖a‖²_p (theory.dephasing_rate) of the logit velocity a = z' and
    its derivative b = z'' along W + tΔW, from h_L's (dh1, dh2) = (h', h'') at h [N d], z [N
    vocab] the base logits there: the head's own second order enters through the final norm
    (Taylor mode, `jet`).  [N].  (`logit_metrics(..., dh2s=...)` computes the same rates with
    the head product it needs anyway.)"""
    gd, st, w, _ = _split_head(model)
    return _dephasing_rates(gd, st, w, h, z, dh1, dh2, chunk)


@partial(jax.jit, static_argnums=(0, 7))
def _dephasing_rates(gd, st, w, h, z, dh1, dh2, chunk):
    norm = nnx.merge(gd, st)
    hc, n = _chunks(h, chunk)
    zc, _ = _chunks(z, chunk)
    c1, _ = _chunks(dh1, chunk)
    c2, _ = _chunks(dh2, chunk)

    def one(args):
        hb, zb, d1, d2 = args
        return _velocity(norm, w, hb, _log_p(zb)[1], d1, d2)[1]

    return jax.lax.map(one, (hc, zc, c1, c2)).reshape(-1)[:n]


def base_margins(model, h, k: int = 8):
    """Margins m_j = z_top1 − z_j to the next k−1 tokens [N k−1] and the top-k ids [N k]
    of the base logits at h [N d] (m[:, 0] is theory.top2_margin's m)."""
    return _base_margins(*_split_head(model), h, k)


@partial(jax.jit, static_argnums=(0, 5))
def _base_margins(gd, st, w, b, h, k):
    vals, idx = jax.lax.top_k(_unembed(nnx.merge(gd, st), w, b, h), k)
    return vals[:, :1] - vals[:, 1:], idx


def head_weight(model):
    """The head's W [vocab d] of z = W·norm(h) (tied: the embedding), with Granite's
    z / logits_scaling folded in (W / logits_scaling)."""
    w = model.embed.w[...] if model.lm_head is None else model.lm_head.weight()
    div = getattr(getattr(model, "cfg", None), "logit_divisor", 1.0)
    return w if div == 1.0 else w / div


def pair_response(model, h, dh, idx):
    """Δz_top1 − Δz_j (first order) at h [N d] for the competitors j of idx [N k]: [N k−1].
    Only the k head rows are touched: Δz_j = W_j·J_norm(h)Δh."""
    gd, st, w, _ = _split_head(model)
    return _pair_response(gd, st, w, h, dh, idx)


@partial(jax.jit, static_argnums=0)
def _pair_response(gd, st, w, h, dh, idx):
    _, dhn = jax.jvp(nnx.merge(gd, st), (h,), (dh,))
    sel = jnp.einsum("nd,nkd->nk", dhn, w[idx])
    return sel[:, :1] - sel[:, 1:]


def nonlinearity_terms(model, h, dh, z_true):
    """Σ_t Var_p(Δz_true − Δz_lin), Σ_t Var_p(Δz_lin) and mean exact KL of both, over
    tokens h [N d] (p the base distribution; Var_p is blind to shifts common to all logits)."""
    return _nonlinearity_terms(*_split_head(model), h, dh, z_true)


@partial(jax.jit, static_argnums=0)
def _nonlinearity_terms(gd, st, w, b, h, dh, z_true):
    norm = nnx.merge(gd, st)
    z, dz = jax.jvp(lambda x: _unembed(norm, w, b, x), (h,), (dh,))
    dz_true = z_true - z
    return (
        jnp.sum(var_p(z, dz_true - dz)),
        jnp.sum(var_p(z, dz)),
        jnp.mean(kl_exact(z, dz_true)),
        jnp.mean(kl_exact(z, dz)),
    )
