"""Temporal compounding (theory/compounding.py) against simulated decoders."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from hemorrhage.theory import compounding as CP

V, H, M = 32, 40, 3000  # toy vocabulary, horizon, number of compressed models
SCALE, S_NOISE = 2.5, 0.1


def _rng(seed, shape, scale=1.0):
    """Host-side normal draws (numpy: no per-shape device compilation)."""
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape))


def _logits(key):
    return SCALE * jax.random.normal(key, (V,))


def _noise(key, model):
    return S_NOISE * jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, 7), model), (V,))


def _simulate():
    """Dense greedy decoder vs M compressed ones (same logits + model-specific noise).

    The context key hashes the whole prefix (fold_in per token), so after the first
    differing token the contexts never coincide again — like a real LM.
    """
    k0 = jax.random.PRNGKey(123)

    def dense_step(k, _):
        z = _logits(k)
        x = jnp.argmax(z)
        return jax.random.fold_in(k, x), (z, x, k)

    _, (Z, X, K) = jax.lax.scan(dense_step, k0, None, length=H)

    def one_model(m):
        def step(kc, t):
            xc = jnp.argmax(_logits(kc) + _noise(kc, m))  # free running
            xtf = jnp.argmax(Z[t] + _noise(K[t], m))  # teacher forced
            return jax.random.fold_in(kc, xc), (xc, xtf)

        _, (xc, xtf) = jax.lax.scan(step, k0, jnp.arange(H))
        return xc, xtf

    XC, XTF = jax.jit(jax.vmap(one_model))(jnp.arange(M))
    return Z, X, XC, XTF


def test_survival_first_divergence_teacher_forced_vs_free_running():
    Z, X, XC, XTF = _simulate()
    pflip = CP.greedy_flip_probability_exact_iid(Z, S_NOISE)
    S_pred = CP.survival(pflip)
    assert 0.02 < float(S_pred[-1]) < 0.6, "horizon/noise give an informative test"

    differ = XC != X[None]
    tau = jnp.where(differ.any(1), jnp.argmax(differ, 1) + 1, H + 1)  # first divergence
    S_emp = jnp.mean(tau[:, None] > jnp.arange(1, H + 1)[None], 0)
    se = jnp.sqrt(S_pred * (1 - S_pred) / M)
    assert bool(jnp.all(jnp.abs(S_emp - S_pred) < 4 * se + 2e-3))
    np.testing.assert_allclose(jnp.mean(tau == H + 1), CP.prob_no_divergence(pflip), atol=4 * float(se[-1]) + 2e-3)
    et_pred = CP.expected_first_divergence(pflip)
    et_se = float(jnp.std(tau)) / math.sqrt(M)
    assert abs(float(jnp.mean(tau)) - float(et_pred)) < 4 * et_se
    pmf = CP.first_divergence_pmf(pflip)
    np.testing.assert_allclose(jnp.sum(pmf) + S_pred[-1], 1.0, rtol=1e-6)

    # teacher forced: independent per-step flips, agreement 1 − mean P_flip
    agree_tf = jnp.mean(XTF == X[None])
    assert abs(float(agree_tf - CP.teacher_forced_agreement(pflip))) < 4 * math.sqrt(0.25 / (M * H))
    # before τ free running and teacher forcing coincide; after τ the free-running
    # tokens no longer track the dense ones (divergence is absorbing)
    t = jnp.arange(1, H + 1)[None]
    after = t > tau[:, None]
    agree_after = jnp.sum((XC == X[None]) & after) / jnp.sum(after)
    assert float(agree_after) < 0.5 < 0.9 < float(agree_tf)
    np.testing.assert_array_equal(jnp.where(t < tau[:, None], XC, 0), jnp.where(t < tau[:, None], XTF, 0))


def test_flip_probability_full_vocab_vs_top2():
    Vb, N = 1024, 10000
    for i, (gap3, s) in enumerate(((4.0, 0.3), (0.2, 0.5))):
        z = _rng(200 + i, (Vb,))
        z = z.at[0].set(8.0).at[1].set(7.6).at[2].set(7.6 - gap3)
        noise = _rng(210 + i, (N, Vb), s)
        emp = float(jnp.mean(jnp.argmax(z + noise, -1) != 0))
        exact = float(CP.greedy_flip_probability_exact_iid(z, s))
        top2 = float(CP.greedy_flip_probability(z, s))
        assert abs(emp - exact) < 4 * math.sqrt(exact * (1 - exact) / N) + 1e-3
        if gap3 > 2:  # a far third logit: Φ(−m/(s√2)) is accurate
            assert abs(top2 / exact - 1) < 0.01
        else:  # a close third competitor: top-2 underestimates
            assert top2 < 0.95 * exact


def test_pair_sigma_linear_and_flip_formula():
    W = _rng(300, (16, 8))
    sigma_h, N = 0.2, 40000
    dh = _rng(301, (N, 8), sigma_h)
    d = dh @ (W[3] - W[5])
    np.testing.assert_allclose(jnp.std(d), CP.pair_sigma_linear(W, 3, 5, sigma_h), rtol=0.02)
    m = 0.3
    emp = jnp.mean(m + d < 0)
    np.testing.assert_allclose(emp, CP.flip_probability(m, CP.pair_sigma_linear(W, 3, 5, sigma_h)), atol=0.01)


def test_stationary_closed_form_and_batching():
    p = jnp.array([0.001, 0.02, 0.1])
    flips = jnp.broadcast_to(p[:, None], (3, 200))
    np.testing.assert_allclose(
        CP.expected_first_divergence(flips), CP.stationary_expected_first_divergence(p, 200), rtol=1e-5
    )
    np.testing.assert_allclose(CP.prob_no_divergence(flips), (1 - p) ** 200, rtol=1e-4)
    out = jax.jit(jax.vmap(CP.expected_first_divergence))(flips)
    np.testing.assert_allclose(out, CP.expected_first_divergence(flips), rtol=1e-6)
    # teacher forcing looks fine while free running collapses: 98% agreement per step
    f = jnp.full((200,), 0.02)
    assert float(CP.teacher_forced_agreement(f)) > 0.97 and float(CP.prob_no_divergence(f)) < 0.02


def test_sampling_divergence_first_order_and_gumbel_coupling():
    with jax.enable_x64(True):
        Vb, T = 32768, 0.5
        z = _rng(400, (8, Vb), 3.0)
        for s in (0.005, 0.02):
            dz = _rng(401, (8, Vb), s)
            tv = CP.tv_distance(z, dz, T)
            rel = jnp.abs(CP.tv_first_order(z, dz, T) / tv - 1)
            assert float(jnp.max(rel)) < (0.02 if s < 0.01 else 0.06)
    # shared Gumbel noise: TV ≤ P(differ) ≤ 2TV/(1+TV)
    Vs, N = 64, 40000
    z = _rng(402, (Vs,), 2.0)
    dz = _rng(403, (Vs,), 0.5)
    G = jnp.asarray(np.random.default_rng(404).gumbel(size=(N, Vs)))
    lp = jax.nn.log_softmax(z / T)
    lq = jax.nn.log_softmax((z + dz) / T)
    emp = float(jnp.mean(jnp.argmax(lp + G, -1) != jnp.argmax(lq + G, -1)))
    lo, hi = CP.gumbel_coupling_divergence_bounds(CP.tv_distance(z, dz, T))
    se = math.sqrt(emp * (1 - emp) / N)
    assert float(lo) - 4 * se < emp < float(hi) + 4 * se
