"""Llama family: Llama, SmolLM2, Mistral (sliding window), Qwen2 (q/k/v biases).

    h ← h + attn(rmsnorm₁(h))          GQA, rotate-half RoPE
    h ← h + mlp(rmsnorm₂(h))           SwiGLU: down(silu(gate x) ⊙ up x)
    z = W · rmsnorm(h_L)               W = lm_head or the tied embedding
"""

from __future__ import annotations

from flax import nnx

from hemorrhage.sim.models.base import CausalLM, branch
from hemorrhage.sim.models.config import ModelConfig
from hemorrhage.sim.models.layers import Attention, Embedding, GatedMLP, Linear, RMSNorm


class LlamaBlock(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer, rngs=rngs)
        self.norm2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = GatedMLP(cfg.d_model, cfg.d_ff, cfg.act, bias=cfg.mlp_bias, rngs=rngs)

    def __call__(self, h, pos, cache, *, perturb=None, layer=0, trace=False):
        a, cache = self.attn(self.norm1(h), pos, cache, trace=trace)
        h = h + branch(self, perturb, "attn", layer, trace, a)
        m = self.mlp(self.norm2(h), trace=trace)
        return h + branch(self, perturb, "mlp", layer, trace, m), cache


class Llama(CausalLM):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = Embedding(cfg.vocab_size, cfg.d_model, rngs=rngs)
        self.layers = nnx.List([LlamaBlock(cfg, i, rngs=rngs) for i in range(cfg.n_layers)])
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else Linear(cfg.d_model, cfg.vocab_size, bias=False, rngs=rngs)

    def embed_tokens(self, tokens, pos):
        return self.embed(tokens)


def hf_names(cfg: ModelConfig) -> dict[str, tuple[str, bool]]:
    """Our parameter path -> (HF tensor name, stored transposed?)."""
    names = {"embed.w": "model.embed_tokens.weight", "norm.w": "model.norm.weight"}
    if not cfg.tie_embeddings:
        names["lm_head.w"] = "lm_head.weight"
    for i in range(cfg.n_layers):
        p, q = f"layers.{i}", f"model.layers.{i}"
        names[f"{p}.norm1.w"] = f"{q}.input_layernorm.weight"
        names[f"{p}.norm2.w"] = f"{q}.post_attention_layernorm.weight"
        for ours, theirs in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "o_proj")):
            names[f"{p}.attn.{ours}.w"] = f"{q}.self_attn.{theirs}.weight"
            if (ours != "o" and cfg.qkv_bias) or (ours == "o" and cfg.o_bias):
                names[f"{p}.attn.{ours}.b"] = f"{q}.self_attn.{theirs}.bias"
        for part in ("gate", "up", "down"):
            names[f"{p}.mlp.{part}.w"] = f"{q}.mlp.{part}_proj.weight"
            if cfg.mlp_bias:
                names[f"{p}.mlp.{part}.b"] = f"{q}.mlp.{part}_proj.bias"
    return {k: (v, False) for k, v in names.items()}
