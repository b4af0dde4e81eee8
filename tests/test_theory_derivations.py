"""Symbolic derivations (theory/derivations.py) against the closed forms in code."""

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import sympy as sp

from hemorrhage.theory import compounding as CP
from hemorrhage.theory import derivations as D
from hemorrhage.theory import noise as N
from hemorrhage.theory import softmax as S

ORDER = 8


def _frac(x):
    return Fraction(x).limit_denominator(10**9)


def test_kl_series_coefficients():
    c = D.kl_cumulant_series(ORDER)
    assert c[1] == 0  # the mean shift cancels exactly
    for n in range(2, ORDER + 1):
        assert c[n] == sp.Rational(1, sp.factorial(n))
    assert [_frac(x) for x in S.kl_series_coefficients(ORDER)] == [
        Fraction(int(c[n].p), int(c[n].q)) for n in range(2, ORDER + 1)
    ]


def test_reverse_kl_series_coefficients():
    c = D.reverse_kl_series(ORDER)
    assert c[1] == 0
    for n in range(2, ORDER + 1):
        assert sp.simplify(c[n] - sp.Rational(n - 1, sp.factorial(n))) == 0
    assert [_frac(x) for x in S.reverse_kl_series_coefficients(ORDER)] == [
        Fraction(int(c[n].p), int(c[n].q)) for n in range(2, ORDER + 1)
    ]


def test_cosine_series_coefficients():
    c = D.cosine_log_series(ORDER)
    assert c[1] == 0
    assert (c[2], c[3], c[4]) == (sp.Rational(-1, 2), sp.Rational(-1, 2), sp.Rational(-7, 24))
    for n in range(2, ORDER + 1):
        assert c[n] == sp.Rational(1 - 2 ** (n - 1), sp.factorial(n))
    assert [_frac(x) for x in S.log_cosine_series_coefficients(ORDER)] == [
        Fraction(int(c[n].p), int(c[n].q)) for n in range(2, ORDER + 1)
    ]
    expr, k = D.one_minus_cos_cumulant_expansion(4)
    target = k[1] / 2 + k[2] / 2 + sp.Rational(7, 24) * k[3] - k[1] ** 2 / 8
    assert sp.expand(expr - target) == 0


def test_exact_identities_symbolic():
    assert all(v == 0 for v in D.verify_exact_identities().values())


def test_theorems_2_and_3_from_definitions():
    for derive in (D.theorem3_from_definition, D.theorem2_from_definition):
        coef, closed = derive()
        assert sp.cancel(sp.together(coef - closed)) == 0


def test_cumulant_recursion_matches_sympy():
    with jax.enable_x64(True):
        kap_sym, m = D.cumulants_from_moments(6)
        rng = np.random.default_rng(0)
        x = rng.normal(size=50) + 0.7
        w = rng.dirichlet(np.ones(50))
        raw = {m[k - 1]: float(np.sum(w * x**k)) for k in range(1, 7)}
        want = [float(k.subs(raw)) for k in kap_sym]
        np.testing.assert_allclose(S.cumulants(jnp.asarray(x), jnp.asarray(w), 6), want, rtol=1e-8, atol=1e-10)


def test_var_kappa3_formula():
    assert D.var_kappa3_iid_check(3) == 0
    # and the numeric implementation equals the power-sum formula it encodes
    with jax.enable_x64(True):
        w = jnp.array([0.5, 0.3, 0.2])
        C = jnp.eye(3) - w[:, None] - w[None, :] + jnp.sum(w**2)
        dg = jnp.diag(C)
        brute = jnp.sum(w[:, None] * w[None, :] * (9 * dg[:, None] * dg[None, :] * C + 6 * C**3))
        np.testing.assert_allclose(S._var_kappa3_iid(w), brute, rtol=1e-12)


def test_theorem1_derivations():
    derived, closed = D.theorem1_exact_cos()
    assert sp.simplify(derived - closed) == 0
    series, (alpha, rho) = D.theorem1_taylor(4)
    poly = sp.Poly(series, alpha, rho)
    assert poly.coeff_monomial(rho**2) == sp.Rational(1, 2)  # Theorem 1
    assert poly.coeff_monomial(alpha * rho**2) == -1  # first correction
    assert all(mon[1] >= 2 for mon in poly.monoms())  # no purely radial terms
    assert D.rmsnorm_jacobian_check(3) == sp.zeros(3, 3)


def test_quantizer_and_sqnr():
    mean, var = D.quantizer_noise_variance()
    Delta = sp.Symbol("Delta", positive=True)
    assert mean == 0 and sp.simplify(var - Delta**2 / 12) == 0
    db, per_bit = D.sqnr_per_bit_db()
    assert abs(float(per_bit) - 6.0206) < 1e-4
    np.testing.assert_allclose(float(N.sqnr_db_rule(5)), float(db.subs(sp.Symbol("b", positive=True), 5)), rtol=1e-6)


def test_overload_and_pruning_integrals_match_numeric():
    for dist, scale in (("gaussian", 1.3), ("laplace", 0.7)):
        expr, (Cs, s) = D.overload_noise(dist)
        for b, c in ((4, 2.0), (3, 3.5)):
            C = c * scale
            step = 2 * C / (2**b - 1)
            inside = math.erf(c / math.sqrt(2)) if dist == "gaussian" else 1 - math.exp(-c)
            over = float(expr.subs({Cs: C, s: scale}))
            np.testing.assert_allclose(
                float(N.clipped_quant_mse(b, c, dist, scale)), step**2 / 12 * inside + over, rtol=1e-5
            )
    expr, tau = D.magnitude_pruning_variance()
    for S_ in (0.3, 0.5, 0.8):
        t = float(jax.scipy.special.ndtri((1 + S_) / 2))
        np.testing.assert_allclose(float(N.magnitude_pruning_noise_var(S_)), float(expr.subs(tau, t)), rtol=1e-5)


def test_flip_and_first_divergence():
    derived, closed = D.flip_probability_derivation()
    assert sp.simplify((derived - closed).rewrite(sp.erf)) == 0
    m, s = sp.symbols("m sigma", positive=True)
    np.testing.assert_allclose(float(CP.flip_probability(0.7, 0.4)), float(derived.subs({m: 0.7, s: 0.4})), rtol=1e-6)
    assert D.first_divergence_derivation(12) == 0


def test_subspace_chain_rule_and_linear_variance():
    assert D.kl_chain_rule_check() == 0
    assert D.expected_var_linear_check(3, 2) == 0
