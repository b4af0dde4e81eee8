"""Pruning methods.

Magnitude: keep the largest |W_ij| per layer (unstructured) or per group of M
consecutive inputs (N:M), zero the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp

from hemorrhage.errors import UserError
from hemorrhage.sim.compress.registry import linears, register


def parse_pattern(pattern: str | None) -> tuple[int, int] | None:
    if pattern is None:
        return None
    try:
        n, m = (int(x) for x in pattern.split(":"))
    except ValueError:
        raise UserError(f"pattern must look like N:M (e.g. 2:4), got {pattern!r}") from None
    if not 0 < n < m:
        raise UserError(f"pattern N:M needs 0 < N < M, got {pattern!r}")
    return n, m


def topk_mask(score, sparsity: float):
    """Keep the (1 − sparsity) share of entries with the largest score, exactly."""
    flat = score.reshape(-1)
    n_prune = int(round(sparsity * flat.size))
    if n_prune == 0:
        return jnp.ones_like(score, bool)
    order = jnp.argsort(flat)  # ascending; ties broken by position, so counts are exact
    keep = jnp.ones(flat.size, bool).at[order[:n_prune]].set(False)
    return keep.reshape(score.shape)


def nm_mask(score, n: int, m: int):
    """Per row, in every group of m consecutive inputs keep the n largest scores."""
    out_dim, in_dim = score.shape
    if in_dim % m:
        raise UserError(f"N:M pattern {n}:{m} needs the input dimension ({in_dim}) divisible by {m}")
    groups = score.reshape(out_dim, in_dim // m, m)
    rank = jnp.argsort(jnp.argsort(-groups, axis=-1), axis=-1)
    return (rank < n).reshape(out_dim, in_dim)


@register
@dataclass(frozen=True)
class Magnitude:
    name = "magnitude"
    sparsity: float = 0.5
    pattern: str | None = None

    def __post_init__(self):
        if not 0.0 <= float(self.sparsity) < 1.0:
            raise UserError(f"sparsity must be in [0, 1), got {self.sparsity}")
        parse_pattern(self.pattern)

    def apply(self, model, calib_tokens=None) -> dict:
        nm = parse_pattern(self.pattern)
        kept = total = 0
        for _, _, _, layer in linears(model):
            w = layer.w[...]
            score = jnp.abs(w)
            mask = nm_mask(score, *nm) if nm else topk_mask(score, self.sparsity)
            layer.w.set_value(jnp.where(mask, w, 0.0))
            kept += int(mask.sum())
            total += mask.size
        return {"achieved_sparsity": 1.0 - kept / total}
