"""trace (h per layer, logit lens), perturb at any site, KV-cache generation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hemorrhage.sim.generate import generate, top_p_filter
from hemorrhage.sim.models import ModelConfig, build, forward, tiny


@pytest.fixture(scope="module", params=["llama", "gemma3_text", "gpt2"])
def model(request):
    m = build(ModelConfig.from_hf(tiny(request.param)), seed=3)
    # make the random model less trivial: bigger weights give peaked, varied logits
    for _, var in __import__("flax").nnx.iter_graph(m):
        if isinstance(var, __import__("flax").nnx.Param) and var[...].ndim == 2:
            var.set_value(var[...] * 10.0)
    return m


TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 97, (2, 16)), jnp.int32)


def test_trace_shapes_and_logit_lens(model):
    tr = model.trace(TOKENS)
    L = model.cfg.n_layers
    assert tr.h.shape == (L + 1, 2, 16, model.cfg.d_model)
    np.testing.assert_allclose(np.asarray(model.unembed(tr.h[-1])), np.asarray(tr.logits), atol=1e-5)
    np.testing.assert_allclose(np.asarray(tr.logits), np.asarray(forward(model, TOKENS)), atol=1e-5)
    assert tr.attn_entropy.shape == (L, 2, 16)
    ent = np.asarray(tr.attn_entropy)
    assert np.all((ent >= -1e-6) & (ent <= 1 + 1e-6))


def test_perturb_changes_only_downstream(model):
    base = model.trace(TOKENS)
    k = 2

    def noise(site, layer, x):
        if site == "h" and layer == k:
            return x + 0.5 * jax.random.normal(jax.random.key(0), x.shape)
        return x

    pert = model.trace(TOKENS, perturb=noise)
    np.testing.assert_allclose(np.asarray(pert.h[:k]), np.asarray(base.h[:k]), atol=1e-6)
    for layer in range(k, model.cfg.n_layers + 1):
        assert np.abs(np.asarray(pert.h[layer] - base.h[layer])).max() > 1e-3


def test_replacement_patching_restores_the_base(model):
    """Put back the base h at the last layer: the output is the base output again."""
    base = model.trace(TOKENS)
    L = model.cfg.n_layers
    h_last = base.h[L]

    def damage_then_restore(site, layer, x):
        if site == "mlp" and layer == 0:
            return x * 0.0
        if site == "h" and layer == L:
            return h_last
        return x

    out = forward(model, TOKENS, damage_then_restore)
    np.testing.assert_allclose(np.asarray(out), np.asarray(base.logits), atol=1e-5)


def test_kv_cache_generation_equals_full_recompute(model):
    prompt = TOKENS[:1, :5]
    new = np.asarray(generate(model, prompt, 8))[0]
    seq = list(np.asarray(prompt)[0])
    for _ in range(8):  # no cache: rerun the whole sequence each step
        z = forward(model, jnp.asarray([seq], jnp.int32))
        seq.append(int(jnp.argmax(z[0, -1])))
    assert list(new) == seq[5:]


def test_sampling_is_seeded(model):
    a = generate(model, TOKENS[:1, :4], 10, temperature=1.0, top_p=0.9, seed=5)
    b = generate(model, TOKENS[:1, :4], 10, temperature=1.0, top_p=0.9, seed=5)
    c = generate(model, TOKENS[:1, :4], 10, temperature=1.0, top_p=0.9, seed=6)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert a.shape == c.shape == (1, 10)


def test_top_p_keeps_the_smallest_nucleus():
    z = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    kept = np.isfinite(np.asarray(top_p_filter(z, 0.7)))[0]
    assert kept.tolist() == [True, True, False, False]
    assert np.isfinite(np.asarray(top_p_filter(z, 1e-6)))[0].tolist() == [True, False, False, False]
