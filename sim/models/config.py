"""One config for every supported family, read from a Hugging Face config.json.

    family        "llama" (Llama, SmolLM2, Mistral, Qwen2), "gemma3", "gpt2"
    d_model       width of the residual stream h
    n_heads       query heads; n_kv_heads < n_heads is grouped-query attention
    layer_types   per layer "full" or "sliding" (sliding window attention)

Presets (`tiny(...)`) give small random configs of each family for the
consistency tests, as penzai does for each architecture variant.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from hemorrhage.errors import UserError

FAMILIES = ("llama", "gemma3", "gpt2")
# HF model_type -> our family
MODEL_TYPES = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "gemma3_text": "gemma3",
    "gemma3": "gemma3",
    "gpt2": "gpt2",
}


@dataclass(frozen=True)
class ModelConfig:
    family: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    norm_eps: float = 1e-5
    act: str = "silu"  # silu | gelu_tanh
    rope_theta: float = 10000.0
    rope_scale: float = 1.0  # linear RoPE scaling factor (positions / scale)
    rope_local_theta: float = 10000.0  # Gemma 3 sliding layers
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = ()
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    tie_embeddings: bool = True
    query_pre_attn_scalar: float | None = None  # Gemma: scale = this ** -0.5
    max_positions: int = 8192
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    model_type: str = ""

    def __post_init__(self):
        if not self.layer_types:
            object.__setattr__(self, "layer_types", ("full",) * self.n_layers)
        if len(self.layer_types) != self.n_layers:
            raise UserError(
                f"config: {len(self.layer_types)} layer_types for {self.n_layers} layers"
            )
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff"):
            if int(getattr(self, name)) <= 0:
                raise UserError(f"config: {name} must be a positive integer, got {getattr(self, name)!r}")
        if self.n_heads % self.n_kv_heads:
            raise UserError(f"config: n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.query_pre_attn_scalar is not None and not float(self.query_pre_attn_scalar) > 0:
            raise UserError(f"config: query_pre_attn_scalar must be > 0, got {self.query_pre_attn_scalar!r}")
        if self.family == "gpt2" and self.n_heads * self.head_dim != self.d_model:
            raise UserError("config: gpt2 needs n_heads * head_dim == d_model")

    @property
    def attn_scale(self) -> float:
        if self.query_pre_attn_scalar is not None:
            return float(self.query_pre_attn_scalar) ** -0.5
        return self.head_dim**-0.5

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    # ------------------------------------------------------------------ HF I/O
    @classmethod
    def from_hf(cls, hf: dict) -> "ModelConfig":
        """Read a transformers config.json dict; raise UserError if unsupported or malformed
        (sim/preflight.py checks every field's type and range first)."""
        from hemorrhage.sim.preflight import check_config

        if not isinstance(hf, dict):
            raise UserError("config.json is not a JSON object")
        check_config(hf)
        if hf.get("model_type") == "gemma3" and "text_config" in hf:
            hf = {**hf["text_config"], "model_type": "gemma3_text"}
        mt = hf.get("model_type")
        if mt not in MODEL_TYPES:
            raise UserError(
                f"unsupported model_type {mt!r}; supported: {', '.join(sorted(MODEL_TYPES))}"
            )
        family = MODEL_TYPES[mt]
        try:
            if family == "gpt2":
                return cls._from_gpt2(hf)
            return cls._from_rope_family(hf, family, mt)
        except KeyError as e:
            raise UserError(f"config.json for {mt} lacks the field {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise UserError(f"config.json for {mt} has a malformed field: {e}") from None

    @classmethod
    def _from_gpt2(cls, hf: dict) -> "ModelConfig":
        d, nh = int(hf["n_embd"]), int(hf["n_head"])
        if d % nh:
            raise UserError(f"config: n_embd={d} is not divisible by n_head={nh}")
        return cls(
            family="gpt2", model_type="gpt2", vocab_size=int(hf["vocab_size"]), d_model=d,
            n_layers=int(hf["n_layer"]), n_heads=nh, n_kv_heads=nh, head_dim=d // nh,
            d_ff=int(hf.get("n_inner") or 4 * d), norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
            act="gelu_tanh", qkv_bias=True, o_bias=True, mlp_bias=True, tie_embeddings=True,
            max_positions=int(hf.get("n_positions", 1024)),
            bos_token_id=hf.get("bos_token_id"), eos_token_id=hf.get("eos_token_id"),
        )

    @classmethod
    def _from_rope_family(cls, hf: dict, family: str, mt: str) -> "ModelConfig":
        d, nh = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        n_layers = int(hf["num_hidden_layers"])
        rope = _rope_params(hf)
        global_rope = rope.get("full_attention", rope)
        local_rope = rope.get("sliding_attention", {"rope_theta": hf.get("rope_local_base_freq", 10000.0)})
        window = hf.get("sliding_window")
        if hf.get("layer_types"):
            layer_types = tuple("sliding" if t == "sliding_attention" else "full" for t in hf["layer_types"])
        elif family == "gemma3":
            types = [
                "full_attention" if (i + 1) % int(hf.get("sliding_window_pattern", 6)) == 0
                else "sliding_attention" for i in range(n_layers)
            ]
            layer_types = tuple("sliding" if t == "sliding_attention" else "full" for t in types)
        elif mt == "mistral" and window:
            layer_types = ("sliding",) * n_layers
        elif mt == "qwen2" and hf.get("use_sliding_window") and window:
            first_full = int(hf.get("max_window_layers", n_layers))
            layer_types = tuple("full" if i < first_full else "sliding" for i in range(n_layers))
        else:
            layer_types = ("full",) * n_layers
        act = hf.get("hidden_act") or hf.get("hidden_activation") or "silu"
        acts = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}
        if act not in acts:
            raise UserError(f"unsupported activation {act!r}")
        eos = hf.get("eos_token_id")
        return cls(
            family=family, model_type=mt, vocab_size=int(hf["vocab_size"]), d_model=d,
            n_layers=n_layers, n_heads=nh, n_kv_heads=int(hf.get("num_key_value_heads") or nh),
            head_dim=int(hf.get("head_dim") or d // nh), d_ff=int(hf["intermediate_size"]),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)), act=acts[act],
            rope_theta=float(global_rope.get("rope_theta", 10000.0)),
            rope_scale=_rope_scale(global_rope),
            rope_local_theta=float(local_rope.get("rope_theta", 10000.0)),
            sliding_window=int(window) if window else None, layer_types=layer_types,
            # Qwen2 hard-codes q/k/v biases; Llama's attention_bias covers q, k, v and o.
            qkv_bias=mt == "qwen2" or bool(hf.get("attention_bias", False)),
            o_bias=mt != "qwen2" and bool(hf.get("attention_bias", False)),
            mlp_bias=bool(hf.get("mlp_bias", False)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", family == "gemma3")),
            query_pre_attn_scalar=hf.get("query_pre_attn_scalar") if family == "gemma3" else None,
            max_positions=int(hf.get("max_position_embeddings", 8192)),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=eos[0] if isinstance(eos, list) else eos,
        )

    @classmethod
    def from_json_file(cls, path: str | Path) -> "ModelConfig":
        from hemorrhage.sim.preflight import read_config

        return cls.from_hf(read_config(Path(path)))


def _rope_params(hf: dict) -> dict:
    """transformers v5 writes rope_parameters; v4 wrote rope_theta + rope_scaling."""
    rope = hf.get("rope_parameters")
    if rope is None:
        rope = dict(hf.get("rope_scaling") or {})
        rope.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
    return rope


def _rope_scale(rope: dict) -> float:
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return 1.0
    if kind == "linear":
        return float(rope["factor"])
    raise UserError(f"unsupported RoPE scaling {kind!r} (supported: default, linear)")


# ---------------------------------------------------------------------- presets
def tiny(model_type: str, **overrides) -> dict:
    """A small random HF config dict of each variant, for the equality tests."""
    base = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=False)
    presets = {
        "llama": dict(model_type="llama", rope_theta=10000.0),
        "mistral": dict(model_type="mistral", rope_theta=10000.0, sliding_window=6),
        "qwen2": dict(model_type="qwen2", rope_theta=10000.0),
        "gemma3_text": dict(model_type="gemma3_text", num_key_value_heads=1, head_dim=16,
                            query_pre_attn_scalar=16, sliding_window=5, tie_word_embeddings=True,
                            rope_theta=10000.0, rope_local_base_freq=1000.0,
                            hidden_activation="gelu_pytorch_tanh",
                            layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
        "gpt2": dict(model_type="gpt2", vocab_size=97, n_embd=32, n_layer=3, n_head=4,
                     n_positions=128, layer_norm_epsilon=1e-5),
    }
    if model_type == "gpt2":
        return {**presets["gpt2"], **overrides}
    return {**base, **presets[model_type], **overrides}
