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

VARIANTS = ["llama", "mistral", "qwen2", "gemma3_text", "gpt2"]


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
    np.testing.assert_allclose(ours, ref, atol=2e-4 * np.abs(ref).max(), rtol=0)


def test_greedy_tokens_equal_transformers(tiny_pair):
    from transformers import AutoModelForCausalLM

    name, path, model, cfg = tiny_pair
    prompt = np.random.default_rng(2).integers(0, cfg.vocab_size, (1, 5))
    ref_model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        out = ref_model.generate(torch.as_tensor(prompt), max_new_tokens=12, min_new_tokens=12,
                                 do_sample=False, pad_token_id=0)
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
    if name == "gemma3_text":
        assert "sliding" in cfg.layer_types and "full" in cfg.layer_types
        assert cfg.rope_local_theta != cfg.rope_theta
