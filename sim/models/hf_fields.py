"""Reading the config.json fields of the GPT-NeoX, OPT and MoE families, and refusing
what they cannot run.

Every key of a family's transformers config falls in one of three classes (CONFIG_KEYS):

    implemented   read by `config_from_hf` and honoured by the forward
    irrelevant    no effect on an fp32 inference forward (dropout, init, cache, training)
    refused       changes the forward and is not implemented: a value other than the
                  default is one UserError naming the key, before any weight is read

tests/test_config_keys.py checks that every key transformers' config class and modeling file
know is in one of the three (sim/models/config_keys.py merges these tables with the others).
A key transformers does not know changes nothing there either, and is ignored here too.
"""

from __future__ import annotations

import math

from hemorrhage.errors import UserError

# transformers' activation names -> ours (sim.models.layers.activation)
ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu": "gelu",
    "relu": "relu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
}

_COMMON_IRRELEVANT = {
    "architectures",
    "dtype",
    "torch_dtype",
    "transformers_version",
    "use_cache",
    "initializer_range",
    "init_std",
    "attention_dropout",
    "hidden_dropout",
    "dropout",
    "classifier_dropout",
    "layerdrop",
    "pad_token_id",
    "output_router_logits",
    "router_aux_loss_coef",
    "router_jitter_noise",
    "is_decoder",
    "_name_or_path",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "id2label",
    "label2id",
    "problem_type",
    "tokenizer_class",
    "bos_token_id",
    "eos_token_id",
    "model_type",
    "attn_implementation",
    "_attn_implementation",
    "use_return_dict",
    "chunk_size_feed_forward",
    "prefix",
    "task_specific_params",
    "finetuning_task",
    "_commit_hash",
    "num_labels",
    "is_encoder_decoder",
}
# (implemented, refused -> the only value we run) per model_type
CONFIG_KEYS = {
    "gpt_neox": {
        "implemented": {
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "hidden_act",
            "layer_norm_eps",
            "tie_word_embeddings",
            "use_parallel_residual",
            "rope_parameters",
            "rope_scaling",
            "rope_theta",
            "rotary_emb_base",
            "rotary_pct",
            "partial_rotary_factor",
            "attention_bias",
            "head_dim",
        },
        "refused": {"use_sliding_window": False},
    },
    "opt": {
        "implemented": {
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "ffn_dim",
            "num_attention_heads",
            "do_layer_norm_before",
            "_remove_final_layer_norm",
            "word_embed_proj_dim",
            "activation_function",
            "enable_bias",
            "tie_word_embeddings",
        },
        "refused": {"layer_norm_elementwise_affine": True},
    },
    "mixtral": {
        "implemented": {
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "hidden_act",
            "rms_norm_eps",
            "tie_word_embeddings",
            "sliding_window",
            "num_experts_per_tok",
            "num_local_experts",
            "rope_parameters",
            "rope_scaling",
            "rope_theta",
        },
        "refused": {},
    },
    "qwen3_moe": {
        "implemented": {
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "hidden_act",
            "rms_norm_eps",
            "tie_word_embeddings",
            "rope_parameters",
            "rope_scaling",
            "rope_theta",
            "attention_bias",
            "decoder_sparse_step",
            "moe_intermediate_size",
            "num_experts_per_tok",
            "num_experts",
            "num_local_experts",
            "norm_topk_prob",
            "mlp_only_layers",
            "sliding_window",
            "max_window_layers",
        },
        # sliding_window is read only when use_sliding_window is true, which we refuse
        "refused": {"use_sliding_window": False},
    },
}
for _v in CONFIG_KEYS.values():
    _v["irrelevant"] = set(_COMMON_IRRELEVANT)
    _v["implemented"].add("max_position_embeddings")  # the longest sequence generate allows (OPT: its table)


def check_refused(hf: dict, mt: str) -> None:
    """UserError naming a refused key whose value is not the one we run (None: the default)."""
    for key, ok in CONFIG_KEYS[mt]["refused"].items():
        v = hf.get(key)
        if v is not None and (v != ok or isinstance(v, bool) != isinstance(ok, bool)):
            raise UserError(
                f"config.json for {mt}: {key}={v!r} changes the forward and is not implemented (only {ok!r} is)"
            )


def pos_int(hf: dict, key: str, default: int | None = None, *, lo: int = 1) -> int:
    """An integer field ≥ lo (UserError naming it otherwise, or if it is missing without a default)."""
    v = hf.get(key)
    if v is None:
        if default is None:
            raise UserError(f"config.json for {hf.get('model_type')} lacks the field {key!r}")
        return default
    if (
        isinstance(v, bool)
        or not isinstance(v, (int, float))
        or (isinstance(v, float) and not v.is_integer())
        or not lo <= int(v) < 2**31
    ):
        raise UserError(f"config.json: {key} must be an integer ≥ {lo}, got {v!r}")
    return int(v)


def pos_float(hf: dict, key: str, default: float) -> float:
    v = hf.get(key, default)
    v = default if v is None else v
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise UserError(f"config.json: {key} must be a positive finite number, got {v!r}")
    return float(v)


def flag(hf: dict, key: str, default: bool) -> bool:
    v = hf.get(key, default)
    v = default if v is None else v
    if not isinstance(v, bool):
        raise UserError(f"config.json: {key} must be true or false, got {v!r}")
    return v


def activation(hf: dict, *keys: str, default: str) -> str:
    name = next((hf[k] for k in keys if hf.get(k) is not None), default)
    if name not in ACTIVATIONS:
        raise UserError(
            f"config.json: {keys[0]}={name!r} is not a supported activation ({', '.join(sorted(ACTIVATIONS))})"
        )
    return ACTIVATIONS[name]


def rope(hf: dict, default_theta: float = 10000.0) -> tuple[float, float, float]:
    """(θ, linear scale, partial rotary factor) from rope_parameters (transformers v5) or
    rope_scaling + rope_theta / rotary_emb_base + rotary_pct (v4).  Any RoPE type other than
    default or linear is refused naming it."""
    params = hf.get("rope_parameters")
    if params is None:
        params = dict(hf.get("rope_scaling") or {})
    if not isinstance(params, dict):
        raise UserError(f"config.json: rope_parameters must be an object, got {params!r}")
    theta = params.get("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", default_theta)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ("default", "linear"):
        raise UserError(
            f"config.json: rope type {kind!r} is not implemented for {hf.get('model_type')} "
            "(supported: default, linear)"
        )
    scale = pos_float(params, "factor", 1.0) if kind == "linear" else 1.0
    partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", hf.get("rotary_pct", 1.0)))
    partial = pos_float({"partial_rotary_factor": partial}, "partial_rotary_factor", 1.0)
    if partial > 1.0:
        raise UserError(f"config.json: partial_rotary_factor must be in (0, 1], got {partial!r}")
    return pos_float({"rope_theta": theta}, "rope_theta", default_theta), scale, partial


def eos(hf: dict):
    v = hf.get("eos_token_id")
    return v[0] if isinstance(v, list) and v else v
