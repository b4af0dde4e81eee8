r"""Theorems 2 and 3: how a logit perturbation Δz moves p = softmax(z/T).

Source: arXiv 2603.24652 (representation hierarchy of pruning), Theorems 2 and 3;
the exact cumulant series and the error bounds are derived here (see
``derivations.py`` for the symbolic derivations and ``tests/test_theory_softmax.py``
for the Monte Carlo checks).

Setting.  p = softmax(z/T), q = softmax((z+Δz)/T), δ = Δz/T.  For weights w on the
vocabulary, ``Var_w(x) = Σ w (x − Σ w x)²``; r = p²/‖p‖² is the escort
distribution of p.  κₙ(w) are the cumulants of δ when the token index is drawn
from w, i.e. the Taylor coefficients of the cumulant generating function

    K_w(t) = log E_w[e^{tδ}] = Σ_{n≥1} κₙ(w) tⁿ/n!.

Exact identities (no approximation; ``derivations.verify_exact_identities``):

    KL(p‖q) = K_p(1) − K_p'(0)        = log E_p[e^δ] − E_p[δ]
    KL(q‖p) = K_p'(1) − K_p(1)         = E_q[δ] − log E_p[e^δ]
    cos(p,q) = exp(K_r(1) − ½K_r(2))   = E_r[e^δ] / √E_r[e^{2δ}]

Expanding K gives the series (coefficients derived in ``derivations.py``):

    KL(p‖q)     = Σ_{n≥2} κₙ(p)/n!                 = ½κ₂ + κ₃/6 + κ₄/24 + …
    KL(q‖p)     = Σ_{n≥2} (n−1) κₙ(p)/n!           = ½κ₂ + κ₃/3 + κ₄/8 + …
    log cos(p,q) = Σ_{n≥2} (1 − 2^{n−1}) κₙ(r)/n!  = −½κ₂ − ½κ₃ − (7/24)κ₄ − …

Theorem 3 is the first term, KL ≈ ½Var_p(Δz)/T², Theorem 2 is
1 − cos ≈ ½Var_r(Δz)/T².  Error control: by Taylor's theorem with Lagrange
remainder, the truncation error of the KL series at order N is exactly
κ_{N+1}(p_ξ)/(N+1)! for some ξ ∈ (0,1), where p_t ∝ p·e^{tδ} is the tilted
distribution, so |error| ≤ max_{t∈[0,1]} |κ_{N+1}(p_t)|/(N+1)!
(``kl_series_remainder_bound``).  Analogous bounds hold for the reverse KL and the
cosine.  Shapes: the vocabulary axis is last; everything broadcasts over leading
axes and is jit/vmap compatible.

Regime (SEEDS §1: V = 32768, z ~ N(0,9), Δz ~ N(0,s²); README.md has the table).
Per draw, Theorem 3 is off by ≈ (s/T)√(6Σp²)/3 (``half_var_p_relerr_rms``;
≈ 2% rms at s = 0.2); averaged over noise draws it is within 1% up to s = 0.5.  The
4th-order KL series is within 1% for 95% of draws at s = 0.5.  Theorem 2 is off by
≈ 17% rms at s = 0.2, and its cumulant series diverges from s ≈ 0.5.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp
from jaxtyping import Array, Float

__all__ = [
    "log_softmax_T",
    "escort",
    "weighted_mean",
    "weighted_var",
    "var_p",
    "var_r",
    "cumulants",
    "delta_cumulants",
    "tilted_cumulants",
    "kl_exact",
    "kl_cgf",
    "reverse_kl_exact",
    "cosine_pq",
    "cosine_cgf",
    "one_minus_cos_exact",
    "half_var_p",
    "cos_second_order",
    "kl_series_coefficients",
    "reverse_kl_series_coefficients",
    "log_cosine_series_coefficients",
    "kl_series",
    "reverse_kl_series",
    "log_cosine_series",
    "one_minus_cos_series",
    "kl_series_remainder_bound",
    "cos_second_order_error_bound",
    "reverse_kl_series_remainder_bound",
    "log_cosine_series_remainder_bound",
    "fisher_matrix",
    "fisher_quadratic",
    "expected_var_linear",
    "half_var_p_relerr_rms",
    "cos_second_order_relerr_rms",
]

Vocab = Float[Array, "*batch V"]
Batch = Float[Array, "*batch"]


def _T(T) -> Array:
    return jnp.asarray(T)[..., None]


def log_softmax_T(z: Vocab, T=1.0) -> Vocab:
    """log p with p = softmax(z/T)."""
    return jax.nn.log_softmax(z / _T(T), axis=-1)


def escort(p: Vocab) -> Vocab:
    """r = p²/‖p‖², the weights under which Theorem 2's variance is taken."""
    lp = jnp.log(p)
    return jnp.exp(2 * lp - logsumexp(2 * lp, axis=-1, keepdims=True))


