r"""Symbolic derivations (sympy) behind the numeric modules.

Every function derives a result from its definition and returns sympy objects; the
tests in ``tests/test_theory_derivations.py`` compare them with the closed forms the
numeric code uses.  Nothing here is imported by the numeric modules.

Contents
* cumulants_from_moments   — κₙ in raw moments (coefficients of log M(t)).
* kl_cumulant_series       — KL(p‖q) = K(1) − K'(0) → coefficient of κₙ is 1/n!.
* reverse_kl_series        — KL(q‖p) = K'(1) − K(1) → (n−1)/n!.
* cosine_log_series        — log cos(p,q) = K_r(1) − ½K_r(2) → (1 − 2^{n−1})/n!.
* one_minus_cos_cumulant_expansion — 1 − exp(log cos) graded by cumulant order.
* verify_exact_identities  — the three identities for a symbolic 3-token vocabulary.
* theorem3_from_definition / theorem2_from_definition — ε² coefficient of KL and of
  1 − cos for δ = εx on a symbolic 3-token vocabulary equals ½Var_p(x) / ½Var_r(x).
* theorem1_exact_cos, theorem1_taylor — cos(h, h+Δh) in (α, ρ) and its expansion.
* rmsnorm_jacobian_check   — sympy Jacobian of RMSNorm vs diag(g)(√d/‖h‖)(I − ĥĥᵀ).
* quantizer_noise_variance, sqnr_per_bit_db, overload_noise, magnitude_pruning_variance.
* flip_probability_derivation — P(m + σZ < 0) = Φ(−m/σ).
* first_divergence_derivation — Σ_t t·P(τ=t) + (H+1)S(H) = (1 − (1−π)^{H+1})/π.
* var_kappa3_iid_check     — Isserlis for Var κ₃ under weights w (regime of Thm 2/3).
* kl_chain_rule_check      — KL = KL(Ber(P)‖Ber(Q)) + P·KL_S + (1−P)·KL_{Sᶜ} (subspace).
* expected_var_linear_check — E[Var_w(WΔh)] = σ²(Σwᵢ‖Wᵢ‖² − ‖Σwᵢ Wᵢ‖²).
* dephasing_factor_series, rotation_energy_series — R(x) of theory.dephasing from its double
  integral; the energy of a turning velocity it is closed on.
"""

from __future__ import annotations

import sympy as sp

__all__ = [
    "cumulants_from_moments",
    "kl_cumulant_series",
    "reverse_kl_series",
    "cosine_log_series",
    "one_minus_cos_cumulant_expansion",
    "verify_exact_identities",
    "theorem3_from_definition",
    "theorem2_from_definition",
    "theorem1_exact_cos",
    "theorem1_taylor",
    "rmsnorm_jacobian_check",
    "quantizer_noise_variance",
    "sqnr_per_bit_db",
    "overload_noise",
    "magnitude_pruning_variance",
    "flip_probability_derivation",
    "first_divergence_derivation",
    "var_kappa3_iid_check",
    "kl_chain_rule_check",
    "expected_var_linear_check",
    "dephasing_factor_series",
    "rotation_energy_series",
]

t, eps = sp.symbols("t epsilon")


def _kappas(order):
    return sp.symbols(f"kappa1:{order + 1}")


def _cgf(order, kap, arg):
    """K(arg) = Σ_{n=1}^{order} κₙ argⁿ/n!."""
    return sum(kap[n - 1] * arg**n / sp.factorial(n) for n in range(1, order + 1))


def cumulants_from_moments(order: int):
    """[κ₁..κ_order] as polynomials in raw moments m₁..m_order, from log M(t)."""
    m = sp.symbols(f"m1:{order + 1}")
    M = 1 + sum(m[n - 1] * t**n / sp.factorial(n) for n in range(1, order + 1))
    logM = sp.series(sp.log(M), t, 0, order + 1).removeO()
    return [sp.expand(logM.coeff(t, n) * sp.factorial(n)) for n in range(1, order + 1)], m


def _coefficients(expr, kap, order):
    expr = sp.expand(expr)
    return {n: sp.nsimplify(expr.coeff(kap[n - 1])) for n in range(1, order + 1)}


