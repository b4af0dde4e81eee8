"""Mixture of experts: Mixtral and Qwen3-MoE (top-k routing, SwiGLU experts).

    h ← h + attn(rmsnorm₁(h))                 GQA, RoPE; Qwen3-MoE: RMSNorm on q and k per head
    h ← h + moe(rmsnorm₂(h))                  or a dense SwiGLU MLP (Qwen3-MoE's mlp_only_layers,
                                              and layers with (l + 1) mod decoder_sparse_step ≠ 0)
    moe(x) = Σ_e w_e(x) · expert_e(x),        expert_e(x) = down_e(silu(gate_e x) ⊙ up_e x)
    p = softmax(router x);  S = top-k(p);  w_e = p_e / Σ_{j∈S} p_j for e ∈ S (norm_topk_prob:
    always for Mixtral), w_e = p_e without it, w_e = 0 for e ∉ S — as transformers does.

Storage: each expert is a module with three `Linear`s (gate, up, down), so every compression
method sees each expert's projections as layers of their own (sim.compress: paths
`layers.i.mlp.experts.e.gate`).  The router is a `Linear` too, left dense unless
`compress_router(model)` asks for it.

Forward cost: every expert runs on every token, its input zeroed where the token is not
routed to it (x_e = x·[e ∈ S(x)]), and its output is weighted by w_e (0 off S).  That is
E/k times the FLOPs of routed computation (4× for Mixtral's 8 experts, top-2; 16× for
Qwen3-MoE's 128, top-8) but it is static-shaped and exact: a zero input gives an exactly
zero expert output (no biases), so the sum equals transformers' gather/scatter term by term,
in the same expert order.  The zeroed input is also what makes calibration per expert see
only its routed tokens (sim.compress.calib): Σ x_e x_eᵀ = Σ over routed tokens of x xᵀ.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from hemorrhage.sim.models import hf_fields as F
from hemorrhage.sim.models.base import CausalLM, branch
from hemorrhage.sim.models.config import ModelConfig
from hemorrhage.sim.models.layers import (
    Attention,
    Embedding,
    GatedMLP,
    Linear,
    RMSNorm,
    activation,
    hoyer,
)

from hemorrhage.errors import UserError


def config_from_hf(cls, hf: dict) -> ModelConfig:
    """ModelConfig of a mixtral or qwen3_moe config.json (refusals name their key)."""
    mt = hf["model_type"]
    F.check_refused(hf, mt)
    d, nh = F.pos_int(hf, "hidden_size"), F.pos_int(hf, "num_attention_heads")
    n_layers = F.pos_int(hf, "num_hidden_layers")
    qwen = mt == "qwen3_moe"
    n_exp_key = "num_experts" if hf.get("num_experts") is not None else "num_local_experts"
    n_exp = F.pos_int(hf, n_exp_key, 0 if qwen else None, lo=0 if qwen else 1)
    k = F.pos_int(hf, "num_experts_per_tok", 1 if n_exp == 0 else None)
    if n_exp and k > n_exp:
        raise UserError(f"config.json: num_experts_per_tok={k} exceeds the {n_exp} experts")
    if qwen:
        step = F.pos_int(hf, "decoder_sparse_step", 1)
        only = hf.get("mlp_only_layers") or []
        if not isinstance(only, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in only):
            raise UserError(f"config.json: mlp_only_layers must be a list of layer indices, got {only!r}")
        moe_layers = tuple(n_exp > 0 and i not in only and (i + 1) % step == 0 for i in range(n_layers))
        moe_ff = F.pos_int(hf, "moe_intermediate_size") if any(moe_layers) else 0
        norm_topk, bias = F.flag(hf, "norm_topk_prob", False), F.flag(hf, "attention_bias", False)
        window = None  # use_sliding_window is refused, and without it Qwen3-MoE attends to everything
    else:
        moe_layers, moe_ff, norm_topk, bias = (True,) * n_layers, F.pos_int(hf, "intermediate_size"), True, False
        window = F.pos_int(hf, "sliding_window", 0, lo=0) or None
    theta, scale, partial = F.rope(hf, 1e6 if not qwen else 10000.0)
    if partial != 1.0:
        raise UserError(f"config.json for {mt}: partial_rotary_factor={partial} is not implemented")
    head_dim = F.pos_int(hf, "head_dim", 0, lo=0) or d // nh
    return cls(
        family="moe",
        model_type=mt,
        vocab_size=F.pos_int(hf, "vocab_size"),
        d_model=d,
        n_layers=n_layers,
        n_heads=nh,
        n_kv_heads=F.pos_int(hf, "num_key_value_heads", nh),
        head_dim=head_dim,
        d_ff=F.pos_int(hf, "intermediate_size"),
        norm_eps=F.pos_float(hf, "rms_norm_eps", 1e-6 if qwen else 1e-5),
        act=F.activation(hf, "hidden_act", default="silu"),
        rope_theta=theta,
        rope_scale=scale,
        sliding_window=window,
        layer_types=("sliding" if window else "full",) * n_layers,
        qk_norm="head" if qwen else "none",
        qkv_bias=bias,
        o_bias=bias,
        tie_embeddings=F.flag(hf, "tie_word_embeddings", False),
        max_positions=F.pos_int(hf, "max_position_embeddings", 4096),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=F.eos(hf),
        n_experts=n_exp,
        experts_per_token=k,
        norm_topk_prob=norm_topk,
        moe_d_ff=moe_ff,
        moe_layers=moe_layers,
    )


class Expert(nnx.Module):
    """One SwiGLU expert: down(act(gate x) ⊙ up x), no biases."""

    def __init__(self, d: int, d_ff: int, act: str, *, rngs: nnx.Rngs):
        self.gate = Linear(d, d_ff, bias=False, rngs=rngs)
        self.up = Linear(d, d_ff, bias=False, rngs=rngs)
        self.down = Linear(d_ff, d, bias=False, rngs=rngs)
        self.act = act

    def hidden(self, x):
        return activation(self.act)(self.gate(x)) * self.up(x)

    def __call__(self, x):
        return self.down(self.hidden(x))


def route(logits: jax.Array, k: int, renormalise: bool) -> tuple[jax.Array, jax.Array]:
    """(weights w [.. E], routed [.. E] bool) from router logits: softmax over experts, top-k of
    the probabilities, optionally renormalised over the k chosen; w = 0 off the top k."""
    p = jax.nn.softmax(logits, axis=-1)
    # which experts are chosen is piecewise constant in the logits: picked off a stopped copy
    # (the same choice), so derivatives of every order — JVPs and the predictor's Taylor-mode
    # pass, which has no rule for top_k — flow only through the chosen p
    idx = jax.lax.top_k(jax.lax.stop_gradient(p), k)[1]
    top = jnp.take_along_axis(p, idx, axis=-1)
    if renormalise:
        top = top / jnp.sum(top, axis=-1, keepdims=True)
    onehot = jax.nn.one_hot(idx, logits.shape[-1], dtype=p.dtype)  # [.. k E]
    return jnp.einsum("...k,...ke->...e", top, onehot), jnp.any(onehot > 0, axis=-2)


class SparseMoE(nnx.Module):
    """Router + experts (see the module docstring for the forward and its cost)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.router = Linear(cfg.d_model, cfg.n_experts, bias=False, rngs=rngs)
        self.experts = nnx.List([Expert(cfg.d_model, cfg.moe_d_ff, cfg.act, rngs=rngs) for _ in range(cfg.n_experts)])
        self.top_k, self.renormalise, self.act = cfg.experts_per_token, cfg.norm_topk_prob, cfg.act
        self.router_compressible = False  # sim.compress leaves the router dense unless asked

    def __call__(self, x, *, trace: bool = False):
        w, routed = route(self.router(x), self.top_k, self.renormalise)
        out = jnp.zeros_like(x)
        hidden = []
        for e, expert in enumerate(self.experts):
            a = expert.hidden(jnp.where(routed[..., e : e + 1], x, 0.0))
            hidden.append(a)
            out = out + expert.down(a) * w[..., e : e + 1]
        if trace:  # the hidden activation of the layer: all experts', zero where not routed
            self.sow(nnx.Intermediate, "mlp_hoyer", hoyer(jnp.concatenate(hidden, axis=-1)))
        return out


