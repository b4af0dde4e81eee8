"""Optimal Brain Surgeon solvers: SparseGPT (pruning) and GPTQ (quantization).

Both minimise ‖WX − ŴX‖² one input column at a time: fix column j (prune it or round
it), then spread its error e_j = (w_j − ŵ_j)/[U]_jj over the columns not yet fixed with
the row j of U, the upper Cholesky factor of H⁻¹ (H = 2XXᵀ/n + λ·mean(diag H)·I).
Columns are processed in blocks (lazy batch updates, as in the GPTQ paper); the whole
solve is one jitted function per weight shape, with `lax.fori_loop` over blocks and
columns.

H need not be positive definite: inputs that never fire (H_jj = 0) get H_jj = 1 and a
zero weight column, and the dampening λ is raised ×10 until the Cholesky factors are
finite (λ starts at the method's `damp`, or 1e-6 if that is 0).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from hemorrhage.errors import UserError
from hemorrhage.sim.compress.quantizer import dequant, encode, qparams


@jax.jit
def _factor(h, lam):
    """U upper with H⁻¹ = UᵀU, for H + λ·mean(diag H)·I: with R = rev(chol(rev(H))) upper and
    H = R·Rᵀ, H⁻¹ = R⁻ᵀR⁻¹, so U = R⁻¹ (one Cholesky and one triangular inverse)."""
    d = h.shape[0]
    mean_diag = jnp.mean(jnp.diag(h))
    hd = h + lam * jnp.where(mean_diag > 0, mean_diag, 1.0) * jnp.eye(d, dtype=h.dtype)
    r = jnp.linalg.cholesky(hd[::-1, ::-1])[::-1, ::-1]
    u = jax.scipy.linalg.solve_triangular(r, jnp.eye(d, dtype=h.dtype), lower=False)
    ok = jnp.all(jnp.isfinite(u)) & jnp.all(jnp.diag(u) > 0)
    return u, ok


@jax.jit
def _revive(h):
    dead = jnp.diag(h) <= 0
    return h + jnp.diag(dead.astype(h.dtype)), dead, jnp.all(jnp.isfinite(h))


def dampening_schedule(damp: float) -> list[float]:
    """The λ tried in turn until H + λ·mean(diag H)·I factors: `damp`, then ×10 at a time (from
    1e-6 when `damp` is 0).  The predictor's host factorisation (sim.predict.obs_factor) tries
    the same."""
    lam = float(damp)
    return (
        [lam] + [max(lam, 1e-6) * 10**k for k in range(1, 10)] if lam > 0 else [0.0] + [10.0**k for k in range(-6, 3)]
    )


def factor(h, damp: float):
    """(U, dead, λ used) for one calibration Hessian H [in in] (shared by the linears
    that read the same input): dead inputs (H_jj = 0) get H_jj = 1, the dampening grows
    ×10 until the factor is finite."""
    h, dead, finite = _revive(jnp.asarray(h, jnp.float32))
    if not bool(finite):
        raise UserError("calibration produced non-finite activations (the model overflows on this text)")
    for lam in dampening_schedule(damp):
        u, ok = _factor(h, lam)
        if bool(ok):
            return u, dead, lam
    raise UserError("the calibration Hessian cannot be factored even with heavy dampening")


def prepare(w, h, damp: float):
    """(W with dead input columns zeroed, U = upper Cholesky factor of the dampened H⁻¹, λ used)."""
    u, dead, lam = factor(h, damp)
    return zero_columns(w, dead), u, lam


@jax.jit
def zero_columns(w, dead):
    return jnp.where(dead[None, :], 0.0, w)


def block_size(d: int, multiple: int = 1, target: int = 128) -> int:
    """The largest divisor of d that is a multiple of `multiple` and ≤ max(target, multiple)."""
    cap = max(target, multiple)
    for b in range(min(d, cap), 0, -1):
        if d % b == 0 and b % multiple == 0:
            return b
    return d


def _trailing(wt, err1, u, i1, bs):
    """Wᵀ[i1+bs:] −= U[i1:i1+bs, i1+bs:]ᵀ · Err1  (the rows of Wᵀ up to the block left alone)."""
    d = wt.shape[0]
    rows = jax.lax.dynamic_slice(u, (i1, 0), (bs, d))
    rows = jnp.where(jnp.arange(d)[None, :] >= i1 + bs, rows, 0.0)
    return wt - jnp.dot(rows.T, err1, precision="highest")


def smallest_k(score, k):
    """Bool mask of the k smallest entries of a non-negative 1-D score, ties broken by
    position, exactly k of them.  Bisection on the float bit pattern (monotone for x ≥ 0):
    32 vectorised counts instead of a sort, which is slow on XLA:CPU."""
    bits = jax.lax.bitcast_convert_type(jnp.maximum(score, 0.0), jnp.int32)

    def step(_, lohi):
        lo, hi = lohi  # invariant: count(bits <= hi) >= k; answer in [lo, hi]
        mid = lo + (hi - lo) // 2
        ok = jnp.sum(bits <= mid) >= k
        return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)

    _, t = jax.lax.fori_loop(0, 32, step, (jnp.int32(0), jnp.int32(2**31 - 1)))
    below = bits < t
    tie = bits == t
    need = k - jnp.sum(below)
    return below | (tie & (jnp.cumsum(tie) <= need))


def rank_in_rows(score):
    """Rank (0 = smallest, ties by position) of each entry within its row; rows are short."""
    a, b = score[:, :, None], score[:, None, :]
    idx = jnp.arange(score.shape[1])
    before = (b < a) | ((b == a) & (idx[None, None, :] < idx[None, :, None]))
    return jnp.sum(before, axis=-1)


# Both solvers work on Wᵀ [in out] internally: the column being fixed is then a contiguous
# row, which makes the per-column step several times faster on CPU.


@partial(jax.jit, static_argnames=("bs", "n", "m"))
def sparsegpt(w, u, k_blocks, *, bs: int, n: int | None, m: int | None):
    """SparseGPT.  Unstructured: in each block of bs columns prune the k_blocks[b] weights
    with the smallest w²/[U]_jj² (chosen when the block starts, on the updated W).
    N:M: at the start of every M columns prune, per row, the M−N smallest w²/[U]_jj².
    Returns (Ŵ, keep mask)."""
    out, d = w.shape
    nb = d // bs

    def block(wt, b):
        i1 = b * bs
        w1 = jax.lax.dynamic_slice(wt, (i1, 0), (bs, out))
        u1 = jax.lax.dynamic_slice(u, (i1, i1), (bs, bs))
        dg = jnp.diag(u1)
        if n is None:
            prune1 = smallest_k(((w1 / dg[:, None]) ** 2).reshape(-1), k_blocks[b]).reshape(bs, out)
        else:
            prune1 = jnp.zeros((bs, out), bool)

        def col(j, c):
            w1, prune1, err1 = c
            if n is not None:

                def select(p):
                    seg = jax.lax.dynamic_slice(w1, (j, 0), (m, out))
                    dseg = jax.lax.dynamic_slice(dg, (j,), (m,))
                    r = rank_in_rows(((seg / dseg[:, None]) ** 2).T).T
                    return jax.lax.dynamic_update_slice(p, r < (m - n), (j, 0))

                prune1 = jax.lax.cond(j % m == 0, select, lambda p: p, prune1)
            wj, pj = w1[j], prune1[j]
            q = jnp.where(pj, 0.0, wj)
            e = (wj - q) / dg[j]
            w1 = w1 - u1[j][:, None] * e[None, :]
            w1 = w1.at[j].set(q)
            err1 = err1.at[j].set(e)
            return w1, prune1, err1

        w1, prune1, err1 = jax.lax.fori_loop(0, bs, col, (w1, prune1, jnp.zeros_like(w1)))
        wt = jax.lax.dynamic_update_slice(wt, w1, (i1, 0))
        wt = _trailing(wt, err1, u, i1, bs)
        return wt, ~prune1

    wt, keep = jax.lax.scan(block, w.T, jnp.arange(nb))
    keep = keep.reshape(d, out).T
    return jnp.where(keep, wt.T, 0.0), keep


@partial(jax.jit, static_argnames=("bs", "g", "bits", "symmetric", "static"))
def gptq(w, u, scale_col, zero_col, *, bs: int, g: int, bits: int, symmetric: bool, static: bool):
    """GPTQ.  static: every column uses the given per-column grid (scale_col, zero_col
    [out in], in processing order); otherwise the grid of each group of g columns is
    fitted on the current (error-updated) weights when the group starts (bs is then a
    multiple of g).  Returns (codes [out in], scale, zero): with static, the given
    per-column grid; otherwise per group [out in/g] (zero None when symmetric)."""
    out, d = w.shape
    nb = d // bs
    sym = symmetric
    gpb = 1 if static else bs // g  # groups per block (dynamic grids)
    if static:
        xs = (jnp.arange(nb), scale_col.T.reshape(nb, bs, out), None if sym else zero_col.T.reshape(nb, bs, out))
    else:
        xs = (jnp.arange(nb), None, None)

    def block(wt, x):
        b, s_blk, z_blk = x
        i1 = b * bs
        w1 = jax.lax.dynamic_slice(wt, (i1, 0), (bs, out))
        u1 = jax.lax.dynamic_slice(u, (i1, i1), (bs, bs))
        dg = jnp.diag(u1)

        def col(j, c):
            w1, err1, c1, sg, zg = c
            if static:
                s, z = s_blk[j], (None if sym else z_blk[j])
            else:

                def fit(szg):
                    sg, zg = szg
                    s_new, z_new = qparams(jax.lax.dynamic_slice(w1, (j, 0), (g, out)).T, bits, sym)
                    sg = sg.at[j // g].set(s_new)
                    if not sym:
                        zg = zg.at[j // g].set(z_new)
                    return sg, zg

                sg, zg = jax.lax.cond(j % g == 0, fit, lambda szg: szg, (sg, zg))
                s, z = sg[j // g], (None if sym else zg[j // g])
            wj = w1[j]
            cj = encode(wj, s, z, bits)
            q = dequant(cj, s, z, bits)
            e = (wj - q) / dg[j]
            w1 = w1 - u1[j][:, None] * e[None, :]
            w1 = w1.at[j].set(q)
            err1 = err1.at[j].set(e)
            c1 = c1.at[j].set(cj)
            return w1, err1, c1, sg, zg

        init = (
            w1,
            jnp.zeros((bs, out), jnp.float32),
            jnp.zeros((bs, out), jnp.int32),
            jnp.ones((gpb, out), jnp.float32),
            jnp.zeros((gpb, out), jnp.float32),
        )
        w1, err1, c1, sg, zg = jax.lax.fori_loop(0, bs, col, init)
        wt = jax.lax.dynamic_update_slice(wt, w1, (i1, 0))
        wt = _trailing(wt, err1, u, i1, bs)
        return wt, (c1, sg, zg)

    _, (c, sg, zg) = jax.lax.scan(block, w.T, xs)
    merge = lambda a: a.reshape(-1, out).T  # [nb k out] -> [out nb·k]
    if static:
        return merge(c), scale_col, (None if sym else zero_col)
    return merge(c), merge(sg), (None if sym else merge(zg))


def cumulative_counts(total_per_part: int, parts: int, fraction: float) -> np.ndarray:
    """Per part, how many of its `total_per_part` items to take so the grand total is
    exactly round(fraction · parts · total_per_part) (cumulative rounding)."""
    edges = np.round(fraction * total_per_part * np.arange(parts + 1)).astype(np.int64)
    return np.diff(edges).astype(np.int32)
