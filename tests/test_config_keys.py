"""No config field is silently ignored (issues 21 and 28).

Every key of each supported family's transformers config class, and every config attribute
its modeling file reads, is classified in sim/models/config_keys.py (implemented, irrelevant
to the forward, or refused): a transformers upgrade that adds one fails here.  A refused
value is one UserError naming the key, found from config.json alone, before the weights.
"""

import json
import re
from pathlib import Path

import pytest
from helpers import assert_one_line_error

from hemorrhage.cli import main
from hemorrhage.errors import UserError
from hemorrhage.sim.models import ModelConfig, tiny
from hemorrhage.sim.models.config_keys import TABLES, allowed

# model_type -> the transformers modeling module that runs it
MODULES = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3",
    "phi3": "phi3",
    "olmo2": "olmo2",
    "granite": "granite",
    "smollm3": "smollm3",
    "gpt2": "gpt2",
    "gpt_neox": "gpt_neox",
    "opt": "opt",
    "mixtral": "mixtral",
    "qwen3_moe": "qwen3_moe",
}
# what the multimodal Gemma 3 wrapper in the same modeling file reads: not the text model's forward
_GEMMA3_WRAPPER = {"text_config", "vision_config", "image_token_id", "mm_tokens_per_image", "get_text_config"}


def _keys_transformers_knows(model_type: str) -> set[str]:
    import transformers
    from transformers import AutoConfig

    cfg = AutoConfig.for_model(model_type)
    keys = set(cfg.to_dict())
    src = (
        Path(transformers.__file__).parent / "models" / MODULES[model_type] / f"modeling_{MODULES[model_type]}.py"
    ).read_text()
    read = set(re.findall(r"config\.([A-Za-z_]\w*)", src)) | set(
        re.findall(r"getattr\((?:self\.)?config,\s*\"(\w+)\"", src)
    )
    amap = getattr(cfg, "attribute_map", {}) or {}
    read = {amap.get(k, k) for k in read if not callable(getattr(type(cfg), k, None))}
    if model_type == "gemma3_text":
        read -= _GEMMA3_WRAPPER
    return keys | read


@pytest.mark.parametrize("model_type", sorted(TABLES))
def test_every_transformers_key_is_classified(model_type):
    table = TABLES[model_type]
    classified = set(table["implemented"]) | set(table["irrelevant"]) | set(table["refused"])
    missing = sorted(_keys_transformers_knows(model_type) - classified)
    assert not missing, f"{model_type}: classify these keys in sim/models/config_keys.py: {missing}"


def test_the_classification_test_catches_a_new_key(monkeypatch):
    """The walk above is not vacuous: a key transformers knows and no table lists fails it."""
    table = TABLES["llama"]
    monkeypatch.setitem(TABLES, "llama", {**table, "implemented": set(table["implemented"]) - {"mlp_bias"}})
    with pytest.raises(AssertionError, match="mlp_bias"):
        test_every_transformers_key_is_classified("llama")


def _other_value(ok_values: tuple):
    """A value none of `ok_values` is: the flipped flag, another string, another number."""
    ok = ok_values[0]
    if isinstance(ok, bool):
        return not ok
    if isinstance(ok, str):
        return "relu"
    return 0.5 if ok != 0.5 else 0.25


_OURS = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "olmo2", "granite", "smollm3", "gpt2"]
_TINY = {"gemma3_text": "gemma3_text", "gpt2": "gpt2"}


@pytest.mark.parametrize("model_type", _OURS)
def test_every_refused_value_is_refused_naming_its_key(model_type):
    table = TABLES[model_type]
    base = tiny(_TINY.get(model_type, model_type))
    ModelConfig.from_hf(base)  # the preset itself loads
    for key, ok in table["refused"].items():
        for value in allowed(ok):
            ModelConfig.from_hf({**base, key: value})  # the value we run is accepted
        with pytest.raises(UserError, match=key):
            ModelConfig.from_hf({**base, key: _other_value(allowed(ok))})


LLAMA3 = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}


def test_llama3_rope_in_rope_parameters_is_read_not_ignored():
    """Issue 21: Llama 3 RoPE in the v5 spelling ran as plain RoPE with exit 0."""
    plain = ModelConfig.from_hf(tiny("llama"))
    for extra in ({}, {"rope_scaling": None}, {"rope_scaling": dict(LLAMA3)}):
        cfg = ModelConfig.from_hf({**tiny("llama"), "rope_parameters": dict(LLAMA3), **extra})
        assert cfg.rope.kind == "llama3" and cfg.rope.inv_freq != plain.rope.inv_freq


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "gemma3_text", "qwen3", "phi3"])
def test_rope_parameters_beside_a_contradicting_rope_scaling_is_refused(model_type):
    hf = {**tiny(model_type), "rope_parameters": dict(LLAMA3), "rope_scaling": {"type": "linear", "factor": 2.0}}
    hf.pop("rope_theta", None)
    with pytest.raises(UserError, match=r"rope_parameters\.\w+=.* disagrees with rope_scaling"):
        ModelConfig.from_hf(hf)


@pytest.mark.parametrize(
    "model_type,fields,key",
    [
        ("llama", {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}}, "dynamic"),
        (
            "qwen2",
            {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 2]}},
            "mrope_section",
        ),
        ("mistral", {"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
        ("gemma3_text", {"use_bidirectional_attention": True}, "use_bidirectional_attention"),
        ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
        ("gpt2", {"activation_function": "relu"}, "activation_function"),
        ("llama", {"rope_parameters": {**LLAMA3, "beta_fast": 32}}, "beta_fast"),
        (
            "phi3",
            {
                "rope_parameters": {
                    "rope_type": "longrope",
                    "rope_theta": 1e4,
                    "short_factor": [1.0],
                    "long_factor": [1.0],
                }
            },
            "short_factor",
        ),
    ],
)
def test_forward_changing_fields_of_existing_families_are_refused(model_type, fields, key):
    hf = {**tiny(model_type), **fields}
    if "rope_parameters" in fields:
        hf.pop("rope_theta", None)
    with pytest.raises(UserError, match=key):
        ModelConfig.from_hf(hf)


def test_cli_refuses_before_reading_weights(capsys, tmp_path):
    """One line, exit 2, from config.json alone: the weights file is garbage and never read."""
    hf = {**tiny("llama"), "rope_parameters": dict(LLAMA3), "rope_scaling": {"rope_type": "default"}}
    hf.pop("rope_theta")
    (tmp_path / "config.json").write_text(json.dumps(hf))
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 16)
    capsys.readouterr()
    code = main(["check", "--model", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert_one_line_error(code, err, "rope_type", "rope_scaling")


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3", "smollm3"])
@pytest.mark.parametrize("use", [False, True])
def test_sliding_window_is_on_exactly_where_transformers_turns_it_on(model_type, use):
    """Qwen2/3 and SmolLM3 keep a window size that only use_sliding_window switches on."""
    from transformers import AutoConfig

    hf = {
        **tiny(model_type),
        "sliding_window": 4,
        "use_sliding_window": use,
        "layer_types": ["full_attention", "sliding_attention", "sliding_attention"],
    }
    ours = ModelConfig.from_hf(hf)
    ref = AutoConfig.for_model(**hf)
    want = [
        ref.sliding_window if t == "sliding_attention" and (model_type != "smollm3" or use) else None
        for t in ref.layer_types
    ]
    got = [ours.sliding_window if t == "sliding" else None for t in ours.layer_types]
    assert got == want and any(w for w in want) == use
