"""How compressed linear layers are stored and executed.

Every class here is an nnx.Module that replaces a `Linear` in place (same `__call__(x)`, a
`weight()` returning the dense effective weight [out in], a `b` bias or None, `nbytes()`),
so the model class never changes and `export_state` writes exactly what the model runs.
`StoredLinear` states that contract; tests/test_storage_protocol.py checks every class that
stands in for a Linear in sim/compress against it.

    PackedLinear     b-bit codes packed into uint8 (two 4-bit codes a byte; 1/2/8 bits
                     likewise; other widths as b bit-planes), fp32 scale and zero point
                     per group of `group_size` inputs (per output channel when the
                     group is the whole row).  Decoded inside `__call__`, i.e. inside
                     whatever jit runs the model:  w = code·scale + zero  (asymmetric)
                     or  w = (code − (2^(b−1)−1))·scale  (symmetric, no zero stored).
                     Optional `in_scale` s (AWQ):  W_eff = decode / s  per input column.
    NMSparseLinear   N:M semi-structured: the N kept values of each group of M inputs
                     and their uint8 positions; scattered back to dense in `__call__`.
    MaskedLinear     unstructured sparsity: the dense matrix with its zeros plus a bit-packed
                     keep mask, W_eff = W ⊙ mask (honestly *not* smaller: ratio ≈ 1.03).
    ActQuantLinear   W8A8: an 8-bit symmetric per-channel PackedLinear whose input is quantized
                     per token, dynamically, to int8; int8 × int8 → int32, then rescaled.
    ZeroLinear       a removed projection (layer dropping): no storage, weight() = 0.
    ZeroAttention, ZeroMLP   a removed branch: zeros of the right shape (KV cache passed on).

Integer storage uses the `Codes` variable type (not nnx.Param), so gradients over
`nnx.Param` never meet a uint8 array.
"""

from __future__ import annotations

from functools import partial
from typing import Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hemorrhage.sim.models.layers import Linear


@runtime_checkable
class StoredLinear(Protocol):
    """A layer swapped in for a `Linear` by a compression method: the model calls it as the
    Linear it replaces, the export writes its dense effective weight and bias, the memory
    report reads its storage."""

    b: nnx.Param | None  # the bias, or None (the export writes it beside weight())

    def __call__(self, x: jax.Array) -> jax.Array:
        """y = x·Wᵀ + b, in x's dtype, [..., d_in] -> [..., d_out]."""

    def weight(self) -> jax.Array:
        """The dense effective weight W [d_out d_in] (fp32): what the layer computes with."""

    def storage(self) -> dict:
        """Bytes held: {"values": ..., "meta": ...} (codes, kept values; scales, masks)."""

    def nbytes(self) -> int:
        """All bytes the layer holds (values + meta)."""


class Codes(nnx.Variable):
    """Integer storage of a compressed layer (packed codes, N:M indices, bit masks)."""


