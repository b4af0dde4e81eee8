r"""The weight error ΔW of each compression method, as a tangent for the linear response.

sim.predict's package docstring states the models; here they are computed:

    quant_noise_std   σ = √(Δ²/12) per weight (RTN's grid; theory.noise.quant_noise_var)
    rtn_kappa         κ(b): the actual RTN error energy over the uniform model's, per bit width
    obs_factor/shape  GPTQ / SparseGPT's sequential OBS error shape ((x/diag U)·U, H⁻¹ = UᵀU)
    levels_flat/rows  the grid level at which each weight is first pruned (nested masks)
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from hemorrhage.errors import UserError
from hemorrhage.sim.compress.blas import single_thread_blas
from hemorrhage.sim.compress.obs import dampening_schedule
from hemorrhage.sim.compress.quantizer import dequant, encode, qparams
from hemorrhage.theory import quant_noise_var, quantize_rtn, uniform_noise_var


@partial(jax.jit, static_argnames=("group_size", "symmetric"))
def quant_noise_std(w, bits, group_size: int | None, symmetric: bool):
    """σ = √(Δ²/12) per weight, Δ the step of its row (group_size None) or group, the two
    range-defining weights exact (theory.noise.quant_noise_var); symmetric: the step of
    the compressor's symmetric grid, max|w|/(2^{b−1} − 1).  `bits` may be traced."""
    g = group_size or w.shape[1]
    if symmetric:
        scale, _ = qparams(w.reshape(w.shape[0], -1, g), bits, True)
        var = uniform_noise_var(jnp.repeat(scale, g, axis=1)) * (1 - 1 / g)
    else:
        var = quant_noise_var(
            w, bits, endpoint_correction=True, granularity="group" if group_size else "channel", group_size=group_size
        )
    return jnp.sqrt(var)


def step_ratio(bits: int, ref_bits: int, symmetric: bool) -> float:
    """Δ(bits)/Δ(ref_bits) at a fixed range."""
    lv = (lambda b: 2 ** (b - 1) - 1) if symmetric else (lambda b: 2**b - 1)
    return lv(ref_bits) / lv(bits)


@partial(jax.jit, static_argnames=("group_size", "symmetric"))
def kappa_terms(w, bits, group_size: int | None, symmetric: bool):
    """(Σ actual RTN error², Σ σ²) of w at `bits` (traced: one compile per shape).  The
    compressor's grids: asymmetric min–max = theory.noise.quantize_rtn; symmetric ±max|w|
    with 2^{b−1} − 1 levels a side (the compressor's own quantizer)."""
    g = group_size or w.shape[1]
    if symmetric:
        wg = w.reshape(w.shape[0], -1, g)
        scale = qparams(wg, bits, True)[0][..., None]
        q = dequant(encode(wg, scale, None, bits), scale, None, bits).reshape(w.shape)
    else:
        q = quantize_rtn(w, bits, granularity="group" if group_size else "channel", group_size=group_size)
    return jnp.sum(jnp.square(q - w)), jnp.sum(jnp.square(quant_noise_std(w, bits, group_size, symmetric)))


def rtn_kappa(weights: list, bits: list[int], group_size, symmetric, rows: int = 64) -> dict[int, float]:
    """κ(b) = Σ(actual RTN error)² / Σ σ² over `rows` evenly spaced rows of every linear."""
    by_d: dict[int, list] = {}
    for w in weights:
        idx = np.unique(np.linspace(0, w.shape[0] - 1, min(rows, w.shape[0])).astype(int))
        by_d.setdefault(int(w.shape[1]), []).append(w[idx])
    cat = [jnp.concatenate(v) for v in by_d.values()]
    out = {}
    for b in bits:
        terms = [kappa_terms(w, jnp.float32(b), group_size, symmetric) for w in cat]
        num, den = sum(float(t[0]) for t in terms), sum(float(t[1]) for t in terms)
        out[b] = num / den if den > 0 else 1.0
    return out


@jax.jit
def noise_probe(std, key):
    """σ⊙ε, ε iid U(−√3, √3): a unit-variance uniform probe of the rounding noise."""
    return std * jax.random.uniform(key, std.shape, jnp.float32, -math.sqrt(3.0), math.sqrt(3.0))


