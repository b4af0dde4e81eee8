"""Pruning methods.

    magnitude   keep the largest |W_ij| of each layer (unstructured, exactly
                round(S·size) zeros per layer) or, N:M, the N largest of every M
                consecutive inputs of a row.
    wanda       score |W_ij|·‖X_j‖₂ (X_j: input feature j over the calibration tokens);
                per output row keep the largest scores (Wanda's comparison group), the
                row counts chosen by cumulative rounding so each layer has exactly
                round(S·size) zeros; N:M as magnitude with this score.
    sparsegpt   OBS pruning with H = 2XXᵀ/n + λI (see obs.py): in each block of ≤128
                columns prune the weights with the smallest w²/[H⁻¹]_jj (chol. form),
                updating the remaining weights to compensate; N:M per M columns.
    owl         outlier-weighted layerwise sparsity: D_l = share of block l's Wanda
                scores > M·mean (M=5); densities 1−S + 2λ·(D_l−min)/(max−min) − mean,
                so the mean sparsity is S; then `base` (wanda|magnitude) per block.

Pruned layers become `NMSparseLinear` (N:M, values + uint8 indices) or `MaskedLinear`
(unstructured, dense with a bit mask); see storage.py.  Calibrated methods run
block by block on the output of the already-pruned blocks (calib.Sequential).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from hemorrhage.errors import UserError
from hemorrhage.sim.compress import obs
from hemorrhage.sim.compress.calib import Sequential, input_groups
from hemorrhage.sim.compress.registry import linears, register
from hemorrhage.sim.compress.storage import MaskedLinear, NMSparseLinear, bias_param


def parse_pattern(pattern: str | None) -> tuple[int, int] | None:
    if pattern is None:
        return None
    try:
        n, m = (int(x) for x in str(pattern).split(":"))
    except ValueError:
        raise UserError(f"pattern must look like N:M (e.g. 2:4), got {pattern!r}") from None
    if not 0 < n < m:
        raise UserError(f"pattern N:M needs 0 < N < M, got {pattern!r}")
    if m > 255:
        raise UserError(f"pattern N:M needs M <= 255, got {pattern!r}")
    return n, m


@jax.jit
def _topk_mask(score, n_prune):
    return ~obs.smallest_k(score.reshape(-1), n_prune).reshape(score.shape)


def topk_mask(score, sparsity: float):
    """Keep the (1 − sparsity) share of entries with the largest score, exactly
    (round(sparsity·size) pruned; ties broken by position)."""
    n_prune = int(round(sparsity * score.size))
    if n_prune == 0:
        return jnp.ones(score.shape, bool)
    return _topk_mask(jnp.asarray(score), n_prune)


@partial(jax.jit, static_argnums=(1, 2))
def _nm_mask(score, n: int, m: int):
    out_dim, in_dim = score.shape
    groups = score.reshape(out_dim * (in_dim // m), m)
    return (obs.rank_in_rows(-groups) < n).reshape(out_dim, in_dim)


def nm_mask(score, n: int, m: int):
    """Per row, in every group of m consecutive inputs keep the n largest scores."""
    if score.shape[1] % m:
        raise UserError(f"N:M pattern {n}:{m} needs the input dimension ({score.shape[1]}) divisible by {m}")
    return _nm_mask(jnp.asarray(score), n, m)


@jax.jit
def _row_mask(score, k_rows):
    """Per row r prune the k_rows[r] smallest scores (ties by position)."""
    return ~jax.vmap(obs.smallest_k)(score, k_rows)


def row_mask(score, sparsity: float):
    """Wanda's per-output comparison group with an exact layer total."""
    out, d = score.shape
    k = obs.cumulative_counts(d, out, sparsity)
    return _row_mask(jnp.asarray(score), jnp.asarray(k))


@jax.jit
def _abs(w):
    return jnp.abs(w.astype(jnp.float32))  # scores in fp32 (the mask search bisects fp32 bit patterns)


@jax.jit
def _wanda_score(w, norm):
    return jnp.abs(w.astype(jnp.float32)) * norm[None, :]  # in fp32 whatever the model's dtype


@jax.jit
def _outlier_ratio(scores, m):
    allv = jnp.concatenate([s.reshape(-1) for s in scores])
    return jnp.mean(allv > m * jnp.mean(allv))


def _resolve_sparsity(obj, allow_pattern: bool = True):
    """Shared validation: sparsity in [0, 1); a pattern fixes it at 1 − N/M."""
    nm = parse_pattern(obj.pattern) if allow_pattern else None
    s = obj.sparsity
    if s is not None:
        if isinstance(s, bool) or not isinstance(s, (int, float, np.floating, np.integer)):
            raise UserError(f"sparsity must be a number in [0, 1), got {s!r}")
        if not 0.0 <= float(s) < 1.0:
            raise UserError(f"sparsity must be in [0, 1), got {s}")
    if nm:
        implied = 1.0 - nm[0] / nm[1]
        if s is not None and abs(float(s) - implied) > 1e-9:
            raise UserError(f"pattern {obj.pattern} fixes the sparsity at {implied:g}; got --sparsity {s}")
        s = implied
    object.__setattr__(obj, "sparsity", float(0.5 if s is None else s))
    return nm


