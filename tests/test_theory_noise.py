"""Noise models (theory/noise.py) against simulated quantisation and pruning."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hemorrhage.theory import cosine as C
from hemorrhage.theory import noise as N


def _rng(seed, shape, scale=1.0):
    """Host-side normal draws (numpy: no per-shape device compilation)."""
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape))


def _weights(key, shape=(256, 512)):
    return _rng(key, shape)


@pytest.mark.parametrize(
    "cfg",
    [
        dict(symmetric=False, granularity="channel"),
        dict(symmetric=True, granularity="channel"),
        dict(symmetric=False, granularity="group", group_size=64),
        dict(symmetric=True, granularity="tensor"),
    ],
)
def test_rtn_noise_variance_delta2_over_12(cfg):
    W = _weights(1)
    mses = []
    for b in (4, 5, 6, 8):
        Q = N.quantize_rtn(W, b, **cfg)
        err = Q - W
        step = N.quant_step(W, b, **cfg)
        assert bool(jnp.all(jnp.abs(err) <= step / 2 * (1 + 1e-4)))  # no clipping at c = 1
        mse, pred = jnp.mean(err**2), jnp.mean(N.quant_noise_var(W, b, **cfg))
        assert abs(float(mse / pred) - 1) < 0.05, (b, float(mse / pred))
        pred_c = jnp.mean(N.quant_noise_var(W, b, endpoint_correction=True, **cfg))
        assert abs(float(mse / pred_c) - 1) < 0.025, (b, float(mse / pred_c))
        assert abs(float(jnp.mean(err)) / math.sqrt(float(pred))) < 0.05  # zero mean
        mses.append(float(mse))
    # each bit divides the noise by ~4 (exactly ((2^b − 1)/(2^{b+1} − 1))²)
    np.testing.assert_allclose(mses[1] / mses[0], N.noise_var_per_bit_ratio(), rtol=0.12)


def test_granularity_ordering_and_sqnr_slope():
    W = _weights(2).at[:, 7].multiply(8.0)  # an outlier input channel
    var = lambda **kw: float(jnp.mean((N.quantize_rtn(W, 4, **kw) - W) ** 2))
    assert var(granularity="group", group_size=32) < var(granularity="channel") < var(granularity="tensor")
    # full-scale uniform signal: SQNR ≈ 6.02 dB per bit
    u = jnp.asarray(np.random.default_rng(3).uniform(-1.0, 1.0, (1, 200000)))
    db = [float(N.sqnr_db(jnp.var(u), jnp.mean((N.quantize_rtn(u, b, symmetric=True) - u) ** 2))) for b in (6, 7, 8)]
    np.testing.assert_allclose(np.diff(db), 20 * math.log10(2), atol=0.15)
    # rule 6.02b + 4.77 − 20log₁₀(C/σ), up to the 2^b vs 2^b − 1 step convention
    assert abs(db[-1] - float(N.sqnr_db_rule(8)) + 20 * math.log10(256 / 255)) < 0.1


@pytest.mark.parametrize("dist", ["gaussian", "laplace"])
def test_clipped_quantizer_mse(dist):
    g = np.random.default_rng(4)
    w = jnp.asarray(g.standard_normal(400000) if dist == "gaussian" else g.laplace(size=400000))
    for b in (3, 4):
        for c in (1.5, 2.5, 4.0):
            q = jnp.clip(jnp.round((w + c) / (2 * c / (2**b - 1))), 0, 2**b - 1) * (2 * c / (2**b - 1)) - c
            sim = float(jnp.mean((q - w) ** 2))
            pred = float(N.clipped_quant_mse(b, c, dist))
            assert abs(sim / pred - 1) < (0.08 if b == 3 else 0.05), (b, c, sim, pred)
    c_opt, mse_opt = N.optimal_clip_ratio(4, dist)
    c_star = float(c_opt)
    assert 1.5 < c_star < 8.0, c_star  # the optimal clip sits a few scale units out, not at the edge of the search
    for c in (0.6 * float(c_opt), 1.6 * float(c_opt)):
        assert float(N.clipped_quant_mse(4, c, dist)) > float(mse_opt)


def test_pruning_noise_variance():
    W = _weights(5, (512, 1024))
    for S in (0.3, 0.5, 0.7):
        mask = N.magnitude_mask(W, S)
        np.testing.assert_allclose(1 - jnp.mean(mask), S, atol=1e-3)
        dW = N.pruning_delta(W, mask)
        np.testing.assert_allclose(jnp.mean(dW**2), N.magnitude_pruning_noise_var(S), rtol=0.03)
        rmask = jnp.asarray(np.random.default_rng(6).random(W.shape) > S, W.dtype)
        np.testing.assert_allclose(jnp.mean(N.pruning_delta(W, rmask) ** 2), N.random_pruning_noise_var(S), rtol=0.03)
    # noise-wise, 50% magnitude pruning of Gaussian rows ≈ 3-bit, worse than 4-bit RTN
    W4 = _weights(7, (64, 4096))
    v4 = jnp.mean(N.quant_noise_var(W4, 4))
    eb = N.equivalent_bits(N.magnitude_pruning_noise_var(0.5), v4, 4)
    assert 2.5 < float(eb) < 3.6


def test_pruning_output_error_exact_and_diag():
    with jax.enable_x64(True):
        W = _weights(9, (32, 64))
        dW = N.pruning_delta(W, N.magnitude_mask(W, 0.5))
        X = _rng(8, (20000, 64)) * jnp.linspace(0.2, 3.0, 64)  # independent features
        direct = jnp.mean((X @ dW.T) ** 2, axis=0)
        np.testing.assert_allclose(N.pruning_output_error_exact(dW, X), direct, rtol=1e-10)
        np.testing.assert_allclose(jnp.sum(N.pruning_output_error_diag(dW, X)), jnp.sum(direct), rtol=0.03)
        # correlated features: the diagonal (Wanda) estimate no longer equals the truth
        Xc = X + _rng(9, (20000, 1), 3.0)
        gap = N.pruning_output_error_diag(dW, Xc) / N.pruning_output_error_exact(dW, Xc)
        assert float(jnp.max(jnp.abs(gap - 1))) > 0.2


def test_linear_propagation_of_quantization_noise():
    d_out, d_in, R = 128, 512, 8
    x = _rng(10, (d_in,)) * jnp.linspace(0.1, 3.0, d_in)
    meas, pred = [], []
    for r in range(R):
        W = _weights(100 + r, (d_out, d_in))
        dy = (N.quantize_rtn(W, 4, granularity="group", group_size=64) - W) @ x
        meas.append(jnp.mean(dy**2))
        pred.append(jnp.mean(N.linear_output_noise_var(x, N.quant_noise_var(W, 4, granularity="group", group_size=64))))
    ratio = float(jnp.mean(jnp.array(meas)) / jnp.mean(jnp.array(pred)))
    assert abs(ratio - 1) < 0.06
    # calibration-set version equals the mean of the per-input formula
    X = _rng(11, (100, d_in))
    vw = N.quant_noise_var(W, 4)
    np.testing.assert_allclose(
        N.linear_output_noise_energy(X, vw), jnp.mean(jnp.sum(N.linear_output_noise_var(X, vw), -1)), rtol=1e-4
    )


def test_residual_stream_errors_add_in_quadrature():
    """h_{l+1} = h_l + W2 tanh(W1 rmsnorm(h_l)); noisy weights; Δh_L ≈ Σ e_l."""
    with jax.enable_x64(True):
        L, d, f, R, eps = 6, 64, 128, 200, 0.01
        W1 = _rng(12, (L, f, d), 1 / math.sqrt(d))
        W2 = _rng(13, (L, d, f), 1 / math.sqrt(f))
        h0 = _rng(14, (d,), 10.0)

        def run(key):
            E1 = eps * jax.random.normal(jax.random.fold_in(key, 1), W1.shape) / math.sqrt(d)
            E2 = eps * jax.random.normal(jax.random.fold_in(key, 2), W2.shape) / math.sqrt(f)

            def block(carry, w):
                h, hn = carry  # clean and noisy streams
                a1, a2, e1, e2 = w
                u = C.rmsnorm(h)
                clean = a2 @ jnp.tanh(a1 @ u)
                local = (a2 + e2) @ jnp.tanh((a1 + e1) @ u) - clean  # e_l on the clean path
                hn = hn + (a2 + e2) @ jnp.tanh((a1 + e1) @ C.rmsnorm(hn))
                return (h + clean, hn), local

            (h, hn), local = jax.lax.scan(block, (h0, h0), (W1, W2, E1, E2))
            return h, hn - h, local

        hL, dh, local = jax.jit(jax.vmap(run))(jax.random.split(jax.random.PRNGKey(13), R))
        hL = hL[0]
        energy = jnp.mean(jnp.sum(local**2, -1), 0)  # E‖e_l‖²
        pred = N.residual_error_energy(energy)[-1]
        meas = jnp.mean(jnp.sum(dh**2, -1))
        assert abs(float(meas / pred) - 1) < 0.1
        # independent → cross terms vanish on average (quadrature)
        summed = jnp.mean(jnp.sum(jnp.sum(local, 1) ** 2, -1))
        assert abs(float(summed / pred) - 1) < 0.1
        # the norm dilutes: 1 − cos(h_L) ≈ ½(1 − 1/d) E‖Δh‖²/‖h_L‖²
        oc = jnp.mean(C.one_minus_cos(hL, hL + dh))
        np.testing.assert_allclose(oc, 0.5 * N.norm_relative_error(meas, hL @ hL, d), rtol=0.1)
