"""Pruning: exact sparsity, N:M groups, the weights Wanda/SparseGPT keep, OWL's schedule, storage."""

import jax.numpy as jnp
import numpy as np
import pytest

from hemorrhage.errors import UserError
from hemorrhage.sim.compress import MaskedLinear, NMSparseLinear, compress, linears, make_method, memory_report
from hemorrhage.sim.compress import obs
from hemorrhage.sim.compress.calib import layer_hessians
from hemorrhage.sim.models import ModelConfig, build, forward, tiny


def square_model(seed=0):
    return build(ModelConfig.from_hf(tiny("llama", intermediate_size=32, num_key_value_heads=4)), seed=seed)


def tokens(n=4, t=16, seed=0):
    return np.random.default_rng(seed).integers(0, 97, (n, t)).astype(np.int32)


def masks(model):
    return {p: np.asarray(layer.weight()) != 0 for p, _, _, layer in linears(model)}


@pytest.mark.parametrize("name", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.77])
def test_unstructured_sparsity_is_exact_per_layer(name, sparsity):
    m = square_model()
    small, rec = compress(m, make_method(name, sparsity=sparsity), tokens())
    for path, _, _, layer in linears(small):
        assert isinstance(layer, MaskedLinear)
        keep = np.asarray(layer.keep())
        assert keep.size - keep.sum() == round(sparsity * keep.size), path
        w = np.asarray(layer.weight())
        assert np.all(w[~keep] == 0)
    assert rec["achieved_sparsity"] == pytest.approx(sparsity, abs=1 / (32 * 32))


@pytest.mark.parametrize("name", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["1:2", "2:4", "4:8"])
def test_nm_groups_have_at_most_n_nonzeros(name, pattern):
    n, m_ = (int(x) for x in pattern.split(":"))
    model = square_model()
    small, rec = compress(model, make_method(name, pattern=pattern), tokens())
    for path, _, _, layer in linears(small):
        assert isinstance(layer, NMSparseLinear)
        w = np.asarray(layer.weight())
        nz = (w.reshape(w.shape[0], -1, m_) != 0).sum(-1)
        assert nz.max() <= n, path
    assert rec["achieved_sparsity"] == pytest.approx(1 - n / m_)
    mem = memory_report(small)
    assert mem["ratio"] == pytest.approx(n / m_ * (1 + 1 / 4))  # fp32 values + a uint8 index each


def test_wanda_keeps_the_largest_weight_times_activation_norm_per_row():
    m = square_model()
    toks = tokens()
    stats = layer_hessians(m, toks)  # block 0 sees the same inputs pruned or not
    small, _ = compress(m, make_method("wanda", sparsity=0.5), toks)
    ref = {p: layer for p, _, _, layer in linears(m)}
    for path, _, _, layer in linears(small):
        if not path.startswith("layers.0.attn"):
            continue
        w = np.asarray(ref[path].weight())
        score = np.abs(w) * np.asarray(stats[path].col_norm())[None, :]
        keep = np.asarray(layer.keep())
        np.testing.assert_array_equal(np.asarray(layer.weight())[keep], w[keep])  # kept weights unchanged
        for r in range(w.shape[0]):
            assert score[r][keep[r]].min() >= score[r][~keep[r]].max()
            assert (~keep[r]).sum() == 16


def test_magnitude_keeps_the_largest_weights():
    m = square_model()
    small, _ = compress(m, make_method("magnitude", sparsity=0.6))
    ref = {p: np.asarray(layer.weight()) for p, _, _, layer in linears(m)}
    for path, _, _, layer in linears(small):
        keep = np.asarray(layer.keep())
        a = np.abs(ref[path])
        assert a[keep].min() >= a[~keep].max()


