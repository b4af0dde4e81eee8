"""Layer expansion (sim/compress/expand.py) and the attention statistics (validate/attention.py):
identity blocks change nothing, duplicated spans run with the KV cache and export to
transformers, errors are one line, a uniform attention row has entropy ln n."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hemorrhage.errors import UserError
from hemorrhage.sim.compress import compress, make_method
from hemorrhage.sim.models import ModelConfig, build, forward, tiny
from hemorrhage.sim.models.base import attention_probs

GEMMA_TYPES = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]


def model(kind="llama", seed=0):
    extra = {"layer_types": GEMMA_TYPES} if kind == "gemma3_text" else {}
    return build(ModelConfig.from_hf(tiny(kind, num_hidden_layers=4, **extra)), seed=seed)


def tokens(n=2, t=12, seed=0):
    return np.random.default_rng(seed).integers(0, 97, (n, t)).astype(np.int32)


@pytest.mark.parametrize("kind", ["llama", "gemma3_text"])
def test_identity_blocks_leave_the_logits_unchanged(kind):
    m = model(kind)
    big, rec = compress(m, make_method("expand", at="0,2,4"))
    assert len(big.layers) == big.cfg.n_layers == 7 and rec["identity_layers"] == [0, 3, 6]
    assert rec["layer_map"] == [0, 0, 1, 1, 2, 3, 3] and rec["h_map"] == [0, 1, 2, 2, 3, 4, 4]
    # every block keeps its source's kind: Gemma's sliding/global pattern follows the map
    assert big.cfg.layer_types == tuple(m.cfg.layer_types[i] for i in rec["layer_map"])
    assert [b.attn.window for b in big.layers] == [m.layers[i].attn.window for i in rec["layer_map"]]
    t = jnp.asarray(tokens())
    z0, z1 = np.asarray(forward(m, t)), np.asarray(forward(big, t))
    assert np.abs(z0).max() > 0.1
    np.testing.assert_allclose(z1, z0, atol=1e-5 * np.abs(z0).max(), rtol=0)
    # the residual an identity block passes on is the base's, exactly where h_map says
    hs = nnx.jit(lambda mm, x: mm(x, collect_h=True)[2])
    hb, hc = hs(m, t), hs(big, t)
    for j, i in enumerate(rec["h_map"]):
        np.testing.assert_allclose(np.asarray(hc[j + 1]), np.asarray(hb[i]), atol=1e-5, rtol=1e-5)


def test_unchanged_tensors_are_shared_with_the_base():
    m = model()
    big, rec = compress(m, make_method("expand", span="1:3"))
    assert rec["layer_map"] == [0, 1, 2, 1, 2, 3] and rec["added_layers"] == [3, 4]
    w = m.layers[1].attn.q.w.get_value()
    assert big.layers[1].attn.q.w.get_value() is w and big.layers[3].attn.q.w.get_value() is w
    assert big.layers[3] is not big.layers[1]  # a module of its own (its own cache slot)
    assert rec["params_ratio_vs_base"] == pytest.approx(6 / 4)


def test_duplicated_span_decodes_with_the_cache_as_its_full_forward():
    m = model("gemma3_text")
    big, _ = compress(m, make_method("expand", span="0:3"))
    assert len(big.layers) == 7
    t = jnp.asarray(tokens(1, 10, seed=3))
    full = np.asarray(forward(big, t))[0]
    assert np.abs(full - np.asarray(forward(m, t))[0]).max() > 1e-2  # duplication is not the identity
    cache = big.empty_cache(1, 16)
    z, cache, _ = nnx.jit(lambda mm, x, c: mm(x, pos0=0, cache=c))(big, t[:, :4], cache)
    steps = [np.asarray(z)[0]]
    step = nnx.jit(lambda mm, x, p, c: mm(x, pos0=p, cache=c))
    for p in range(4, 10):
        z, cache, _ = step(big, t[:, p : p + 1], jnp.int32(p), cache)
        steps.append(np.asarray(z)[0])
    np.testing.assert_allclose(np.concatenate(steps), full, atol=1e-4 * np.abs(full).max(), rtol=0)


@pytest.mark.parametrize(
    "settings, needle",
    [
        (dict(span="3:9"), "past the last layer"),
        (dict(span="2:2"), "is empty"),
        (dict(span="x:1"), "a:b"),
        (dict(at="9"), "past the last depth"),
        (dict(at="-1"), ">= 0"),
        (dict(at="a"), "integers"),
        (dict(), "exactly one of"),
        (dict(span="0:1", at="1"), "exactly one of"),
    ],
)
def test_impossible_settings_are_one_line_errors(settings, needle):
    with pytest.raises(UserError) as e:
        compress(model(), make_method("expand", **settings))
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("settings", [dict(span="1:3"), dict(at="0,3")])
def test_export_runs_in_transformers_with_the_same_logits(settings, tmp_path):
    import json

    from helpers import save_tiny_hf, torch_logits

    from hemorrhage.sim.compress import export_hf
    from hemorrhage.sim.models import load_checkpoint

    src = save_tiny_hf("llama", tmp_path / "src", num_hidden_layers=4)
    base, cfg = load_checkpoint(src)
    big, rec = compress(base, make_method("expand", **settings))
    out = export_hf(big, src, tmp_path / "out", rec)
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == len(big.layers)
    toks = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 16))
    ref, ours = torch_logits(out, toks), np.asarray(forward(big, jnp.asarray(toks)))
    assert np.abs(ref).max() > 1.0
    assert np.abs(ours - ref).max() <= 1e-3


def test_diagnose_compares_through_the_layer_map():
    from hemorrhage.validate.diagnose import diagnose

    m = model()
    t = tokens()
    big, rec = compress(m, make_method("expand", at="0,2"))
    d = diagnose(m, big, t, rec)
    assert d["layer_map"] == rec["layer_map"] == [0, 0, 1, 1, 2, 3] and len(d["layers"]) == 6
    # the lens of every block, the one at depth 0 included (it passes h_0 on), equals the base's
    assert max(x["kl_lens"] for x in d["layers"]) < 1e-9 and d["final_kl"] < 1e-9
    # blocks that run on the base's own input reproduce its attention rows (the copy at depth 0
    # sees h_0, as block 0 does); the copy of block 1 at depth 2 sees block 1's output instead
    assert all(d["layers"][j]["attn_tv"] < 1e-6 for j in (0, 1, 2, 4, 5))
    assert d["layers"][3]["attn_tv"] > 1e-4
    assert np.isnan(d["layers"][0]["restore_attn"]) and np.isnan(d["layers"][3]["restore_attn"])


def test_uniform_attention_has_entropy_ln_n_and_zero_change():
    from hemorrhage.validate.attention import attention_change, row_entropy

    m = model()
    for b in m.layers:  # q = 0: every score is 0, every row uniform over its visible keys
        b.attn.q.w = nnx.Param(jnp.zeros_like(b.attn.q.w[...]))
        b.attn.q.b = None
    t = tokens(1, 9)
    probs = attention_probs(m, jnp.asarray(t))
    n = np.arange(1, 10, dtype=np.float64)  # query t sees t + 1 keys
    for p in probs:
        ent = np.asarray(row_entropy(p))[0]  # [H T]
        np.testing.assert_allclose(ent, np.broadcast_to(np.log(n), ent.shape), atol=1e-5)
    stats = attention_change(m, m, t)
    np.testing.assert_allclose(stats["attn_entropy_base_nats"], np.log(n).mean(), atol=1e-5)
    assert max(stats["attn_tv"]) < 1e-7 and max(stats["attn_js"]) < 1e-7