def _check_nm(model, nm):
    if nm is None:
        return
    from hemorrhage.sim.compress.storage import linear_shape

    for path, _, _, layer in linears(model):
        d = linear_shape(layer)[1]
        if d % nm[1]:
            raise UserError(f"N:M pattern {nm[0]}:{nm[1]} needs input dimensions divisible by {nm[1]}; {path} has {d}")


class _Counter:
    """Kept/total per block, for the record."""

    def __init__(self, n_layers: int):
        self.kept = np.zeros(n_layers, np.int64)
        self.total = np.zeros(n_layers, np.int64)

    def add(self, block: int, keep):
        self.kept[block] += int(np.count_nonzero(np.asarray(keep)))
        self.total[block] += int(keep.size)

    def record(self) -> dict:
        t = max(int(self.total.sum()), 1)
        per = [1.0 - k / n if n else 0.0 for k, n in zip(self.kept, self.total)]
        return {"achieved_sparsity": 1.0 - float(self.kept.sum()) / t, "layer_sparsity": per}


def _replace(parent, attr, layer, w, keep, nm):
    """Put the pruned layer in place: computed in fp32, stored in the layer's dtype (the model's)."""
    bias, dtype = bias_param(layer), layer.weight().dtype
    new = NMSparseLinear(w, keep, nm[0], nm[1], bias, dtype=dtype) if nm else MaskedLinear(w, keep, bias, dtype=dtype)
    setattr(parent, attr, new)


def _block_of(path: str) -> int:
    return int(path.split(".")[1])


@dataclass(frozen=True)
class MaskSettings:
    """What magnitude, Wanda and SparseGPT are told: a share of weights to prune (`sparsity`)
    or an N:M `pattern`, checked once here."""

    sparsity: float | None = None
    pattern: str | None = None

    def __post_init__(self):
        _resolve_sparsity(self)

    def check(self, model):
        _check_nm(model, parse_pattern(self.pattern))


# ------------------------------------------------------------------ magnitude
@register
@dataclass(frozen=True)
class Magnitude(MaskSettings):
    name = "magnitude"
    needs_calibration = False

    def apply(self, model, calib_tokens=None, layer_sparsity=None, tensor_sparsity=None) -> dict:
        """layer_sparsity [blocks] (OWL) or tensor_sparsity {path: s} (sim.plan) override self.sparsity."""
        nm = parse_pattern(self.pattern)
        count = _Counter(len(model.layers))
        for path, parent, attr, layer in list(linears(model)):
            i = _block_of(path)
            s = self.sparsity if layer_sparsity is None else layer_sparsity[i]
            s = float((tensor_sparsity or {}).get(path, s))
            w = layer.weight()
            score = _abs(w)
            keep = nm_mask(score, *nm) if nm else topk_mask(score, s)
            _replace(parent, attr, layer, w, keep, nm)
            count.add(i, keep)
        return count.record()


# ------------------------------------------------------------------ wanda
@register
@dataclass(frozen=True)
class Wanda(MaskSettings):
    name = "wanda"
    needs_calibration = True

    def apply(self, model, calib_tokens, layer_sparsity=None, tensor_sparsity=None) -> dict:
        """layer_sparsity [blocks] (OWL) or tensor_sparsity {path: s} (sim.plan) override self.sparsity."""
        nm = parse_pattern(self.pattern)
        count = _Counter(len(model.layers))
        runner = Sequential(model, calib_tokens)
        for i, block in runner.blocks():
            groups = input_groups(block)
            stats = runner.stats(block, groups)
            s_block = self.sparsity if layer_sparsity is None else layer_sparsity[i]
            for g in groups:
                norm = stats[g.key].col_norm()
                parent = g.parent(block)
                for attr in g.attrs:
                    layer = getattr(parent, attr)
                    w = layer.weight()
                    score = _wanda_score(w, norm)
                    s = float((tensor_sparsity or {}).get(f"layers.{i}.{g.part}.{attr}", s_block))
                    keep = nm_mask(score, *nm) if nm else row_mask(score, s)
                    _replace(parent, attr, layer, w, keep, nm)
                    count.add(i, keep)
            runner.advance(block)
        return count.record()


# ------------------------------------------------------------------ sparsegpt
def _check_damp(damp):
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not 0 <= float(damp) < 10:
        raise UserError(f"damp must be a number in [0, 10), got {damp!r}")


