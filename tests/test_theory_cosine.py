"""Theorem 1 and the norm/head propagation (theory/cosine.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hemorrhage.theory import cosine as C


def _rng(seed, shape, scale=1.0):
    """Host-side normal draws (numpy: no per-shape device compilation)."""
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape))


def _h_dh(key, B, d, s):
    return _rng(key, (B, d), 5.0), _rng(1000 + key, (B, d), s * 5.0 / np.sqrt(d))


def test_exact_form_is_exact_float64():
    with jax.enable_x64(True):
        for i, s in enumerate([1e-3, 0.1, 0.5, 0.9]):
            h, dh = _h_dh(i, 256, 64, s)
            np.testing.assert_allclose(C.cos_exact_form(h, dh), C.cos_sim(h, h + dh), rtol=1e-13)
        # a purely radial error (α > −1) leaves the cosine at exactly 1
        np.testing.assert_allclose(C.cos_sim(h, h + 0.3 * h), 1.0, rtol=1e-15)


def test_taylor_within_stated_bound_and_converges():
    with jax.enable_x64(True):
        worst = []
        for i, s in enumerate([0.01, 0.03, 0.1, 0.3]):
            h, dh = _h_dh(10 + i, 512, 64, s)
            exact = C.one_minus_cos(h, h + dh)
            np.testing.assert_allclose(exact, 1 - C.cos_sim(h, h + dh), rtol=1e-7)
            taylor = C.one_minus_cos_taylor(h, dh)
            rel = jnp.abs(exact / taylor - 1)  # the bound is stated for (1 − cos)/(ρ²/2)
            assert bool(jnp.all(rel <= C.theorem1_relerr_bound(h, dh) + 1e-9))
            worst.append(float(jnp.max(rel)))
        assert worst == sorted(worst) and worst[0] < 0.01  # error shrinks linearly with s


def test_taylor_radial_part_is_third_order():
    """Adding a radial error αh changes 1 − cos only by the factor (1+α)^{-2}."""
    with jax.enable_x64(True):
        h, dh = _h_dh(20, 64, 32, 0.05)
        alpha, perp, rho = C.decompose(h, dh)
        np.testing.assert_allclose(jnp.sum(perp * h, -1), 0.0, atol=1e-12)
        for a in (-0.2, 0.3):
            exact = C.one_minus_cos(h, h + perp + a * h)
            np.testing.assert_allclose(exact, 1 - 1 / jnp.sqrt(1 + rho**2 / (1 + a) ** 2), rtol=1e-9)


@pytest.mark.parametrize("eps", [0.0, 1e-2])
def test_norm_jacobians_match_autodiff(eps):
    with jax.enable_x64(True):
        d = 48
        h = _rng(30, (d,), 3.0) + 1.0
        g = 1 + _rng(31, (d,), 0.3)
        Jr = jax.jacfwd(lambda x: C.rmsnorm(x, g, eps))(h)
        np.testing.assert_allclose(C.rmsnorm_jacobian(h, g, eps), Jr, atol=1e-12)
        Jl = jax.jacfwd(lambda x: C.layernorm(x, g, None, eps))(h)
        np.testing.assert_allclose(C.layernorm_jacobian(h, g, eps), Jl, atol=1e-12)
        if eps == 0.0:
            dh = _rng(32, (d,))
            np.testing.assert_allclose(C.norm_jvp(h, dh, g, "rms"), Jr @ dh, atol=1e-12)
            np.testing.assert_allclose(C.norm_jvp(h, dh, g, "layer"), Jl @ dh, atol=1e-12)
            # radial part removed, tangent part scaled by √d/‖h‖ (g = 1)
            J1 = C.rmsnorm_jacobian(h)
            np.testing.assert_allclose(J1 @ h, 0.0, atol=1e-12)
            u = dh - (dh @ h) / (h @ h) * h
            np.testing.assert_allclose(
                jnp.linalg.norm(J1 @ u), jnp.sqrt(d) / jnp.linalg.norm(h) * jnp.linalg.norm(u), rtol=1e-12
            )


def _head(key, V, d, decay):
    """W = U diag(σₖ) Vᵀ with a geometric spectrum σₖ = decay^k."""
    U, _ = np.linalg.qr(np.random.default_rng(key).standard_normal((V, d)))
    Vt, _ = np.linalg.qr(np.random.default_rng(key + 1).standard_normal((d, d)))
    sig = decay ** np.arange(d)
    return jnp.asarray((U * sig) @ Vt.T), jnp.asarray(Vt), jnp.asarray(sig)


@pytest.mark.parametrize("kind", ["rms", "layer"])
def test_predicted_cos_z_monte_carlo(kind):
    with jax.enable_x64(True):
        d, V, N = 32, 1024, 3000
        W, _, _ = _head(40, V, d, 0.93)
        h = _rng(41, (d,), 4.0)
        g = 1 + _rng(42, (d,), 0.2)
        sigma = 1e-3 * float(jnp.linalg.norm(h))
        dh = _rng(43, (N, d), sigma)
        pred_z = C.predicted_one_minus_cos_z(h, W, sigma, g, kind)
        _, exact = C.cos_z_predicted_vs_exact(h, dh, W, g, kind)
        se = jnp.std(exact) / jnp.sqrt(N)
        assert abs(float(jnp.mean(exact) - pred_z)) < 4 * float(se) + 0.01 * float(pred_z)
        exact_h = C.one_minus_cos(h, h + dh)
        pred_h = C.predicted_one_minus_cos_h(h, sigma)
        assert abs(float(jnp.mean(exact_h) / pred_h) - 1) < 0.05


def test_cos_z_per_draw_prediction_converges():
    with jax.enable_x64(True):
        W, _, _ = _head(50, 512, 32, 0.9)
        h = _rng(51, (32,), 4.0)
        errs = []
        for s in (1e-3, 1e-2, 1e-1):
            dh = _rng(52, (64, 32), s)
            pred, exact = C.cos_z_predicted_vs_exact(h, dh, W)
            errs.append(float(jnp.max(jnp.abs(pred / exact - 1))))
        assert errs == sorted(errs) and errs[0] < 0.01


def test_logit_cos_gain_spectrum():
    with jax.enable_x64(True):
        d, V = 32, 512
        # isotropic head (orthonormal columns): cos(z) tracks cos(h) exactly, gain 1
        Q = jnp.asarray(np.linalg.qr(np.random.default_rng(60).standard_normal((V, d)))[0])
        h = _rng(61, (d,))
        np.testing.assert_allclose(C.logit_cos_gain(h, Q), 1.0, rtol=1e-12)
        # anisotropic head: signal along the top singular direction → gain < 1,
        # along the bottom one → gain > 1
        W, Vt, sig = _head(62, V, d, 0.85)
        top = C.logit_cos_gain(Vt[:, 0] + 0.05 * h, W)
        bottom = C.logit_cos_gain(Vt[:, -1] + 0.05 * h / 50, W)
        assert float(top) < 0.5 < 1.5 < float(bottom)
        # the gain is the ratio of the two predictions (RMSNorm, g = 1)
        ratio = C.predicted_one_minus_cos_z(h, W, 0.1) / C.predicted_one_minus_cos_h(h, 0.1)
        np.testing.assert_allclose(C.logit_cos_gain(h, W), ratio, rtol=1e-10)


def test_strict_promotion_float32_vmap():
    h, dh = _h_dh(70, 8, 16, 0.1)
    with jax.numpy_dtype_promotion("strict"):
        out = jax.jit(jax.vmap(C.one_minus_cos_taylor))(h, dh)
        assert out.dtype == jnp.float32
        np.testing.assert_allclose(out, C.one_minus_cos_taylor(h, dh), rtol=1e-6)
        assert C.theorem1_relerr_bound(h, dh).shape == (8,)
