"""Blocks as one scan (sim/models/scan.py) give the unrolled loop's numbers, in every family.

Per family (tiny random configs, weights ×10 so the logits are peaked and rounding shows):
logits, every Trace field, and KV-cache decode tokens and logits of the scanned path equal the
unrolled path's (`scan_layers = False`) to 1e-5 relative; a model whose blocks differ (one
layer RTN-packed) takes the unrolled path and gives the same numbers; a perturb at ("h", l) /
("attn", l) lands on layer l in the scan, with Python-int and traced layer indices; Taylor mode
(jet, the predictor's second order) passes through the scan.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.experimental import jet

from hemorrhage.sim.compress.registry import compress, make_method
from hemorrhage.sim.generate import generate
from hemorrhage.sim.models import ModelConfig, build, forward, scan, tiny
from hemorrhage.sim.models.base import traced_layers

_MORE = {
    "vocab_size": 97,
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "max_position_embeddings": 64,
}
CONFIGS = {
    **{
        mt: tiny(mt)
        for mt in (
            "llama",
            "qwen2",
            "qwen3",
            "mistral",
            "olmo2",
            "phi3",
            "granite",
            "gemma2",
            "gemma3_text",
            "smollm3",
            "gpt2",
            "phi3_longrope",
        )
    },
    "gpt_neox": {**_MORE, "model_type": "gpt_neox", "intermediate_size": 48},
    "opt": {**_MORE, "model_type": "opt", "ffn_dim": 48},
    "mixtral": {
        **_MORE,
        "model_type": "mixtral",
        "num_key_value_heads": 2,
        "intermediate_size": 24,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "sliding_window": 6,
    },
}
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 97, (2, 20)), jnp.int32)
FIELDS = ("h", "logits", "attn_entropy", "gate_pos", "attn_out", "mlp_out", "mlp_hoyer")


def _model(hf: dict):
    m = build(ModelConfig.from_hf(hf), seed=3)
    m.scan_layers = True  # opt in: the unrolled loop is the default (sim/models/base.py)
    for _, var in nnx.iter_graph(m):
        if isinstance(var, nnx.Param) and var[...].ndim == 2:
            var.set_value(var[...] * 10.0)
    return m


def _close(a, b, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, what
    scale = max(np.abs(b).max(), 1e-30)
    assert np.abs(a - b).max() <= 1e-5 * scale, f"{what}: {np.abs(a - b).max()} vs scale {scale}"


def _everything(m):
    tr = m.trace(TOKENS)
    toks, zs = generate(m, TOKENS[:, :6], 8, return_logits=True)
    return forward(m, TOKENS), tr, toks, zs


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_scanned_equals_unrolled(name):
    m = _model(CONFIGS[name])
    assert scan.plan(m.layers).scan  # the scanned path is what runs
    z, tr, toks, zs = _everything(m)
    m.scan_layers = False
    z0, tr0, toks0, zs0 = _everything(m)
    _close(z, z0, "logits")
    for f in FIELDS:
        a, b = getattr(tr, f), getattr(tr0, f)
        assert (a is None) == (b is None), f
        if a is not None:
            _close(a, b, f)
    np.testing.assert_array_equal(np.asarray(toks), np.asarray(toks0))
    _close(zs, zs0, "decode logits")


def test_per_layer_kinds_are_data():
    """Gemma 3's sliding/global layers and θ per layer, SmolLM3's NoPE layers: one scan."""
    assert set(scan.plan(_model(tiny("gemma3_text")).layers).kinds) == {"window", "rope_idx", "rope_on"}
    assert set(scan.plan(_model(tiny("smollm3")).layers).kinds) == {"rope_idx", "rope_on"}
    assert scan.plan(_model(tiny("llama")).layers).kinds == {}


def test_non_uniform_model_falls_back_with_the_same_numbers():
    m = _model(tiny("llama"))
    packed, _ = compress(m, make_method("rtn", bits=4, group_size=8))
    assert scan.plan(packed.layers).scan  # uniformly compressed: still one scan
    m.layers[1].attn.q = packed.layers[1].attn.q  # one layer packed, the others dense
    assert not scan.plan(m.layers).scan
    z, tr, toks, zs = _everything(m)
    m.scan_layers = False
    z0, tr0, toks0, zs0 = _everything(m)
    np.testing.assert_array_equal(np.asarray(z), np.asarray(z0))
    np.testing.assert_array_equal(np.asarray(tr.h), np.asarray(tr0.h))
    np.testing.assert_array_equal(np.asarray(toks), np.asarray(toks0))


@pytest.mark.parametrize("site", ["h", "attn"])
@pytest.mark.parametrize("marked", [False, True])
def test_perturb_lands_on_its_layer_in_the_scan(site, marked):
    m = _model(tiny("gemma3_text"))
    k = 1

    def kick(s, layer, x):
        hit = (s == site) & (jnp.asarray(layer) == k)  # works for Python and traced layers
        return jnp.where(hit, x + 3.0, x)

    p = traced_layers(kick) if marked else kick
    tr = m.trace(TOKENS, perturb=p)
    base = m.trace(TOKENS)
    m.scan_layers = False
    tr0 = m.trace(TOKENS, perturb=kick)
    _close(tr.h, tr0.h, "perturbed h")
    first = k if site == "h" else k + 1  # ("attn", k) enters the residual in block k -> h_{k+1}
    _close(tr.h[:first], base.h[:first], "upstream")
    assert np.abs(np.asarray(tr.h[first] - base.h[first])).max() > 1.0


def test_taylor_mode_passes_through_the_scan():
    """jet (the predictor's second order) through the scanned blocks equals the unrolled one."""
    m = _model(tiny("llama"))
    gd, params, rest = nnx.split(m, nnx.Param, ...)
    leaves, td = jax.tree_util.tree_flatten(params)
    dirs = [0.01 * jax.random.normal(jax.random.key(i), x.shape) for i, x in enumerate(leaves)]

    def series(scan_layers):
        def h_last(*ls):
            model = nnx.merge(gd, jax.tree_util.tree_unflatten(td, list(ls)), rest)
            model.scan_layers = scan_layers
            return model(TOKENS, collect_h=True)[2][-1]

        return jax.jit(lambda: jet.jet(h_last, tuple(leaves), tuple((d, jnp.zeros_like(d)) for d in dirs)))()

    (h, (h1, h2)), (h0, (h10, h20)) = series(True), series(False)
    for a, b, what in ((h, h0, "h"), (h1, h10, "h'"), (h2, h20, "h''")):
        _close(a, b, what)
