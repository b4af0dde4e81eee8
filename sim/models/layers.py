"""Shared building blocks of every family (nnx modules, fp32, HF weight layout).

Notation (the seeds'):
    h      residual stream, [batch seq d_model]
    z      logits W·norm(h), [batch seq vocab]
    B T S  batch, query length, key length (cache length during decoding)
    H K D  query heads, key/value heads, head dim (H/K queries share one K/V)

`Linear` keeps W as [out in] like Hugging Face, so a compression method sees one
output channel per row.  Compressed layers (sim.compress) replace a `Linear` by a
module with the same call signature, so the model class never changes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from hemorrhage.sim.models.rope import apply_rope, plain_rope

_INIT_STD = 0.02


class Linear(nnx.Module):
    """y = x Wᵀ + b,  W: [out in]."""

    def __init__(self, d_in: int, d_out: int, *, bias: bool, rngs: nnx.Rngs):
        self.w = nnx.Param(_INIT_STD * jax.random.normal(rngs.params(), (d_out, d_in), jnp.float32))
        self.b = nnx.Param(jnp.zeros((d_out,), jnp.float32)) if bias else None

    def weight(self) -> Float[Array, "out in"]:
        """The dense weight this layer applies (dequantized / masked for compressed layers)."""
        return self.w[...]

    def __call__(self, x: Float[Array, "... d_in"]) -> Float[Array, "... d_out"]:
        y = x @ self.weight().T
        return y if self.b is None else y + self.b[...]


class Embedding(nnx.Module):
    def __init__(self, vocab: int, d: int, *, rngs: nnx.Rngs):
        self.w = nnx.Param(_INIT_STD * jax.random.normal(rngs.params(), (vocab, d), jnp.float32))

    def __call__(self, tokens: Int[Array, "B T"]) -> Float[Array, "B T d"]:
        return jnp.take(self.w[...], tokens, axis=0)

    def attend(self, x: Float[Array, "... d"]) -> Float[Array, "... vocab"]:
        """Tied LM head: z = x Eᵀ."""
        return x @ self.w[...].T


class RMSNorm(nnx.Module):
    """h / rms(h) · g,  with g = 1 + w for Gemma (`plus_one`), g = w otherwise."""

    def __init__(self, d: int, eps: float, *, plus_one: bool = False):
        self.eps, self.plus_one = eps, plus_one
        self.w = nnx.Param(jnp.zeros((d,), jnp.float32) if plus_one else jnp.ones((d,), jnp.float32))

    def gain(self) -> Float[Array, " d"]:
        return 1.0 + self.w[...] if self.plus_one else self.w[...]

    def __call__(self, h: Float[Array, "... d"]) -> Float[Array, "... d"]:
        # statistics in fp32 whatever the model's dtype (a bf16 mean of squares loses the
        # small components); back to h's dtype as transformers does: Llama casts before the
        # gain, Gemma's (1 + w) gain is applied in fp32 first.  No-ops in fp32.
        hf = h.astype(jnp.float32)
        ms = jnp.mean(jnp.square(hf), axis=-1, keepdims=True)
        if self.plus_one:
            return (hf * jax.lax.rsqrt(ms + self.eps) * self.gain().astype(jnp.float32)).astype(h.dtype)
        return (hf * jax.lax.rsqrt(ms + self.eps)).astype(h.dtype) * self.gain()


class LayerNorm(nnx.Module):
    def __init__(self, d: int, eps: float):
        self.eps = eps
        self.w = nnx.Param(jnp.ones((d,), jnp.float32))
        self.b = nnx.Param(jnp.zeros((d,), jnp.float32))

    def __call__(self, h: Float[Array, "... d"]) -> Float[Array, "... d"]:
        hf = h.astype(jnp.float32)  # mean and variance in fp32 (torch's layer_norm does too)
        mu = jnp.mean(hf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(hf - mu), axis=-1, keepdims=True)
        return ((hf - mu) * jax.lax.rsqrt(var + self.eps) * self.w[...] + self.b[...]).astype(h.dtype)


def activation(name: str):
    return {
        "silu": jax.nn.silu,
        "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu": lambda x: jax.nn.gelu(x, approximate=False),
        "relu": jax.nn.relu,
    }[name]


def hoyer(a: Float[Array, "... n"]) -> Float[Array, "..."]:
    """Hoyer sparsity (√n − ‖a‖₁/‖a‖₂)/(√n − 1): 0 for a flat vector, 1 for a one-hot one.

    Scale-free, so it compares activations of a base and a compressed model whose
    magnitudes differ (seed 000: do hidden states sparsify on hard inputs?).  An all-zero
    vector (a dropped MLP) counts as fully sparse, 1."""
    n = a.shape[-1]
    l1 = jnp.sum(jnp.abs(a), axis=-1)
    l2 = jnp.sqrt(jnp.sum(jnp.square(a), axis=-1))
    root = jnp.sqrt(jnp.float32(n))
    return jnp.where(l2 > 0, (root - l1 / jnp.where(l2 > 0, l2, 1.0)) / (root - 1.0), 1.0)


class GatedMLP(nnx.Module):
    """SwiGLU / GeGLU: down(act(gate(x)) ⊙ up(x)).  Sows the gate's sign for flip rates."""

    def __init__(self, d: int, d_ff: int, act: str, *, bias: bool, rngs: nnx.Rngs):
        self.gate = Linear(d, d_ff, bias=bias, rngs=rngs)
        self.up = Linear(d, d_ff, bias=bias, rngs=rngs)
        self.down = Linear(d_ff, d, bias=bias, rngs=rngs)
        self.act = act

    def __call__(self, x, *, trace: bool = False):
        g = self.gate(x)
        a = activation(self.act)(g) * self.up(x)
        if trace:
            self.sow(nnx.Intermediate, "gate_pos", g > 0)
            self.sow(nnx.Intermediate, "mlp_hoyer", hoyer(a))
        return self.down(a)