def weighted_mean(x: Vocab, w: Vocab) -> Batch:
    """Σ w x (w sums to one over the last axis)."""
    return jnp.sum(w * x, axis=-1)


def weighted_var(x: Vocab, w: Vocab) -> Batch:
    """Var_w(x) = Σ w (x − Σ w x)²."""
    c = x - weighted_mean(x, w)[..., None]
    return jnp.sum(w * c * c, axis=-1)


@jax.jit
def var_p(z: Vocab, dz: Vocab, T=1.0) -> Batch:
    """Var_p(Δz) with p = softmax(z/T)."""
    return weighted_var(dz, jnp.exp(log_softmax_T(z, T)))


@jax.jit
def var_r(z: Vocab, dz: Vocab, T=1.0) -> Batch:
    """Var_r(Δz) with r = p²/‖p‖² (computed in log space: r = softmax(2z/T))."""
    return weighted_var(dz, jnp.exp(log_softmax_T(z, jnp.asarray(T) / 2)))


@partial(jax.jit, static_argnames=("order",))
def cumulants(x: Vocab, w: Vocab, order: int = 6) -> Float[Array, "*batch order"]:
    """κ₁..κ_order of x when the index is drawn from w.

    κ₁ is the mean; for n ≥ 2 the moment-to-cumulant recursion
    κₙ = μₙ − Σ_{m=2}^{n−1} C(n−1, m−1) κₘ μ_{n−m} is applied to the central
    moments μ (μ₁ = 0), which is numerically far better than raw moments.  The
    recursion is checked against sympy in ``derivations.cumulants_from_moments``.
    """
    m1 = weighted_mean(x, w)
    c = x - m1[..., None]
    mu = [None, jnp.zeros_like(m1)]
    pw = c
    for _ in range(2, order + 1):
        pw = pw * c
        mu.append(jnp.sum(w * pw, axis=-1))
    kap = [None, m1]
    for n in range(2, order + 1):
        k = mu[n]
        for m in range(2, n - 1):
            k = k - math.comb(n - 1, m - 1) * kap[m] * mu[n - m]
        kap.append(k)
    return jnp.stack(kap[1:], axis=-1)


@partial(jax.jit, static_argnames=("order", "under"))
def delta_cumulants(z: Vocab, dz: Vocab, T=1.0, order: int = 6, under: str = "p"):
    """κ₁..κ_order of δ = Δz/T under p (``under='p'``) or r (``under='r'``)."""
    Teff = jnp.asarray(T) if under == "p" else jnp.asarray(T) / 2
    w = jnp.exp(log_softmax_T(z, Teff))
    return cumulants(dz / _T(T), w, order)


@partial(jax.jit, static_argnames=("order",))
def tilted_cumulants(logw: Vocab, x: Vocab, t: Batch, order: int) -> Batch:
    """κ_order of x under the tilted weights w_t ∝ w·e^{t x} (= K_w^{(order)}(t))."""
    lw = jax.nn.log_softmax(logw + jnp.asarray(t)[..., None] * x, axis=-1)
    return cumulants(x, jnp.exp(lw), order)[..., order - 1]


# ----------------------------------------------------------------- exact values
@jax.jit
def kl_exact(z: Vocab, dz: Vocab, T=1.0) -> Batch:
    """KL(p‖q) = Σ p (log p − log q), the definition."""
    lp, lq = log_softmax_T(z, T), log_softmax_T(z + dz, T)
    return jnp.sum(jnp.exp(lp) * (lp - lq), axis=-1)


@jax.jit
def kl_cgf(z: Vocab, dz: Vocab, T=1.0) -> Batch:
    """KL(p‖q) = log E_p[e^δ] − E_p[δ] (exact identity, Theorem 3's starting point)."""
    lp, d = log_softmax_T(z, T), dz / _T(T)
    return logsumexp(lp + d, axis=-1) - jnp.sum(jnp.exp(lp) * d, axis=-1)


@jax.jit
def reverse_kl_exact(z: Vocab, dz: Vocab, T=1.0) -> Batch:
    """KL(q‖p) = Σ q (log q − log p)."""
    lp, lq = log_softmax_T(z, T), log_softmax_T(z + dz, T)
    return jnp.sum(jnp.exp(lq) * (lq - lp), axis=-1)