def kl_cumulant_series(order: int) -> dict:
    """{n: coefficient of κₙ} in KL(p‖q) = log E_p[e^δ] − E_p[δ] = K(1) − K'(0)."""
    kap = _kappas(order)
    K = _cgf(order, kap, t)
    expr = K.subs(t, 1) - sp.diff(K, t).subs(t, 0)
    return _coefficients(expr, kap, order)


def reverse_kl_series(order: int) -> dict:
    """{n: coeff} in KL(q‖p) = E_q[δ] − log E_p[e^δ] = K'(1) − K(1).

    (E_q[δ] = Σ p e^δ δ / Σ p e^δ = K'(1).)  Uses order+1 cumulants so that
    K'(1) is complete up to κ_order.
    """
    kap = _kappas(order + 1)
    K = _cgf(order + 1, kap, t)
    expr = sp.diff(K, t).subs(t, 1) - K.subs(t, 1)
    c = _coefficients(expr, kap, order + 1)
    return {n: c[n] for n in range(1, order + 1)}


def cosine_log_series(order: int) -> dict:
    """{n: coeff} in log cos(p,q) = log E_r[e^δ] − ½ log E_r[e^{2δ}] = K_r(1) − ½K_r(2)."""
    kap = _kappas(order)
    K = _cgf(order, kap, t)
    return _coefficients(K.subs(t, 1) - K.subs(t, 2) / 2, kap, order)


def one_minus_cos_cumulant_expansion(order: int):
    """1 − exp(Σ cₙκₙ) expanded with κₙ ~ εⁿ up to εᵒʳᵈᵉʳ (κ₁ cancels exactly)."""
    kap = _kappas(order)
    c = cosine_log_series(order)
    L = sum(c[n] * kap[n - 1] * eps**n for n in range(2, order + 1))
    ser = sp.series(1 - sp.exp(L), eps, 0, order + 1).removeO()
    return sp.expand(ser.subs(eps, 1)), kap


# ------------------------------------------------------------ 3-token vocabulary
def _three_token():
    """a = e^z > 0 and b = e^δ > 0 for V = 3 (T = 1): p = a/Σa, q = ab/Σab."""
    a = sp.symbols("a1:4", positive=True)
    b = sp.symbols("b1:4", positive=True)
    A, B = sum(a), sum(ai * bi for ai, bi in zip(a, b))
    p = [ai / A for ai in a]
    q = [ai * bi / B for ai, bi in zip(a, b)]
    return b, p, q


def _zero_modulo_logs(expr) -> sp.Expr:
    """Expand all logs, replace each log atom by a symbol, cancel the coefficients."""
    expr = expr.replace(sp.log, lambda arg: sp.log(sp.factor(sp.together(arg))))
    expr = sp.expand(sp.expand_log(expr, force=True))
    logs = sorted(expr.atoms(sp.log), key=sp.default_sort_key)
    if not logs:
        return sp.cancel(expr)
    Ls = sp.symbols(f"L0:{len(logs)}")
    poly = sp.Poly(expr.subs(dict(zip(logs, Ls))), *Ls)
    return sum((sp.cancel(c) * sp.Mul(*[L**k for L, k in zip(Ls, m)]) for m, c in poly.terms()), sp.Integer(0))


def verify_exact_identities() -> dict:
    """Residuals (→ 0) of the three exact identities for a symbolic V = 3, T = 1:
    KL(p‖q) − (log E_p e^δ − E_p δ), KL(q‖p) − (E_q δ − log E_p e^δ),
    cos(p,q)² − (E_r e^δ)²/E_r e^{2δ}  (δ = log b)."""
    b, p, q = _three_token()
    d = [sp.log(bi) for bi in b]
    Ep = lambda f: sum(pi * fi for pi, fi in zip(p, f))
    kl = sum(pi * sp.log(pi / qi) for pi, qi in zip(p, q))
    rkl = sum(qi * sp.log(qi / pi) for pi, qi in zip(p, q))
    EpE = Ep(b)
    n2 = sum(pi**2 for pi in p)
    r = [pi**2 / n2 for pi in p]
    Er = lambda f: sum(ri * fi for ri, fi in zip(r, f))
    cos2 = sum(pi * qi for pi, qi in zip(p, q)) ** 2 / (sum(pi**2 for pi in p) * sum(qi**2 for qi in q))
    Eq_d = sum(qi * di for qi, di in zip(q, d))
    return {
        "kl": _zero_modulo_logs(kl - (sp.log(EpE) - Ep(d))),
        "reverse_kl": _zero_modulo_logs(rkl - (Eq_d - sp.log(EpE))),
        "cos": sp.cancel(cos2 - Er(b) ** 2 / Er([bi**2 for bi in b])),
    }


