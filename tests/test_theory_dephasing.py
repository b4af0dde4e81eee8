"""theory.dephasing: the closure R(x) against its derivation, quadrature and its limits."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import sympy as sp

from hemorrhage.theory import dephasing_factor, dephasing_rate
from hemorrhage.theory import derivations as D


def test_series_and_closed_form_match_the_code():
    closed, coeffs = D.dephasing_factor_series(4)
    x = sp.Symbol("x", positive=True)
    for xv in (0.01, 0.04, 0.06, 0.5, 3.0, 40.0, 400.0):
        assert abs(float(dephasing_factor(xv)) - float(closed.subs(x, xv))) < 2e-6
    # the series branch: R(x) − Σ c_k x^k = O(x⁵)
    for xv in (1e-4, 1e-2, 0.049):
        ser = sum(float(c) * xv**k for k, c in enumerate(coeffs))
        assert abs(float(dephasing_factor(xv)) - ser) < 1e-7
    assert coeffs[:2] == [1, sp.Rational(-1, 12)]


def test_matches_a_numerical_double_integral():
    t = (np.arange(400) + 0.5) / 400
    for xv in (0.3, 7.8, 31.0):
        quad = np.exp(-0.5 * xv * (t[:, None] - t[None, :]) ** 2).mean()
        assert abs(float(dephasing_factor(xv)) - quad) < 1e-4


def test_limits_monotone_and_the_rotation_it_closes_on():
    xs = jnp.geomspace(1e-6, 1e4, 200)
    r = np.asarray(dephasing_factor(xs))
    assert np.all(np.diff(r) <= 0) and r[-1] < r[0] and r[0] > 1 - 1e-6 and np.all(r > 0)  # float32 steps
    assert abs(r[-1] / math.sqrt(2 * math.pi / 1e4) - 1) < 0.02  # random-walk limit √(2π/x)
    rot = D.rotation_energy_series(2)
    assert rot[1] == sp.Rational(-1, 12)  # a turning velocity: the same first correction
    assert abs(float(jax.grad(dephasing_factor)(1e-4)) - float(rot[1])) < 1e-4


def test_rate_is_the_perpendicular_share_and_blind_to_growth():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(50))
    a = rng.normal(size=50)
    perp = rng.normal(size=50)
    cov = lambda u, v: float(np.sum(p * u * v) - np.sum(p * u) * np.sum(p * v))  # noqa: E731
    perp = perp - cov(perp, a) / cov(a, a) * a
    b = 3.0 * a + 0.5 * perp  # growth along a is not dephasing
    x = float(dephasing_rate(cov(a, a), cov(b, b), cov(a, b)))
    assert abs(x - 0.25 * cov(perp, perp) / cov(a, a)) < 1e-5 * max(x, 1)
    assert float(dephasing_rate(cov(a, a), cov(3 * a, 3 * a), cov(a, 3 * a))) < 1e-5
    assert float(dephasing_rate(0.0, 1.0, 0.0)) == 0.0
