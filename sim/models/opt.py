"""OPT: learned positions with an offset of 2, ReLU MLP, LayerNorm, pre- or post-LN.

    h_0 = project_in(E[tokens]) + P[pos + 2]          project_in only if word_embed_proj_dim ≠ d
    pre-LN (do_layer_norm_before, most OPTs):  h ← h + attn(ln₁(h));  h ← h + mlp(ln₂(h))
    post-LN (opt-350m):                         h ← ln₁(h + attn(h));  h ← ln₂(h + mlp(h))
    mlp = fc2(relu(fc1(x)))
    z = E · project_out(ln_f(h_L))                    ln_f only pre-LN; E tied by default

The offset: OPT's position table has max_position_embeddings + 2 rows and position p reads
row p + 2 (a leftover of fairseq's padding index).  `norm` is the final LayerNorm followed by
project_out (each where the config has it), so z = W·norm(h) holds as for every family and the
logit lens and the predictor need nothing OPT-specific.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from hemorrhage.sim.models import hf_fields as F
from hemorrhage.sim.models.base import CausalLM, branch
from hemorrhage.sim.models.config import ModelConfig
from hemorrhage.sim.models.layers import MLP, Attention, Embedding, LayerNorm, Linear

from hemorrhage.errors import UserError

POS_OFFSET = 2


def config_from_hf(cls, hf: dict) -> ModelConfig:
    F.check_refused(hf, "opt")
    d, nh = F.pos_int(hf, "hidden_size"), F.pos_int(hf, "num_attention_heads")
    if d % nh:
        raise UserError(f"config.json: hidden_size={d} is not divisible by num_attention_heads={nh}")
    pre = F.flag(hf, "do_layer_norm_before", True)
    proj = F.pos_int(hf, "word_embed_proj_dim", d)
    bias = F.flag(hf, "enable_bias", True)
    return cls(
        family="opt",
        model_type="opt",
        vocab_size=F.pos_int(hf, "vocab_size"),
        d_model=d,
        n_layers=F.pos_int(hf, "num_hidden_layers"),
        n_heads=nh,
        n_kv_heads=nh,
        head_dim=d // nh,
        d_ff=F.pos_int(hf, "ffn_dim"),
        norm_eps=1e-5,  # nn.LayerNorm's default: OPT has no eps field
        act=F.activation(hf, "activation_function", default="relu"),
        norm_before=pre,
        final_norm=pre and not F.flag(hf, "_remove_final_layer_norm", False),
        embed_dim=None if proj == d else proj,
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=bias,
        tie_embeddings=F.flag(hf, "tie_word_embeddings", True),
        max_positions=F.pos_int(hf, "max_position_embeddings", 2048),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=F.eos(hf),
    )


class OPTBlock(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        self.ln1 = LayerNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer, rope=False, rngs=rngs)
        self.ln2 = LayerNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg.d_model, cfg.d_ff, cfg.act, rngs=rngs)
        if not cfg.mlp_bias:  # enable_bias=false: fc1/fc2 without biases
            self.mlp.fc = Linear(cfg.d_model, cfg.d_ff, bias=False, rngs=rngs)
            self.mlp.proj = Linear(cfg.d_ff, cfg.d_model, bias=False, rngs=rngs)
        self.pre = cfg.norm_before

    def __call__(self, h, pos, cache, *, perturb=None, layer=0, trace=False):
        if self.pre:
            a, cache = self.attn(self.ln1(h), pos, cache, trace=trace)
            h = h + branch(self, perturb, "attn", layer, trace, a)
            return h + branch(self, perturb, "mlp", layer, trace, self.mlp(self.ln2(h), trace=trace)), cache
        a, cache = self.attn(h, pos, cache, trace=trace)
        h = self.ln1(h + branch(self, perturb, "attn", layer, trace, a))
        return self.ln2(h + branch(self, perturb, "mlp", layer, trace, self.mlp(h, trace=trace))), cache


class OPTFinalNorm(nnx.Module):
    """ln_f (pre-LN OPTs) then project_out (word_embed_proj_dim ≠ d): what sits between h_L and the head."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.ln = LayerNorm(cfg.d_model, cfg.norm_eps) if cfg.final_norm else None
        self.project_out = (
            Linear(cfg.d_model, cfg.embed_dim, bias=False, rngs=rngs) if cfg.embed_dim is not None else None
        )

    def __call__(self, h):
        if self.ln is not None:
            h = self.ln(h)
        return h if self.project_out is None else self.project_out(h)


class OPT(CausalLM):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        e = cfg.embed_dim or cfg.d_model
        self.embed = Embedding(cfg.vocab_size, e, rngs=rngs)
        self.project_in = Linear(e, cfg.d_model, bias=False, rngs=rngs) if cfg.embed_dim is not None else None
        self.pos_embed = nnx.Param(
            0.01 * jax.random.normal(rngs.params(), (cfg.max_positions + POS_OFFSET, cfg.d_model))
        )
        self.layers = nnx.List([OPTBlock(cfg, i, rngs=rngs) for i in range(cfg.n_layers)])
        self.norm = OPTFinalNorm(cfg, rngs=rngs)
        self.lm_head = None if cfg.tie_embeddings else Linear(e, cfg.vocab_size, bias=False, rngs=rngs)

    def embed_tokens(self, tokens, pos):
        x = self.embed(tokens)
        if self.project_in is not None:
            x = self.project_in(x)
        return x + jnp.take(self.pos_embed[...], pos + POS_OFFSET, axis=0)[None]


def hf_names(cfg: ModelConfig) -> dict[str, tuple[str, bool]]:
    m = "model.decoder"
    names = {"embed.w": f"{m}.embed_tokens.weight", "pos_embed": f"{m}.embed_positions.weight"}
    if cfg.final_norm:
        names["norm.ln.w"], names["norm.ln.b"] = f"{m}.final_layer_norm.weight", f"{m}.final_layer_norm.bias"
    if cfg.embed_dim is not None:
        names["project_in.w"], names["norm.project_out.w"] = f"{m}.project_in.weight", f"{m}.project_out.weight"
    if not cfg.tie_embeddings:
        names["lm_head.w"] = "lm_head.weight"
    for i in range(cfg.n_layers):
        p, q = f"layers.{i}", f"{m}.layers.{i}"
        for ours, theirs in (("ln1", "self_attn_layer_norm"), ("ln2", "final_layer_norm")):
            names[f"{p}.{ours}.w"] = f"{q}.{theirs}.weight"
            names[f"{p}.{ours}.b"] = f"{q}.{theirs}.bias"
        for ours, theirs in (
            ("attn.q", "self_attn.q_proj"),
            ("attn.k", "self_attn.k_proj"),
            ("attn.v", "self_attn.v_proj"),
            ("attn.o", "self_attn.out_proj"),
            ("mlp.fc", "fc1"),
            ("mlp.proj", "fc2"),
        ):
            names[f"{p}.{ours}.w"] = f"{q}.{theirs}.weight"
            if cfg.mlp_bias:
                names[f"{p}.{ours}.b"] = f"{q}.{theirs}.bias"
    return {k: (v, False) for k, v in names.items()}
