"""The phase-transition fit: a power law joined to an exponential at a breakpoint.

The follow-up to Model Hemorrhage (phase transitions, npj AI 2026; whucs21Mzy/Model-Phase-
Transitions, /work/shared/SEEDS.md §4, §7) fits PPL against the compression share x as "a
piecewise power law + exponential"; its repository holds no fitting code and no parameters and
the seed text gives no formula, so the form is ours, as issue 25 states it:

    y(x) = a · x^b                          x < x_c
    y(x) = y(x_c) · exp(c · (x − x_c))      x ≥ x_c       (continuous at x_c by construction)

Fitted by least squares in log y.  For a fixed x_c the model is linear in (ln a, b, c):

    ln y = ln a + b ln x                    x < x_c
    ln y = ln a + b ln x_c + c (x − x_c)    x ≥ x_c

so each x_c costs one lstsq; x_c is profiled over a grid, then refined by a bounded scalar
search (scipy) inside the grid cell of the best point (the SSE is smooth in x_c between two
data points).  x = 0 (the uncompressed model) has no power-law value (x^b) and is left out.
A non-finite y (a collapsed model) enters as max finite ln y + 1, as validate/exp_thresholds.py
does: above every measured point.

Identifiability and "no breakpoint" (rules ours):
  * ≥ 5 distinct x (more points than the 4 parameters a, b, c, x_c), and x_c between the
    2nd and the 2nd-to-last distinct x (≥ 2 points on each side); otherwise "too few points";
  * a phase transition steepens: the exponential's log-slope c must exceed the power law's
    log-slope b/x_c at the join, and the piecewise model must beat a single power law on BIC,
        n ln(SSE_pw/n) + 4 ln n  <  n ln(SSE_pow/n) + 2 ln n,
    otherwise "no breakpoint" (the curve is reported with its power-law fit, no x_c).
Confidence interval: 95 % percentile bootstrap over settings (resample the (x, y) points with
replacement, refit; a resample with too few distinct x or no breakpoint is dropped, `boot_used`
counts the kept ones; fewer than 10 kept: no CI), fixed seed.  It measures how much x_c leans
on individual settings, not token noise (rows hold token means only).
"""

from __future__ import annotations

import math

import numpy as np

BOOT, SEED, N_GRID, MIN_POINTS, MIN_BOOT = 400, 0, 120, 5, 10


def _log_y(y) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        ly = np.log(np.asarray(y, float))
    fin = np.isfinite(ly)
    return np.where(fin, ly, (ly[fin].max() if fin.any() else 0.0) + 1.0)


def _design(lx, x, xc) -> np.ndarray:
    below = x < xc
    return np.stack([np.ones_like(x), np.where(below, lx, math.log(xc)), np.where(below, 0.0, x - xc)], -1)


def _sse_at(lx, x, ly, xc) -> tuple[float, np.ndarray]:
    X = _design(lx, x, xc)
    coef = np.linalg.lstsq(X, ly, rcond=None)[0]
    return float(np.sum((X @ coef - ly) ** 2)), coef


def power_law(x, ly) -> dict:
    """ln y = ln a + b ln x over all points (the no-break model)."""
    X = np.stack([np.ones_like(x), np.log(x)], -1)
    coef = np.linalg.lstsq(X, ly, rcond=None)[0]
    return {"a": float(math.exp(coef[0])), "b": float(coef[1]), "sse": float(np.sum((X @ coef - ly) ** 2))}


def fit_curve(x, y) -> dict:
    """The piecewise fit of y against x (x > 0 used).  status: "fitted" | "no breakpoint" |
    "too few points"; x_c, a, b, c only when fitted (the power law alone otherwise)."""
    from scipy.optimize import minimize_scalar

    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = x > 0
    x, ly = x[keep], _log_y(y[keep])
    u = np.unique(x)
    out = {"n": int(len(x)), "n_distinct": int(len(u))}
    if len(u) < MIN_POINTS:
        return {**out, "status": "too few points", "x_c": None}
    pw = power_law(x, ly)
    lx = np.log(x)
    grid = np.linspace(u[1], u[-2], N_GRID + 1)[1:]  # x_c in (u1, u_{-2}]: 2 distinct x below, 2 at or above
    X = np.stack([_design(lx, x, g) for g in grid])  # [G n 3]: every grid x_c in one batched solve
    coef = np.linalg.pinv(X) @ ly
    sses = np.sum(((X @ coef[..., None])[..., 0] - ly) ** 2, -1)
    g = int(np.argmin(sses))
    lo, hi = u[u < grid[g]].max(), u[u >= grid[g]].min()  # the data cell holding the best grid x_c
    best_xc, best = grid[g], sses[g]
    if hi > lo:
        r = minimize_scalar(
            lambda t: _sse_at(lx, x, ly, t)[0],
            bounds=(lo + 1e-12 * (hi - lo), hi),
            method="bounded",
            options={"xatol": 1e-6},
        )
        if r.fun < best:
            best_xc, best = float(r.x), float(r.fun)
    sse, coef = _sse_at(lx, x, ly, best_xc)
    a, b, c = float(math.exp(coef[0])), float(coef[1]), float(coef[2])
    n = len(x)
    bic_pw = n * math.log(max(sse, 1e-12) / n) + 4 * math.log(n)
    bic_pow = n * math.log(max(pw["sse"], 1e-12) / n) + 2 * math.log(n)
    fit = {
        **out,
        "power_law": pw,
        "sse": sse,
        "bic_piecewise": bic_pw,
        "bic_power_law": bic_pow,
        "a": a,
        "b": b,
        "c": c,
        "x_c_candidate": float(best_xc),
    }
    if not (c > b / best_xc and bic_pw < bic_pow):
        return {**fit, "status": "no breakpoint", "x_c": None}
    return {**fit, "status": "fitted", "x_c": float(best_xc)}


def predict(fit: dict, x) -> np.ndarray:
    """y at x from a fit (the power law alone where there is no breakpoint)."""
    x = np.asarray(x, float)
    if fit.get("status") == "fitted":
        a, b, c, xc = fit["a"], fit["b"], fit["c"], fit["x_c"]
        return np.where(x < xc, a * x**b, a * xc**b * np.exp(c * (x - xc)))
    pw = fit.get("power_law")
    return np.full_like(x, np.nan) if pw is None else pw["a"] * x ** pw["b"]


def fit_with_ci(x, y, boot: int = BOOT, seed: int = SEED) -> dict:
    """fit_curve plus a 95 % bootstrap-over-settings CI of x_c (module docstring)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    fit = fit_curve(x, y)
    vals = []
    if fit["status"] == "fitted":
        rng = np.random.default_rng(seed)
        for _ in range(boot):
            i = rng.integers(0, len(x), len(x))
            f = fit_curve(x[i], y[i])
            if f["status"] == "fitted":
                vals.append(f["x_c"])
    ci = (float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))) if len(vals) >= MIN_BOOT else (None, None)
    return {**fit, "x_c_ci": list(ci), "boot": int(boot) if fit["status"] == "fitted" else 0, "boot_used": len(vals)}
