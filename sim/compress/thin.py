"""Layers that are smaller than the linear they replace: structured removal and low-rank.

    SlicedLinear    the rows and/or columns a structured method kept (heads, channels):
                    W' = W[rows][:, cols], a smaller dense matrix, run as y = x W'ᵀ + b'.
                    `full_shape` is the shape it had before, so memory_report compares its
                    bytes with the original fp32 weight (the shapes fall, the ratio with them).
    LowRankLinear   W ≈ (A B)ᵀ with A [in r], B [r out] from a truncated SVD; run as two
                    matmuls y = (x A) B + b, so r(in + out) weights are stored and used.

Both follow sim/compress/storage.py's interface: `weight()` the dense effective weight
[out in] (what the HF export writes), `b`, `storage()`, `nbytes()`, `d_out`, `d_in`.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx


def _param(x, dtype):
    x = jnp.asarray(x)
    return nnx.Param(x if dtype is None else x.astype(dtype))


class SlicedLinear(nnx.Module):
    """A dense linear with fewer rows (outputs) or columns (inputs) than it had."""

    def __init__(self, w, bias=None, *, full_shape: tuple[int, int], dtype=None):
        self.w = _param(w, dtype)
        self.d_out, self.d_in = (int(s) for s in self.w.shape)
        self.full_shape = (int(full_shape[0]), int(full_shape[1]))
        self.b = bias

    def weight(self):
        return self.w[...]

    def __call__(self, x):
        y = x @ self.w[...].astype(x.dtype).T
        return y if self.b is None else y + self.b[...].astype(y.dtype)

    def storage(self) -> dict:
        return {"values": int(self.w[...].nbytes), "meta": 0}

    def nbytes(self) -> int:
        return self.storage()["values"]


class LowRankLinear(nnx.Module):
    """y = (x A) B + b:  A [in r], B [r out]; weight() = (A B)ᵀ, the dense view [out in]."""

    def __init__(self, a, b_factor, bias=None, *, dtype=None):
        self.a = _param(a, dtype)
        self.bf = _param(b_factor, dtype)
        self.d_in, self.rank = (int(s) for s in self.a.shape)
        self.d_out = int(self.bf.shape[1])
        self.b = bias

    def weight(self):
        return (self.a[...].astype(jnp.float32) @ self.bf[...].astype(jnp.float32)).T

    def __call__(self, x):
        y = (x @ self.a[...].astype(x.dtype)) @ self.bf[...].astype(x.dtype)
        return y if self.b is None else y + self.b[...].astype(y.dtype)

    def storage(self) -> dict:
        return {"values": int(self.a[...].nbytes + self.bf[...].nbytes), "meta": 0}

    def nbytes(self) -> int:
        return self.storage()["values"]
