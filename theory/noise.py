r"""Noise models for compression and their propagation into h.

Classical results (uniform quantisation theory, e.g. Widrow & Kollár 2008; Bennett
1948) derived symbolically in ``derivations.py`` and checked by simulation in
``tests/test_theory_noise.py``; pruning/Wanda notation from arXiv 2306.11695.

Uniform quantiser with 2^b levels on [lo, hi]: step Δ = (hi − lo)/(2^b − 1).
  asymmetric (min–max):  lo = min w, hi = max w;
  symmetric:             lo = −max|w|, hi = max|w|  → Δ = 2·max|w|/(2^b − 1);
  clipped:               lo = −C, hi = C (C = c·σ, clip ratio c).
Granular error e = Q(w) − w is ≈ U(−Δ/2, Δ/2) when Δ is small against the scale on
which the weight density varies:  E e = 0, Var e = Δ²/12.  Each extra bit halves Δ,
so noise variance ∝ 4^{-b} and SQNR grows by 20·log₁₀2 ≈ 6.02 dB per bit;
for a signal of std σ loaded to ±C, SQNR ≈ 6.02b + 4.77 − 20 log₁₀(C/σ) dB.
With clipping, MSE = (Δ²/12)·P(|w| ≤ C) + E[(|w| − C)²; |w| > C] (overload).
Granularity: per-tensor, per-channel (one Δ per output row) or group-wise (one Δ
per ``group_size`` consecutive inputs of a row) — each weight sees its own Δ.

Pruning with mask M (1 = keep): ΔW = −W ⊙ (1 − M).  For Gaussian weights N(0, σ²):
random pruning at sparsity S removes energy Sσ²; magnitude pruning removes only the
small ones, Var = σ²(S − 2τφ(τ)) with τ = Φ⁻¹((1+S)/2).

Linear layer y = Wx, independent zero-mean errors ΔWᵢⱼ:
    Var(Δyᵢ) = Σⱼ xⱼ² Var(ΔWᵢⱼ),
and over calibration inputs X (rows xₙ): E‖ΔWᵢ x‖² = ΔWᵢ C ΔWᵢᵀ, C = XᵀX/n; the
diagonal approximation Σⱼ ΔWᵢⱼ² Cⱼⱼ (Wanda's |W|·‖X_j‖ objective, squared) is exact
when the input features are uncorrelated.
Residual stream: h_L = h_0 + Σ_l f_l(h_l); to first order Δh_L ≈ Σ_l e_l with e_l
the local error of block l, and independent errors add in quadrature,
E‖Δh_L‖² = Σ_l E‖e_l‖²; a later norm divides the (perpendicular) error by ‖h‖/√d.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from jax.scipy.special import erf, erfc, ndtri
from jaxtyping import Array, Float

__all__ = [
    "quant_range",
    "quant_step",
    "quantize_rtn",
    "quant_noise_var",
    "uniform_noise_var",
    "sqnr_db",
    "sqnr_db_rule",
    "noise_var_per_bit_ratio",
    "clipped_quant_mse",
    "optimal_clip_ratio",
    "pruning_delta",
    "magnitude_mask",
    "magnitude_pruning_noise_var",
    "random_pruning_noise_var",
    "pruning_output_error_exact",
    "pruning_output_error_diag",
    "linear_output_noise_var",
    "linear_output_noise_energy",
    "residual_error_energy",
    "norm_relative_error",
    "equivalent_bits",
]

Mat = Float[Array, "*batch d_out d_in"]


def _levels_minus_one(bits, dtype):
    """2^b − 1 as a float of ``dtype`` (bits may be traced)."""
    return jnp.exp2(jnp.asarray(bits, dtype)) - 1


def _grouped(W, group_size):
    """Reshape [..., d_out, d_in] → [..., d_out, n_groups, g] (g = d_in if None)."""
    d_in = W.shape[-1]
    g = d_in if group_size is None or group_size <= 0 else group_size
    if d_in % g:
        raise ValueError(f"group_size {g} does not divide d_in {d_in}")
    return W.reshape(W.shape[:-1] + (d_in // g, g))


@partial(jax.jit, static_argnames=("symmetric", "granularity", "group_size", "clip_ratio"))
def quant_range(
    W: Mat,
    symmetric: bool = False,
    granularity: str = "channel",
    group_size: int | None = None,
    clip_ratio: float = 1.0,
):
    """(lo, hi) of the quantiser grid, broadcast to W's shape.

    granularity: 'tensor' (one range), 'channel' (per output row) or 'group'
    (per ``group_size`` inputs).  ``clip_ratio`` < 1 shrinks the range.
    """
    if granularity == "tensor":
        axes, Wg = None, W
    else:
        Wg = _grouped(W, group_size if granularity == "group" else None)
        axes = -1
    if symmetric:
        hi = jnp.max(jnp.abs(Wg), axis=axes, keepdims=axes is not None)
        lo = -hi
    else:
        lo = jnp.min(Wg, axis=axes, keepdims=axes is not None)
        hi = jnp.max(Wg, axis=axes, keepdims=axes is not None)
    mid = 0.5 * (lo + hi)
    lo, hi = mid + clip_ratio * (lo - mid), mid + clip_ratio * (hi - mid)
    lo = jnp.broadcast_to(lo, Wg.shape).reshape(W.shape)
    hi = jnp.broadcast_to(hi, Wg.shape).reshape(W.shape)
    return lo, hi


@partial(jax.jit, static_argnames=("symmetric", "granularity", "group_size", "clip_ratio"))
def quant_step(
    W: Mat,
    bits: int,
    symmetric: bool = False,
    granularity: str = "channel",
    group_size: int | None = None,
    clip_ratio: float = 1.0,
) -> Mat:
    """Δ = (hi − lo)/(2^b − 1) for each weight (asymmetric: max − min; symmetric: 2max|w|)."""
    lo, hi = quant_range(W, symmetric, granularity, group_size, clip_ratio)
    return (hi - lo) / _levels_minus_one(bits, W.dtype)


@partial(jax.jit, static_argnames=("symmetric", "granularity", "group_size", "clip_ratio"))
def quantize_rtn(
    W: Mat,
    bits: int,
    symmetric: bool = False,
    granularity: str = "channel",
    group_size: int | None = None,
    clip_ratio: float = 1.0,
) -> Mat:
    """Round-to-nearest onto the 2^b-level grid lo + kΔ, k = 0..2^b−1 (clips outside)."""
    lo, hi = quant_range(W, symmetric, granularity, group_size, clip_ratio)
    top = _levels_minus_one(bits, W.dtype)
    step = (hi - lo) / top
    k = jnp.clip(jnp.round((W - lo) / step), 0, top)
    return lo + k * step


@jax.jit
def uniform_noise_var(step):
    """Var of U(−Δ/2, Δ/2) = Δ²/12."""
    return jnp.asarray(step) ** 2 / 12


@partial(jax.jit, static_argnames=("symmetric", "granularity", "group_size", "clip_ratio", "endpoint_correction"))
def quant_noise_var(
    W: Mat,
    bits: int,
    symmetric: bool = False,
    granularity: str = "channel",
    group_size: int | None = None,
    clip_ratio: float = 1.0,
    endpoint_correction: bool = False,
) -> Mat:
    """Per-weight granular noise variance Δ²/12 (Δ from the weight's own group).

    With ``endpoint_correction`` the weights that define the range are exact (min and
    max for asymmetric, the max |w| for symmetric), so a group of n weights has mean
    noise (1 − k/n)Δ²/12, k = 2 or 1 (a 3% effect for asymmetric groups of 64).
    """
    var = uniform_noise_var(quant_step(W, bits, symmetric, granularity, group_size, clip_ratio))
    if not endpoint_correction or clip_ratio != 1.0:
        return var
    n = W.size if granularity == "tensor" else (group_size if granularity == "group" else W.shape[-1])
    return var * (1 - (1 if symmetric else 2) / n)


@jax.jit
def sqnr_db(signal_var, noise_var):
    """10 log₁₀(signal variance / noise variance)."""
    return 10 * jnp.log10(jnp.asarray(signal_var) / jnp.asarray(noise_var))


def sqnr_db_rule(bits, loading: float = math.sqrt(3)):
    """SQNR ≈ 6.02b + 4.77 − 20log₁₀(C/σ) dB for range ±C, Δ = 2C/2^b (fine grid).

    loading = C/σ; √3 (full-scale uniform signal) gives exactly 20·b·log₁₀2 ≈ 6.02b.
    """
    return 20 * math.log10(2) * jnp.asarray(bits) + 10 * math.log10(3) - 20 * math.log10(loading)


def noise_var_per_bit_ratio() -> float:
    """Noise variance ratio for one extra bit at fixed range: (Δ/2)²/Δ² = 1/4."""
    return 0.25


def _phi(x):
    return jnp.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


@partial(jax.jit, static_argnames=("dist",))
def clipped_quant_mse(bits, clip, dist: str = "gaussian", scale=1.0):
    """MSE of a 2^b-level quantiser on [−C, C], C = clip·scale, for a zero-mean weight.

    granular (Δ²/12)·P(|w| ≤ C) + overload 2∫_C^∞ (w − C)² f(w) dw with
    Gaussian(σ=scale):  overload = 2[(σ² + C²)Q(C/σ) − Cσφ(C/σ)],
    Laplace(b=scale):   overload = 2b²e^{−C/b}      (derived in derivations.py).
    """
    s = jnp.asarray(scale)
    C = jnp.asarray(clip) * s
    step = 2 * C / (jnp.exp2(jnp.asarray(bits, C.dtype)) - 1)
    if dist == "gaussian":
        a = C / s
        inside = erf(a / math.sqrt(2))
        over = 2 * ((s * s + C * C) * 0.5 * erfc(a / math.sqrt(2)) - C * s * _phi(a))
    elif dist == "laplace":
        inside = 1 - jnp.exp(-C / s)
        over = 2 * s * s * jnp.exp(-C / s)
    else:
        raise ValueError(dist)
    return step**2 / 12 * inside + over


@partial(jax.jit, static_argnames=("dist",))
def optimal_clip_ratio(bits: int, dist: str = "gaussian", grid=None):
    """argmin_c clipped_quant_mse(bits, c) on a grid of clip ratios (in units of scale)."""
    grid = jnp.linspace(0.5, 12.0, 2301) if grid is None else grid
    mse = clipped_quant_mse(bits, grid, dist)
    i = jnp.argmin(mse)
    return grid[i], mse[i]


# --------------------------------------------------------------------- pruning
@jax.jit
def pruning_delta(W: Mat, mask: Mat) -> Mat:
    """ΔW = −W ⊙ (1 − M), M = 1 where the weight is kept."""
    return -W * (1 - mask)


@partial(jax.jit, static_argnames=("sparsity", "per_row"))
def magnitude_mask(W: Mat, sparsity: float, per_row: bool = True) -> Mat:
    """Keep the largest |W| (per output row or per tensor); returns a 0/1 mask."""
    A = jnp.abs(W)
    if per_row:
        k = int(round(sparsity * W.shape[-1]))
        thr = jnp.sort(A, axis=-1)[..., k - 1 : k] if k > 0 else -jnp.inf
    else:
        k = int(round(sparsity * W.size))
        thr = jnp.sort(A.ravel())[k - 1] if k > 0 else -jnp.inf
    return (A > thr).astype(W.dtype)


@jax.jit
def random_pruning_noise_var(sparsity, sigma=1.0):
    """E[ΔW²] = Sσ² for a random mask of sparsity S."""
    return jnp.asarray(sparsity) * jnp.asarray(sigma) ** 2


@jax.jit
def magnitude_pruning_noise_var(sparsity, sigma=1.0):
    """E[ΔW²] = σ²(S − 2τφ(τ)), τ = Φ⁻¹((1+S)/2), for W ~ N(0, σ²) (∫_{−τ}^{τ} w²φ)."""
    tau = ndtri((1 + jnp.asarray(sparsity)) / 2)
    return jnp.asarray(sigma) ** 2 * (jnp.asarray(sparsity) - 2 * tau * _phi(tau))


@jax.jit
def pruning_output_error_exact(dW: Float[Array, "d_out d_in"], X: Float[Array, "n d_in"]) -> Float[Array, " d_out"]:
    """E_n (ΔW xₙ)ᵢ² = ΔWᵢ C ΔWᵢᵀ with C = XᵀX/n (exact over the calibration set)."""
    C = X.T @ X / X.shape[0]
    return jnp.einsum("ij,jk,ik->i", dW, C, dW)


@jax.jit
def pruning_output_error_diag(dW: Float[Array, "d_out d_in"], X: Float[Array, "n d_in"]) -> Float[Array, " d_out"]:
    """Σⱼ ΔWᵢⱼ² ‖Xⱼ‖²/n — exact iff features are uncorrelated (Wanda's criterion)."""
    return (dW * dW) @ jnp.mean(X * X, axis=0)


# ----------------------------------------------------------------- propagation
@jax.jit
def linear_output_noise_var(
    x: Float[Array, "*batch d_in"], var_W: Float[Array, "d_out d_in"]
) -> Float[Array, "*batch d_out"]:
    """Var(Δyᵢ) = Σⱼ xⱼ² Var(ΔWᵢⱼ) for y = Wx with independent zero-mean weight errors."""
    return (x * x) @ var_W.T


@jax.jit
def linear_output_noise_energy(X: Float[Array, "n d_in"], var_W: Float[Array, "d_out d_in"]) -> Float[Array, ""]:
    """E_x E‖ΔW x‖² over calibration rows X = Σᵢⱼ Var(ΔWᵢⱼ) mean(xⱼ²)."""
    return jnp.sum(var_W @ jnp.mean(X * X, axis=0))


@jax.jit
def residual_error_energy(layer_energy: Float[Array, "*batch L"]) -> Float[Array, "*batch L"]:
    """E‖Δh_l‖² after each block: cumulative sum of the per-block local energies
    (first order, independent errors add in quadrature)."""
    return jnp.cumsum(layer_energy, axis=-1)


def norm_relative_error(err_energy, h_norm_sq, d: int):
    """Relative perpendicular error seen after a norm: (1 − 1/d)·E‖Δh‖²/‖h‖² (isotropic
    Δh); 1 − cos(h) ≈ half of it.  Grows with the error, shrinks as ‖h‖ grows."""
    return (1 - 1 / d) * jnp.asarray(err_energy) / jnp.asarray(h_norm_sq)


@jax.jit
def equivalent_bits(noise_var, ref_noise_var, ref_bits):
    """Bits b with the same Δ²/12 at fixed range: b = b_ref − ½log₂(var/var_ref)."""
    return jnp.asarray(ref_bits) - 0.5 * jnp.log2(jnp.asarray(noise_var) / jnp.asarray(ref_noise_var))