class MLP(nnx.Module):
    """GPT-2: proj(act(fc(x)))."""

    def __init__(self, d: int, d_ff: int, act: str, *, rngs: nnx.Rngs):
        self.fc = Linear(d, d_ff, bias=True, rngs=rngs)
        self.proj = Linear(d_ff, d, bias=True, rngs=rngs)
        self.act = act

    def __call__(self, x, *, trace: bool = False):
        a = activation(self.act)(self.fc(x))
        if trace:
            self.sow(nnx.Intermediate, "mlp_hoyer", hoyer(a))
        return self.proj(a)


# ------------------------------------------------------------------- attention
def rope_tables(pos: Int[Array, " T"], head_dim: int, theta: float, scale: float = 1.0):
    """cos, sin [T head_dim] of a plain RoPE (θ, positions / scale); schedules: sim/models/rope.py."""
    return plain_rope(theta, head_dim, scale).tables(pos)


def attention_mask(q_pos: Int[Array, " T"], k_pos: Int[Array, " S"], window: int | None) -> Bool[Array, "T S"]:
    """Causal, and for sliding layers only the last `window` positions (q − k < window)."""
    m = k_pos[None, :] <= q_pos[:, None]
    if window is not None:
        m &= (q_pos[:, None] - k_pos[None, :]) < window
    return m


# `trace=ATTN_PROBS` (instead of True): the traced forward also sows every layer's attention
# probabilities (sim.models.base.attention_probs); the default forward and trace never hold them
ATTN_PROBS = "attn_probs"


