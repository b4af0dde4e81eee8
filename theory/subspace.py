r"""The categorical subspace: why multiple-choice scoring survives compression.

Source: arXiv 2603.24652 ("categorical-token probability subspace"); the chain-rule
decomposition and the iid/linear expectations are derived here and checked in
``tests/test_theory_subspace.py``.

Multiple choice reads p only on a token subset S (" A", " B", " C", " D") and
renormalises:  p_S = p|S = softmax(z_S/T), q_S = softmax((z+Δz)_S/T).
Everything in ``softmax.py`` applies on S, with cumulants of δ_S under p_S:

    KL_S = KL(p_S‖q_S) = Σ_{n≥2} κₙ(δ_S; p_S)/n! ≈ Var_{p_S}(Δz_S)/(2T²).

Exact chain rule (partition V = S ∪ Sᶜ, P = p(S), Q = q(S)):

    KL(p‖q) = KL(Ber(P)‖Ber(Q)) + P·KL_S + (1 − P)·KL(p|Sᶜ ‖ q|Sᶜ)

so the full KL always contains the subset KL (weighted by P) plus the mass shift
and everything that happens off the subset.  Why KL_S stays small while the
full KL does not:
1. only the variance of Δz *within S* counts — a shift common to the letters
   cancels in the renormalisation;
2. for iid noise Δzᵢ ~ N(0, s²),  E[Var_w(Δz)] = s²(1 − Σw²):  a confident
   answer (p_S ≈ one-hot) has Σp_S² ≈ 1 and KL_S → 0, whereas generation steps
   with a diffuse p (Σp² ≪ 1) pay the full s²/2T²;
3. for Δz = WΔh, Δh ~ N(0, σ²I),  E[Var_w(Δz)] = σ² Σᵢ wᵢ‖Wᵢ − W̄‖², W̄ = Σwᵢ Wᵢ:
   small when the letters' head rows are close to each other;
4. the MC score uses only argmax over S: P(answer flips) ≈ Φ(−m_S/σ) with m_S
   the answer margin among the letters (``subset_flip_probability``), and it is a
   one-shot event (no compounding, see ``compounding.py``).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from . import compounding, softmax

__all__ = [
    "mask_from_indices",
    "subset_logits",
    "subset_mass",
    "subset_kl",
    "subset_cosine",
    "subset_half_var_p",
    "kl_chain_rule",
    "expected_kl_iid",
    "expected_kl_linear",
    "subset_vs_full_expected_kl",
    "subset_flip_probability",
]

Vocab = Float[Array, "*batch V"]
Mask = Bool[Array, "V"]


def mask_from_indices(V: int, idx) -> Mask:
    """Boolean vocabulary mask with True on the subset indices."""
    return jnp.zeros((V,), bool).at[jnp.asarray(idx)].set(True)


def subset_logits(z: Vocab, mask: Mask) -> Vocab:
    """z on S, −inf elsewhere: softmax of this is p|S."""
    return jnp.where(mask, z, -jnp.inf)


@jax.jit
def subset_mass(z: Vocab, mask: Mask, T=1.0):
    """P = p(S) = Σ_{i∈S} p_i."""
    p = jnp.exp(softmax.log_softmax_T(z, T))
    return jnp.sum(jnp.where(mask, p, 0.0), axis=-1)


def _cond_kl(z, dz, mask, T):
    """KL(p|M ‖ q|M) with zero contribution outside M (no nan from −inf − −inf)."""
    lp = softmax.log_softmax_T(subset_logits(z, mask), T)
    lq = softmax.log_softmax_T(subset_logits(z + dz, mask), T)
    diff = jnp.where(mask, lp - lq, 0.0)
    return jnp.sum(jnp.where(mask, jnp.exp(lp), 0.0) * diff, axis=-1)


@jax.jit
def subset_kl(z: Vocab, dz: Vocab, mask: Mask, T=1.0):
    """KL_S = KL(p|S ‖ q|S), the divergence a multiple-choice scorer can see."""
    return _cond_kl(z, dz, mask, T)


@jax.jit
def subset_cosine(z: Vocab, dz: Vocab, mask: Mask, T=1.0):
    """cos(p|S, q|S)."""
    p = jnp.exp(softmax.log_softmax_T(subset_logits(z, mask), T))
    q = jnp.exp(softmax.log_softmax_T(subset_logits(z + dz, mask), T))
    s = lambda a: jnp.sum(a, axis=-1)
    return s(p * q) / jnp.sqrt(s(p * p) * s(q * q))


@jax.jit
def subset_half_var_p(z: Vocab, dz: Vocab, mask: Mask, T=1.0):
    """Theorem 3 on S: KL_S ≈ Var_{p|S}(Δz)/(2T²)."""
    w = jnp.exp(softmax.log_softmax_T(subset_logits(z, mask), T))
    return 0.5 * softmax.weighted_var(jnp.where(mask, dz, 0.0), w) / jnp.asarray(T) ** 2


@jax.jit
def kl_chain_rule(z: Vocab, dz: Vocab, mask: Mask, T=1.0):
    """(mass term, P·KL_S, (1−P)·KL_{Sᶜ}); their sum is KL(p‖q) exactly."""
    P = subset_mass(z, mask, T)
    Q = subset_mass(z + dz, mask, T)
    mass = P * jnp.log(P / Q) + (1 - P) * jnp.log((1 - P) / (1 - Q))
    return mass, P * _cond_kl(z, dz, mask, T), (1 - P) * _cond_kl(z, dz, ~mask, T)


@jax.jit
def expected_kl_iid(w: Vocab, s, T=1.0):
    """E[½Var_w(Δz)]/T² = s²(1 − Σw²)/(2T²) for iid Δzᵢ ~ N(0, s²) (w = p or p|S)."""
    return jnp.asarray(s) ** 2 * (1 - jnp.sum(w * w, axis=-1)) / (2 * jnp.asarray(T) ** 2)


@jax.jit
def expected_kl_linear(w: Vocab, W: Float[Array, "V d"], sigma, T=1.0):
    """E[½Var_w(WΔh)]/T² = σ²(Σwᵢ‖Wᵢ‖² − ‖Σwᵢ Wᵢ‖²)/(2T²), Δh ~ N(0, σ²I)."""
    return 0.5 * softmax.expected_var_linear(w, W, sigma) / jnp.asarray(T) ** 2


@jax.jit
def subset_vs_full_expected_kl(z: Vocab, mask: Mask, s, T=1.0):
    """(E KL_S, E KL_full) to second order under iid noise N(0, s²)."""
    pS = jnp.exp(softmax.log_softmax_T(subset_logits(z, mask), T))
    p = jnp.exp(softmax.log_softmax_T(z, T))
    return expected_kl_iid(pS, s, T), expected_kl_iid(p, s, T)


@partial(jax.jit, static_argnames=("exact",))
def subset_flip_probability(z: Vocab, mask: Mask, s, exact: bool = True):
    """P(argmax over S changes) under iid logit noise N(0, s²).

    exact=True integrates over all competitors in S; exact=False is Φ(−m_S/(s√2))
    with m_S the margin between the two best letters.
    """
    zS = subset_logits(z, mask)
    if exact:
        return compounding.greedy_flip_probability_exact_iid(zS, s)
    return compounding.greedy_flip_probability(zS, s)