@register
@dataclass(frozen=True)
class SparseGPT(MaskSettings):
    name = "sparsegpt"
    needs_calibration = True
    damp: float = 0.01

    def __post_init__(self):
        super().__post_init__()
        _check_damp(self.damp)

    def apply(self, model, calib_tokens, tensor_sparsity=None) -> dict:
        """tensor_sparsity {path: s} (sim.plan) overrides self.sparsity."""
        nm = parse_pattern(self.pattern)
        count = _Counter(len(model.layers))
        runner = Sequential(model, calib_tokens)
        damps = []
        for i, block in runner.blocks():
            groups = input_groups(block)
            stats = runner.stats(block, groups)
            for g in groups:
                u, dead, lam = obs.factor(stats[g.key].hessian(), self.damp)  # shared by the group
                parent = g.parent(block)
                for attr in g.attrs:
                    layer = getattr(parent, attr)
                    w = obs.zero_columns(layer.weight().astype(jnp.float32), dead)  # OBS updates in fp32
                    out, d = w.shape
                    bs = obs.block_size(d, nm[1] if nm else 1)
                    s = float((tensor_sparsity or {}).get(f"layers.{i}.{g.part}.{attr}", self.sparsity))
                    k = jnp.asarray(obs.cumulative_counts(out * bs, d // bs, s))
                    w_new, keep = obs.sparsegpt(w, u, k, bs=bs, n=nm[0] if nm else None, m=nm[1] if nm else None)
                    _replace(parent, attr, layer, w_new, keep, nm)
                    count.add(i, keep)
                    damps.append(lam)
            runner.advance(block)
        rec = count.record()
        rec["damp_used_max"] = float(max(damps)) if damps else None
        return rec


# ------------------------------------------------------------------ OWL
@register
@dataclass(frozen=True)
class OWL:
    name = "owl"
    needs_calibration = True
    sparsity: float = 0.5
    base: str = "wanda"
    lam: float = 0.08
    m: float = 5.0
    pattern: str | None = None

    def __post_init__(self):
        if self.pattern is not None:
            raise UserError("owl sets a sparsity per layer (unstructured); it takes no N:M pattern")
        _resolve_sparsity(self, allow_pattern=False)
        if self.base not in ("wanda", "magnitude"):
            raise UserError(f"owl base must be wanda or magnitude, got {self.base!r}")
        if isinstance(self.lam, bool) or not isinstance(self.lam, (int, float)) or not 0 <= float(self.lam) <= 0.5:
            raise UserError(f"owl lambda must be in [0, 0.5], got {self.lam!r}")
        # a bool is not a threshold; NaN fails both comparisons
        if isinstance(self.m, bool) or not isinstance(self.m, (int, float)) or not 0 < float(self.m) < np.inf:
            raise UserError(f"owl M must be positive and finite, got {self.m!r}")

    def outlier_ratios(self, model, calib_tokens) -> np.ndarray:
        """D_l per block on the dense model: share of Wanda scores above M × their mean."""
        runner = Sequential(model, calib_tokens)
        ratios = []
        for i, block in runner.blocks():
            groups = input_groups(block)
            stats = runner.stats(block, groups)
            scores = []
            for g in groups:
                norm = stats[g.key].col_norm()
                for attr in g.attrs:
                    scores.append(_wanda_score(getattr(g.parent(block), attr).weight(), norm))
            ratios.append(float(_outlier_ratio(tuple(scores), jnp.float32(self.m))))
            runner.advance(block)
        return np.asarray(ratios)

    def schedule(self, ratios: np.ndarray) -> tuple[np.ndarray, float]:
        """(per-block sparsity, λ used): densities spread by ≤ 2λ around 1 − S, mean exactly S.
        λ is capped so every density stays in [0, 1]."""
        s = self.sparsity
        lam = min(float(self.lam), s / 2, (1 - s) / 2)
        span = ratios.max() - ratios.min() if ratios.size else 0.0
        if span <= 0 or lam == 0:
            return np.full(ratios.shape, s), lam
        a = (ratios - ratios.min()) / span * 2 * lam
        density = a - a.mean() + (1 - s)
        return np.clip(1 - density, 0.0, 1.0 - 1e-9), lam

    def apply(self, model, calib_tokens) -> dict:
        ratios = self.outlier_ratios(model, calib_tokens)
        layer_s, lam = self.schedule(ratios)
        base = Wanda(sparsity=self.sparsity) if self.base == "wanda" else Magnitude(sparsity=self.sparsity)
        rec = base.apply(model, calib_tokens, layer_sparsity=[float(x) for x in layer_s])
        rec.update({"outlier_ratios": ratios.tolist(), "schedule_sparsity": layer_s.tolist(), "lam_used": lam})
        return rec
