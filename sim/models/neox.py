"""GPT-NeoX / Pythia: parallel attention and MLP, LayerNorm with bias, partial rotary.

    parallel (use_parallel_residual, Pythia):  h ← h + attn(ln₁(h)) + mlp(ln₂(h))
    sequential:                                h ← h + attn(ln₁(h));  h ← h + mlp(ln₂(h))
    attention:  fused query_key_value, laid out per head as [q_h k_h v_h] (not [Q K V]);
                RoPE on the first rotary_dim = ⌊rotary_pct·head_dim⌋ dims of each head
    mlp:        dense_4h_to_h(gelu(dense_h_to_4h(x)))  (exact erf GELU by default)
    z = W · ln_f(h_L)                                   W = embed_out (lm_head), untied by default

In the parallel form both branches read the block input h; `perturb` still sees the attention
branch, then the MLP branch, each before it is added.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx
from hemorrhage.sim.models import hf_fields as F
from hemorrhage.sim.models.base import CausalLM, branch
from hemorrhage.sim.models.config import ModelConfig
from hemorrhage.sim.models.layers import MLP, Attention, Embedding, LayerNorm, Linear

from hemorrhage.errors import UserError


def config_from_hf(cls, hf: dict) -> ModelConfig:
    """ModelConfig of a gpt_neox config.json; refused keys are one UserError naming them."""
    F.check_refused(hf, "gpt_neox")
    d, nh = F.pos_int(hf, "hidden_size"), F.pos_int(hf, "num_attention_heads")
    if d % nh:
        raise UserError(f"config.json: hidden_size={d} is not divisible by num_attention_heads={nh}")
    theta, scale, partial = F.rope(hf)
    head_dim = d // nh
    if F.pos_int(hf, "head_dim", head_dim) != head_dim:  # its rotary reads head_dim, its attention d / heads
        raise UserError(
            f"config.json for gpt_neox: head_dim={hf['head_dim']} differs from hidden_size / "
            f"num_attention_heads = {head_dim}; not implemented"
        )
    rotary_dim = int(head_dim * partial)
    if rotary_dim < 2 or rotary_dim % 2:
        raise UserError(
            f"config.json: partial rotary factor {partial} gives {rotary_dim} rotary dims per head; "
            "it needs an even number ≥ 2"
        )
    bias = F.flag(hf, "attention_bias", True)
    return cls(
        family="neox",
        model_type="gpt_neox",
        vocab_size=F.pos_int(hf, "vocab_size"),
        d_model=d,
        n_layers=F.pos_int(hf, "num_hidden_layers"),
        n_heads=nh,
        n_kv_heads=nh,
        head_dim=head_dim,
        d_ff=F.pos_int(hf, "intermediate_size"),
        norm_eps=F.pos_float(hf, "layer_norm_eps", 1e-5),
        act=F.activation(hf, "hidden_act", default="gelu"),
        rope_theta=theta,
        rope_scale=scale,
        rotary_dim=rotary_dim,
        parallel_residual=F.flag(hf, "use_parallel_residual", True),
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=True,
        tie_embeddings=F.flag(hf, "tie_word_embeddings", False),
        max_positions=F.pos_int(hf, "max_position_embeddings", 2048),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=F.eos(hf),
    )


class NeoXAttention(Attention):
    """Attention whose fused qkv rows are grouped per head: [q_0 k_0 v_0 q_1 k_1 v_1 …]."""

    def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        super().__init__(cfg, layer, fused_qkv=True, rngs=rngs)

    def _project(self, x):
        B, T, _ = x.shape
        per_head = self.qkv(x).reshape(B, T, self.H, 3 * self.D)
        q, k, v = jnp.split(per_head, 3, axis=-1)
        return q, k, v


class NeoXBlock(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        self.ln1 = LayerNorm(cfg.d_model, cfg.norm_eps)
        self.attn = NeoXAttention(cfg, layer, rngs=rngs)
        self.ln2 = LayerNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg.d_model, cfg.d_ff, cfg.act, rngs=rngs)
        self.parallel = cfg.parallel_residual

    def __call__(self, h, pos, cache, *, perturb=None, layer=0, trace=False):
        a, cache = self.attn(self.ln1(h), pos, cache, trace=trace)
        a = branch(self, perturb, "attn", layer, trace, a)
        if self.parallel:  # both branches read the block input; HF sums mlp + attn + h in that order
            m = branch(self, perturb, "mlp", layer, trace, self.mlp(self.ln2(h), trace=trace))
            return m + a + h, cache
        h = a + h
        return h + branch(self, perturb, "mlp", layer, trace, self.mlp(self.ln2(h), trace=trace)), cache


class NeoX(CausalLM):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = Embedding(cfg.vocab_size, cfg.d_model, rngs=rngs)
        self.layers = nnx.List([NeoXBlock(cfg, i, rngs=rngs) for i in range(cfg.n_layers)])
        self.norm = LayerNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else Linear(cfg.d_model, cfg.vocab_size, bias=False, rngs=rngs)

    def embed_tokens(self, tokens, pos):
        return self.embed(tokens)


def hf_names(cfg: ModelConfig) -> dict[str, tuple[str, bool]]:
    """Our parameter path -> (HF tensor name, stored transposed?).  The head is saved as
    `embed_out` (transformers v5 renames it lm_head on load)."""
    names = {
        "embed.w": "gpt_neox.embed_in.weight",
        "norm.w": "gpt_neox.final_layer_norm.weight",
        "norm.b": "gpt_neox.final_layer_norm.bias",
    }
    if not cfg.tie_embeddings:
        names["lm_head.w"] = "embed_out.weight"
    for i in range(cfg.n_layers):
        p, q = f"layers.{i}", f"gpt_neox.layers.{i}"
        for ours, theirs in (("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm")):
            names[f"{p}.{ours}.w"] = f"{q}.{theirs}.weight"
            names[f"{p}.{ours}.b"] = f"{q}.{theirs}.bias"
        for ours, theirs, bias in (
            ("attn.qkv", "attention.query_key_value", cfg.qkv_bias),
            ("attn.o", "attention.dense", cfg.o_bias),
            ("mlp.fc", "mlp.dense_h_to_4h", True),
            ("mlp.proj", "mlp.dense_4h_to_h", True),
        ):
            names[f"{p}.{ours}.w"] = f"{q}.{theirs}.weight"
            if bias:
                names[f"{p}.{ours}.b"] = f"{q}.{theirs}.bias"
    return {k: (v, False) for k, v in names.items()}
