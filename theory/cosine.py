r"""Theorem 1: cosine similarity under a perturbation, and how norm + LM head carry it.

Source: arXiv 2603.24652 Theorem 1 (Taylor cosine); the exact form, the error bound
and the norm/head propagation are derived here (``derivations.theorem1_exact_cos``,
``derivations.theorem1_taylor``, ``derivations.rmsnorm_jacobian_check``) and checked
by Monte Carlo in ``tests/test_theory_cosine.py``.

Decompose Δh against h:  α = ⟨Δh,h⟩/‖h‖²,  Δh_∥ = αh,  Δh_⊥ = Δh − αh,
ρ = ‖Δh_⊥‖/‖h‖.  Then, exactly (valid for α > −1),

    cos(h, h+Δh) = (1+α)/√((1+α)² + ρ²),
    1 − cos      = ρ²/2 − αρ² + O(3+1 order)  ≈ ‖Δh_⊥‖²/(2‖h‖²)   (Theorem 1).

Error bound (rigorous): with u = ρ²/(1+α)², 1 − cos = 1 − (1+u)^{-1/2} and
u/2 − 3u²/8 ≤ 1 − (1+u)^{-1/2} ≤ u/2, so
|(1 − cos)/(ρ²/2) − 1| ≤ |(1+α)^{-2} − 1| + 3ρ²/(4(1+α)⁴).
The radial part αh changes the cosine only at third order; only Δh_⊥ counts.

Norms.  RMSNorm n(h) = g ⊙ h / s, s = √(‖h‖²/d + ε), has Jacobian
J = diag(g)(I/s − hhᵀ/(d s³)), which for ε = 0 is diag(g)(√d/‖h‖)(I − ĥĥᵀ):
it deletes the radial part of Δh and divides the rest by ‖h‖/√d, so the same
absolute error matters less as the residual norm grows.  LayerNorm first centres
(c = P₁h, P₁ = I − 11ᵀ/d) and then does the same with c: J = diag(g)(P₁/s − ccᵀ/(d s³)).

Head.  z = W n(h), Δz ≈ W J Δh.  For isotropic Δh ~ N(0, σ²I):
E‖Δz_⊥‖² = σ²(‖WJ‖_F² − ‖JᵀWᵀẑ‖²), so 1 − cos(z) ≈ σ²(‖WJ‖_F² − ‖JᵀWᵀẑ‖²)/(2‖z‖²)
while 1 − cos(h) ≈ σ²(d−1)/(2‖h‖²).  Their ratio (``logit_cos_gain``) depends on
W only through A = W diag(g): tr(AᵀA) = Σσₖ² (the spectrum) against ‖Aĥ‖² (the gain
along the signal); the head preserves similarity (gain ≤ 1) when the signal lies in
high-gain directions of W and the error spreads isotropically.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

__all__ = [
    "cos_sim",
    "one_minus_cos",
    "decompose",
    "cos_exact_form",
    "one_minus_cos_taylor",
    "theorem1_relerr_bound",
    "rmsnorm",
    "layernorm",
    "rmsnorm_jacobian",
    "layernorm_jacobian",
    "norm_jvp",
    "predicted_one_minus_cos_h",
    "predicted_one_minus_cos_z",
    "logit_cos_gain",
    "cos_z_predicted_vs_exact",
]

Vec = Float[Array, "*batch d"]
Batch = Float[Array, "*batch"]


def _dot(a, b):
    return jnp.sum(a * b, axis=-1)


@jax.jit
def cos_sim(a: Vec, b: Vec) -> Batch:
    """cos(a, b) = ⟨a,b⟩/(‖a‖‖b‖) over the last axis."""
    return _dot(a, b) / jnp.sqrt(_dot(a, a) * _dot(b, b))


@jax.jit
def one_minus_cos(a: Vec, b: Vec) -> Batch:
    """1 − cos(a, b) = ½‖â − b̂‖², free of the cancellation in 1 − cos for tiny angles."""
    u = a / jnp.sqrt(_dot(a, a))[..., None] - b / jnp.sqrt(_dot(b, b))[..., None]
    return 0.5 * _dot(u, u)


@jax.jit
def decompose(h: Vec, dh: Vec):
    """(α, Δh_⊥, ρ): α = ⟨Δh,h⟩/‖h‖², Δh_⊥ = Δh − αh, ρ = ‖Δh_⊥‖/‖h‖."""
    hh = _dot(h, h)
    alpha = _dot(dh, h) / hh
    perp = dh - alpha[..., None] * h
    rho = jnp.sqrt(_dot(perp, perp) / hh)
    return alpha, perp, rho


@jax.jit
def cos_exact_form(h: Vec, dh: Vec) -> Batch:
    """cos(h, h+Δh) = (1+α)/√((1+α)² + ρ²)  (exact)."""
    alpha, _, rho = decompose(h, dh)
    return (1 + alpha) / jnp.sqrt((1 + alpha) ** 2 + rho**2)


@jax.jit
def one_minus_cos_taylor(h: Vec, dh: Vec) -> Batch:
    """Theorem 1: 1 − cos(h, h+Δh) ≈ ‖Δh_⊥‖²/(2‖h‖²) = ρ²/2."""
    _, _, rho = decompose(h, dh)
    return 0.5 * rho**2


@jax.jit
def theorem1_relerr_bound(h: Vec, dh: Vec) -> Batch:
    """|(1−cos)/(ρ²/2) − 1| ≤ |(1+α)^{-2} − 1| + 3ρ²/(4(1+α)⁴)  (needs α > −1)."""
    alpha, _, rho = decompose(h, dh)
    a2 = (1 + alpha) ** -2
    return jnp.abs(a2 - 1) + 0.75 * rho**2 * a2**2


# ------------------------------------------------------------------------ norms
@jax.jit
def rmsnorm(h: Vec, g: Vec | None = None, eps: float = 0.0) -> Vec:
    """n(h) = g ⊙ h/√(mean(h²) + ε)."""
    y = h / jnp.sqrt(jnp.mean(h * h, axis=-1, keepdims=True) + eps)
    return y if g is None else g * y


@jax.jit
def layernorm(h: Vec, g: Vec | None = None, b: Vec | None = None, eps: float = 0.0) -> Vec:
    """n(h) = g ⊙ (h − mean h)/√(var h + ε) + b."""
    c = h - jnp.mean(h, axis=-1, keepdims=True)
    y = c / jnp.sqrt(jnp.mean(c * c, axis=-1, keepdims=True) + eps)
    y = y if g is None else g * y
    return y if b is None else y + b


@jax.jit
def rmsnorm_jacobian(
    h: Float[Array, " d"], g: Float[Array, " d"] | None = None, eps: float = 0.0
) -> Float[Array, "d d"]:
    """J = diag(g)(I/s − hhᵀ/(d s³)), s = √(‖h‖²/d + ε); = diag(g)(√d/‖h‖)(I − ĥĥᵀ) at ε=0."""
    d = h.shape[-1]
    s = jnp.sqrt(_dot(h, h) / d + eps)
    J = jnp.eye(d, dtype=h.dtype) / s - jnp.outer(h, h) / (d * s**3)
    return J if g is None else g[:, None] * J


@jax.jit
def layernorm_jacobian(
    h: Float[Array, " d"], g: Float[Array, " d"] | None = None, eps: float = 0.0
) -> Float[Array, "d d"]:
    """J = diag(g)(P₁/s − ccᵀ/(d s³)), c = h − mean h, P₁ = I − 11ᵀ/d, s = √(‖c‖²/d + ε)."""
    d = h.shape[-1]
    c = h - jnp.mean(h)
    s = jnp.sqrt(_dot(c, c) / d + eps)
    P1 = jnp.eye(d, dtype=h.dtype) - jnp.ones((d, d), h.dtype) / d
    J = P1 / s - jnp.outer(c, c) / (d * s**3)
    return J if g is None else g[:, None] * J


@partial(jax.jit, static_argnames=("kind",))
def norm_jvp(h: Vec, dh: Vec, g: Vec | None = None, kind: str = "rms") -> Vec:
    """J Δh without forming J (ε = 0): radial part removed, scaled by √d/‖h‖."""
    if kind == "layer":
        h = h - jnp.mean(h, axis=-1, keepdims=True)
        dh = dh - jnp.mean(dh, axis=-1, keepdims=True)
    d = h.shape[-1]
    alpha, perp, _ = decompose(h, dh)
    y = perp * jnp.sqrt(d / _dot(h, h))[..., None]
    return y if g is None else g * y


# --------------------------------------------------- propagation to the logits
@jax.jit
def predicted_one_minus_cos_h(h: Vec, sigma) -> Batch:
    """E[1 − cos(h, h+Δh)] ≈ σ²(d−1)/(2‖h‖²) for Δh ~ N(0, σ²I)."""
    d = h.shape[-1]
    return jnp.asarray(sigma) ** 2 * (d - 1) / (2 * _dot(h, h))


def _norm_J(h, g, kind):
    return rmsnorm_jacobian(h, g) if kind == "rms" else layernorm_jacobian(h, g)


def _norm(h, g, kind):
    return rmsnorm(h, g) if kind == "rms" else layernorm(h, g)


@partial(jax.jit, static_argnames=("kind",))
def predicted_one_minus_cos_z(
    h: Float[Array, " d"], W: Float[Array, "V d"], sigma, g: Float[Array, " d"] | None = None, kind: str = "rms"
) -> Float[Array, ""]:
    """E[1 − cos(z, z+Δz)] ≈ σ²(‖WJ‖_F² − ‖JᵀWᵀẑ‖²)/(2‖z‖²), z = W n(h), Δh ~ N(0,σ²I).

    First order in σ: Δz = WJΔh, then Theorem 1 in logit space with
    E‖P_{z⊥}WJΔh‖² = σ² tr(JᵀWᵀ(I − ẑẑᵀ)WJ).
    """
    z = W @ _norm(h, g, kind)
    WJ = W @ _norm_J(h, g, kind)
    zhat = z / jnp.linalg.norm(z)
    tr = jnp.sum(WJ * WJ) - jnp.sum((WJ.T @ zhat) ** 2)
    return jnp.asarray(sigma) ** 2 * tr / (2 * _dot(z, z))


@jax.jit
def logit_cos_gain(
    h: Float[Array, " d"], W: Float[Array, "V d"], g: Float[Array, " d"] | None = None
) -> Float[Array, ""]:
    """(1 − cos z)/(1 − cos h) predicted for isotropic Δh and RMSNorm (ε = 0).

    = [tr(AᵀA) − ĥᵀAᵀAĥ − ‖P_h Aᵀẑ‖²] / ((d − 1)·ĥᵀAᵀAĥ),  A = W diag(g):
    the mean gain of the head over directions tangent to h (Σσₖ² minus the signal
    direction) divided by its gain along ĥ.  ≈ 1 for a head that is isotropic
    relative to ĥ; < 1 when ĥ sits in W's top singular directions.
    """
    d = h.shape[-1]
    A = W if g is None else W * g[None, :]
    hh = h / jnp.linalg.norm(h)
    Ah = A @ hh
    sig = jnp.sum(Ah * Ah)
    zhat = Ah / jnp.sqrt(sig)
    v = A.T @ zhat
    v = v - jnp.dot(v, hh) * hh
    return (jnp.sum(A * A) - sig - jnp.sum(v * v)) / ((d - 1) * sig)


@partial(jax.jit, static_argnames=("kind",))
def cos_z_predicted_vs_exact(h: Vec, dh: Vec, W: Float[Array, "V d"], g: Vec | None = None, kind: str = "rms"):
    """(predicted, exact) 1 − cos(z, z') for z = W n(h), z' = W n(h + Δh).

    predicted = ‖(WJΔh)_⊥z‖²/(2‖z‖²) (linearised norm + Theorem 1 in logit space);
    exact = 1 − cos(W n(h), W n(h+Δh)).  Broadcasts over leading axes of h, dh.
    """
    n0 = _norm(h, g, kind)
    z0 = n0 @ W.T
    dz = norm_jvp(h, dh, g, kind) @ W.T
    pred = one_minus_cos_taylor(z0, dz)
    exact = one_minus_cos(z0, _norm(h + dh, g, kind) @ W.T)
    return pred, exact
