r"""Dephasing: why the first-order response overshoots a large compression, and by how much.

Notation (theory/__init__): z the logits, p = softmax(z), ⟨u, v⟩_p = Cov_p(u, v) the Fisher
inner product of one token (what KL sees: KL ≈ ½‖Δz‖²_p), ΔW the weight error of a plan.

Along the straight path W(t) = W + tΔW the logits move with velocity g(t) = J(W(t))·ΔW, and
the exact change is Δz = ∫₀¹ g(t) dt.  The linear response keeps g(t) = g(0) = a (the JVP of
the base).  Its first correction is the second directional derivative b = g'(0) =
D²z[ΔW, ΔW] (one Taylor-mode pass, `jax.experimental.jet`).  Split b = βa + b⊥ in ⟨·,·⟩_p.

Measured on Gemma 3 270M and SmolLM2-135M (bench/README.md): past KL ≈ 0.3 the velocity keeps
its Fisher size but *turns*: cos_p(g(0), g(½)) ≈ 0.2 at 50 % SparseGPT while
‖g(½)‖_p ≈ ‖g(0)‖_p, so the midpoint rule (J(W + ½ΔW)·ΔW) overshoots as much as the linear
response, and adding ½b (second-order Taylor) overshoots ×5–10.  Components that switch (gate
signs, attention winners) turn the response rather than grow it; what adds up is a sum of
partly decorrelated pieces.

Closure (this module): the velocity is a stationary rotation, ‖g(t)‖_p = ‖a‖_p and
⟨g(s), g(t)⟩_p = ‖a‖²_p·ρ(t − s), ρ(τ) = exp(−τ²x/2) with the rate fixed by the second-order
data, x = 1/ℓ² = ‖b⊥‖²_p/‖a‖²_p (a pure rotation at angular speed ω has ‖g'‖/‖g‖ = ω and
ρ = 1 − ω²τ²/2 + …).  Then

    ‖Δz‖²_p = ‖a‖²_p·R(x),   R(x) = ∫₀¹∫₀¹ e^{−(t−s)²x/2} ds dt
            = 2[ℓ√(π/2)·erf(1/(√2ℓ)) − ℓ²(1 − e^{−x/2})]
            = 1 − x/12 + x²/120 − …   (x → 0: the linear response)
            ≈ √(2π/x)                   (x → ∞: ~1/ℓ independent pieces, a random walk)

and the predicted change is Δz ≈ √R(x)·a (the direction of the JVP, its Fisher size
dephased).  The parallel part β is dropped on purpose: per token it is as often negative as
positive and carries no information on the true size (a size law 1 + βt made predictions
worse, bench/README.md).  For a pure rotation the closure is right through the first correction:
‖∫g‖² = (2 − 2cos ω)/ω² = 1 − ω²/12 + ω⁴/360 vs R(ω²) = 1 − ω²/12 + ω⁴/120
(`derivations.dephasing_factor_series`, `derivations.rotation_energy_series`).
Scaling ΔW by c scales a by c and b by c², so x(c) = c²·x: one pass prices a whole bit or
sparsity grid, as for the linear response.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.scipy.special import erf
from jaxtyping import Array, Float

__all__ = ["dephasing_factor", "dephasing_rate"]

_SERIES_BELOW = 0.05  # below this x the closed form cancels (ℓ² terms); 4 series terms are exact to ~1e-10


def dephasing_factor(x: Float[Array, "..."]) -> Float[Array, "..."]:
    """R(x) = ∫₀¹∫₀¹ exp(−(t − s)²x/2) ds dt, x = 1/ℓ² ≥ 0 (module docstring): the share of
    the linear response's Fisher energy ‖a‖²_p that survives dephasing.  R(0) = 1, R ≤ 1."""
    x = jnp.maximum(jnp.asarray(x, jnp.float32), 0.0)
    small = x < _SERIES_BELOW
    xs = jnp.where(small, x, 0.0)
    # 2 Σ_k (−x/2)^k / (k! (2k+1)(2k+2))
    series = 1 - xs / 12 + xs**2 / 120 - xs**3 / 1344
    xl = jnp.where(small, 1.0, x)
    ell = 1 / jnp.sqrt(xl)
    closed = 2 * (ell * jnp.sqrt(jnp.pi / 2) * erf(1 / (jnp.sqrt(2.0) * ell)) - ell * ell * (1 - jnp.exp(-xl / 2)))
    return jnp.where(small, series, closed)


def dephasing_rate(aa: Float[Array, "..."], bb: Float[Array, "..."], ab: Float[Array, "..."]) -> Float[Array, "..."]:
    """x = ‖b⊥‖²_p/‖a‖²_p from aa = ‖a‖²_p = Var_p(a), bb = Var_p(b), ab = Cov_p(a, b)
    (per token): the squared angular speed of the logit velocity over the path (0 where a = 0)."""
    aa = jnp.asarray(aa)
    safe = jnp.maximum(aa, 1e-30)
    perp = jnp.maximum(bb - ab * ab / safe, 0.0)
    return jnp.where(aa > 0, perp / safe, 0.0)
