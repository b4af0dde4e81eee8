"""Issue 29, "hold what is needed once": a compressed model shares every array it does not
change with its base, and the logit-space metrics computed in chunks over tokens equal the
same metrics computed on the whole [tokens, vocab] at once, NaN/inf rows included."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hemorrhage.sim.compress import compress, make_method
from hemorrhage.sim.models import ModelConfig, build, tiny
from hemorrhage.validate import measure_jit as mj
from hemorrhage.validate.dtype_floor import compare_positions
from hemorrhage.validate.metrics import compare_final, compare_hidden, per_layer


@pytest.fixture(scope="module")
def model():
    return build(ModelConfig.from_hf(tiny("llama", num_hidden_layers=3)), seed=0)


def _leaves(m) -> dict:
    return {path: v.get_value() for path, v in nnx.to_flat_state(nnx.state(m, nnx.Param))}


@pytest.mark.parametrize(
    "method,settings,untouched_block",
    [
        ("rtn", {"bits": 4}, None),  # every projection changes: embedding, norms and head stay shared
        ("drop", {"part": "mlp", "rank": "list", "layers": "1"}, (0, 2)),  # blocks 0 and 2 untouched
    ],
)
def test_compressed_model_shares_what_it_does_not_change(model, method, settings, untouched_block):
    before = _leaves(model)
    copies = {k: np.array(v) for k, v in before.items()}
    comp, _ = compress(model, make_method(method, **settings))
    after, ours = _leaves(model), _leaves(comp)
    assert all(after[k] is before[k] for k in before)  # the base holds the very same arrays
    for k, v in copies.items():
        np.testing.assert_array_equal(np.asarray(after[k]), v)  # and they are unchanged
    shared = [k for k in before if k[0] in ("embed", "norm", "lm_head") or "norm" in str(k[-2])]
    if untouched_block:
        shared += [k for k in before if k[0] == "layers" and k[1] in untouched_block]
    assert len(shared) > 3
    for k in shared:
        assert ours[k] is before[k], f"{'.'.join(map(str, k))} was copied, not shared"
    changed = [k for k in before if ours.get(k) is not before[k]]  # replaced, or stored another way
    assert changed  # the method did change something: the test is not vacuous


def _logits(seed: int, n: int = 23, v: int = 61):
    """Base and compressed logits with a NaN row, an inf row and a row that is NaN in both."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, (n, v)).astype(np.float32)
    zc = (z + rng.normal(0, 0.5, (n, v))).astype(np.float32)
    zc[4, 7] = np.nan
    zc[9, :] = np.inf
    zc[15, 3], z[15, 3] = np.nan, np.nan
    return jnp.asarray(z), jnp.asarray(zc)


def _same(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("chunk", [1, 5, 23])
def test_chunked_final_metrics_equal_unchunked(chunk):
    z, zc = _logits(0)
    whole = compare_final(z, zc)
    parts = mj.chunked(compare_final, z.shape[0], chunk, z, zc)
    assert set(parts) == set(whole)
    assert np.isnan(np.asarray(whole["kl"])[15]) and not np.isfinite(np.asarray(whole["kl"])[4])
    for k in whole:
        _same(parts[k], whole[k])
    kl, top1, fin = compare_positions(z, zc)  # the dtype floor's per-position comparison, row by row
    for i in range(z.shape[0]):
        row = compare_positions(z[i : i + 1], zc[i : i + 1])
        _same(row[0], kl[i : i + 1])
        assert bool(row[1][0]) == bool(top1[i]) and bool(row[2][0]) == bool(fin[i])


def test_per_layer_lens_is_the_same_for_every_chunk(model):
    d, n = model.cfg.d_model, 19
    rng = np.random.default_rng(1)
    hs = rng.normal(0, 1, (len(model.layers) + 1, n, d)).astype(np.float32)
    hs_c = hs + rng.normal(0, 0.1, hs.shape).astype(np.float32)
    hs_c[1, 6, :] = np.nan  # one token's residual collapsed at layer 1
    comp = nnx.clone(model)
    outs = [per_layer(model, comp, jnp.asarray(hs), jnp.asarray(hs_c), chunk=c) for c in (1, 4, n)]
    # the reference: every metric on the whole [tokens, vocab] at once, per layer
    ref = {}
    for layer in range(hs.shape[0]):
        hb, hc = jnp.asarray(hs[layer]), jnp.asarray(hs_c[layer])
        full = {**compare_hidden(hb, hc), **compare_final(model.unembed(hb), comp.unembed(hc))}
        for k, v in full.items():
            ref.setdefault(k, []).append(float(jnp.mean(v)))
    assert np.isnan(outs[0]["kl"][1]) and np.isfinite(outs[0]["kl"][0])
    for out in outs:
        for k, v in out.items():
            _same(v, np.asarray(ref[k]))


def test_nll_chunked_equals_whole(model):
    n = 17
    h = jnp.asarray(np.random.default_rng(2).normal(0, 1, (n, model.cfg.d_model)).astype(np.float32))
    t = jnp.asarray(np.random.default_rng(3).integers(0, model.cfg.vocab_size, n))
    whole = -jax.nn.log_softmax(model.unembed(h))[jnp.arange(n), t]
    for c in (1, 6, n):
        _same(mj.nll(model, h, t, chunk=c), whole)
