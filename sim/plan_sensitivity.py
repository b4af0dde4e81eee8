r"""Per-tensor sensitivity: each linear's predicted KL share as a function of its setting.

    F = fisher_diag(lr, windows, draws=2, seed=0)          # [out in] per linear, lr.paths order
    tab = sensitivity_table(lr, F, "rtn", [2, 3, 4, 8], stats=None, group_size=None)
    tab.kl[t][j], tab.cost[t][j], tab.bytes[t][j]          # tensor t at option j

The KL of a small logit change is ½Var_p(Δz) to second order (Theorem 3, theory.softmax), and
pulled back to the weights it is ½ δwᵀ F δw with F = E_t[J_tᵀ (diag p − ppᵀ) J_t] the Fisher of
the softmax (Amari 1998; the Gauss–Newton form Martens 2020).  Its diagonal for every weight
at once comes from backward passes with labels drawn from the model's own p (the "true"
Fisher, not the empirical one of the data's labels; Kunstner et al. 2019):

    F_ii = (1/N) Σ_windows E_y[(∂_i Σ_t log p_t(y_t))²],   y_t ~ p_t independently

The cross terms t ≠ s vanish in expectation (E_y ∇log p_y = 0 for each t given the window),
so one backward per window and draw is an unbiased estimate of the per-token mean; `draws`
label draws per window reduce its variance.  A tensor t at setting j then costs

    k_tj = ½ Σ_i F_ii δw_i²

with δw the setting's real error on that tensor: RTN's rounding error (rtn_dequant − w);
pruning's −w on the pruned weights of the method's own mask (magnitude |w| per tensor,
Wanda |w|·‖X_j‖ per row, SparseGPT (w/U_jj)² per row); for GPTQ and SparseGPT the sequential
OBS shape δw = (x/diag U)·U of sim.predict.tangents (H⁻¹ = UᵀU), for GPTQ in expectation over the
rounding residual x (iid, variance σ² = Δ²/12 of RTN's grid, as sim.predict models it):

    E[k_tj] = ½ Σ_ij (σ²_ij / U_jj²) (F (U∘U)ᵀ)_ij

The diagonal drops the correlations between weights (what GPTQ's error feedback and
SparseGPT's update exploit), and the sum over tensors drops those between tensors (the
additivity EvoPress questions); sim.plan measures both against the whole plan's linear
response and rescales by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from hemorrhage.sim.compress.pruning import row_mask, topk_mask
from hemorrhage.sim.compress.quantizer import qparams
from hemorrhage.sim.compress.storage import packed_size
from hemorrhage.sim.predict import obs_factor, obs_shape, quant_noise_std
from jaxtyping import Array, Float

QUANT_METHODS, PRUNE_METHODS = ("rtn", "gptq"), ("magnitude", "wanda", "sparsegpt")
KEEP_UNITS = 1000  # a pruning option's cost: kept weights × this (integer costs for the solver)


@partial(jax.jit, static_argnums=0)
def _sq_grad(gd, lin, rest, toks, key):
    """(∂_W Σ_t log p_t(y_t))², y_t drawn from the base's own p_t (held fixed: no gradient)."""

    def logp(lin):
        z = nnx.merge(gd, lin, rest)(toks)[0][:, :-1].astype(jnp.float32)
        y = jax.random.categorical(key, jax.lax.stop_gradient(z))
        lp = jax.nn.log_softmax(z)
        return jnp.sum(jnp.take_along_axis(lp, y[..., None], -1))

    return jax.tree.map(jnp.square, jax.grad(logp)(lin))


def fisher_diag(lr, windows, draws: int = 2, seed: int = 0) -> list[Float[Array, "out in"]]:
    """The diagonal Fisher of the softmax on the block linears (module docstring), per
    linear in `lr.paths` order, averaged per scored token (each window's last is not scored,
    as `hemorrhage measure` scores them).  lr: a sim.predict.Linearization (its
    split of the model into linears and the rest)."""
    windows = np.asarray(windows, np.int32)
    total = None
    for b in range(windows.shape[0]):
        for k in range(draws):
            key = jax.random.fold_in(jax.random.key(seed), b * draws + k)
            g2 = _sq_grad(lr.graphdef, lr.lin, lr.rest, jnp.asarray(windows[b : b + 1]), key)
            total = g2 if total is None else jax.tree.map(jnp.add, total, g2)
    n = windows.shape[0] * draws * (windows.shape[1] - 1)
    return [leaf / n for leaf in jax.tree_util.tree_leaves(total)]


@partial(jax.jit, static_argnames=("group_size", "symmetric"))
def _rtn_error(w, bits, group_size: int | None, symmetric: bool):
    """rtn_dequant(w) − w with `bits` traced (one compile per shape, not per bit width): the
    compressor's grids (quantizer.qparams; codes clipped to the grid, decoded as storage.decode)."""
    out, d = w.shape
    wg = w.reshape(out, -1, group_size or d)
    scale, zero = qparams(wg, bits, symmetric)
    if symmetric:
        c0 = 2.0 ** (bits - 1) - 1
        q = jnp.clip(jnp.round(wg / scale[..., None]), -c0, c0) * scale[..., None]
    else:
        q = jnp.clip(jnp.round((wg - zero[..., None]) / scale[..., None]), 0, 2.0**bits - 1) * scale[..., None]
        q = q + zero[..., None]
    return q.reshape(out, d) - w


