"""The phase-transition fit (validate/phase_fit.py) and its placement of settings (validate/exp_phase.py)."""

import numpy as np
import pytest

from hemorrhage.validate.exp_phase import families, placement
from hemorrhage.validate.phase_fit import fit_curve, fit_with_ci, predict


def piecewise(x, a=20.0, b=0.3, c=12.0, xc=0.55):
    return np.where(x < xc, a * x**b, a * xc**b * np.exp(c * (x - xc)))


@pytest.mark.parametrize("xc", [0.42, 0.63])
def test_a_known_breakpoint_is_recovered_and_its_ci_covers_it(xc):
    rng = np.random.default_rng(7)
    x = np.linspace(0.1, 0.9, 13)
    y = piecewise(x, xc=xc) * np.exp(rng.normal(0.0, 0.03, len(x)))
    f = fit_with_ci(x, y, boot=150)
    assert f["status"] == "fitted"
    assert abs(f["x_c"] - xc) < 0.05
    lo, hi = f["x_c_ci"]
    assert lo is not None and lo <= xc <= hi and hi - lo < 0.3
    assert f["c"] == pytest.approx(12.0, rel=0.3) and f["b"] == pytest.approx(0.3, abs=0.2)


@pytest.mark.parametrize("seed, noise", [(3, 0.03), (19, 0.1)])  # (19, 0.1): its best break steepens, BIC refuses it
def test_a_power_law_without_a_break_is_reported_as_such(seed, noise):
    rng = np.random.default_rng(seed)
    x = np.linspace(0.1, 0.9, 13)
    y = 20.0 * x**0.8 * np.exp(rng.normal(0.0, noise, len(x)))
    f = fit_with_ci(x, y, boot=50)
    assert f["status"] == "no breakpoint" and f["x_c"] is None and f["x_c_ci"] == [None, None]
    assert f["power_law"]["b"] == pytest.approx(0.8, abs=0.25)


def test_a_break_that_flattens_is_not_a_phase_transition():
    x = np.linspace(0.1, 0.9, 13)
    f = fit_curve(x, piecewise(x, b=3.0, c=0.5))  # a clear join, but the growth slows past it
    assert f["bic_piecewise"] < f["bic_power_law"]
    assert f["status"] == "no breakpoint" and f["x_c"] is None


def test_too_few_settings_are_not_a_fitted_value():
    x = np.array([0.0, 0.1, 0.3, 0.5, 0.7])  # x = 0 has no power-law value: 4 usable points
    f = fit_curve(x, piecewise(np.maximum(x, 1e-3)))
    assert f["status"] == "too few points" and f["x_c"] is None and f["n_distinct"] == 4


def test_the_fitted_curve_is_continuous_at_the_breakpoint():
    x = np.linspace(0.1, 0.9, 11)
    f = fit_curve(x, piecewise(x))
    assert f["status"] == "fitted"
    left, right = predict(f, [f["x_c"] - 1e-9, f["x_c"]])
    assert left == pytest.approx(right, rel=1e-6)
    np.testing.assert_allclose(predict(f, x), piecewise(x), rtol=1e-3)


def test_settings_are_placed_on_the_compression_axis():
    assert placement("rtn", {"bits": 4}, {}) == ("quantization", 0.75)
    assert placement("wanda", {"sparsity": 0.6, "pattern": None}, {}) == ("unstructured", 0.6)
    assert placement("sparsegpt", {"sparsity": 0.5, "pattern": "2:4"}, {}) == ("N:M", 0.5)
    assert placement("heads", {"share": 0.25}, {"param_share_removed": 0.11}) == ("structured", 0.11)
    assert placement("lowrank", {"rank_ratio": 0.5}, {"param_share_removed": 0.2}) == ("low-rank", 0.2)
    assert placement("drop", {"n_drop": 2}, {})[0] is None
    rows = [
        {"model": "m", "method": "rtn", "settings": {"bits": b, "group_size": 64}, "ppl": 10.0, "kl": 0.1}
        for b in (2, 4)
    ] + [
        {"model": "m", "method": "rtn", "settings": {"bits": 4, "group_size": None}, "ppl": 9.0, "kl": 0.1},
        {"model": "m", "method": "drop", "settings": {}},
    ]
    fams, skipped = families(rows)
    assert skipped == ["drop"] and len(fams) == 2  # group sizes are separate families
    assert fams[("m", "quantization", "rtn group_size=64")]["x"] == [0.875, 0.75]
