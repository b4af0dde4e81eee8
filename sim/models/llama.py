"""Llama-like families: Llama 2/3, SmolLM2/3, Mistral, Qwen2/3, OLMo 2, Phi-3, Granite.

    h_0 = E[tokens] · embed_scale                    (Granite: embedding_multiplier)
    h ← h + r · attn(rmsnorm₁(h))                    pre-norm; r = residual_scale (Granite)
    h ← h + r · mlp(rmsnorm₂(h))                     SwiGLU: down(silu(gate x) ⊙ up x)
    z = W · rmsnorm(h_L) / logit_divisor             W = lm_head or the tied embedding

OLMo 2 (cfg.post_norms) normalises each sublayer's output instead of its input:
h ← h + rmsnorm(attn(h)), h ← h + rmsnorm(mlp(h)).  The attention's own variants (q/k norm,
RoPE schedule, partial rotary, NoPE layers, sliding windows, score scale) are config fields
read by layers.Attention.

Phi-3 stores q/k/v as one `qkv_proj` and gate/up as one `gate_up_proj`; `hf_names` maps
each of our q, k, v, gate, up to its rows of the fused tensor, so the loader splits it and
the exporter writes it back fused.  Every compression method then works unchanged, on the
split matrices: all of q, k, v (gate, up) read the same input, each row of the fused matrix
is a row of exactly one split matrix, so what a method does per output row (RTN / GPTQ
grids along the input dimension, W8A8's per-channel scale, Wanda's per-row comparison, N:M
patterns) is what it would do on the fused matrix.  What a method pools over a whole
matrix is pooled per split matrix instead: magnitude's round(S·size) zeros per layer and
Wanda's per-layer rounding of row counts, SparseGPT's per-layer mask selection, AWQ's α
search, OWL's layer score: the fused tensor is compressed as the three (two) layers it holds.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from hemorrhage.sim.models.base import CausalLM, branch
from hemorrhage.sim.models.config import ModelConfig
from hemorrhage.sim.models.layers import Attention, Embedding, GatedMLP, Linear, RMSNorm


class LlamaBlock(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        self.post_norms, self.residual_scale = cfg.post_norms, cfg.residual_scale
        if cfg.post_norms:
            self.post_attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
            self.post_mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        else:
            self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
            self.norm2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer, rngs=rngs)
        self.mlp = GatedMLP(cfg.d_model, cfg.d_ff, cfg.act, bias=cfg.mlp_bias, rngs=rngs)

    def _scaled(self, x):
        return x if self.residual_scale == 1.0 else x * self.residual_scale

    def __call__(self, h, pos, cache, *, perturb=None, layer=0, trace=False):
        if self.post_norms:
            a, cache = self.attn(h, pos, cache, trace=trace)
            h = h + branch(self, perturb, "attn", layer, trace, self.post_attn_norm(a))
            m = self.post_mlp_norm(self.mlp(h, trace=trace))
            return h + branch(self, perturb, "mlp", layer, trace, m), cache
        a, cache = self.attn(self.norm1(h), pos, cache, trace=trace)
        h = h + branch(self, perturb, "attn", layer, trace, self._scaled(a))
        m = self.mlp(self.norm2(h), trace=trace)
        return h + branch(self, perturb, "mlp", layer, trace, self._scaled(m)), cache


class Llama(CausalLM):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = Embedding(cfg.vocab_size, cfg.d_model, rngs=rngs)
        self.layers = nnx.List([LlamaBlock(cfg, i, rngs=rngs) for i in range(cfg.n_layers)])
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else Linear(cfg.d_model, cfg.vocab_size, bias=False, rngs=rngs)

    def embed_tokens(self, tokens, pos):
        e = self.embed(tokens)
        return e if self.cfg.embed_scale == 1.0 else e * jnp.asarray(self.cfg.embed_scale, e.dtype)


def hf_names(cfg: ModelConfig) -> dict[str, tuple]:
    """Our parameter path -> (HF tensor name, stored transposed?[, (first, last) rows of a
    fused HF tensor])."""
    names: dict[str, tuple] = {"embed.w": ("model.embed_tokens.weight", False), "norm.w": ("model.norm.weight", False)}
    if not cfg.tie_embeddings:
        names["lm_head.w"] = ("lm_head.weight", False)
    H, K, F = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.d_ff
    for i in range(cfg.n_layers):
        p, q = f"layers.{i}", f"model.layers.{i}"
        norms = (
            (("post_attn_norm", "post_attention_layernorm"), ("post_mlp_norm", "post_feedforward_layernorm"))
            if cfg.post_norms
            else (("norm1", "input_layernorm"), ("norm2", "post_attention_layernorm"))
        )
        for ours, theirs in norms:
            names[f"{p}.{ours}.w"] = (f"{q}.{theirs}.weight", False)
        if cfg.qk_norm != "none":
            names[f"{p}.attn.q_norm.w"] = (f"{q}.self_attn.q_norm.weight", False)
            names[f"{p}.attn.k_norm.w"] = (f"{q}.self_attn.k_norm.weight", False)
        if cfg.fused_hf:
            rows = {"q": (0, H), "k": (H, H + K), "v": (H + K, H + 2 * K)}
            for ours, (a, b) in rows.items():
                names[f"{p}.attn.{ours}.w"] = (f"{q}.self_attn.qkv_proj.weight", False, (a, b))
                if cfg.qkv_bias:
                    names[f"{p}.attn.{ours}.b"] = (f"{q}.self_attn.qkv_proj.bias", False, (a, b))
            for ours, (a, b) in {"gate": (0, F), "up": (F, 2 * F)}.items():
                names[f"{p}.mlp.{ours}.w"] = (f"{q}.mlp.gate_up_proj.weight", False, (a, b))
                if cfg.mlp_bias:
                    names[f"{p}.mlp.{ours}.b"] = (f"{q}.mlp.gate_up_proj.bias", False, (a, b))
        else:
            for ours, theirs in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj")):
                names[f"{p}.attn.{ours}.w"] = (f"{q}.self_attn.{theirs}.weight", False)
                if cfg.qkv_bias:
                    names[f"{p}.attn.{ours}.b"] = (f"{q}.self_attn.{theirs}.bias", False)
            for part in ("gate", "up"):
                names[f"{p}.mlp.{part}.w"] = (f"{q}.mlp.{part}_proj.weight", False)
                if cfg.mlp_bias:
                    names[f"{p}.mlp.{part}.b"] = (f"{q}.mlp.{part}_proj.bias", False)
        names[f"{p}.attn.o.w"] = (f"{q}.self_attn.o_proj.weight", False)
        if cfg.o_bias:
            names[f"{p}.attn.o.b"] = (f"{q}.self_attn.o_proj.bias", False)
        names[f"{p}.mlp.down.w"] = (f"{q}.mlp.down_proj.weight", False)
        if cfg.mlp_bias:
            names[f"{p}.mlp.down.b"] = (f"{q}.mlp.down_proj.bias", False)
    return names
