"""First test, as in minGPT: our JAX forward and greedy tokens equal transformers'.

Tiny random configs of every supported variant, so families without a packaged
checkpoint are still proven equal; the real checkpoints are in test_real_models.py.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from helpers import save_tiny_hf, torch_logits

from hemorrhage.sim.generate import generate
from hemorrhage.sim.models import forward, load_checkpoint

VARIANTS = [
    "llama",
    "mistral",
    "qwen2",
    "gemma3_text",
    "gpt2",
    # issue 28: RoPE schedules and the dense families built from the same layers
    "llama3_rope",
    "yarn",
    "phi3_longrope",
    "phi3",
    "qwen3",
    "olmo2",
    "gemma2",
    "granite",
    "smollm3",
]


@pytest.fixture(scope="module", params=VARIANTS)
def tiny_pair(request, tmp_path_factory):
    path = save_tiny_hf(request.param, tmp_path_factory.mktemp(request.param))
    model, cfg = load_checkpoint(path)
    return request.param, path, model, cfg


def test_logits_equal_transformers(tiny_pair):
    name, path, model, cfg = tiny_pair
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 24))  # 24 > sliding windows
    ref = torch_logits(path, tokens)
    ours = np.asarray(forward(model, jnp.asarray(tokens)))
    assert np.abs(ref).max() > 1.0, "logits too small for a meaningful comparison"
    # fp32 against fp32: only summation order differs (measured ≤ 5e-6 on every variant)
    assert np.abs(ours - ref).max() <= 1e-5, f"max |Δz| = {np.abs(ours - ref).max():.2e}"


def test_greedy_tokens_equal_transformers(tiny_pair):
    from transformers import AutoModelForCausalLM

    name, path, model, cfg = tiny_pair
    prompt = np.random.default_rng(2).integers(0, cfg.vocab_size, (1, 5))
    ref_model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        out = ref_model.generate(
            torch.as_tensor(prompt), max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0
        )
    ours = np.asarray(generate(model, jnp.asarray(prompt), 12))
    np.testing.assert_array_equal(ours[0], out[0, 5:].numpy())


def test_config_variants_are_what_they_claim(tiny_pair):
    name, _, _, cfg = tiny_pair
    if name == "llama":
        assert cfg.n_kv_heads < cfg.n_heads  # GQA
    if name == "mistral":
        assert set(cfg.layer_types) == {"sliding"} and cfg.sliding_window == 6
    if name == "qwen2":
        assert cfg.qkv_bias and not cfg.o_bias
    if name in ("gemma3_text", "gemma2"):
        assert "sliding" in cfg.layer_types and "full" in cfg.layer_types and cfg.norm_plus_one
    if name == "gemma3_text":
        assert cfg.rope_local is not None and cfg.rope_local.inv_freq != cfg.rope.inv_freq
        assert cfg.qk_norm == "head"
    if name == "gemma2":
        assert cfg.attn_softcap and cfg.final_softcap and cfg.qk_norm == "none"
    if name == "llama3_rope":
        assert cfg.rope.kind == "llama3"
    if name == "yarn":
        assert cfg.rope.kind == "yarn" and cfg.rope.attention_factor > 1
    if name == "phi3_longrope":
        assert cfg.rope.kind == "longrope" and cfg.rope.original_max < 17  # the decode test crosses it
    if name == "phi3":
        assert cfg.fused_hf and cfg.rope.rotary_dim == cfg.head_dim // 2
    if name == "qwen3":
        assert cfg.qk_norm == "head"
    if name == "olmo2":
        assert cfg.qk_norm == "proj" and cfg.post_norms
    if name == "granite":
        assert min(cfg.embed_scale, cfg.residual_scale, cfg.attn_multiplier, cfg.logit_divisor) != 1.0
    if name == "smollm3":
        assert any(cfg.nope_layers) and not all(cfg.nope_layers)
