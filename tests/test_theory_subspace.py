"""The categorical subspace (theory/subspace.py)."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from hemorrhage.theory import softmax as S
from hemorrhage.theory import subspace as SS

V = 32768
LETTERS = jnp.array([317, 4242, 9001, 20000])  # stand-ins for " A" … " D"


def _rng(seed, shape, scale=1.0):
    """Host-side normal draws (numpy: no per-shape device compilation)."""
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape))


def _mc_logits(key, B, answer_gap, diffuse=1.0):
    """Diffuse 'generation-like' logits plus four letters, one of them the answer."""
    z = _rng(key, (B, V), diffuse)
    lz = jnp.array([answer_gap, 0.0, -0.5, -1.0])
    return z.at[:, LETTERS].set(lz + 2.0)


def test_chain_rule_is_exact_float64():
    with jax.enable_x64(True):
        mask = SS.mask_from_indices(V, LETTERS)
        z = _mc_logits(1, 4, 3.0, diffuse=3.0)
        for s in (0.1, 1.0):
            dz = _rng(2, (4, V), s)
            for T in (1.0, 0.5):
                parts = SS.kl_chain_rule(z, dz, mask, T)
                np.testing.assert_allclose(sum(parts), S.kl_exact(z, dz, T), rtol=1e-10)
                assert all(bool(jnp.all(x >= -1e-15)) for x in parts)
        # the subset quantities are Theorem 2/3 objects on the restricted logits
        zs, dzs = z[:, LETTERS], dz[:, LETTERS]
        np.testing.assert_allclose(SS.subset_kl(z, dz, mask), S.kl_exact(zs, dzs), rtol=1e-12)
        np.testing.assert_allclose(SS.subset_cosine(z, dz, mask), S.cosine_pq(zs, dzs), rtol=1e-12)
        np.testing.assert_allclose(SS.subset_half_var_p(z, dz, mask), S.half_var_p(zs, dzs), rtol=1e-12)


def test_subset_kl_small_while_full_kl_is_not():
    """E KL_S / E KL ≈ (1 − Σp_S²)/(1 − Σp²) under iid noise; ≪ 1 for a confident answer."""
    with jax.enable_x64(True):
        mask = SS.mask_from_indices(V, LETTERS)
        z = _mc_logits(3, 1, 4.0)[0]
        s, N = 0.1, 400
        dz = _rng(4, (N, V), s)
        kl_s, kl = SS.subset_kl(z, dz, mask), S.kl_exact(z, dz)
        pred_s, pred = SS.subset_vs_full_expected_kl(z, mask, s)
        for meas, p in ((kl_s, pred_s), (kl, pred)):
            se = float(jnp.std(meas)) / math.sqrt(N)
            assert abs(float(jnp.mean(meas)) - float(p)) < 4 * se + 0.02 * float(p)
        assert float(jnp.mean(kl_s)) < 0.2 * float(jnp.mean(kl))


def test_correlated_noise_cancels_within_close_letters():
    """Δz = WΔh: letters whose head rows are close barely move relative to each other."""
    with jax.enable_x64(True):
        d, Vs, N, sigma = 64, 2048, 2000, 0.05
        W = _rng(5, (Vs, d), 1 / math.sqrt(d))
        idx = jnp.arange(4)
        W = W.at[idx].set(W[0] + _rng(6, (4, d), 0.1 / math.sqrt(d)))
        z = _rng(7, (Vs,), 2.0)
        mask = SS.mask_from_indices(Vs, idx)
        dz = _rng(8, (N, d), sigma) @ W.T
        pS = jnp.exp(S.log_softmax_T(SS.subset_logits(z, mask)))
        p = jnp.exp(S.log_softmax_T(z))
        for meas, w in ((SS.subset_kl(z, dz, mask), pS), (S.kl_exact(z, dz), p)):
            pred = SS.expected_kl_linear(w, W, sigma)
            se = float(jnp.std(meas)) / math.sqrt(N)
            assert abs(float(jnp.mean(meas)) - float(pred)) < 4 * se + 0.03 * float(pred)
        assert float(SS.expected_kl_linear(pS, W, sigma)) < 0.05 * float(SS.expected_kl_linear(p, W, sigma))


def test_subset_flip_probability_against_simulation():
    mask = SS.mask_from_indices(V, LETTERS)
    N = 20000
    for gap, s in ((0.5, 0.5), (1.5, 0.7), (3.0, 1.0)):
        z = _mc_logits(6, 1, gap)[0]
        noise = _rng(9, (N, 4), s)
        zs = z[LETTERS]
        flips = jnp.mean(jnp.argmax(zs + noise, -1) != jnp.argmax(zs))
        exact = SS.subset_flip_probability(z, mask, s)
        approx = SS.subset_flip_probability(z, mask, s, exact=False)
        se = math.sqrt(float(exact) * (1 - float(exact)) / N)
        assert abs(float(flips) - float(exact)) < 4 * se + 1e-3
        assert float(approx) <= float(exact) + 1e-6  # more competitors can only add flips
