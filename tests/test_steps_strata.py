"""Generation step by step (validate/steps.py), beam search, and the strata of exp 7
(validate/strata.py), on tiny random models: properties that hold by construction."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hemorrhage.errors import UserError
from hemorrhage.sim.models import ModelConfig, build, forward, tiny


@pytest.fixture(scope="module")
def pair():
    """A tiny Llama with peaked distributions, and a copy with noisy weights."""
    cfg = ModelConfig.from_hf(tiny("llama", vocab_size=13))
    base = build(cfg, seed=1)
    nnx.update(base, jax.tree_util.tree_map(lambda x: x * 12 if x.ndim >= 2 else x, nnx.state(base)))
    comp = nnx.clone(base)
    keys = iter(jax.random.split(jax.random.key(3), 64))
    nnx.update(
        comp,
        jax.tree_util.tree_map(
            lambda x: x + 0.15 * jnp.std(x) * jax.random.normal(next(keys), x.shape) if x.ndim >= 2 else x,
            nnx.state(comp),
        ),
    )
    prompts = np.asarray(np.random.default_rng(0).integers(0, 13, (6, 4)), np.int32)
    return base, comp, prompts


def test_beam_search_finds_the_exhaustive_best_and_beam1_is_greedy(pair):
    from hemorrhage.sim.generate import beam_search, generate

    base, _, prompts = pair
    N = 3
    toks, score = beam_search(base, prompts[:2], N, beams=13**2)  # wide enough to be exhaustive for 3 steps
    for b in range(2):

        def logp(seq):
            full = jnp.concatenate([prompts[b], jnp.asarray(seq, jnp.int32)])[None]
            lp = jax.nn.log_softmax(forward(base, full)[0], -1)
            return float(sum(lp[prompts.shape[1] - 1 + i, seq[i]] for i in range(N)))

        best = max(itertools.product(range(13), repeat=N), key=logp)
        assert tuple(map(int, toks[b])) == best
        assert float(score[b]) == pytest.approx(logp(best), abs=1e-4)
    g1, _ = beam_search(base, prompts, 5, beams=1)
    assert (np.asarray(g1) == np.asarray(generate(base, prompts, 5))).all()
    with pytest.raises(UserError, match="beams"):
        beam_search(base, prompts, 5, beams=0)


def test_strategies_parse_and_sampling_shares_its_randomness(pair):
    from hemorrhage.validate.steps import decode, parse_strategy

    assert parse_strategy("greedy") == {"kind": "greedy"}
    assert parse_strategy("temp0.7") == {"kind": "sample", "temperature": 0.7, "top_p": 1.0}
    assert parse_strategy("topp0.9") == {"kind": "sample", "temperature": 1.0, "top_p": 0.9}
    assert parse_strategy("beam4") == {"kind": "beam", "beams": 4}
    for bad in ("temp0", "topp1.5", "beam0", "nucleus", ""):
        with pytest.raises(UserError):
            parse_strategy(bad)
    base, comp, prompts = pair
    a, b = decode(base, prompts, 6, "temp0.7", seed=5), decode(base, prompts, 6, "temp0.7", seed=5)
    assert (a == b).all() and a.shape == (6, 6)
    assert not (decode(base, prompts, 6, "temp1.0", seed=5) == decode(base, prompts, 6, "temp1.0", seed=6)).all()


def test_teacher_forced_first_flip_is_the_free_running_divergence(pair):
    from hemorrhage.validate.steps import decode, gen_metrics, path_hidden, step_metrics, steps_summary

    base, comp, prompts = pair
    N = 8
    gb, gc = decode(base, prompts, N), decode(comp, prompts, N)
    g = gen_metrics(gb, gc)
    assert 0 < g["first_divergence_mean"] < N  # the noise is strong enough to diverge, not at once
    per = step_metrics(base, comp, path_hidden(base, prompts, gb), prompts, gb, gc)
    st = steps_summary(per, g["first_divergence"])
    assert st["tf_first_flip"] == g["first_divergence"] and st["tf_first_flip_matches_free_running"] == 1.0
    first = np.asarray(g["first_divergence"])
    for k in range(len(prompts)):  # same context until the first divergence: teacher-forced = free-running
        t = first[k]
        np.testing.assert_allclose(per["kl"][k, : t + 1], per["kl_free"][k, : t + 1], rtol=1e-4, atol=1e-6)
    assert (per["margin"] >= -1e-4).all()  # the base's own greedy token leads its distribution
    same = step_metrics(base, base, path_hidden(base, prompts, gb), prompts, gb, gb)
    assert np.abs(same["kl"]).max() < 1e-6 and (same["flip"] == 0).all() and np.abs(same["dpair"]).max() < 1e-5


def test_hoyer_sparsity_properties():
    from hemorrhage.sim.models.layers import hoyer

    flat, onehot = jnp.ones((1, 16)), jnp.zeros((1, 16)).at[0, 3].set(5.0)
    assert float(hoyer(flat)[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(hoyer(onehot)[0]) == pytest.approx(1.0, abs=1e-6)
    x = jax.random.normal(jax.random.key(0), (4, 32))
    np.testing.assert_allclose(hoyer(x), hoyer(-7.0 * x), rtol=1e-5)  # scale- and sign-free
    assert float(hoyer(jnp.zeros((1, 8)))[0]) == 1.0  # a dropped MLP: fully sparse


def test_strata_bins_and_undefined_correlations():
    from hemorrhage.validate.strata import strata

    rng = np.random.default_rng(0)
    nll = rng.exponential(2.0, 500)
    per = {
        "nll_base": nll,
        "nll_comp": nll + 0.1 * nll,
        "kl": 0.05 * nll,
        "kl_pred": 0.04 * nll,
        "top1": np.ones(500),
        "hoyer_base": 0.4 + 0.01 * nll,
        "hoyer_comp": np.full(500, 0.5),
        "gate_off_base": np.full(500, np.nan),
        "gate_off_comp": np.full(500, np.nan),
    }
    s = strata(per, bins=5)
    assert sum(s["n"]) == 500 and max(s["n"]) - min(s["n"]) <= 1
    assert np.all(np.diff(s["nll_base"]) > 0) and np.all(np.diff(s["dnll"]) > 0)
    assert np.all(np.diff(s["p_target"]) < 0)
    rho = s["spearman_vs_nll_base"]
    assert rho["dnll"] == pytest.approx(1.0) and rho["hoyer_base"] == pytest.approx(1.0)
    assert rho["hoyer_comp"] is None and rho["gate_off_base"] is None  # constant / all-NaN: undefined
    assert s["gate_off_base"] is None
