"""Every config.json key of each supported family, classified, so none is silently ignored.

    implemented   read by ModelConfig.from_hf and honoured by the forward
    irrelevant    no effect on an fp32 inference forward of the causal LM (dropout, init,
                  cache, ids, labels, precision hints, heads we do not build)
    refused       changes the forward and is not implemented: any value but the listed
                  ones (None always means transformers' default, which is listed) is one
                  UserError naming the key, before any weight is read

`check_keys(hf, model_type)` enforces the refused values (sim/hub/preflight.py calls it).  A key
that no table lists and the family's transformers config class does not know is ignored by
transformers as well (it only becomes an attribute nobody reads), so it is ignored here
too; tests/test_config_keys.py walks every key of each family's transformers config class,
and every config attribute its modeling file reads, and fails on one not classified here:
a transformers upgrade that adds a key is caught there.  The GPT-NeoX, OPT and MoE tables
live in sim/models/hf_fields.py (same layout); `TABLES` holds both.
"""

from __future__ import annotations

from hemorrhage.errors import UserError
from hemorrhage.sim.models import hf_fields

# keys of every transformers PreTrainedConfig that leave a causal LM's forward unchanged
_BASE_IRRELEVANT = {
    "_name_or_path",
    "architectures",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "unk_token_id",
    "sep_token_id",
    "chunk_size_feed_forward",
    "dtype",
    "torch_dtype",
    "id2label",
    "label2id",
    "num_labels",
    "initializer_range",
    "is_encoder_decoder",
    "output_attentions",
    "output_hidden_states",
    "problem_type",
    "return_dict",
    "transformers_version",
    "use_cache",
    "attention_dropout",
    "_attn_implementation",
    "tokenizer_class",
    "use_return_dict",
}
_ROPE_FAMILY = {
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "rms_norm_eps",
    "max_position_embeddings",
    "tie_word_embeddings",
    "rope_parameters",
    "rope_scaling",
    "rope_theta",
    "original_max_position_embeddings",
}
# partial_rotary_factor: only Phi-3's attention rotates part of a head; elsewhere transformers
# would rotate all of it with fewer frequencies, so only 1 is run.
_NO_PARTIAL = {"partial_rotary_factor": (1.0, 1)}


def _table(implemented=(), irrelevant=(), refused=None, *, partial_rotary: bool = False) -> dict:
    implemented = _ROPE_FAMILY | set(implemented) | ({"partial_rotary_factor"} if partial_rotary else set())
    return {
        "implemented": implemented,
        "irrelevant": _BASE_IRRELEVANT | set(irrelevant),
        "refused": {**({} if partial_rotary else _NO_PARTIAL), **(refused or {})},
    }


_GEMMA = (
    "attention_bias",
    "hidden_activation",
    "query_pre_attn_scalar",
    "sliding_window",
    "layer_types",
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "sliding_window_pattern",
    "_sliding_window_pattern",
)
CONFIG_KEYS = {
    # pretraining_tp > 1 splits Llama's matmuls into slices: the same sums in another order
    "llama": _table({"attention_bias", "mlp_bias"}, {"pretraining_tp"}),
    "mistral": _table({"sliding_window"}),
    "qwen2": _table({"sliding_window", "use_sliding_window", "max_window_layers", "layer_types"}),
    "qwen3": _table({"attention_bias", "sliding_window", "use_sliding_window", "max_window_layers", "layer_types"}),
    "gemma2": _table(_GEMMA, refused={"use_bidirectional_attention": (False,)}),
    "gemma3_text": _table(_GEMMA + ("rope_local_base_freq",), refused={"use_bidirectional_attention": (False,)}),
    "phi3": _table({"sliding_window"}, {"embd_pdrop", "resid_pdrop"}, partial_rotary=True),
    "olmo2": _table({"attention_bias"}),
    "granite": _table(
        {
            "attention_bias",
            "mlp_bias",
            "embedding_multiplier",
            "residual_multiplier",
            "attention_multiplier",
            "logits_scaling",
        }
    ),
    "smollm3": _table(
        {
            "attention_bias",
            "mlp_bias",
            "sliding_window",
            "use_sliding_window",
            "layer_types",
            "no_rope_layers",
            "no_rope_layer_interval",
        }
    ),
    "gpt2": {
        "implemented": {
            "model_type",
            "vocab_size",
            "n_embd",
            "n_head",
            "n_layer",
            "n_inner",
            "n_positions",
            "layer_norm_epsilon",
            "activation_function",
            "tie_word_embeddings",
            "scale_attn_weights",
            "scale_attn_by_inverse_layer_idx",
        },
        # reorder_and_upcast_attn: fp32 softmax ordering only; add_cross_attention: layers that
        # run only with encoder states; summary_*: the sequence-classification head
        "irrelevant": _BASE_IRRELEVANT
        | {
            "attn_pdrop",
            "embd_pdrop",
            "resid_pdrop",
            "reorder_and_upcast_attn",
            "add_cross_attention",
            "summary_activation",
            "summary_first_dropout",
            "summary_proj_to_labels",
            "summary_type",
            "summary_use_proj",
            "summary_last_dropout",
            "classifier_dropout",
            "hidden_dropout",
        },
        "refused": {
            "activation_function": ("gelu_new", "gelu_pytorch_tanh"),
            "scale_attn_weights": (True,),
            "scale_attn_by_inverse_layer_idx": (False,),
            "tie_word_embeddings": (True,),
        },
    },
}

# every family with a table: ours and hf_fields' (GPT-NeoX, OPT, MoE)
TABLES = {**CONFIG_KEYS, **hf_fields.CONFIG_KEYS}


def allowed(value) -> tuple:
    """The refused table's entry as a tuple of the values that run (hf_fields lists one)."""
    return value if isinstance(value, tuple) else (value,)


def _same(v, ok) -> bool:
    """v == ok, without True == 1 (a flag is not a number)."""
    return isinstance(v, bool) == isinstance(ok, bool) and v == ok


def check_keys(hf: dict, model_type: str) -> None:
    """UserError naming the first key whose value changes the forward in a way not implemented."""
    table = CONFIG_KEYS.get(model_type)
    if table is None:
        return
    for key in sorted(table["refused"]):
        v = hf.get(key)
        if v is not None and not any(_same(v, ok) for ok in allowed(table["refused"][key])):
            oks = " or ".join(repr(ok) for ok in allowed(table["refused"][key]))
            raise UserError(
                f"config.json for {model_type}: {key}={v!r} changes the forward and is not implemented (only {oks} is)"
            )