def _weights3():
    w = sp.symbols("w1:4", positive=True)
    x = sp.symbols("x1:4", real=True)
    return w, x


def theorem3_from_definition():
    """(ε² Taylor coefficient of KL(p‖q) for δ = εx, ½Var_p(x)), V = 3, weights p.

    Starts from KL = Σ p log(p/q) itself, not from the cumulant series.
    """
    p, x = _weights3()
    S = sum(p)
    Zq = sum(pi * sp.exp(eps * xi) for pi, xi in zip(p, x))
    # log(p_i/q_i) = log(Z_q/S) − εx_i  with q_i = p_i e^{εx_i}/Z_q
    kl = sum(pi / S * (sp.log(Zq / S) - eps * xi) for pi, xi in zip(p, x))
    coef = sp.diff(kl, eps, 2).subs(eps, 0) / 2  # Taylor coefficient of ε²
    mean = sum(pi * xi for pi, xi in zip(p, x)) / S
    var = sum(pi * (xi - mean) ** 2 for pi, xi in zip(p, x)) / S
    return coef, var / 2


def theorem2_from_definition():
    """(ε² coefficient of 1 − cos(p,q), ½Var_r(x)), r ∝ p², V = 3, δ = εx."""
    p, x = _weights3()
    q = [pi * sp.exp(eps * xi) for pi, xi in zip(p, x)]  # unnormalised: cos is scale-free
    cos = sum(pi * qi for pi, qi in zip(p, q)) / sp.sqrt(sum(pi**2 for pi in p) * sum(qi**2 for qi in q))
    coef = sp.diff(1 - cos, eps, 2).subs(eps, 0) / 2
    r = [pi**2 for pi in p]
    R = sum(r)
    mean = sum(ri * xi for ri, xi in zip(r, x)) / R
    var = sum(ri * (xi - mean) ** 2 for ri, xi in zip(r, x)) / R
    return coef, var / 2


# ------------------------------------------------------------------- Theorem 1
def theorem1_exact_cos():
    """cos(h, h+Δh) from coordinates h = (a, 0), Δh = (αa, ρa); returns (derived, closed)."""
    a, rho = sp.symbols("a rho", positive=True)
    alpha = sp.symbols("alpha", real=True)
    h = sp.Matrix([a, 0])
    dh = sp.Matrix([alpha * a, rho * a])
    cos = (h.dot(h + dh)) / sp.sqrt(h.dot(h) * (h + dh).dot(h + dh))
    closed = (1 + alpha) / sp.sqrt((1 + alpha) ** 2 + rho**2)
    return sp.simplify(cos), closed


def theorem1_taylor(order: int = 4):
    """1 − (1+α)/√((1+α)²+ρ²) with α, ρ → εα, ερ, expanded to εᵒʳᵈᵉʳ."""
    alpha, rho = sp.symbols("alpha rho", real=True)
    f = 1 - (1 + eps * alpha) / sp.sqrt((1 + eps * alpha) ** 2 + (eps * rho) ** 2)
    ser = sp.series(f, eps, 0, order + 1).removeO()
    return sp.expand(ser.subs(eps, 1)), (alpha, rho)


def rmsnorm_jacobian_check(d: int = 3):
    """Symbolic Jacobian of g ⊙ √d h/‖h‖ minus diag(g)(√d/‖h‖)(I − hhᵀ/‖h‖²) (→ 0)."""
    h = sp.Matrix(sp.symbols(f"h1:{d + 1}", real=True))
    g = sp.symbols(f"g1:{d + 1}", real=True)
    nrm = sp.sqrt(sum(hi**2 for hi in h))
    y = sp.Matrix([g[i] * sp.sqrt(d) * h[i] / nrm for i in range(d)])
    J = y.jacobian(h)
    closed = sp.diag(*g) * (sp.sqrt(d) / nrm) * (sp.eye(d) - h * h.T / nrm**2)
    return sp.simplify(J - closed)


