"""GPT-2: learned positions, pre-LayerNorm, fused qkv (c_attn), GELU(tanh) MLP.

    h_0 = E[tokens] + P[pos]
    h ← h + attn(ln₁(h));  h ← h + mlp(ln₂(h));  z = E · ln_f(h_L)
HF stores GPT-2's projections as Conv1D, [in out]; we keep [out in] like every Linear.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from hemorrhage.sim.models.base import CausalLM, branch
from hemorrhage.sim.models.config import ModelConfig
from hemorrhage.sim.models.layers import MLP, Attention, Embedding, LayerNorm


class GPT2Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        self.ln1 = LayerNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer, fused_qkv=True, rope=False, rngs=rngs)
        self.ln2 = LayerNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg.d_model, cfg.d_ff, cfg.act, rngs=rngs)

    def __call__(self, h, pos, cache, *, perturb=None, layer=0, trace=False):
        a, cache = self.attn(self.ln1(h), pos, cache, trace=trace)
        h = h + branch(self, perturb, "attn", layer, trace, a)
        return h + branch(self, perturb, "mlp", layer, trace, self.mlp(self.ln2(h), trace=trace)), cache


class GPT2(CausalLM):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = Embedding(cfg.vocab_size, cfg.d_model, rngs=rngs)
        self.pos_embed = nnx.Param(0.01 * jax.random.normal(rngs.params(), (cfg.max_positions, cfg.d_model)))
        self.layers = nnx.List([GPT2Block(cfg, i, rngs=rngs) for i in range(cfg.n_layers)])
        self.norm = LayerNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = None

    def embed_tokens(self, tokens, pos):
        return self.embed(tokens) + jnp.take(self.pos_embed[...], pos, axis=0)[None]


def hf_names(cfg: ModelConfig) -> dict[str, tuple[str, bool]]:
    names = {
        "embed.w": ("transformer.wte.weight", False),
        "pos_embed": ("transformer.wpe.weight", False),
        "norm.w": ("transformer.ln_f.weight", False),
        "norm.b": ("transformer.ln_f.bias", False),
    }
    for i in range(cfg.n_layers):
        p, q = f"layers.{i}", f"transformer.h.{i}"
        for ours, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
            names[f"{p}.{ours}.w"] = (f"{q}.{theirs}.weight", False)
            names[f"{p}.{ours}.b"] = (f"{q}.{theirs}.bias", False)
        for ours, theirs in (
            ("attn.qkv", "attn.c_attn"),
            ("attn.o", "attn.c_proj"),
            ("mlp.fc", "mlp.c_fc"),
            ("mlp.proj", "mlp.c_proj"),
        ):
            names[f"{p}.{ours}.w"] = (f"{q}.{theirs}.weight", True)  # Conv1D: [in out]
            names[f"{p}.{ours}.b"] = (f"{q}.{theirs}.bias", False)
    return names
