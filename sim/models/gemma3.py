"""Gemma 2 and Gemma 3 (text): sandwich norms, sliding-window and global layers.

    h_0 = E[tokens] · √d                                (cfg.embed_scale)
    h ← h + rmsnorm_post_attn(attn(rmsnorm_in(h)))     local layers: window (Gemma 3: RoPE θ=10⁴)
    h ← h + rmsnorm_post_mlp(mlp(rmsnorm_pre_mlp(h)))  global layers (Gemma 3: RoPE θ=10⁶)
    z = E · rmsnorm(h_L)                                every RMSNorm gain is (1 + w)

Gemma 3 adds per-head q/k RMSNorm (cfg.qk_norm); Gemma 2 instead soft-caps the attention
scores, s ← 50·tanh(s/50), and the logits, z ← 30·tanh(z/30) (cfg.attn_softcap,
cfg.final_softcap; the values are the config's).  Both scale scores by
query_pre_attn_scalar^(−1/2).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from hemorrhage.sim.models.base import CausalLM, branch
from hemorrhage.sim.models.config import ModelConfig
from hemorrhage.sim.models.layers import Attention, Embedding, GatedMLP, Linear, RMSNorm


class Gemma3Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        d, eps = cfg.d_model, cfg.norm_eps
        self.in_norm = RMSNorm(d, eps, plus_one=cfg.norm_plus_one)
        self.attn = Attention(cfg, layer, rngs=rngs)
        self.post_attn_norm = RMSNorm(d, eps, plus_one=cfg.norm_plus_one)
        self.pre_mlp_norm = RMSNorm(d, eps, plus_one=cfg.norm_plus_one)
        self.mlp = GatedMLP(d, cfg.d_ff, cfg.act, bias=False, rngs=rngs)
        self.post_mlp_norm = RMSNorm(d, eps, plus_one=cfg.norm_plus_one)

    def __call__(self, h, pos, cache, *, perturb=None, layer=0, trace=False):
        a, cache = self.attn(self.in_norm(h), pos, cache, trace=trace)
        h = h + branch(self, perturb, "attn", layer, trace, self.post_attn_norm(a))
        m = self.post_mlp_norm(self.mlp(self.pre_mlp_norm(h), trace=trace))
        return h + branch(self, perturb, "mlp", layer, trace, m), cache


class Gemma3(CausalLM):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = Embedding(cfg.vocab_size, cfg.d_model, rngs=rngs)
        self.layers = nnx.List([Gemma3Block(cfg, i, rngs=rngs) for i in range(cfg.n_layers)])
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps, plus_one=cfg.norm_plus_one)
        self.lm_head = None if cfg.tie_embeddings else Linear(cfg.d_model, cfg.vocab_size, bias=False, rngs=rngs)

    def embed_tokens(self, tokens, pos):
        # HF rounds √d to the weight dtype before scaling; in fp32 that is a no-op.
        e = self.embed(tokens)
        return e * jnp.asarray(self.cfg.embed_scale, e.dtype)


def hf_names(cfg: ModelConfig) -> dict[str, tuple[str, bool]]:
    names = {"embed.w": "model.embed_tokens.weight", "norm.w": "model.norm.weight"}
    if not cfg.tie_embeddings:
        names["lm_head.w"] = "lm_head.weight"
    for i in range(cfg.n_layers):
        p, q = f"layers.{i}", f"model.layers.{i}"
        for ours, theirs in (
            ("in_norm", "input_layernorm"),
            ("post_attn_norm", "post_attention_layernorm"),
            ("pre_mlp_norm", "pre_feedforward_layernorm"),
            ("post_mlp_norm", "post_feedforward_layernorm"),
        ):
            names[f"{p}.{ours}.w"] = f"{q}.{theirs}.weight"
        for ours, theirs in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "o_proj")):
            names[f"{p}.attn.{ours}.w"] = f"{q}.self_attn.{theirs}.weight"
            if (ours != "o" and cfg.qkv_bias) or (ours == "o" and cfg.o_bias):
                names[f"{p}.attn.{ours}.b"] = f"{q}.self_attn.{theirs}.bias"
        if cfg.qk_norm != "none":
            names[f"{p}.attn.q_norm.w"] = f"{q}.self_attn.q_norm.weight"
            names[f"{p}.attn.k_norm.w"] = f"{q}.self_attn.k_norm.weight"
        for part in ("gate", "up", "down"):
            names[f"{p}.mlp.{part}.w"] = f"{q}.mlp.{part}_proj.weight"
    return {k: (v, False) for k, v in names.items()}