# ---------------------------------------------------------------- quantisation
def quantizer_noise_variance():
    """(E e, E e²) for e ~ U(−Δ/2, Δ/2): (0, Δ²/12)."""
    e, D = sp.symbols("e Delta", positive=True)
    mean = sp.integrate(e / D, (e, -D / 2, D / 2))
    var = sp.integrate(e**2 / D, (e, -D / 2, D / 2))
    return sp.simplify(mean), sp.simplify(var)


def sqnr_per_bit_db():
    """SQNR of a full-scale uniform signal on [−A, A], Δ = 2A/2^b: (SQNR in dB, dB per bit)."""
    A, b = sp.symbols("A b", positive=True)
    sig = sp.integrate(sp.Symbol("w") ** 2 / (2 * A), (sp.Symbol("w"), -A, A))
    D = 2 * A / 2**b
    db = 10 * sp.log(sig / (D**2 / 12), 10)
    db = sp.simplify(sp.expand_log(db, force=True))
    return db, sp.simplify(sp.diff(db, b))


def overload_noise(dist: str = "gaussian"):
    """2∫_C^∞ (w − C)² f(w) dw for Gaussian(σ) or Laplace(b) weights (symbolic)."""
    w, C, s = sp.symbols("w C s", positive=True)
    if dist == "gaussian":
        f = sp.exp(-(w**2) / (2 * s**2)) / (s * sp.sqrt(2 * sp.pi))
    else:
        f = sp.exp(-w / s) / (2 * s)
    return sp.simplify(2 * sp.integrate((w - C) ** 2 * f, (w, C, sp.oo))), (C, s)


def magnitude_pruning_variance():
    """E[w²; |w| < τ] for w ~ N(0, 1): erf(τ/√2) − 2τφ(τ); returns (derived, τ)."""
    w, tau = sp.symbols("w tau", positive=True)
    phi = sp.exp(-(w**2) / 2) / sp.sqrt(2 * sp.pi)
    return sp.simplify(sp.integrate(w**2 * phi, (w, -tau, tau))), tau


# ----------------------------------------------------------------- compounding
def flip_probability_derivation():
    """(P(m + σZ < 0) from sympy.stats, Φ(−m/σ)) with Z ~ N(0, 1)."""
    from sympy.stats import Normal, P, cdf

    m, s = sp.symbols("m sigma", positive=True)
    X = Normal("X", m, s)
    Z = Normal("Z", 0, 1)
    return sp.simplify(P(X < 0)), sp.simplify(cdf(Z)(-m / s))


def first_divergence_derivation(H: int = 12):
    """(Σ_{t=1}^{H} t·π(1−π)^{t−1} + (H+1)(1−π)^H, closed form) for constant π."""
    pi = sp.symbols("pi", positive=True)
    s = sum(k * pi * (1 - pi) ** (k - 1) for k in range(1, H + 1)) + (H + 1) * (1 - pi) ** H
    return sp.simplify(s - (1 - (1 - pi) ** (H + 1)) / pi)


def var_kappa3_iid_check(V: int = 3):
    """E[κ₃²] for x ~ N(0, I_V) under weights w (Σw = 1), by expansion and Gaussian
    moments, minus the power-sum formula used in ``softmax._var_kappa3_iid`` (→ 0)."""
    w = list(sp.symbols(f"w1:{V}", positive=True))
    w.append(1 - sum(w))
    x = sp.symbols(f"x1:{V + 1}", real=True)
    mu = sum(wi * xi for wi, xi in zip(w, x))
    k3 = sum(wi * (xi - mu) ** 3 for wi, xi in zip(w, x))
    poly = sp.Poly(sp.expand(k3**2), *x)
    gm = lambda k: 0 if k % 2 else sp.factorial2(k - 1)
    E = 0
    for mon, c in poly.terms():
        term = c
        for k in mon:
            term *= gm(k)
        E += term
    S2 = sum(wi**2 for wi in w)
    u = [S2 / 2 - wi for wi in w]
    dd = [1 + 2 * ui for ui in u]
    s_ = lambda f: sum(f(i) for i in range(V))
    t1 = s_(lambda i: w[i] ** 2 * dd[i] ** 2) + 2 * s_(lambda i: w[i] * dd[i] * u[i]) * s_(lambda i: w[i] * dd[i])
    t2 = (
        s_(lambda i: w[i] ** 2 * ((1 + 2 * u[i]) ** 3 - 8 * u[i] ** 3))
        + 2 * s_(lambda i: w[i] * u[i] ** 3)
        + 6 * s_(lambda i: w[i] * u[i] ** 2) * s_(lambda i: w[i] * u[i])
    )
    return sp.expand(E - (9 * t1 + 6 * t2))