@jax.jit
def cosine_pq(z: Vocab, dz: Vocab, T=1.0) -> Batch:
    """cos(p, q) = ⟨p,q⟩/(‖p‖‖q‖), evaluated in log space."""
    lp, lq = log_softmax_T(z, T), log_softmax_T(z + dz, T)
    lse = lambda a: logsumexp(a, axis=-1)
    return jnp.exp(lse(lp + lq) - 0.5 * lse(2 * lp) - 0.5 * lse(2 * lq))


def _log_cos_cgf(z, dz, T):
    lr = log_softmax_T(z, jnp.asarray(T) / 2)
    d = dz / _T(T)
    return logsumexp(lr + d, axis=-1) - 0.5 * logsumexp(lr + 2 * d, axis=-1)


@jax.jit
def cosine_cgf(z: Vocab, dz: Vocab, T=1.0) -> Batch:
    """cos(p, q) = E_r[e^δ]/√E_r[e^{2δ}] (exact identity, Theorem 2's starting point)."""
    return jnp.exp(_log_cos_cgf(z, dz, T))


@jax.jit
def one_minus_cos_exact(z: Vocab, dz: Vocab, T=1.0) -> Batch:
    """1 − cos(p,q) without cancellation: −expm1(K_r(1) − ½K_r(2))."""
    return -jnp.expm1(_log_cos_cgf(z, dz, T))


# ------------------------------------------------------------ theorems 2 and 3
@jax.jit
def half_var_p(z: Vocab, dz: Vocab, T=1.0) -> Batch:
    """Theorem 3: KL(p‖q) ≈ Var_p(Δz)/(2T²)."""
    return 0.5 * var_p(z, dz, T) / jnp.asarray(T) ** 2


@jax.jit
def cos_second_order(z: Vocab, dz: Vocab, T=1.0) -> Batch:
    """Theorem 2: 1 − cos(p,q) ≈ Var_r(Δz)/(2T²), r = p²/‖p‖²."""
    return 0.5 * var_r(z, dz, T) / jnp.asarray(T) ** 2


def kl_series_coefficients(order: int) -> list[float]:
    """cₙ = 1/n! for n = 2..order in KL(p‖q) = Σ cₙ κₙ(p)."""
    return [1 / math.factorial(n) for n in range(2, order + 1)]


def reverse_kl_series_coefficients(order: int) -> list[float]:
    """cₙ = (n−1)/n! in KL(q‖p) = Σ cₙ κₙ(p)  [K'(1) − K(1)]."""
    return [(n - 1) / math.factorial(n) for n in range(2, order + 1)]


def log_cosine_series_coefficients(order: int) -> list[float]:
    """cₙ = (1 − 2^{n−1})/n! in log cos(p,q) = Σ cₙ κₙ(r)  [K_r(1) − ½K_r(2)]."""
    return [(1 - 2 ** (n - 1)) / math.factorial(n) for n in range(2, order + 1)]


def _series(kap, coeffs):
    return sum(c * kap[..., n - 1] for n, c in enumerate(coeffs, start=2))


@partial(jax.jit, static_argnames=("order",))
def kl_series(z: Vocab, dz: Vocab, T=1.0, order: int = 4) -> Batch:
    """Σ_{n=2}^{order} κₙ(p)/n!  (order=2 is Theorem 3)."""
    kap = delta_cumulants(z, dz, T, order, "p")
    return _series(kap, kl_series_coefficients(order))


@partial(jax.jit, static_argnames=("order",))
def reverse_kl_series(z: Vocab, dz: Vocab, T=1.0, order: int = 4) -> Batch:
    """Σ_{n=2}^{order} (n−1)κₙ(p)/n!."""
    kap = delta_cumulants(z, dz, T, order, "p")
    return _series(kap, reverse_kl_series_coefficients(order))


@partial(jax.jit, static_argnames=("order",))
def log_cosine_series(z: Vocab, dz: Vocab, T=1.0, order: int = 4) -> Batch:
    """Σ_{n=2}^{order} (1 − 2^{n−1})κₙ(r)/n!  ≈ log cos(p,q)."""
    kap = delta_cumulants(z, dz, T, order, "r")
    return _series(kap, log_cosine_series_coefficients(order))


@partial(jax.jit, static_argnames=("order",))
def one_minus_cos_series(z: Vocab, dz: Vocab, T=1.0, order: int = 4) -> Batch:
    """1 − exp(−½κ₂ − ½κ₃ − (7/24)κ₄ − …) with cumulants under r."""
    return -jnp.expm1(log_cosine_series(z, dz, T, order))