class Attention(nnx.Module):
    """Multi-head attention with GQA; what varies is read from the config, per layer:

        q, k      RMSNorm per head (cfg.qk_norm = "head": Qwen3, Gemma 3) or over the whole
                  projection before the head split ("proj": OLMo 2), gain 1 + w where
                  cfg.norm_plus_one (Gemma)
        RoPE      cfg.layer_rope(layer): the schedule, partial rotary, None on NoPE layers;
                  `rope=False` for learned positions (GPT-2)
        s         q·k · cfg.attn_scale, then c·tanh(s/c) where cfg.attn_softcap (Gemma 2),
                  then the causal / sliding-window mask

    GPT-2 uses one fused `qkv` projection (its c_attn); the others use q, k, v (Phi-3's
    fused qkv_proj is split into them at load: sim/models/llama.py).
    The head counts H, K are this layer's own fields (from the config at build): structured
    head removal (sim/compress/structured.py) lowers them per layer with its sliced q/k/v/o.
    """

    def __init__(self, cfg, layer: int, *, fused_qkv: bool = False, rope: bool = True, rngs: nnx.Rngs):
        d, H, K, D = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.H, self.K, self.D = H, K, D
        self.scale = cfg.attn_scale
        self.softcap = cfg.attn_softcap
        self.window = cfg.sliding_window if cfg.layer_types[layer] == "sliding" else None
        self.rope = cfg.layer_rope(layer) if rope else None
        if fused_qkv:
            self.qkv = Linear(d, (H + 2 * K) * D, bias=cfg.qkv_bias, rngs=rngs)
        else:
            self.q = Linear(d, H * D, bias=cfg.qkv_bias, rngs=rngs)
            self.k = Linear(d, K * D, bias=cfg.qkv_bias, rngs=rngs)
            self.v = Linear(d, K * D, bias=cfg.qkv_bias, rngs=rngs)
        self.o = Linear(H * D, d, bias=cfg.o_bias, rngs=rngs)
        self.qk_norm_over = cfg.qk_norm  # none | head | proj
        self.qk_norm = cfg.qk_norm != "none"  # has q_norm / k_norm (sim.compress.storage reads it)
        if self.qk_norm:
            nq, nk = (D, D) if cfg.qk_norm == "head" else (H * D, K * D)
            self.q_norm = RMSNorm(nq, cfg.norm_eps, plus_one=cfg.norm_plus_one)
            self.k_norm = RMSNorm(nk, cfg.norm_eps, plus_one=cfg.norm_plus_one)

    def _project(self, x):
        B, T, _ = x.shape
        H, K, D = self.H, self.K, self.D
        if hasattr(self, "qkv"):
            q, k, v = jnp.split(self.qkv(x), [H * D, (H + K) * D], axis=-1)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        if self.qk_norm_over == "proj":
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.reshape(B, T, H, D), k.reshape(B, T, K, D), v.reshape(B, T, K, D)
        if self.qk_norm_over == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def __call__(self, x: Float[Array, "B T d"], pos: Int[Array, " T"], cache=None, *, trace=False):
        """cache = (k [B S K D], v [B S K D]) of fixed length S, written at `pos`."""
        q, k, v = self._project(x)
        if self.rope is not None:
            cos, sin = self.rope.tables(pos)
            qr, kr = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            on = getattr(self.rope, "on", None)  # per-layer RoPE as data (sim/models/scan.py): NoPE layers
            q, k = (qr, kr) if on is None else (jnp.where(on, qr, q), jnp.where(on, kr, k))
        if cache is None:
            k_all, v_all, k_pos, new_cache = k, v, pos, None
        else:
            start = (0, pos[0], 0, 0)
            k_all = jax.lax.dynamic_update_slice(cache[0], k, start)
            v_all = jax.lax.dynamic_update_slice(cache[1], v, start)
            k_pos, new_cache = jnp.arange(k_all.shape[1]), (k_all, v_all)
        B, T, H, D = q.shape
        G = H // self.K
        qg = q.reshape(B, T, self.K, G, D)
        s = jnp.einsum("btkgd,bskd->bkgts", qg, k_all) * self.scale
        if self.softcap is not None:
            s = jnp.tanh(s / self.softcap) * self.softcap
        mask = attention_mask(pos, k_pos, self.window)
        s = jnp.where(mask[None, None, None], s, jnp.finfo(s.dtype).min)
        # softmax in fp32, probabilities back in the values' dtype (transformers' eager attention)
        a = jax.nn.softmax(s.astype(jnp.float32), axis=-1)
        if trace:
            ent = -jnp.sum(a * jnp.log(jnp.where(a > 0, a, 1.0)), axis=-1)  # [B K G T]
            n_keys = jnp.maximum(mask.sum(-1), 1).astype(jnp.float32)
            # normalised entropy in [0, 1]: 1 = uniform over the visible keys
            self.sow(nnx.Intermediate, "attn_entropy", ent / jnp.maximum(jnp.log(n_keys), 1e-9))
            if trace == ATTN_PROBS:  # the rows themselves, only when asked: [B H T S] per layer
                self.sow(nnx.Intermediate, "attn_probs", a.reshape(B, H, T, a.shape[-1]))
        o = jnp.einsum("bkgts,bskd->btkgd", a.astype(v_all.dtype), v_all).reshape(B, T, H * D)
        return self.o(o), new_cache

    def empty_cache(self, batch: int, length: int):
        proj = self.qkv if hasattr(self, "qkv") else self.v
        z = jnp.zeros((batch, length, self.K, self.D), proj.weight().dtype)  # the keys' dtype: the model's
        return (z, z)