def kl_chain_rule_check():
    """KL(p‖q) minus the chain-rule decomposition over S = {1, 2}, Sᶜ = {3} (→ 0)."""
    b, p, q = _three_token()
    P, Q = p[0] + p[1], q[0] + q[1]
    kl = lambda a, c: sum(ai * sp.log(ai / ci) for ai, ci in zip(a, c))
    in_S = kl([p[0] / P, p[1] / P], [q[0] / Q, q[1] / Q])
    mass = P * sp.log(P / Q) + (1 - P) * sp.log((1 - P) / (1 - Q))
    return _zero_modulo_logs(kl(p, q) - (mass + P * in_S))  # Sᶜ has one token: KL = 0


def expected_var_linear_check(V: int = 3, d: int = 2):
    """E[Var_w(WΔh)] with E[ΔhᵢΔhⱼ] = σ²δᵢⱼ minus σ²(Σwᵢ‖Wᵢ‖² − ‖Σwᵢ Wᵢ‖²) (→ 0)."""
    w = list(sp.symbols(f"w1:{V}", positive=True))
    w.append(1 - sum(w))
    W = sp.Matrix(V, d, sp.symbols(f"W1:{V * d + 1}", real=True))
    x = sp.Matrix(sp.symbols(f"x1:{d + 1}", real=True))
    sigma = sp.Symbol("sigma", positive=True)
    dz = W * x
    mean = sum(w[i] * dz[i] for i in range(V))
    var = sp.expand(sum(w[i] * (dz[i] - mean) ** 2 for i in range(V)))
    poly = sp.Poly(var, *x)  # quadratic form: E[xᵢxⱼ] = σ²δᵢⱼ
    E = sum(c * sigma**2 for mon, c in poly.terms() if sorted(mon) == [0] * (d - 1) + [2])
    Wbar = sum((w[i] * W.row(i) for i in range(V)), sp.zeros(1, d))
    closed = sigma**2 * (sum(w[i] * W.row(i).dot(W.row(i)) for i in range(V)) - Wbar.dot(Wbar))
    return sp.expand(E - closed)


def dephasing_factor_series(order: int = 4):
    """R(x) = ∫₀¹∫₀¹ exp(−(t−s)²x/2) ds dt (theory.dephasing): (closed form, Taylor coefficients
    in x up to `order`), both derived from the double integral."""
    x, s_, u = sp.symbols("x s u", positive=True)
    inner = sp.integrate(sp.exp(-((t - s_) ** 2) * x / 2), (s_, 0, 1))
    closed = sp.simplify(sp.integrate(inner, (t, 0, 1)))
    # the same integral as 2∫₀¹(1 − u)e^{−u²x/2}du, expanded termwise in x
    series = sp.integrate(2 * (1 - u) * sp.series(sp.exp(-(u**2) * x / 2), x, 0, order + 1).removeO(), (u, 0, 1))
    return closed, [sp.expand(series).coeff(x, k) for k in range(order + 1)]


def rotation_energy_series(order: int = 3):
    """‖∫₀¹ g‖² for a unit velocity turning at angular speed ω (g = (cos ωt, sin ωt)):
    Taylor coefficients in ω² up to `order` (the case the dephasing closure is built on)."""
    w = sp.Symbol("omega", positive=True)
    e = sp.integrate(sp.cos(w * t), (t, 0, 1)) ** 2 + sp.integrate(sp.sin(w * t), (t, 0, 1)) ** 2
    ser = sp.series(sp.simplify(e), w, 0, 2 * order + 1).removeO()
    return [sp.nsimplify(ser.coeff(w, 2 * k)) for k in range(order + 1)]