# ------------------------------------------------------- rigorous error bounds
def _sup_abs_tilted(logw, x, order, t_max, n_grid):
    ts = jnp.linspace(0.0, t_max, n_grid, dtype=x.dtype)
    vals = jax.lax.map(lambda t: jnp.abs(tilted_cumulants(logw, x, t, order)), ts)
    return jnp.max(vals, axis=0)


@partial(jax.jit, static_argnames=("order", "n_grid"))
def kl_series_remainder_bound(z: Vocab, dz: Vocab, T=1.0, order: int = 2, n_grid: int = 33) -> Batch:
    """|KL − Σ_{n≤order} κₙ/n!| ≤ max_{t∈[0,1]} |κ_{order+1}(p_t)| / (order+1)!.

    Lagrange remainder of K(1) − K'(0) = Σ κₙ/n!; p_t ∝ p e^{tδ}.  The maximum is
    taken over a grid of ``n_grid`` points (dense enough for smooth K).
    """
    lp, d = log_softmax_T(z, T), dz / _T(T)
    return _sup_abs_tilted(lp, d, order + 1, 1.0, n_grid) / math.factorial(order + 1)


@partial(jax.jit, static_argnames=("n_grid",))
def cos_second_order_error_bound(z: Vocab, dz: Vocab, T=1.0, n_grid: int = 33) -> Batch:
    """|1 − cos(p,q) − ½Var_r(Δz)/T²| ≤ (x + B)²/2 + B, x = ½κ₂(r), B the order-2
    log-cos remainder bound.  (L = −log cos ≥ 0 lies within B of x, and
    0 ≤ L − (1 − e^{−L}) ≤ L²/2.)"""
    x = cos_second_order(z, dz, T)
    B = log_cosine_series_remainder_bound(z, dz, T, 2, n_grid)
    return 0.5 * (x + B) ** 2 + B


@partial(jax.jit, static_argnames=("order", "n_grid"))
def reverse_kl_series_remainder_bound(z: Vocab, dz: Vocab, T=1.0, order: int = 2, n_grid: int = 33) -> Batch:
    """f(t) = tK'(t) − K(t), f⁽ⁿ⁾ = (n−1)K⁽ⁿ⁾ + tK⁽ⁿ⁺¹⁾, so the order-N remainder is
    bounded by [N·max|κ_{N+1}(p_t)| + max|κ_{N+2}(p_t)|]/(N+1)!, t ∈ [0,1]."""
    lp, d = log_softmax_T(z, T), dz / _T(T)
    a = _sup_abs_tilted(lp, d, order + 1, 1.0, n_grid)
    b = _sup_abs_tilted(lp, d, order + 2, 1.0, n_grid)
    return (order * a + b) / math.factorial(order + 1)


@partial(jax.jit, static_argnames=("order", "n_grid"))
def log_cosine_series_remainder_bound(z: Vocab, dz: Vocab, T=1.0, order: int = 2, n_grid: int = 33) -> Batch:
    """g(t) = K_r(t) − ½K_r(2t), g⁽ⁿ⁾(t) = κₙ(r_t) − 2^{n−1}κₙ(r_{2t}); the order-N
    remainder of log cos is ≤ [max_{[0,1]}|κ_{N+1}| + 2^N max_{[0,2]}|κ_{N+1}|]/(N+1)!."""
    lr, d = log_softmax_T(z, jnp.asarray(T) / 2), dz / _T(T)
    a = _sup_abs_tilted(lr, d, order + 1, 1.0, n_grid)
    b = _sup_abs_tilted(lr, d, order + 1, 2.0, 2 * n_grid - 1)
    return (a + 2**order * b) / math.factorial(order + 1)


# ------------------------------------------------------- Fisher and linear heads
def fisher_matrix(z: Float[Array, "*batch V"], T=1.0) -> Float[Array, "*batch V V"]:
    """F = (diag p − ppᵀ)/T², the Fisher information of softmax(z/T) in z."""
    p = jnp.exp(log_softmax_T(z, T))
    F = jnp.einsum("...i,ij->...ij", p, jnp.eye(p.shape[-1], dtype=p.dtype))
    F = F - p[..., :, None] * p[..., None, :]
    return F / jnp.asarray(T)[..., None, None] ** 2


