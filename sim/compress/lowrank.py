"""Low-rank compression (`lowrank`): every linear of the blocks replaced by two thin matrices.

    plain   W ≈ U_r Σ_r V_rᵀ, the truncated SVD of W [out in] (Eckart–Young: the best rank-r
            approximation in ‖W − Ŵ‖_F, blind to which inputs are large)
    asvd    the truncated SVD of W·S, S = diag(‖X_j‖₂) the input feature norms over the
            calibration tokens, then the scaling undone:  Ŵ = U_r Σ_r V_rᵀ S⁻¹
            (ASVD, Yuan et al. 2023, with its activation norm; SVD-LLM, Wang et al. 2024, whitens
            with the Cholesky factor of XᵀX instead).  It minimises ‖(W − Ŵ)S‖_F, i.e. the
            output error ‖(W − Ŵ)X‖_F where the inputs are uncorrelated.

Both are computed as one projection:  U_r Σ_r V_rᵀ S⁻¹ = U_r U_rᵀ (W S) S⁻¹ = U_r U_rᵀ W, with
U_r the top-r left singular vectors of W·S (S = I for plain), so nothing is divided by a
small ‖X_j‖.  Stored as A = Wᵀ U_r [in r] and B = U_rᵀ [r out] (thin.LowRankLinear) and run
as x A, then · B: r(in + out) weights instead of in·out.

Rank per layer, m×n = out×in (exactly one of):
    rank_ratio   r = ⌊rank_ratio · min(m, n)⌋, rank_ratio in (0, 1] (1: full rank, equal to W,
                 and larger than it: (m + n)·min(m, n) ≥ m·n)
    param_ratio  r = ⌊param_ratio · m·n/(m + n)⌋: the factors hold ≤ param_ratio of W's weights
A rank of 0 anywhere is a UserError (before any work).  `param_share_removed` in the record =
1 − Σ r(m + n) / Σ m·n over the blocks' linears, the axis the pruning methods report on.
asvd calibrates block by block on the output of the already-compressed blocks (calib.Sequential).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from hemorrhage.errors import UserError
from hemorrhage.sim.compress.calib import Sequential, input_groups
from hemorrhage.sim.compress.registry import linears, register
from hemorrhage.sim.compress.storage import bias_param, linear_shape
from hemorrhage.sim.compress.thin import LowRankLinear

VARIANTS = ("plain", "asvd")


def _ratio(name: str, v):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise UserError(f"{name} must be a number in (0, 1], got {v!r}")
    if not 0.0 < float(v) <= 1.0:
        raise UserError(f"{name} must be in (0, 1], got {v}")
    return float(v)


@partial(jax.jit, static_argnums=(2,))
def _factors(w, scale, r: int):
    """A [in r], B [r out] with (A B)ᵀ = U_r U_rᵀ W, U_r the top-r left singular vectors of W·diag(scale)."""
    w = w.astype(jnp.float32)
    u, _, _ = jnp.linalg.svd(w * scale[None, :], full_matrices=False)
    ur = u[:, :r]
    return w.T @ ur, ur.T


@jax.jit
def _floor_scale(norm):
    # a feature that is zero on every calibration token: any positive scale gives the same U_r
    # direction for it up to rounding; floor it so W·S keeps a finite, non-degenerate column
    top = jnp.max(norm)
    return jnp.maximum(norm, jnp.where(top > 0, top * 1e-6, 1.0))


@register
@dataclass(frozen=True)
class LowRank:
    name = "lowrank"
    predict_refusal = (
        "the truncated-SVD error ΔW = Ŵ − W is exact, but the predictor's families do not take "
        "a per-layer projection tangent yet"
    )
    variant: str = "asvd"
    rank_ratio: float | None = None
    param_ratio: float | None = None

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise UserError(f"lowrank variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        rr, pr = _ratio("rank_ratio", self.rank_ratio), _ratio("param_ratio", self.param_ratio)
        if rr is not None and pr is not None:
            raise UserError("lowrank takes rank_ratio or param_ratio, not both")
        if rr is None and pr is None:
            pr = 0.8
        object.__setattr__(self, "rank_ratio", rr)
        object.__setattr__(self, "param_ratio", pr)

    @property
    def needs_calibration(self) -> bool:
        return self.variant == "asvd"

    def rank(self, m: int, n: int) -> int:
        if self.rank_ratio is not None:
            return int(np.floor(self.rank_ratio * min(m, n) + 1e-9))
        return int(np.floor(self.param_ratio * m * n / (m + n) + 1e-9))

    def check(self, model):
        for path, _, _, layer in linears(model):
            m, n = linear_shape(layer)
            if self.rank(m, n) < 1:
                what = (
                    f"rank_ratio {self.rank_ratio:g}"
                    if self.rank_ratio is not None
                    else f"param_ratio {self.param_ratio:g}"
                )
                raise UserError(f"lowrank: {what} gives rank 0 for {path} ({m}×{n}); raise it")

    def _replace(self, parent, attr, layer, scale, counts):
        w = layer.weight()
        m, n = (int(s) for s in w.shape)
        r = self.rank(m, n)
        a, b = _factors(w, scale, r)
        setattr(parent, attr, LowRankLinear(a, b, bias_param(layer), dtype=w.dtype))
        counts.append((m, n, r))

    def apply(self, model, calib_tokens=None) -> dict:
        counts: list[tuple[int, int, int]] = []
        if self.variant == "plain":
            for _, parent, attr, layer in list(linears(model)):
                self._replace(parent, attr, layer, jnp.ones((linear_shape(layer)[1],), jnp.float32), counts)
        else:
            runner = Sequential(model, calib_tokens)
            for _, block in runner.blocks():
                groups = input_groups(block)
                stats = runner.stats(block, groups)
                for g in groups:
                    scale = _floor_scale(stats[g.key].col_norm())
                    parent = g.parent(block)
                    for attr in g.attrs:
                        self._replace(parent, attr, getattr(parent, attr), scale, counts)
                runner.advance(block)
        dense = sum(m * n for m, n, _ in counts)
        kept = sum(r * (m + n) for m, n, r in counts)
        return {
            "param_share_removed": 1.0 - kept / dense if dense else 0.0,
            "ranks": [r for _, _, r in counts],
            "rank_share": float(np.mean([r / min(m, n) for m, n, r in counts])) if counts else None,
        }