class DenseMLP(GatedMLP):
    """A dense SwiGLU layer in a MoE model.  It sows no gate signs: the MoE layers have no
    single gate to compare, and a per-layer stack needs every layer or none."""

    sows_gate = False

    def __call__(self, x, *, trace: bool = False):
        a = activation(self.act)(self.gate(x)) * self.up(x)
        if trace:
            self.sow(nnx.Intermediate, "mlp_hoyer", hoyer(a))
        return self.down(a)


class MoEBlock(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer, rngs=rngs)  # Qwen3-MoE: cfg.qk_norm = "head"
        self.norm2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = (
            SparseMoE(cfg, rngs=rngs)
            if cfg.moe_layers[layer]
            else DenseMLP(cfg.d_model, cfg.d_ff, cfg.act, bias=False, rngs=rngs)
        )

    def __call__(self, h, pos, cache, *, perturb=None, layer=0, trace=False):
        a, cache = self.attn(self.norm1(h), pos, cache, trace=trace)
        h = h + branch(self, perturb, "attn", layer, trace, a)
        m = self.mlp(self.norm2(h), trace=trace)
        return h + branch(self, perturb, "mlp", layer, trace, m), cache


class MoE(CausalLM):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = Embedding(cfg.vocab_size, cfg.d_model, rngs=rngs)
        self.layers = nnx.List([MoEBlock(cfg, i, rngs=rngs) for i in range(cfg.n_layers)])
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else Linear(cfg.d_model, cfg.vocab_size, bias=False, rngs=rngs)

    def embed_tokens(self, tokens, pos):
        return self.embed(tokens)