@jax.jit
def fisher_quadratic(z: Vocab, dz: Vocab, T=1.0) -> Batch:
    """½ Δzᵀ F Δz computed as ½(Σ p Δz² − (Σ p Δz)²)/T² (equals Theorem 3)."""
    p = jnp.exp(log_softmax_T(z, T))
    a = jnp.sum(p * dz * dz, axis=-1) - jnp.sum(p * dz, axis=-1) ** 2
    return 0.5 * a / jnp.asarray(T) ** 2


def expected_var_linear(w: Vocab, W: Float[Array, "V d"], sigma=1.0) -> Batch:
    """E[Var_w(WΔh)] for Δh ~ N(0, σ²I): σ²(Σ wᵢ‖Wᵢ‖² − ‖Σ wᵢ Wᵢ‖²).

    Derivation: Var_w(WΔh) = Δhᵀ(Σ wᵢWᵢWᵢᵀ − W̄W̄ᵀ)Δh with W̄ = Σ wᵢWᵢ; take the
    expectation, E[ΔhᵀAΔh] = σ² tr A.  Use w = p for Theorem 3, w = r for Theorem 2.
    """
    row2 = jnp.sum(W * W, axis=-1)
    mean_row = w @ W
    return jnp.asarray(sigma) ** 2 * (w @ row2 - jnp.sum(mean_row * mean_row, axis=-1))


# ----------------------------------------------------- regime of Theorems 2/3
def _var_kappa3_iid(w):
    """Var κ₃(w) for x ~ N(0, I) iid over tokens (exact, Isserlis).

    c = (I − 1wᵀ)x has Cov cᵢⱼ = δᵢⱼ + uᵢ + uⱼ, uᵢ = ½Σw² − wᵢ, and
    E[cᵢ³cⱼ³] = 9CᵢᵢCⱼⱼCᵢⱼ + 6Cᵢⱼ³; summing against wᵢwⱼ factorises into power sums.
    """
    S2 = jnp.sum(w * w, axis=-1, keepdims=True)
    u = 0.5 * S2 - w
    dd = 1 + 2 * u
    s = lambda a: jnp.sum(a, axis=-1)
    t1 = s(w * w * dd * dd) + 2 * s(w * dd * u) * s(w * dd)
    t2 = s(w * w * ((1 + 2 * u) ** 3 - 8 * u**3)) + 2 * s(w * u**3) + 6 * s(w * u**2) * s(w * u)
    return 9 * t1 + 6 * t2


@jax.jit
def half_var_p_relerr_rms(z: Vocab, s, T=1.0) -> Batch:
    """Typical relative error of Theorem 3 for iid noise Δzᵢ ~ N(0, s²), fixed z.

    Defined as rms_Δz(KL − ½κ₂) / E_Δz[½κ₂].  To leading order in s,
    KL − ½κ₂ ≈ κ₃/6; κ₃ has mean 0 and exact variance (s/T)⁶·V₃(p)
    (``_var_kappa3_iid``), and E κ₂ = (s/T)²(1 − Σp²), so
        rel. error ≈ (s/T)·√V₃(p) / (3(1 − Σp²))  ≈ (s/T)·√(6Σp²)/3  (Σp² ≪ 1):
    linear in s and growing with the concentration Σp² (= 1/effective vocabulary).
    The sign is random (κ₃ is odd in Δz), so the noise-averaged KL is far closer to
    ½E[κ₂] than any single draw: the κ₃ term cancels, the κ₄ term is O(s²).
    """
    p = jnp.exp(log_softmax_T(z, T))
    S2 = jnp.sum(p * p, axis=-1)
    return (jnp.asarray(s) / jnp.asarray(T)) * jnp.sqrt(_var_kappa3_iid(p)) / (3 * (1 - S2))


@jax.jit
def cos_second_order_relerr_rms(z: Vocab, s, T=1.0) -> Batch:
    """Same for Theorem 2: rms(1 − cos − ½κ₂(r)) / E[½κ₂(r)] ≈ (s/T)√V₃(r)/(1 − Σr²).

    1 − cos ≈ ½κ₂ + ½κ₃ under r: the κ₃ coefficient is three times larger relative
    to κ₂ than in the KL, and r = p²/‖p‖² is more concentrated than p, so Theorem 2
    is much less accurate than Theorem 3 at the same noise scale.
    """
    r = jnp.exp(log_softmax_T(z, jnp.asarray(T) / 2))
    S2 = jnp.sum(r * r, axis=-1)
    return (jnp.asarray(s) / jnp.asarray(T)) * jnp.sqrt(_var_kappa3_iid(r)) / (1 - S2)