@jax.jit
def _half_fisher_energy(f, dw):
    return 0.5 * jnp.sum(f * jnp.square(dw))


@jax.jit
def _gptq_expected(f, sigma, u):
    a = jnp.square(sigma / jnp.diag(u)[None, :])
    return 0.5 * jnp.sum(a * (f @ jnp.square(u).T))


@dataclass
class Table:
    """Per tensor t (lr.paths order) and option j (levels order): kl the predicted share
    ½Σ F δw², cost the solver's integer cost (weights × bits, or kept weights × KEEP_UNITS),
    bytes as the compressed layer stores it (codes + fp32 scales/zeros; a pruned layer is
    stored dense with a bit mask, sim.compress.storage.MaskedLinear, whatever its sparsity)."""

    paths: list[str]
    method: str
    axis: str  # "bits" or "sparsity"
    levels: list
    kl: list[np.ndarray]
    cost: list[np.ndarray]
    bytes: list[np.ndarray]
    n_weights: list[int]


def quant_bytes(shape: tuple[int, int], bits: int, group_size: int | None, symmetric: bool) -> int:
    """Bytes of a PackedLinear: the packed codes and fp32 scales (and zeros when asymmetric)."""
    out, d = shape
    groups = d // (group_size or d)
    return packed_size(out * d, bits) + out * groups * 4 * (1 if symmetric else 2)


def masked_bytes(shape: tuple[int, int]) -> int:
    """Bytes of a MaskedLinear: the dense fp32 weights and a bit per weight."""
    out, d = shape
    return out * d * 4 + -(-out * d // 8)


def tensor_error(method: str, level, w, *, norm=None, u=None, group_size=None, symmetric=False):
    """δw of one tensor at one level, the real error (GPTQ: None, it is priced in expectation)."""
    if method == "rtn":
        return _rtn_error(w, jnp.float32(level), group_size, symmetric)
    if method == "magnitude":
        keep = topk_mask(jnp.abs(w), float(level))
    elif method == "wanda":
        keep = row_mask(jnp.abs(w) * norm[None, :], float(level))
    elif method == "sparsegpt":
        keep = row_mask(jnp.square(w / jnp.diag(u)[None, :]), float(level))
    else:
        return None
    dw = jnp.where(keep, 0.0, -w)
    return obs_shape(dw, u) if method == "sparsegpt" else dw


def factors(lr, stats, damp: float = 0.01) -> dict[str, jax.Array]:
    """U (H⁻¹ = UᵀU, columns in their own order) per linear; linears reading one input share it."""
    out, seen = {}, {}
    for path in lr.paths:
        key = id(stats[path])
        if key not in seen:
            seen[key] = obs_factor(stats[path].hessian(), damp, False)[1]
        out[path] = seen[key]
    return out


def sensitivity_table(
    lr,
    fisher: list,
    method: str,
    levels: list,
    *,
    stats=None,
    group_size=None,
    symmetric: bool = False,
    damp: float = 0.01,
) -> Table:
    """k_tj, costs and bytes of every linear at every level (module docstring).  stats:
    compress.calib.layer_hessians of the base (Wanda, GPTQ, SparseGPT)."""
    quant = method in QUANT_METHODS
    us = factors(lr, stats, damp) if method in ("gptq", "sparsegpt") else {}
    kl, cost, nbytes, counts = [], [], [], []
    for path, w, f in zip(lr.paths, lr.weights, fisher):
        w = jnp.asarray(w, jnp.float32)
        shape = tuple(int(s) for s in w.shape)
        n = shape[0] * shape[1]
        norm = stats[path].col_norm() if method == "wanda" else None
        row_k, row_c, row_b = [], [], []
        for lv in levels:
            if method == "gptq":
                sigma = quant_noise_std(w, jnp.float32(lv), group_size, symmetric)
                k = _gptq_expected(f, sigma, us[path])
            else:
                k = _half_fisher_energy(
                    f,
                    tensor_error(method, lv, w, norm=norm, u=us.get(path), group_size=group_size, symmetric=symmetric),
                )
            row_k.append(float(k))
            if quant:
                row_c.append(n * int(lv))
                row_b.append(quant_bytes(shape, int(lv), group_size, symmetric))
            else:
                row_c.append(round(n * (1.0 - float(lv)) * KEEP_UNITS))
                row_b.append(masked_bytes(shape))
        kl.append(np.asarray(row_k))
        cost.append(np.asarray(row_c, np.int64))
        nbytes.append(np.asarray(row_b, np.int64))
        counts.append(n)
    return Table(
        paths=list(lr.paths),
        method=method,
        axis="bits" if quant else "sparsity",
        levels=list(levels),
        kl=kl,
        cost=cost,
        bytes=nbytes,
        n_weights=counts,
    )
