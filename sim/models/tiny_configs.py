"""Small random Hugging Face config dicts, one per supported variant, for the consistency tests
(as penzai keeps one per architecture variant): `ModelConfig.from_hf(tiny("qwen3"))` builds a
3-layer, 32-wide model; transformers builds the same config offline for the equality checks.
"""

from __future__ import annotations


def tiny(model_type: str, **overrides) -> dict:
    """A small random HF config dict of each variant, for the equality tests."""
    base = dict(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )
    presets = {
        "llama": dict(model_type="llama", rope_theta=10000.0),
        "mistral": dict(model_type="mistral", rope_theta=10000.0, sliding_window=6),
        "qwen2": dict(model_type="qwen2", rope_theta=10000.0),
        "gemma3_text": dict(
            model_type="gemma3_text",
            num_key_value_heads=1,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=5,
            tie_word_embeddings=True,
            rope_theta=10000.0,
            rope_local_base_freq=1000.0,
            hidden_activation="gelu_pytorch_tanh",
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        ),
        # RoPE schedules: original context 16 < the tests' 24-token windows and 17-token decodes,
        # so Llama 3's blend, YaRN's ramp and LongRoPE's switch to its long factors all act
        "llama3_rope": dict(
            model_type="llama",
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=10000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            ),
        ),
        "yarn": dict(
            model_type="qwen3",
            rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=16),
        ),
        "qwen3": dict(model_type="qwen3", rope_theta=10000.0),
        "olmo2": dict(model_type="olmo2", rope_theta=10000.0),
        "gemma2": dict(
            model_type="gemma2",
            num_key_value_heads=1,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=5,
            tie_word_embeddings=True,
            rope_theta=10000.0,
            hidden_activation="gelu_pytorch_tanh",
            attn_logit_softcapping=4.0,
            final_logit_softcapping=2.5,
        ),
        "phi3": dict(model_type="phi3", rope_theta=10000.0, partial_rotary_factor=0.5, head_dim=None, pad_token_id=0),
        "phi3_longrope": dict(
            model_type="phi3",
            head_dim=None,
            original_max_position_embeddings=16,
            pad_token_id=0,
            rope_parameters=dict(
                rope_type="longrope",
                rope_theta=10000.0,
                short_factor=[1.0, 1.5, 2.0, 3.0],
                long_factor=[2.0, 4.0, 8.0, 16.0],
            ),
        ),
        "granite": dict(
            model_type="granite",
            rope_theta=10000.0,
            embedding_multiplier=3.0,
            residual_multiplier=0.6,
            attention_multiplier=0.2,
            logits_scaling=2.5,
        ),
        "smollm3": dict(model_type="smollm3", rope_theta=10000.0, no_rope_layers=[1, 0, 1], pad_token_id=0),
        "gpt2": dict(
            model_type="gpt2", vocab_size=97, n_embd=32, n_layer=3, n_head=4, n_positions=128, layer_norm_epsilon=1e-5
        ),
    }
    if model_type == "gpt2":
        return {**presets["gpt2"], **overrides}
    out = {**base, **presets[model_type], **overrides}
    return {k: v for k, v in out.items() if v is not None}  # None: leave the field to transformers
