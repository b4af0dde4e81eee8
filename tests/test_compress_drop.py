"""Layer dropping: ranking, removal for real, traces and caches still work."""

import jax.numpy as jnp
import numpy as np
import pytest

from hemorrhage.errors import UserError
from hemorrhage.sim.compress import ZeroAttention, ZeroMLP, compress, linears, make_method, memory_report
from hemorrhage.sim.compress.calib import Sequential
from hemorrhage.sim.models import ModelConfig, build, forward, tiny


def model4(seed=0):
    return build(
        ModelConfig.from_hf(tiny("llama", num_hidden_layers=4, intermediate_size=32, num_key_value_heads=4)), seed=seed
    )


def tokens(n=4, t=16, seed=0):
    return np.random.default_rng(seed).integers(0, 97, (n, t)).astype(np.int32)


def test_dropping_a_block_makes_it_the_identity():
    m = model4()
    small, rec = compress(m, make_method("drop", layers="1,2"))
    assert rec["dropped"] == [1, 2] and rec["part"] == "block" and rec["rank"] == "list"
    assert isinstance(small.layers[1].attn, ZeroAttention) and isinstance(small.layers[2].mlp, ZeroMLP)
    _, _, hs = small(jnp.asarray(tokens()), collect_h=True)
    np.testing.assert_array_equal(np.asarray(hs[1]), np.asarray(hs[3]))  # h_1 = h_2 = h_3
    assert not any(p.startswith(("layers.1.", "layers.2.")) for p, *_ in linears(small))
    assert memory_report(small)["ratio"] == pytest.approx(0.5)  # half the linear weights are gone


def test_dropping_attention_only_keeps_the_mlp():
    m = model4()
    small, _ = compress(m, make_method("drop", part="attn", layers=[3]))
    assert isinstance(small.layers[3].attn, ZeroAttention) and not isinstance(small.layers[3].mlp, ZeroMLP)

    def hook(site, layer, x):
        if (site, layer) == ("attn", 3):
            assert float(jnp.abs(x).max()) == 0.0
        return x

    small(jnp.asarray(tokens()), perturb=hook)


def test_trace_and_cache_work_on_a_dropped_model():
    from hemorrhage.sim.generate import generate

    m = model4()
    small, _ = compress(m, make_method("drop", part="block", layers="0"))
    tr = small.trace(jnp.asarray(tokens()))
    L = len(m.layers)
    assert tr.h.shape[0] == L + 1 and tr.attn_entropy.shape[0] == L and tr.gate_pos.shape[0] == L
    assert float(tr.attn_entropy[0].max()) == 0.0 and not bool(tr.gate_pos[0].any())
    prompt = jnp.asarray(tokens(1, 5))
    out = np.asarray(generate(small, prompt, 6))[0]
    # greedy with the KV cache agrees with one full forward over prompt + continuation
    full = np.concatenate([np.asarray(prompt)[0], out])
    z = np.asarray(forward(small, jnp.asarray(full[None])))[0]
    np.testing.assert_array_equal(np.argmax(z[4:-1], axis=-1), out)


def test_rankings_choose_the_least_changing_layers():
    m = model4()
    toks = tokens()
    runner = Sequential(m, toks)
    cos = [runner.advance(b, want_cos=True) for _, b in runner.blocks()]
    for part in ("block", "attn", "mlp"):
        want = sorted(int(i) for i in np.argsort([-c[part] for c in cos], kind="stable")[:2])
        _, rec = compress(m, make_method("drop", part=part, n_drop=2, rank="cos"), toks)
        assert rec["dropped"] == want, part
        _, rec_bi = compress(m, make_method("drop", part=part, n_drop=2, rank="shortgpt"), toks)
        assert rec_bi["dropped"] == want  # block influence 1 − cos: the same ranking
    _, rec = compress(m, make_method("drop", part="block", n_drop=2, rank="angular"), toks)
    start = int(np.argmin(rec["scores"]))
    assert rec["dropped"] == [start, start + 1] and len(rec["scores"]) == 3


@pytest.mark.parametrize(
    "settings, needle",
    [
        (dict(part="heads"), "block, attn, mlp"),
        (dict(rank="random"), "cos, shortgpt"),
        (dict(n_drop=0), "positive"),
        (dict(rank="list"), "--layers"),
        (dict(layers="1,1"), "twice"),
        (dict(layers="x"), "3,5,7-9"),
        (dict(layers="1,2", n_drop=3), "disagrees"),
        (dict(layers="1", rank="cos"), "rank=list"),
    ],
)
def test_bad_drop_settings(settings, needle):
    with pytest.raises(UserError, match=needle):
        make_method("drop", **settings)


def test_layer_indices_out_of_range():
    m = model4()
    with pytest.raises(UserError, match="out of range.*4 layers"):
        compress(m, make_method("drop", layers="2,4"))
    with pytest.raises(UserError, match="out of range"):
        compress(m, make_method("drop", layers="-1"))
    with pytest.raises(UserError, match="exceeds"):
        compress(m, make_method("drop", n_drop=5), tokens())
