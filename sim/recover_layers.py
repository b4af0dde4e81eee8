"""Trainable stand-ins for compressed layers: what recovery may move, and what it may not.

`RecoveringLinear` wraps a compressed layer (masked, N:M, packed b-bit, activation-
quantized, or dense) so that training moves only its latent weight (or LoRA factors) while
the compression's decisions stay fixed: masks re-applied, the quantization grid (scale,
zero point, bits, groups, AWQ input scale) kept, the latent trained through the straight-
through estimator.  `export` turns it back into the storage type.  The rules are in
sim/recover.py's docstring; the variable kinds below let the optimizer pick what to train.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hemorrhage.errors import UserError
from hemorrhage.sim.compress.quantizer import dequant, encode
from hemorrhage.sim.compress.storage import ActQuantLinear, MaskedLinear, NMSparseLinear, PackedLinear, linear_shape
from hemorrhage.sim.models.layers import Linear

BIN_MARGIN = 0.49  # a latent seeded from the base stays this many grid steps from its code


class Latent(nnx.Param):
    """The fp32 latent weight of a pruned / dense layer (weight units), fully fine-tuned."""


class GridLatent(nnx.Param):
    """The latent of a quantized layer in units of its grid step: W = U ⊙ step."""


class Lora(nnx.Param):
    """LoRA factors A [r in], B [out r] of a pruned / dense layer (weight units)."""


class GridLora(nnx.Param):
    """LoRA factors of a quantized layer (grid-step units)."""


WEIGHT_UNITS = nnx.Any(Latent, Lora)  # trained with `lr`
GRID_UNITS = nnx.Any(GridLatent, GridLora)  # trained with `ste_lr`
TRAINED = nnx.Any(Latent, Lora, GridLatent, GridLora)


class Fixed(nnx.Variable):
    """What recovery must not change: masks, grids, the frozen latent under LoRA."""


class RecoveringLinear(nnx.Module):
    """A compressed layer made trainable with its constraints held (module docstring).

    Forward = the stored layer's forward (same effective weight at step 0)."""

    def __init__(self, layer, *, lora_rank: int = 0, lora_alpha: float | None = None, ref=None, rngs: nnx.Rngs):
        """ref: the base model's dense weight of this layer [out in], or None.  A quantized
        latent starts at the base weight moved into its code's bin (QAT from the original
        weights; the forward is unchanged), so codes flip first where the base weight lies
        near a bin edge, not all at once when every latent leaves its bin centre."""
        self.kind = _kind(layer)
        packed = layer.inner if self.kind == "act8" else layer
        self.b = getattr(layer, "b", None)
        keep, self.nm = None, None
        if self.kind in ("packed", "act8"):
            w0 = packed.dequantized()
            self.bits, self.group_size = packed.bits, packed.group_size
            self.scale = Fixed(packed.scale[...])
            self.zero = None if packed.zero is None else Fixed(packed.zero[...])
            self.in_scale = None if packed.in_scale is None else Fixed(packed.in_scale[...])
        else:
            self.bits = self.group_size = self.scale = self.zero = self.in_scale = None
            if self.kind == "masked":
                w0, keep = layer.w[...], layer.keep()
            elif self.kind == "nm":
                w0 = layer.weight()
                onehot = jax.nn.one_hot(layer.idx[...].astype(jnp.int32), layer.m, dtype=jnp.int32)
                keep = onehot.sum(axis=2).reshape(w0.shape) > 0
                self.nm = (layer.n, layer.m)
            else:
                w0 = layer.w[...]
        self.d_out, self.d_in = (int(s) for s in w0.shape)
        self.keep = None if keep is None else Fixed(jnp.asarray(keep, bool))
        self.rank = int(lora_rank)
        self.grid = self.scale is not None
        u0 = jnp.asarray(w0, jnp.float32)
        if self.grid:  # train in grid steps: one step size moves every bit width alike
            u0 = u0 / self._step()
            if ref is not None:
                u_ref = jnp.asarray(ref, jnp.float32)
                if self.in_scale is not None:
                    u_ref = u_ref * self.in_scale[...][None, :]
                u0 = jnp.clip(u_ref / self._step(), u0 - BIN_MARGIN, u0 + BIN_MARGIN)
        if self.rank:
            kind = GridLora if self.grid else Lora
            self.w0 = Fixed(u0)
            self.lora_a = kind(
                jax.random.normal(rngs.params(), (self.rank, self.d_in), jnp.float32) / np.sqrt(self.d_in)
            )
            self.lora_b = kind(jnp.zeros((self.d_out, self.rank), jnp.float32))
            self.lora_scale = float(lora_alpha if lora_alpha is not None else self.rank) / self.rank
        else:
            self.w = (GridLatent if self.grid else Latent)(u0)

    # ---------------------------------------------------------------- the weight
    def _step(self):
        """The grid step of every weight, [out in] (the group's scale)."""
        return jnp.repeat(self.scale[...], self.group_size, axis=1)

    def latent(self):
        """The latent weight W (weight units) that the grid / mask project."""
        u = self.w0[...] + self.lora_scale * (self.lora_b[...] @ self.lora_a[...]) if self.rank else self.w[...]
        return u * self._step() if self.grid else u

    def _grouped(self, w):
        return w.reshape(self.d_out, self.d_in // self.group_size, self.group_size)

    def codes(self, w=None):
        """Codes of the latent on the layer's fixed grid, int32 [out in]."""
        w = self.latent() if w is None else w
        zero = None if self.zero is None else self.zero[...][..., None]
        return encode(self._grouped(w), self.scale[...][..., None], zero, self.bits).reshape(w.shape)

    def project(self, w):
        """Q(w): the nearest grid value of every latent weight (grid fixed)."""
        zero = None if self.zero is None else self.zero[...][..., None]
        q = dequant(self.codes(w).reshape(self._grouped(w).shape), self.scale[...][..., None], zero, self.bits)
        return q.reshape(w.shape)

    def weight(self):
        w = self.latent()
        if self.scale is not None:  # straight-through: Q(w) forward, identity backward
            w = w + jax.lax.stop_gradient(self.project(w) - w)
        if self.keep is not None:
            w = jnp.where(self.keep[...], w, 0.0)
        if self.in_scale is not None:
            w = w / self.in_scale[...][None, :]
        return w

    def __call__(self, x):
        if self.kind == "act8":  # W8A8's per-token int8 activations, straight-through
            amax = jnp.max(jnp.abs(x), axis=-1, keepdims=True)
            sx = jnp.where(amax > 0, amax / 127.0, 1.0)
            x = x + jax.lax.stop_gradient(jnp.clip(jnp.round(x / sx), -127, 127) * sx - x)
        y = x @ self.weight().T
        return y if self.b is None else y + self.b[...]

    # ---------------------------------------------------------------- back to storage
    def export(self):
        """The layer in its original storage type, holding the trained values."""
        b = None if self.b is None else nnx.Param(jnp.asarray(self.b[...]))
        w = self.latent()
        if self.kind in ("packed", "act8"):
            zero = None if self.zero is None else self.zero[...]
            in_scale = None if self.in_scale is None else self.in_scale[...]
            p = PackedLinear(
                self.codes(w),
                self.scale[...],
                zero,
                bits=self.bits,
                group_size=self.group_size,
                bias=b,
                in_scale=in_scale,
            )
            return ActQuantLinear(p) if self.kind == "act8" else p
        if self.kind == "masked":
            return MaskedLinear(w, self.keep[...], bias=b)
        if self.kind == "nm":
            return NMSparseLinear(w, self.keep[...], *self.nm, bias=b)
        out = nnx.eval_shape(lambda: Linear(self.d_in, self.d_out, bias=b is not None, rngs=nnx.Rngs(0)))
        out.w = nnx.Param(jnp.asarray(w, jnp.float32))
        out.b = b
        return out


def _kind(layer) -> str:
    if isinstance(layer, ActQuantLinear):
        return "act8"
    if isinstance(layer, PackedLinear):
        return "packed"
    if isinstance(layer, MaskedLinear):
        return "masked"
    if isinstance(layer, NMSparseLinear):
        return "nm"
    if isinstance(layer, Linear):
        return "dense"
    raise UserError(f"recover: no way to train a {type(layer).__name__} layer with its constraints held")


def trainable(comp, *, base=None, lora_rank: int = 0, lora_alpha: float | None = None, seed: int = 0):
    """A copy of `comp` whose block linears are RecoveringLinear (dropped ones left alone).
    `base`: the uncompressed model, whose weights seed the quantized latents (see ref)."""
    from hemorrhage.sim.compress.registry import linears

    refs = {} if base is None else {p: layer for p, _, _, layer in linears(base)}
    if isinstance(lora_rank, bool) or not isinstance(lora_rank, (int, np.integer)) or lora_rank < 0:
        raise UserError(f"--lora-rank must be a non-negative integer, got {lora_rank!r}")
    model = nnx.clone(comp)
    rngs = nnx.Rngs(seed)
    n = 0
    for path, parent, attr, layer in list(linears(model)):
        ref = refs.get(path)
        ref = ref.weight() if ref is not None and tuple(ref.weight().shape) == linear_shape(layer) else None
        setattr(
            parent, attr, RecoveringLinear(layer, lora_rank=int(lora_rank), lora_alpha=lora_alpha, ref=ref, rngs=rngs)
        )
        n += 1
    if not n:
        raise UserError("recover: the compressed model has no linear layer left to train")
    return model


def exported(model):
    """A copy of a trainable model with every RecoveringLinear back in its storage type."""
    out = nnx.clone(model)
    for i, block in enumerate(out.layers):
        for part in ("attn", "mlp"):
            sub = getattr(block, part)
            for attr in ("q", "k", "v", "qkv", "o", "gate", "up", "down", "fc", "proj"):
                layer = getattr(sub, attr, None)
                if isinstance(layer, RecoveringLinear):
                    setattr(sub, attr, layer.export())
    return out
