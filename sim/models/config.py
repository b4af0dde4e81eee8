"""One config for every supported family, read from a Hugging Face config.json.

    family        the module that builds it: "llama" (Llama 2/3, SmolLM2/3, Mistral, Qwen2/3,
                  OLMo 2, Phi-3, Granite), "gemma3", "gemma2" (Gemma 3's module), "gpt2",
                  "neox" (GPT-NeoX / Pythia), "opt", "moe" (Mixtral, Qwen3-MoE), the last three
                  read by their own module's config_from_hf (sim/models/hf_fields.py); what
                  differs inside a module is a typed field (qk_norm, post_norms, softcaps,
                  multipliers, rope), never a family test inside a shared layer
    d_model       width of the residual stream h
    n_heads       query heads; n_kv_heads < n_heads is grouped-query attention
    layer_types   per layer "full" or "sliding" (sliding window attention)

Presets (`tiny_configs.tiny(...)`) give small random configs of each family for the
consistency tests, as penzai does for each architecture variant.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from hemorrhage.errors import UserError
from hemorrhage.sim.models.rope import Rope, plain_rope, rope_from_hf

FAMILIES = ("llama", "gemma3", "gemma2", "gpt2", "neox", "opt", "moe")
# HF model_type -> our family
MODEL_TYPES = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "gemma3_text": "gemma3",
    "gemma3": "gemma3",
    "gemma2": "gemma2",
    "qwen3": "llama",
    "olmo2": "llama",
    "phi3": "llama",
    "granite": "llama",
    "smollm3": "llama",
    "gpt2": "gpt2",
    "gpt_neox": "neox",
    "opt": "opt",
    "mixtral": "moe",
    "qwen3_moe": "moe",
}
# families whose config.json is read by their own module (sim/models/<module>.py: config_from_hf)
_OWN_PARSER = {"neox": "neox", "opt": "opt", "moe": "moe"}


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
    rope_theta: float = 10000.0  # with rope_scale, rotary_dim: the plain RoPE built when `rope` is None
    rope_scale: float = 1.0  # linear RoPE scaling factor (positions / scale)
    rope: Rope | None = None  # the RoPE schedule (sim/models/rope.py); GPT-2 never reads it
    rope_local: Rope | None = None  # sliding layers' own schedule (Gemma 3); None: `rope`
    nope_layers: tuple[bool, ...] = ()  # per layer, True where no RoPE is applied (SmolLM3)
    qk_norm: str = "none"  # none | head (RMSNorm per head: Qwen3, Gemma 3) | proj (over all heads: OLMo 2)
    norm_plus_one: bool = False  # RMSNorm gain 1 + w (Gemma) instead of w
    post_norms: bool = False  # OLMo 2: h + norm(sublayer(h)), no norm before the sublayer
    attn_softcap: float | None = None  # scores s <- c tanh(s / c) before the mask (Gemma 2)
    final_softcap: float | None = None  # logits z <- c tanh(z / c) (Gemma 2)
    embed_scale: float = 1.0  # h_0 = E[tokens] * this (Gemma: sqrt(d); Granite: embedding_multiplier)
    residual_scale: float = 1.0  # h <- h + this * branch (Granite: residual_multiplier)
    attn_multiplier: float | None = None  # the score scale itself, replacing 1/sqrt(D) (Granite)
    logit_divisor: float = 1.0  # z <- z / this (Granite: logits_scaling)
    fused_hf: bool = False  # HF stores q/k/v as one qkv_proj and gate/up as one gate_up_proj (Phi-3)
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
    # GPT-NeoX, OPT and mixtures of experts (sim/models/neox.py, opt.py, moe.py)
    rotary_dim: int | None = None  # rotate only the first rotary_dim dims of each head (None: all)
    parallel_residual: bool = False  # NeoX: h + attn(ln1 h) + mlp(ln2 h)
    norm_before: bool = True  # OPT's do_layer_norm_before (False: post-LN, as opt-350m)
    final_norm: bool = True  # OPT: a final LayerNorm before the head
    embed_dim: int | None = None  # OPT's word_embed_proj_dim when it differs from d_model
    n_experts: int = 0  # experts per MoE layer (0: dense)
    experts_per_token: int = 0  # top-k
    norm_topk_prob: bool = True  # renormalise the top-k routing weights to sum to 1
    moe_d_ff: int = 0  # each expert's hidden width
    moe_layers: tuple[bool, ...] = ()  # per layer: MoE (True) or dense MLP (False)

    def __post_init__(self):
        if not self.layer_types:
            object.__setattr__(self, "layer_types", ("full",) * self.n_layers)
        if len(self.layer_types) != self.n_layers:
            raise UserError(f"config: {len(self.layer_types)} layer_types for {self.n_layers} layers")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff"):
            if int(getattr(self, name)) <= 0:
                raise UserError(f"config: {name} must be a positive integer, got {getattr(self, name)!r}")
        if self.n_heads % self.n_kv_heads:
            raise UserError(f"config: n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.query_pre_attn_scalar is not None and not float(self.query_pre_attn_scalar) > 0:
            raise UserError(f"config: query_pre_attn_scalar must be > 0, got {self.query_pre_attn_scalar!r}")
        if self.family == "gpt2" and self.n_heads * self.head_dim != self.d_model:
            raise UserError("config: gpt2 needs n_heads * head_dim == d_model")
        if self.qk_norm not in ("none", "head", "proj"):
            raise UserError(f"config: qk_norm must be none, head or proj, got {self.qk_norm!r}")
        if self.nope_layers and len(self.nope_layers) != self.n_layers:
            raise UserError(f"config: {len(self.nope_layers)} no-RoPE flags for {self.n_layers} layers")
        if self.rope is None:  # a plain (or linearly scaled) RoPE from the scalar fields
            dim = int(self.rotary_dim or self.head_dim)
            object.__setattr__(self, "rope", plain_rope(self.rope_theta, dim, self.rope_scale))

    def layer_rope(self, layer: int) -> Rope | None:
        """The RoPE of layer `layer`: None on a NoPE layer, the local schedule on a sliding
        layer where the config has one (Gemma 3), else the global one."""
        if self.nope_layers and self.nope_layers[layer]:
            return None
        if self.layer_types[layer] == "sliding" and self.rope_local is not None:
            return self.rope_local
        return self.rope

    @property
    def attn_scale(self) -> float:
        if self.attn_multiplier is not None:
            return float(self.attn_multiplier)
        if self.query_pre_attn_scalar is not None:
            return float(self.query_pre_attn_scalar) ** -0.5
        return self.head_dim**-0.5

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    # ------------------------------------------------------------------ HF I/O
    @classmethod
    def from_hf(cls, hf: dict) -> "ModelConfig":
        """Read a transformers config.json dict; raise UserError if unsupported or malformed
        (sim/hub/preflight.py checks every field's type and range first)."""
        from hemorrhage.sim.hub.preflight import check_config

        if not isinstance(hf, dict):
            raise UserError("config.json is not a JSON object")
        check_config(hf)
        if hf.get("model_type") == "gemma3" and "text_config" in hf:
            hf = {**hf["text_config"], "model_type": "gemma3_text"}
        mt = hf.get("model_type")
        if mt not in MODEL_TYPES:
            raise UserError(f"unsupported model_type {mt!r}; supported: {', '.join(sorted(MODEL_TYPES))}")
        family = MODEL_TYPES[mt]
        if family in _OWN_PARSER:
            import importlib

            return importlib.import_module(f"hemorrhage.sim.models.{_OWN_PARSER[family]}").config_from_hf(cls, hf)
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
            family="gpt2",
            model_type="gpt2",
            vocab_size=int(hf["vocab_size"]),
            d_model=d,
            n_layers=int(hf["n_layer"]),
            n_heads=nh,
            n_kv_heads=nh,
            head_dim=d // nh,
            d_ff=int(hf.get("n_inner") or 4 * d),
            norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
            act="gelu_tanh",
            qkv_bias=True,
            o_bias=True,
            mlp_bias=True,
            tie_embeddings=True,
            max_positions=int(hf.get("n_positions", 1024)),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
        )

    @classmethod
    def _from_rope_family(cls, hf: dict, family: str, mt: str) -> "ModelConfig":
        hf = {**_DEFAULTS.get(mt, {}), **hf}  # a field left out means transformers' default
        d, nh = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        n_layers = int(hf["num_hidden_layers"])
        head_dim = int(hf.get("head_dim") or d // nh)
        max_pos = int(hf.get("max_position_embeddings", 8192))
        rope, local = _rope_params(hf)
        omax = hf.get("original_max_position_embeddings")
        window = hf.get("sliding_window")
        if mt in ("qwen2", "qwen3", "smollm3") and not hf.get("use_sliding_window"):
            window = None  # their configs keep a window size that only use_sliding_window switches on
        if hf.get("layer_types"):
            layer_types = tuple("sliding" if t == "sliding_attention" and window else "full" for t in hf["layer_types"])
        elif family in ("gemma3", "gemma2"):
            every = int(hf.get("sliding_window_pattern", 6 if family == "gemma3" else 2))
            layer_types = tuple("full" if (i + 1) % every == 0 else "sliding" for i in range(n_layers))
        elif mt in ("mistral", "phi3") and window:
            layer_types = ("sliding",) * n_layers
        elif mt in ("qwen2", "qwen3") and hf.get("use_sliding_window") and window:
            first_full = int(hf.get("max_window_layers", n_layers))
            layer_types = tuple("full" if i < first_full else "sliding" for i in range(n_layers))
        else:
            layer_types = ("full",) * n_layers
        gemma = family in ("gemma3", "gemma2")
        # Gemma's modeling reads hidden_activation; older Gemma configs carry a hidden_act beside it
        act = (hf.get("hidden_activation") if gemma else None) or hf.get("hidden_act") or "silu"
        acts = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}
        if act not in acts:
            raise UserError(f"unsupported activation {act!r}")
        nope = ()
        if mt == "smollm3":  # no_rope_layers[i] = 1 where layer i uses RoPE
            flags = hf.get("no_rope_layers") or [
                int((i + 1) % int(hf.get("no_rope_layer_interval", 4)) != 0) for i in range(n_layers)
            ]
            nope = tuple(not bool(f) for f in flags)
        eos = hf.get("eos_token_id")
        bias = bool(hf.get("attention_bias", False))
        return cls(
            family=family,
            model_type=mt,
            vocab_size=int(hf["vocab_size"]),
            d_model=d,
            n_layers=n_layers,
            n_heads=nh,
            n_kv_heads=int(hf.get("num_key_value_heads") or nh),
            head_dim=head_dim,
            d_ff=int(hf["intermediate_size"]),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            act=acts[act],
            rope=rope_from_hf(rope, head_dim, max_pos, original_max=omax, partial_rotary=mt == "phi3"),
            rope_local=None
            if local is None
            else rope_from_hf(local, head_dim, max_pos, original_max=omax, where="rope_parameters.sliding_attention"),
            nope_layers=nope,
            qk_norm=_QK_NORM.get(mt, "none"),
            norm_plus_one=gemma,
            post_norms=mt == "olmo2",
            attn_softcap=_opt_float(hf.get("attn_logit_softcapping")) if gemma else None,
            final_softcap=_opt_float(hf.get("final_logit_softcapping")) if gemma else None,
            embed_scale=d**0.5 if gemma else float(hf.get("embedding_multiplier", 1.0)),
            residual_scale=float(hf.get("residual_multiplier", 1.0)),
            attn_multiplier=_opt_float(hf.get("attention_multiplier")),
            logit_divisor=float(hf.get("logits_scaling", 1.0)),
            fused_hf=mt == "phi3",
            sliding_window=int(window) if window else None,
            layer_types=layer_types,
            # Qwen2 hard-codes q/k/v biases; elsewhere attention_bias covers q, k, v and o.
            qkv_bias=mt == "qwen2" or bias,
            o_bias=mt != "qwen2" and bias,
            mlp_bias=bool(hf.get("mlp_bias", False)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            query_pre_attn_scalar=hf.get("query_pre_attn_scalar") if gemma else None,
            max_positions=max_pos,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=eos[0] if isinstance(eos, list) else eos,
        )

    @classmethod
    def from_json_file(cls, path: str | Path) -> "ModelConfig":
        from hemorrhage.sim.hub.preflight import read_config

        return cls.from_hf(read_config(Path(path)))


# model_type -> q/k norm kind; the rest have none
_QK_NORM = {"qwen3": "head", "gemma3_text": "head", "olmo2": "proj"}
# transformers' defaults where they differ from the reader's fallbacks (a config.json that
# leaves the field out runs with these)
_DEFAULTS = {
    "gemma2": {
        "tie_word_embeddings": True,
        "query_pre_attn_scalar": 256,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
    },
    "gemma3_text": {"tie_word_embeddings": True, "query_pre_attn_scalar": 256},
    "smollm3": {"tie_word_embeddings": True},
    "olmo2": {"rms_norm_eps": 1e-5},
    "phi3": {"rms_norm_eps": 1e-5},
}


def _opt_float(v) -> float | None:
    return None if v is None else float(v)


def _rope_params(hf: dict) -> tuple[dict, dict | None]:
    """(global, sliding-layer or None) RoPE parameter dicts, rope_theta filled in.

    transformers 5 writes rope_parameters (nested per attention type for Gemma 3); 4 wrote
    rope_theta + rope_scaling.  Where both spellings are given they must agree: a value in one
    that the other contradicts is refused, never silently dropped."""
    rp, rs = hf.get("rope_parameters") or {}, hf.get("rope_scaling") or {}
    if rp and rs:
        norm = [{("rope_type" if k == "type" else k): v for k, v in x.items()} for x in (rp, rs)]
        for k in sorted(set(norm[0]) | set(norm[1]), key=lambda k: (k != "rope_type", k)):  # the kind first
            if k != "rope_theta" and norm[0].get(k) != norm[1].get(k):
                raise UserError(
                    f"config.json: rope_parameters.{k}={norm[0].get(k)!r} disagrees with "
                    f"rope_scaling.{k}={norm[1].get(k)!r}; keep one spelling"
                )
    merged = dict(rp or rs)
    nested = {
        k: dict(merged.pop(k)) for k in ("full_attention", "sliding_attention") if isinstance(merged.get(k), dict)
    }
    glob = nested.get("full_attention", merged)
    local = nested.get("sliding_attention")
    if local is None and hf.get("model_type") == "gemma3_text":
        local = {"rope_theta": hf.get("rope_local_base_freq", 10000.0)}
    for name in ("rope_theta", "partial_rotary_factor"):
        top = hf.get(name)
        for part in [glob] + ([local] if nested.get("sliding_attention") is not None else []):
            if top is not None and part.get(name) is not None and float(part[name]) != float(top):
                raise UserError(f"config.json: {name}={top!r} disagrees with rope_parameters' {part[name]!r}")
            if top is not None:
                part.setdefault(name, top)
    glob.setdefault("rope_theta", 2000000.0 if hf.get("model_type") == "smollm3" else 10000.0)
    return glob, local
