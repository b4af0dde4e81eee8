"""A BERT sentence encoder (flax.nnx) equal to transformers' BertModel, with the pooling its
sentence-transformers files specify (all-MiniLM-L6-v2: 6 layers, d = 384, post-LN, GELU).

    cfg = BertConfig.from_hf(config_dict, pooling=read_pooling(folder))
    model = BertEncoder(cfg, nnx.Rngs(0));  load_bert_state(model, tensors)
    model.hidden(tokens, mask)          h_0..h_L            [L+1 B T d]
    model.encode(tokens, mask)          e = pool(h_L)        [B d]  (unit length if Normalize is listed)
    load_encoder(folder)                (model, cfg) from a sentence-transformers / HF BERT folder

The forward (Devlin et al. 2019, "BERT", §3; post-LN as in Vaswani et al. 2017):

    h_0     = LN(E_tok[t] + E_pos[i] + E_type[s])
    a_l     = softmax(q kᵀ/√D + m) v,   m = 0 on real tokens, dtype-min on padding keys
    h'_l    = LN(h_{l−1} + o(a_l))
    h_l     = LN(h'_l + proj(gelu(fc(h'_l))))        gelu exact (erf), as HF's "gelu"

Pooling (sentence-transformers' modules.json + 1_Pooling/config.json; Reimers & Gurevych 2019):
    mean    e = Σ_t mask_t h_L,t / max(Σ_t mask_t, 1e-9)
    cls     e = h_L,0
    max     e = max over real tokens of h_L,t
then e / max(‖e‖, 1e-12) when a sentence_transformers.models.Normalize module is listed.

The blocks keep the names the compression walk reads (sim/compress/registry.block_linears,
sim/compress/calib.GROUPS): `attn.q/k/v/o` and `mlp.fc/proj`, each a layers.Linear, so every
method applies unchanged.  `embed_tokens(tokens, pos)` and `block(h, pos, cache)` take the
causal models' signatures so calibration (sim/compress/calib.Sequential) runs the encoder
block by block; there every token is real (no padding mask).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from hemorrhage.sim.jit import jit
from hemorrhage.errors import UserError
from hemorrhage.sim.models.base import Perturb, branch
from hemorrhage.sim.models.layers import Embedding, LayerNorm, Linear, activation

POOLINGS = ("mean", "cls", "max")
_ST_POOLING = "sentence_transformers.models.Pooling"
_ST_NORMALIZE = "sentence_transformers.models.Normalize"


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    max_positions: int  # learned absolute positions
    type_vocab_size: int  # token-type (segment) embeddings
    norm_eps: float
    act: str  # activation of the MLP (layers.activation name)
    pooling: str = "mean"  # one of POOLINGS
    normalize: bool = True  # unit-length embeddings (a Normalize module is listed)
    max_seq_length: int = 512  # longest input the encoder is used with (sentence_bert_config.json)
    family: str = "bert"

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def from_hf(cls, hf: dict, pooling: tuple[str, bool, int] | None = None) -> "BertConfig":
        """From config.json (model_type bert) and `read_pooling`'s (pooling, normalize, max length)."""
        if hf.get("model_type") != "bert":
            raise UserError(f"not a BERT config (model_type {hf.get('model_type')!r})")
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise UserError(f"position_embedding_type {hf['position_embedding_type']!r} is not implemented")
        acts = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
        if hf.get("hidden_act", "gelu") not in acts:
            raise UserError(f"hidden_act {hf['hidden_act']!r} is not implemented for BERT")
        try:
            d, H = int(hf["hidden_size"]), int(hf["num_attention_heads"])
            sizes = dict(
                vocab_size=int(hf["vocab_size"]),
                d_model=d,
                n_layers=int(hf["num_hidden_layers"]),
                n_heads=H,
                d_ff=int(hf["intermediate_size"]),
                max_positions=int(hf.get("max_position_embeddings", 512)),
                type_vocab_size=int(hf.get("type_vocab_size", 2)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"BERT config: missing or malformed size field ({e})") from None
        if min(sizes.values()) < 1 or d % H:
            raise UserError(f"BERT config: sizes must be >= 1 and heads must divide hidden_size: {sizes}")
        pool, norm, max_len = pooling or ("cls", False, sizes["max_positions"])
        return cls(
            **sizes,
            norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
            act=acts[hf.get("hidden_act", "gelu")],
            pooling=pool,
            normalize=norm,
            max_seq_length=min(max_len, sizes["max_positions"]),
        )


def read_pooling(folder: Path) -> tuple[str, bool, int] | None:
    """(pooling, normalize, max_seq_length) from sentence-transformers' files, or None without
    modules.json (a plain BertModel folder: its [CLS] state, unnormalised)."""
    folder = Path(folder)
    mods_file = folder / "modules.json"
    if not mods_file.is_file():
        return None
    try:
        modules = json.loads(mods_file.read_text())
        pool_mod = next((m for m in modules if m.get("type") == _ST_POOLING), None)
        normalize = any(m.get("type") == _ST_NORMALIZE for m in modules)
        pooling = "cls"
        if pool_mod is not None:
            pc = json.loads((folder / pool_mod.get("path", "1_Pooling") / "config.json").read_text())
            chosen = [
                m
                for m, k in (
                    ("mean", "pooling_mode_mean_tokens"),
                    ("cls", "pooling_mode_cls_token"),
                    ("max", "pooling_mode_max_tokens"),
                )
                if pc.get(k)
            ]
            others = [
                k
                for k, v in pc.items()
                if k.startswith("pooling_mode")
                and v
                and k not in ("pooling_mode_mean_tokens", "pooling_mode_cls_token", "pooling_mode_max_tokens")
            ]
            if len(chosen) != 1 or others:
                raise UserError(
                    f"{folder}: pooling {sorted(k for k, v in pc.items() if v is True)} is not "
                    f"implemented (one of mean, cls, max)"
                )
            pooling = chosen[0]
        st = folder / "sentence_bert_config.json"
        max_len = int(json.loads(st.read_text()).get("max_seq_length", 512)) if st.is_file() else 512
    except (OSError, json.JSONDecodeError, AttributeError, TypeError, ValueError) as e:
        raise UserError(f"{folder}: unreadable sentence-transformers files ({e})") from None
    return pooling, normalize, max_len


class BertEmbed(nnx.Module):
    def __init__(self, cfg: BertConfig, rngs: nnx.Rngs):
        self.tok = Embedding(cfg.vocab_size, cfg.d_model, rngs=rngs)
        self.pos = Embedding(cfg.max_positions, cfg.d_model, rngs=rngs)
        self.type = Embedding(cfg.type_vocab_size, cfg.d_model, rngs=rngs)
        self.norm = LayerNorm(cfg.d_model, cfg.norm_eps)

    def __call__(self, tokens: Int[Array, "B T"], pos: Int[Array, " T"]) -> Float[Array, "B T d"]:
        h = self.tok(tokens) + self.pos(pos[None, :]) + self.type(jnp.zeros_like(tokens))
        return self.norm(h)


class BertAttention(nnx.Module):
    """Bidirectional multi-head attention; `mask` [B S] (1 = real token) hides padding keys."""

    def __init__(self, cfg: BertConfig, rngs: nnx.Rngs):
        d = cfg.d_model
        self.H, self.D = cfg.n_heads, cfg.head_dim
        self.K = cfg.n_heads  # key/value heads: one per query head (read by a dropped branch's stand-in)
        self.q, self.k, self.v, self.o = (Linear(d, d, bias=True, rngs=rngs) for _ in range(4))

    def __call__(self, x: Float[Array, "B T d"], mask: Float[Array, "B T"] | None = None) -> Float[Array, "B T d"]:
        B, T, _ = x.shape
        q, k, v = (f(x).reshape(B, T, self.H, self.D) for f in (self.q, self.k, self.v))
        s = jnp.einsum("bthd,bshd->bhts", q, k) / jnp.sqrt(jnp.float32(self.D))
        if mask is not None:
            s = jnp.where(mask[:, None, None, :] > 0, s, jnp.finfo(s.dtype).min)
        a = jax.nn.softmax(s.astype(jnp.float32), axis=-1).astype(v.dtype)
        return self.o(jnp.einsum("bhts,bshd->bthd", a, v).reshape(B, T, self.H * self.D))


class BertMLP(nnx.Module):
    def __init__(self, cfg: BertConfig, rngs: nnx.Rngs):
        self.fc = Linear(cfg.d_model, cfg.d_ff, bias=True, rngs=rngs)
        self.proj = Linear(cfg.d_ff, cfg.d_model, bias=True, rngs=rngs)
        self.act = cfg.act

    def __call__(self, x, *, trace: bool = False):
        return self.proj(activation(self.act)(self.fc(x)))


class BertBlock(nnx.Module):
    """Post-LN: h' = LN(h + attn(h)), then LN(h' + mlp(h'))."""

    def __init__(self, cfg: BertConfig, rngs: nnx.Rngs):
        self.attn = BertAttention(cfg, rngs)
        self.attn_norm = LayerNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = BertMLP(cfg, rngs)
        self.mlp_norm = LayerNorm(cfg.d_model, cfg.norm_eps)

    def __call__(
        self, h, pos=None, cache=None, *, perturb: Perturb = None, layer: int = 0, trace: bool = False, mask=None
    ):
        """(h_l, None): the causal blocks' signature; `pos` and `cache` are unused (learned
        positions enter at the embedding, an encoder keeps no cache).  A dropped branch
        (sim/compress ZeroAttention / ZeroMLP) takes the attention's (x, pos, cache) call."""
        if getattr(self.attn, "dropped", False):
            a = self.attn(h, pos)[0]
        else:
            a = self.attn(h, mask)
        h = self.attn_norm(h + branch(self, perturb, "attn", layer, trace, a))
        m = self.mlp(h, trace=trace)
        return self.mlp_norm(h + branch(self, perturb, "mlp", layer, trace, m)), None


class BertEncoder(nnx.Module):
    """embed → post-LN blocks → pooling; no LM head (language-model metrics do not apply)."""

    def __init__(self, cfg: BertConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = BertEmbed(cfg, rngs)
        self.layers = nnx.List([BertBlock(cfg, rngs) for _ in range(cfg.n_layers)])

    def embed_tokens(self, tokens: Int[Array, "B T"], pos: Int[Array, " T"]) -> Float[Array, "B T d"]:
        return self.embed(tokens, pos)

    def hidden(self, tokens: Int[Array, "B T"], mask: Float[Array, "B T"] | None = None) -> Float[Array, "L1 B T d"]:
        """h_0..h_L (every token, padding included; pool with the mask)."""
        pos = jnp.arange(tokens.shape[1], dtype=jnp.int32)
        h = self.embed_tokens(tokens, pos)
        hs = [h]
        for i, block in enumerate(self.layers):
            h, _ = block(h, pos, None, layer=i, mask=mask)
            hs.append(h)
        return jnp.stack(hs)

    def encode(self, tokens: Int[Array, "B T"], mask: Float[Array, "B T"]) -> Float[Array, "B d"]:
        return pool(self.hidden(tokens, mask)[-1], mask, self.cfg.pooling, self.cfg.normalize)


def pool(h: Float[Array, "B T d"], mask: Float[Array, "B T"], how: str, normalize: bool) -> Float[Array, "B d"]:
    """The module docstring's pooling, then the optional unit normalisation."""
    m = mask.astype(h.dtype)[..., None]
    if how == "mean":
        e = jnp.sum(h * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)
    elif how == "cls":
        e = h[:, 0]
    elif how == "max":
        e = jnp.max(jnp.where(m > 0, h, jnp.finfo(h.dtype).min), axis=1)
    else:
        raise UserError(f"pooling must be one of {', '.join(POOLINGS)}, got {how!r}")
    if normalize:
        e = e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
    return e


@jit
def encode(model: BertEncoder, tokens, mask):
    """Jitted `model.encode`."""
    return model.encode(tokens, mask)


def _hf_names(cfg: BertConfig) -> dict[str, str]:
    """our parameter path -> HF BertModel tensor name."""
    out = {
        "embed.tok.w": "embeddings.word_embeddings.weight",
        "embed.pos.w": "embeddings.position_embeddings.weight",
        "embed.type.w": "embeddings.token_type_embeddings.weight",
        "embed.norm.w": "embeddings.LayerNorm.weight",
        "embed.norm.b": "embeddings.LayerNorm.bias",
    }
    parts = {
        "attn.q": "attention.self.query",
        "attn.k": "attention.self.key",
        "attn.v": "attention.self.value",
        "attn.o": "attention.output.dense",
        "attn_norm": "attention.output.LayerNorm",
        "mlp.fc": "intermediate.dense",
        "mlp.proj": "output.dense",
        "mlp_norm": "output.LayerNorm",
    }
    for i in range(cfg.n_layers):
        for ours, hf in parts.items():
            for p, suffix in (("w", "weight"), ("b", "bias")):
                out[f"layers.{i}.{ours}.{p}"] = f"encoder.layer.{i}.{hf}.{suffix}"
    return out


def load_bert_state(model: BertEncoder, tensors) -> None:
    """Fill `model` from HF tensors (a mapping name -> array; a `bert.` prefix is accepted)."""
    for ours, hf in _hf_names(model.cfg).items():
        arr = tensors.get(hf, tensors.get(f"bert.{hf}")) if hasattr(tensors, "get") else None
        if arr is None:
            raise UserError(f"BERT checkpoint lacks {hf}")
        obj = model
        *path, leaf = ours.split(".")
        for name in path:
            obj = obj[int(name)] if name.isdigit() else getattr(obj, name)
        param = getattr(obj, leaf)
        arr = np.asarray(arr, np.float32)
        if arr.shape != param[...].shape:
            raise UserError(f"{hf}: shape {arr.shape}, the config says {param[...].shape}")
        param[...] = jnp.asarray(arr)


def is_bert_folder(path: Path) -> bool:
    f = Path(path) / "config.json"
    try:
        return f.is_file() and json.loads(f.read_text()).get("model_type") == "bert"
    except (
        OSError,
        ValueError,
        AttributeError,
        RecursionError,
    ):  # not UTF-8, not JSON, not an object: the loader names it
        return False


def load_encoder(path: str | Path, *, pooling: str | None = None) -> tuple[BertEncoder, BertConfig]:
    """(model, cfg) from a folder with config.json, model.safetensors and, for a sentence
    encoder, modules.json / 1_Pooling (read_pooling); `pooling` overrides the files' choice."""
    from safetensors.numpy import load_file

    path = Path(path)
    try:
        hf = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read config.json ({e})") from None
    cfg = BertConfig.from_hf(hf, read_pooling(path))
    if pooling is not None:
        cfg = replace(cfg, pooling=pooling)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise UserError(f"{path}: no *.safetensors weights")
    tensors = {}
    for f in files:
        tensors.update(load_file(str(f)))
    model = BertEncoder(cfg, nnx.Rngs(0))
    load_bert_state(model, tensors)
    return model, cfg