# ------------------------------------------------------------------ bit packing
def packed_size(n: int, bits: int) -> int:
    """Bytes that hold n codes of `bits` bits (every layout here is exactly n·bits/8, rounded up)."""
    if bits in (1, 2, 4, 8):
        per = 8 // bits
        return -(-n // per)
    return bits * -(-n // 8)


@partial(jax.jit, static_argnums=(1,))
def pack(codes, bits: int):
    """Flat integer codes in [0, 2^bits) -> uint8 [packed_size(n, bits)].

    1, 2, 4, 8 bits: 8/bits codes per byte, the first code in the low bits.
    Other widths (3, 5–7, 9–16): `bits` bit-planes of n/8 bytes each (plane k holds
    bit k of every code), so storage is exactly bits/8 bytes per weight."""
    codes = jnp.asarray(codes).reshape(-1).astype(jnp.uint32)
    n = codes.size
    if bits in (1, 2, 4, 8):
        per = 8 // bits
        pad = (-n) % per
        c = jnp.pad(codes, (0, pad)).reshape(-1, per)
        shifts = (bits * jnp.arange(per, dtype=jnp.uint32))[None, :]
        return jnp.sum(c << shifts, axis=1).astype(jnp.uint8)
    pad = (-n) % 8
    c = jnp.pad(codes, (0, pad))
    planes = [jnp.packbits(((c >> k) & 1).astype(jnp.uint8)) for k in range(bits)]
    return jnp.concatenate(planes)


def unpack(packed, bits: int, n: int):
    """Inverse of `pack`: int32 [n].  Pure jnp, runs inside jit."""
    packed = jnp.asarray(packed)
    if bits in (1, 2, 4, 8):
        per = 8 // bits
        shifts = (bits * jnp.arange(per, dtype=jnp.uint8))[None, :]
        c = (packed[:, None] >> shifts) & jnp.uint8((1 << bits) - 1)
        return c.reshape(-1)[:n].astype(jnp.int32)
    planes = packed.reshape(bits, -1)
    out = jnp.zeros((planes.shape[1] * 8,), jnp.int32)
    for k in range(bits):
        out = out | (jnp.unpackbits(planes[k]).astype(jnp.int32) << k)
    return out[:n]


def decode(codes, scale, zero, bits: int, group_size: int):
    """codes [out in] (ints), scale/zero [out in/g] -> fp32 [out in].

    zero None means symmetric: w = (code − (2^(b−1)−1))·scale."""
    out, d = codes.shape
    c = codes.reshape(out, d // group_size, group_size).astype(jnp.float32)
    if zero is None:
        w = (c - float(2 ** (bits - 1) - 1)) * scale[..., None]
    else:
        w = c * scale[..., None] + zero[..., None]
    return w.reshape(out, d)


def bias_param(layer):
    """The layer's bias as a new Param for its replacement (None without one)."""
    b = getattr(layer, "b", None)
    return None if b is None else nnx.Param(jnp.asarray(b[...]))  # in the layer's dtype


def _apply(x, w, b):
    """y = x·Wᵀ + b in x's dtype, the model's: the method's fp32 result is rounded to it here
    (a no-op in fp32), so a bf16 model stays bf16 after its first compressed layer."""
    y = x @ w.astype(x.dtype).T
    return y if b is None else y + b[...].astype(y.dtype)


def _as_groups(x, d_out: int, n_groups: int):
    x = jnp.asarray(x, jnp.float32)
    return x if x.shape == (d_out, n_groups) else x.reshape(d_out, n_groups)


class PackedLinear(nnx.Module):
    """y = x · dequant(codes)ᵀ + b, the codes bit-packed in uint8 (see the module doc)."""

    def __init__(self, codes, scale, zero, *, bits: int, group_size: int | None, bias=None, in_scale=None):
        codes = jnp.asarray(codes)
        self.d_out, self.d_in = (int(s) for s in codes.shape)
        self.bits = int(bits)
        self.group_size = int(group_size or self.d_in)
        self.symmetric = zero is None
        self.packed = Codes(pack(codes, self.bits))
        n_groups = self.d_in // self.group_size
        self.scale = nnx.Param(_as_groups(scale, self.d_out, n_groups))
        self.zero = None if zero is None else nnx.Param(_as_groups(zero, self.d_out, n_groups))
        self.in_scale = None if in_scale is None else nnx.Param(jnp.asarray(in_scale, jnp.float32))
        self.b = bias

    def codes(self):
        return unpack(self.packed[...], self.bits, self.d_out * self.d_in).reshape(self.d_out, self.d_in)

    def dequantized(self):
        """The decoded grid values (before AWQ's input scale)."""
        zero = None if self.zero is None else self.zero[...]
        return decode(self.codes(), self.scale[...], zero, self.bits, self.group_size)

    def weight(self):
        w = self.dequantized()
        return w if self.in_scale is None else w / self.in_scale[...][None, :]

    def __call__(self, x):
        return _apply(x, self.weight(), self.b)

    def storage(self) -> dict:
        meta = self.scale[...].size * 4 + (0 if self.zero is None else self.zero[...].size * 4)
        meta += 0 if self.in_scale is None else self.in_scale[...].size * 4
        return {"values": int(self.packed[...].size), "meta": int(meta)}

    def nbytes(self) -> int:
        s = self.storage()
        return s["values"] + s["meta"]


@partial(jax.jit, static_argnums=(2, 3))
def _nm_compress(w, keep, n: int, m: int):
    out, d = w.shape
    g = w.reshape(out, d // m, m)
    k = keep.reshape(g.shape)
    # kept positions first, in order (rank of position among kept, then among pruned), so a
    # group with fewer than N kept stores zeros; exactly the first N positions are stored
    pos = jnp.where(k, 0, m) + jnp.arange(m)
    slot = jnp.sum(pos[..., None, :] < pos[..., :, None], axis=-1)  # rank of each position
    onehot = slot[..., None, :] == jnp.arange(n)[:, None]  # [o G N M]
    idx = jnp.argmax(onehot, axis=-1).astype(jnp.uint8)
    vals = jnp.sum(jnp.where(onehot, jnp.where(k, g, 0.0)[..., None, :], 0.0), axis=-1)
    return vals, idx


class NMSparseLinear(nnx.Module):
    """N:M sparse: values [out, in/M, N] fp32 and their positions idx [out, in/M, N] uint8."""

    def __init__(self, w, keep, n: int, m: int, bias=None, dtype=None):
        w, keep = jnp.asarray(w, jnp.float32), jnp.asarray(keep, bool)
        self.d_out, self.d_in = (int(s) for s in w.shape)
        self.n, self.m = int(n), int(m)
        vals, idx = _nm_compress(w, keep, self.n, self.m)
        self.values = nnx.Param(vals if dtype is None else vals.astype(dtype))  # stored in the model's dtype
        self.idx = Codes(idx)
        self.b = bias

    def weight(self):
        onehot = jax.nn.one_hot(self.idx[...].astype(jnp.int32), self.m, dtype=self.values[...].dtype)  # [o G N M]
        w = jnp.einsum("ogn,ognm->ogm", self.values[...], onehot)
        return w.reshape(self.d_out, self.d_in)

    def __call__(self, x):
        return _apply(x, self.weight(), self.b)

    def storage(self) -> dict:
        return {"values": int(self.values[...].nbytes), "meta": int(self.idx[...].size)}

    def nbytes(self) -> int:
        s = self.storage()
        return s["values"] + s["meta"]


@jax.jit
def _masked(w, keep):
    return jnp.where(keep, w, 0.0), jnp.packbits(keep.reshape(-1))


class MaskedLinear(nnx.Module):
    """Unstructured sparsity, stored dense: W (zeros where pruned) and a bit-packed mask.

    No memory is saved (fp32 + 1 bit per weight); the point is exact execution of
    the pruned model, W_eff = W ⊙ mask inside the jitted matmul."""

    def __init__(self, w, keep, bias=None, dtype=None):
        w, keep = jnp.asarray(w, jnp.float32), jnp.asarray(keep, bool)
        self.d_out, self.d_in = (int(s) for s in w.shape)
        w, packed = _masked(w, keep)
        self.w = nnx.Param(w if dtype is None else w.astype(dtype))  # stored in the model's dtype
        self.mask = Codes(packed)
        self.b = bias

    def keep(self):
        return jnp.unpackbits(self.mask[...])[: self.d_out * self.d_in].reshape(self.d_out, self.d_in).astype(bool)

    def weight(self):
        return jnp.where(self.keep(), self.w[...], 0.0)

    def __call__(self, x):
        return _apply(x, self.weight(), self.b)

    def storage(self) -> dict:
        return {"values": int(self.w[...].nbytes), "meta": int(self.mask[...].size)}

    def nbytes(self) -> int:
        s = self.storage()
        return s["values"] + s["meta"]


class ActQuantLinear(nnx.Module):
    """W8A8: int8 weights (per output channel, symmetric) × int8 activations (per token,
    symmetric, dynamic: scale = max|x|/127 of each token), accumulated in int32."""

    def __init__(self, inner: PackedLinear):
        if inner.bits != 8 or not inner.symmetric or inner.group_size != inner.d_in or inner.in_scale is not None:
            raise ValueError("ActQuantLinear needs an 8-bit symmetric per-channel PackedLinear")
        self.inner = inner

    @property
    def b(self):
        return self.inner.b

    def weight(self):
        return self.inner.weight()

    def __call__(self, x):
        dtype, x = x.dtype, x.astype(jnp.float32)  # activation scales in fp32
        amax = jnp.max(jnp.abs(x), axis=-1, keepdims=True)
        sx = jnp.where(amax > 0, amax / 127.0, 1.0)
        xq = jnp.clip(jnp.round(x / sx), -127, 127).astype(jnp.int8)
        wq = (self.inner.codes() - 127).astype(jnp.int8)  # [out in]
        acc = jax.lax.dot_general(xq, wq, (((x.ndim - 1,), (1,)), ((), ())), preferred_element_type=jnp.int32)
        y = acc.astype(jnp.float32) * sx * self.inner.scale[...][:, 0]
        return (y if self.b is None else y + self.b[...]).astype(dtype)

    def storage(self) -> dict:
        return self.inner.storage()

    def nbytes(self) -> int:
        return self.inner.nbytes()


# ------------------------------------------------------------------ memory
def layer_storage(layer) -> dict:
    if hasattr(layer, "storage"):
        return layer.storage()
    d_out, d_in = linear_shape(layer)
    return {"values": d_out * d_in * 4, "meta": 0}


def all_linears(model):
    """(path, layer) for every projection of every block, dropped ones included (experts too)."""
    from hemorrhage.sim.compress.registry import block_linears

    for i, block in enumerate(model.layers):
        for path, _, _, layer in block_linears(block, f"layers.{i}"):
            yield path, layer


def memory_report(model) -> dict:
    """Bytes of the blocks' linear weights as stored vs the same weights in fp32.

    values: codes / kept values / dense matrices; meta: scales, zero points, indices,
    masks.  Biases, norms and embeddings are not counted (they are never compressed)."""
    fp32 = values = meta = 0
    kinds: dict[str, int] = {}
    for _, layer in all_linears(model):
        d_out, d_in = getattr(layer, "full_shape", None) or linear_shape(layer)  # a sliced layer: its shape before
        fp32 += d_out * d_in * 4
        s = layer_storage(layer)
        values += s["values"]
        meta += s["meta"]
        kinds[type(layer).__name__] = kinds.get(type(layer).__name__, 0) + 1
    total = values + meta
    return {
        "fp32_bytes": int(fp32),
        "bytes": int(total),
        "value_bytes": int(values),
        "meta_bytes": int(meta),
        "ratio": total / fp32 if fp32 else float("nan"),
        "value_ratio": values / fp32 if fp32 else float("nan"),
        "layers": kinds,
    }


def linear_shape(layer) -> tuple[int, int]:
    """(d_out, d_in) of a linear layer, plain or compressed."""
    if hasattr(layer, "d_out"):
        return layer.d_out, layer.d_in
    if isinstance(layer, ActQuantLinear):
        return layer.inner.d_out, layer.inner.d_in
    if isinstance(layer, Linear):
        return tuple(int(s) for s in layer.w.shape)
    return tuple(int(s) for s in np.shape(layer.weight()))