@jax.jit
def obs_shape(x, u):
    """(x / diag U)·U: sequential-OBS error of scaled residuals x (GPTQ / SparseGPT), H⁻¹ = UᵀU."""
    return (x / jnp.diag(u)[None, :]) @ u


def obs_factor(h, damp: float, act_order: bool = False):
    """(column order, U) with H⁻¹ = UᵀU, U upper, for the dampened calibration Hessian in
    that order — what obs.factor / GPTQ.factor compute (dead inputs H_jj = 1, λ·mean(diag H)
    added, λ ×10 until it factors), done by LAPACK on the host in float64 (XLA:CPU's
    Cholesky of a reversed matrix is slower: bench/README.md, "Numbers moved out of docstrings")."""
    import scipy.linalg as sl

    with single_thread_blas():
        return _obs_factor(sl, np.asarray(h, np.float64), float(damp), act_order)


def _obs_factor(sl, h, damp, act_order):
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(h.shape[0])
    h = h[perm][:, perm]
    h[np.diag_indices_from(h)] += np.diag(h) <= 0
    mean_diag = float(np.mean(np.diag(h)))
    for lam in dampening_schedule(damp):
        hd = h + lam * (mean_diag if mean_diag > 0 else 1.0) * np.eye(h.shape[0])
        try:
            r = sl.cholesky(np.ascontiguousarray(hd[::-1, ::-1]), lower=True, check_finite=False)[::-1, ::-1]
        except np.linalg.LinAlgError:
            continue
        u, info = sl.lapack.dtrtri(np.ascontiguousarray(r), lower=0)
        if info == 0 and np.all(np.isfinite(u)) and np.all(np.diag(u) > 0):
            return jnp.asarray(perm), jnp.asarray(u, jnp.float32)
    raise UserError("the calibration Hessian cannot be factored even with heavy dampening")


@jax.jit
def obs_shape_permuted(x, u, perm, inv):
    """obs_shape with the columns in `perm` order (act_order), back in the original order."""
    return obs_shape(x[:, perm], u)[:, inv]


@jax.jit
def pruned_at(w, lev, j):
    """ΔW of the weights first pruned at level j (lev: `levels_flat` / `levels_rows`)."""
    return jnp.where(lev == j, -w, 0.0)


@jax.jit
def pruned_through(w, lev, j):
    """ΔW = −W⊙(1 − M_j): every weight pruned at level j or before (nested masks)."""
    return jnp.where(lev <= j, -w, 0.0)


def levels_flat(a: np.ndarray, ks) -> np.ndarray:
    """Level at which each entry of `a` is first pruned when level j prunes the ks[j]
    smallest (stable rank, ties by position, as the compressor's topk); len(ks) if never."""
    a = np.ravel(a)
    ks = np.asarray(ks, np.int64)
    kth = sorted({int(k) - 1 for k in ks if 0 < k <= a.size})
    part = np.partition(a, kth) if kth else a
    t = np.array([part[k - 1] if k > 0 else -np.inf for k in ks], a.dtype)
    lev = np.searchsorted(t, a, side="right")
    for v in np.unique(t[np.isfinite(t)]):
        idx = np.flatnonzero(a == v)
        lev[idx] = np.searchsorted(ks, np.count_nonzero(a < v) + np.arange(idx.size), side="right")
    return lev.astype(np.int8)


def levels_rows(score: np.ndarray, k_rows: np.ndarray) -> np.ndarray:
    """Per row r, level j prunes the k_rows[j, r] smallest scores (ties all pruned)."""
    out_dim, d = score.shape
    k_rows = np.maximum.accumulate(np.asarray(k_rows, np.int64), axis=0)
    kth = sorted({int(k) - 1 for k in np.unique(k_rows) if 0 < k <= d})
    part = np.partition(score, kth, axis=1) if kth else score
    lev = np.zeros(score.shape, np.int8)
    for kj in k_rows:
        t = np.where(kj > 0, part[np.arange(out_dim), np.maximum(kj - 1, 0)], -np.inf)
        lev += score > t[:, None]
    return lev