def test_sparsegpt_with_uncorrelated_inputs_is_score_pruning_without_updates():
    """H diagonal: SparseGPT prunes the smallest w²·H_jj in each column block (Wanda's score,
    squared) and has nothing to compensate: kept weights stay as they were."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 64)).astype(np.float32)
    hd = rng.uniform(0.5, 4.0, 64).astype(np.float32)
    u, dead, lam = obs.factor(jnp.diag(jnp.asarray(hd)), 0.0)
    k = jnp.asarray(obs.cumulative_counts(16 * 32, 2, 0.5))
    w_new, keep = obs.sparsegpt(jnp.asarray(w), u, k, bs=32, n=None, m=None)
    w_new, keep = np.asarray(w_new), np.asarray(keep)
    np.testing.assert_allclose(w_new[keep], w[keep], rtol=1e-6)
    score = w**2 * hd[None, :]
    for b in range(2):
        s, kb = score[:, 32 * b : 32 * (b + 1)], keep[:, 32 * b : 32 * (b + 1)]
        assert (~kb).sum() == 256 and s[kb].min() >= s[~kb].max()


def test_sparsegpt_survives_a_non_positive_definite_hessian():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 32)).astype(np.float32)
    x = rng.standard_normal((3, 32)).astype(np.float32)  # rank 3
    x[:, 7] = 0  # dead input
    h = jnp.asarray(2 * x.T @ x / 3 - 1e-3 * np.eye(32, dtype=np.float32))  # indefinite
    u, dead, lam = obs.factor(h, 0.0)
    assert bool(dead[7]) and lam > 0 and np.all(np.isfinite(np.asarray(u)))
    w_new, keep = obs.sparsegpt(
        jnp.where(dead[None], 0.0, jnp.asarray(w)),
        u,
        jnp.asarray(obs.cumulative_counts(8 * 32, 1, 0.5)),
        bs=32,
        n=None,
        m=None,
    )
    assert np.all(np.isfinite(np.asarray(w_new))) and int((~keep).sum()) == 128


def test_sparsegpt_beats_magnitude_and_wanda_on_reconstruction():
    from hemorrhage.sim.compress.calib import reconstruction_errors

    m = square_model()
    toks = tokens(8, 16)
    errs = {
        name: np.mean(
            list(reconstruction_errors(m, compress(m, make_method(name, sparsity=0.5), toks)[0], toks).values())
        )
        for name in ("magnitude", "wanda", "sparsegpt")
    }
    assert errs["sparsegpt"] < errs["wanda"] <= errs["magnitude"] * 1.05


@pytest.mark.parametrize("base", ["wanda", "magnitude"])
def test_owl_schedule_mean_is_the_requested_sparsity(base):
    m = square_model()
    method = make_method("owl", sparsity=0.6, base=base, lam=0.1)
    small, rec = compress(m, method, tokens())
    sched = np.asarray(rec["schedule_sparsity"])
    assert sched.mean() == pytest.approx(0.6, abs=1e-9)
    assert sched.max() - sched.min() <= 2 * 0.1 + 1e-9
    assert len(set(np.round(sched, 9))) > 1  # layers really differ
    # blocks with more outliers are pruned less
    order = np.argsort(rec["outlier_ratios"])
    assert sched[order[0]] >= sched[order[-1]]
    assert rec["achieved_sparsity"] == pytest.approx(0.6, abs=len(list(linears(m))) / (21 * 32 * 32))
    for i, s in enumerate(sched):  # each block at its own sparsity, exactly up to rounding
        assert rec["layer_sparsity"][i] == pytest.approx(s, abs=7 / (7 * 32 * 32))


def test_owl_caps_lambda_to_keep_densities_valid():
    sched, lam = make_method("owl", sparsity=0.05, lam=0.3).schedule(np.array([0.0, 0.01, 0.5]))
    assert lam == pytest.approx(0.025) and sched.min() >= 0 and sched.mean() == pytest.approx(0.05)


def test_nm_storage_round_trip_and_execution():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((6, 16)).astype(np.float32)
    from hemorrhage.sim.compress.pruning import nm_mask

    keep = np.array(nm_mask(jnp.abs(jnp.asarray(w)), 2, 4))
    keep[0, :4] = [True, False, False, False]  # a group with fewer than N kept
    layer = NMSparseLinear(w, keep, 2, 4)
    np.testing.assert_array_equal(np.asarray(layer.weight()), np.where(keep, w, 0))
    x = rng.standard_normal((3, 16)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(layer(jnp.asarray(x))), x @ np.where(keep, w, 0).T, rtol=1e-5, atol=1e-5)
    assert layer.idx[...].dtype == jnp.uint8 and layer.nbytes() == 6 * 4 * 2 * 5


def test_pruned_model_runs_and_is_the_same_class():
    m = square_model()
    small, _ = compress(m, make_method("magnitude", pattern="2:4"))
    assert type(small) is type(m)
    tr = small.trace(jnp.asarray(tokens()))
    assert tr.h.shape[0] == len(m.layers) + 1 and tr.attn_entropy.shape[0] == len(m.layers)
    np.testing.assert_allclose(
        np.asarray(tr.logits), np.asarray(forward(small, jnp.asarray(tokens()))), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    "settings, needle",
    [
        (dict(sparsity=1.0), "[0, 1)"),
        (dict(sparsity=-0.1), "[0, 1)"),
        (dict(pattern="4:4"), "0 < N < M"),
        (dict(pattern="5:4"), "0 < N < M"),
        (dict(pattern="2-4"), "N:M"),
        (dict(pattern="2:4", sparsity=0.3), "fixes"),
    ],
)
def test_bad_pruning_settings(settings, needle):
    with pytest.raises(UserError, match=needle.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        make_method("wanda", **settings)


def test_pattern_must_divide_the_inputs():
    m = build(ModelConfig.from_hf(tiny("llama", intermediate_size=36)), seed=0)
    with pytest.raises(UserError, match="divisible by 8"):
        compress(m, make_method("magnitude", pattern="4:8"))
