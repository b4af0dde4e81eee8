r"""Temporal compounding: per-step flips, sequence survival, first divergence.

Source: arXiv 2603.24652 ("temporal compounding", the butterfly effect of
generation); the flip/survival formulas are derived here (``derivations.py``:
``flip_probability_derivation``, ``first_divergence_derivation``) and checked against
simulated autoregressive decoders in ``tests/test_theory_compounding.py``.

Greedy step.  The dense model emits a = argmax z; the compressed one sees z + Δz.
For the top-2 pair with margin m = z₁ − z₂ and Δz₁ − Δz₂ ~ N(0, σ²),
    P_flip = P(m + Δz₁ − Δz₂ < 0) = Φ(−m/σ),   σ² = Var(Δz₁ − Δz₂)
(iid logit noise of std s: σ = s√2; Δz = WΔh with Δh ~ N(0, σ_h²I): σ = σ_h‖W₁ − W₂‖).
With iid Gaussian noise on all V logits the exact value is
    P_flip = 1 − ∫ φ(u) Π_{j≠a} Φ((z_a − z_j)/s + u) du,
which the top-2 formula approaches when the third logit is far below.

Two ways to compare models on a sequence:
* teacher-forced — both models read the same (reference) prefix at every step; the
  per-step flips are separate events, the expected agreement is 1 − mean_t P_flip,t
  and per-step KL stays at its one-step value.  This is what likelihood/MC scoring
  and "KL per step on the dense trajectory" measure.
* free-running — each model reads its own output.  Until the first flip τ the two
  contexts are identical; after it they differ for ever (the whole prefix is the
  context), so divergence is absorbing.  With independent flips along the dense path
    S(t) = P(τ > t) = Π_{s≤t} (1 − P_flip,s),
    P(τ = t) = S(t−1)·P_flip,t,
    E[min(τ, H+1)] = Σ_{t=0}^{H} S(t)   (τ := H+1 when no flip within the horizon H),
and for a constant P_flip = π: S(t) = (1−π)^t, E[min(τ,H+1)] = (1 − (1−π)^{H+1})/π.
A 98% per-step agreement therefore leaves (0.98)^200 ≈ 1.8% of 200-token answers intact.

Sampling (T > 0) with shared randomness: whatever the coupling of the two samplers,
P(tokens differ | same prefix) ≥ TV(p, q) ≈ ½E_p|δ − E_pδ| = O(s/T) — first order in
the noise, whereas greedy flips need the noise to beat a margin.  For Gumbel-max
coupling (same Gumbel noise) P(differ) ≤ 2TV/(1+TV) [recalled, Daliri et al. 2024,
checked by simulation].  Hence S(t) ≤ Π(1 − TV_s).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr, ndtr
from jaxtyping import Array, Float

from .softmax import log_softmax_T

__all__ = [
    "top2_margin",
    "top1_agreement",
    "flip_probability",
    "greedy_flip_probability",
    "greedy_flip_probability_exact_iid",
    "pair_sigma_linear",
    "survival",
    "first_divergence_pmf",
    "expected_first_divergence",
    "prob_no_divergence",
    "stationary_expected_first_divergence",
    "teacher_forced_agreement",
    "teacher_forced_expected_flips",
    "tv_distance",
    "tv_first_order",
    "gumbel_coupling_divergence_bounds",
    "sampled_survival_upper_bound",
]

Steps = Float[Array, "*batch H"]


@jax.jit
def top2_margin(z: Float[Array, "*batch V"]):
    """(m, top-2 indices): m = z₁ − z₂ ≥ 0."""
    vals, idx = jax.lax.top_k(z, 2)
    return vals[..., 0] - vals[..., 1], idx


def top1_agreement(z: Float[Array, "*batch V"], z_c: Float[Array, "*batch V"]) -> Float[Array, "*batch"]:
    """1 where argmax z = argmax z_c (the greedy step survives); 0 where the compressed logits are
    not all finite (it gives no valid prediction there: an argmax of NaN is index 0 and would
    match a base whose argmax is 0); NaN where the base's logits are not all finite (no
    reference: not computable)."""
    fin_b, fin_c = jnp.all(jnp.isfinite(z), -1), jnp.all(jnp.isfinite(z_c), -1)
    same = (jnp.argmax(z, -1) == jnp.argmax(z_c, -1)) & fin_c
    return jnp.where(fin_b, same.astype(jnp.float32), jnp.nan)


@jax.jit
def flip_probability(margin, sigma):
    """P_flip = Φ(−m/σ) (probability that Gaussian noise of std σ on the margin flips it)."""
    return ndtr(-jnp.asarray(margin) / jnp.asarray(sigma))


@jax.jit
def greedy_flip_probability(z: Float[Array, "*batch V"], s) -> Float[Array, "*batch"]:
    """Top-2 approximation for iid logit noise N(0, s²): Φ(−m/(s√2))."""
    m, _ = top2_margin(z)
    return flip_probability(m, jnp.asarray(s) * math.sqrt(2))


_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(64)
_GH_W = _GH_W / math.sqrt(2 * math.pi)


@jax.jit
def greedy_flip_probability_exact_iid(z: Float[Array, "*batch V"], s) -> Float[Array, "*batch"]:
    """1 − ∫φ(u) Π_{j≠a} Φ((z_a − z_j)/s + u) du (64-node Gauss–Hermite), iid N(0,s²) noise.

    Tokens with z = −inf (outside a subset, see ``subspace.py``) never win.
    """
    a = jnp.max(z, axis=-1, keepdims=True)
    m = (a - z) / jnp.asarray(s)[..., None]
    is_top = jnp.arange(z.shape[-1]) == jnp.argmax(z, axis=-1)[..., None]
    x = jnp.asarray(_GH_X, z.dtype)
    w = jnp.asarray(_GH_W, z.dtype)
    arg = m[..., None, :] + x[:, None]  # [..., nodes, V]
    lp = jnp.where(is_top[..., None, :], 0.0, log_ndtr(arg))
    stay = jnp.sum(w * jnp.exp(jnp.sum(lp, axis=-1)), axis=-1)
    return jnp.clip(1.0 - stay, 0.0, 1.0)


@jax.jit
def pair_sigma_linear(W: Float[Array, "V d"], i, j, sigma_h) -> Float[Array, "..."]:
    """σ = σ_h‖Wᵢ − Wⱼ‖: std of Δzᵢ − Δzⱼ for Δz = WΔh, Δh ~ N(0, σ_h²I)."""
    diff = W[i] - W[j]
    return jnp.asarray(sigma_h) * jnp.sqrt(jnp.sum(diff * diff, axis=-1))


# ------------------------------------------------------------ free running
@jax.jit
def survival(pflip: Steps) -> Steps:
    """S(t) = Π_{s≤t}(1 − P_flip,s), t = 1..H (steps on the last axis)."""
    return jnp.cumprod(1 - pflip, axis=-1)


@jax.jit
def first_divergence_pmf(pflip: Steps) -> Steps:
    """P(τ = t) = S(t−1)·P_flip,t for t = 1..H."""
    S = survival(pflip)
    prev = jnp.concatenate([jnp.ones_like(S[..., :1]), S[..., :-1]], axis=-1)
    return prev * pflip


@jax.jit
def expected_first_divergence(pflip: Steps) -> Float[Array, "*batch"]:
    """E[min(τ, H+1)] = Σ_{t=0}^{H} S(t) = 1 + Σ_{t=1}^{H} S(t) (censored at H+1)."""
    return 1 + jnp.sum(survival(pflip), axis=-1)


@jax.jit
def prob_no_divergence(pflip: Steps) -> Float[Array, "*batch"]:
    """S(H): probability the whole free-running continuation is identical."""
    return jnp.prod(1 - pflip, axis=-1)


@jax.jit
def stationary_expected_first_divergence(p, H):
    """Closed form for constant P_flip = p: E[min(τ, H+1)] = (1 − (1−p)^{H+1})/p."""
    p = jnp.asarray(p)
    return -jnp.expm1((H + 1) * jnp.log1p(-p)) / p


# ----------------------------------------------------------- teacher forced
@jax.jit
def teacher_forced_agreement(pflip: Steps) -> Float[Array, "*batch"]:
    """Expected fraction of steps whose greedy token agrees, same reference prefix."""
    return 1 - jnp.mean(pflip, axis=-1)


@jax.jit
def teacher_forced_expected_flips(pflip: Steps) -> Float[Array, "*batch"]:
    """Expected number of flipped steps under teacher forcing: Σ_t P_flip,t."""
    return jnp.sum(pflip, axis=-1)


# ------------------------------------------------------------------ sampling
@jax.jit
def tv_distance(z: Float[Array, "*batch V"], dz: Float[Array, "*batch V"], T=1.0):
    """TV(p, q) = ½Σ|p − q| = min over couplings of P(sampled tokens differ)."""
    p, q = jnp.exp(log_softmax_T(z, T)), jnp.exp(log_softmax_T(z + dz, T))
    return 0.5 * jnp.sum(jnp.abs(p - q), axis=-1)


@jax.jit
def tv_first_order(z: Float[Array, "*batch V"], dz: Float[Array, "*batch V"], T=1.0):
    """TV ≈ ½E_p|δ − E_pδ|, δ = Δz/T (from q ≈ p(1 + δ − E_pδ)); O(s/T), not O(s²)."""
    p = jnp.exp(log_softmax_T(z, T))
    d = dz / jnp.asarray(T)[..., None]
    return 0.5 * jnp.sum(p * jnp.abs(d - jnp.sum(p * d, axis=-1, keepdims=True)), axis=-1)


@jax.jit
def gumbel_coupling_divergence_bounds(tv):
    """(TV, 2TV/(1+TV)): bounds on P(argmax(log p + G) ≠ argmax(log q + G)), shared G."""
    tv = jnp.asarray(tv)
    return tv, 2 * tv / (1 + tv)


@jax.jit
def sampled_survival_upper_bound(tv: Steps) -> Steps:
    """S(t) ≤ Π_{s≤t}(1 − TV_s) for any shared-randomness sampler."""
    return survival(tv)