def compress_router(model, on: bool = True) -> int:
    """Ask sim.compress to compress the routers too (they are left dense by default); returns
    how many routers are now marked.  Their calibration input is every token (the router
    reads the whole layer input, not a routed share)."""
    n = 0
    for block in model.layers:
        if isinstance(block.mlp, SparseMoE):
            block.mlp.router_compressible = bool(on)
            n += 1
    return n


def hf_names(cfg: ModelConfig) -> dict[str, tuple[str, bool]]:
    """Our parameter path -> (HF tensor name, transposed?) in the per-expert layout checkpoints
    ship in (transformers v5 fuses the experts on load and splits them again on save)."""
    names = {"embed.w": "model.embed_tokens.weight", "norm.w": "model.norm.weight"}
    if not cfg.tie_embeddings:
        names["lm_head.w"] = "lm_head.weight"
    mixtral = cfg.model_type == "mixtral"
    for i in range(cfg.n_layers):
        p, q = f"layers.{i}", f"model.layers.{i}"
        names[f"{p}.norm1.w"] = f"{q}.input_layernorm.weight"
        names[f"{p}.norm2.w"] = f"{q}.post_attention_layernorm.weight"
        for ours, theirs in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "o_proj")):
            names[f"{p}.attn.{ours}.w"] = f"{q}.self_attn.{theirs}.weight"
            if cfg.qkv_bias:
                names[f"{p}.attn.{ours}.b"] = f"{q}.self_attn.{theirs}.bias"
        if cfg.qk_norm != "none":  # Qwen3-MoE's per-head q/k norms (Mixtral has none)
            names[f"{p}.attn.q_norm.w"] = f"{q}.self_attn.q_norm.weight"
            names[f"{p}.attn.k_norm.w"] = f"{q}.self_attn.k_norm.weight"
        if not cfg.moe_layers[i]:
            for part in ("gate", "up", "down"):
                names[f"{p}.mlp.{part}.w"] = f"{q}.mlp.{part}_proj.weight"
            continue
        moe = f"{q}.block_sparse_moe" if mixtral else f"{q}.mlp"
        names[f"{p}.mlp.router.w"] = f"{moe}.gate.weight"
        parts = (
            (("gate", "w1"), ("up", "w3"), ("down", "w2"))
            if mixtral
            else (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj"))
        )
        for e in range(cfg.n_experts):
            for ours, theirs in parts:
                names[f"{p}.mlp.experts.{e}.{ours}.w"] = f"{moe}.experts.{e}.{theirs}.weight"
    return {k: (v, False) for k, v in names.items()}
