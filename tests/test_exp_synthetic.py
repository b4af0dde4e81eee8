"""Experiments 1, 3, 7, 8 on synthetic sweep rows with a known answer: each verdict flips
when the property it tests is taken away, and every experiment writes its table and figure."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hemorrhage.validate.exp_compounding import compounding, survival_predictions
from hemorrhage.validate.exp_decoding import decoding
from hemorrhage.validate.exp_hierarchy import hierarchy, layer_table, regimes
from hemorrhage.validate.exp_rare_targets import rare_targets


def _row(method, settings, model="synthetic", **fields):
    return {"grid": {"method": method, "settings": settings}, "model": model, **fields}


# ------------------------------------------------------------------ exp 1 ---------------


def hierarchy_rows(amplified=True, thm3_err=0.02, L=6):
    rows = []
    for s in (0.1, 0.3, 0.5, 0.7):
        kl = s * 0.05 * (np.arange(L + 1) + 1)  # grows with depth; ≤ 0.1 at the mildest settings
        d_p, d_h = kl / 2, kl / 10
        if not amplified:
            d_p, d_h = d_h, d_p
        pl = {
            "kl": kl.tolist(),
            "kl_pred": (kl * (1 + thm3_err)).tolist(),
            "cos_h": (1 - d_h).tolist(),
            "cos_z": (1 - kl / 5).tolist(),
            "cos_p": (1 - d_p).tolist(),
            "top1": (1 - kl).tolist(),
            "one_minus_cos_h_pred": (d_h * 1.01).tolist(),
            "one_minus_cos_z_pred": (kl / 5).tolist(),
            "one_minus_cos_p_pred": (d_p * 1.3).tolist(),
        }
        rows.append(
            _row(
                "magnitude",
                {"sparsity": s},
                kl=float(kl[-1]),
                per_layer=pl,
                steps={"mean": {"kl": [float(kl[-1])] * 4, "cos_h": [1 - float(d_h[-1])] * 4}},
            )
        )
    return rows


def test_hierarchy_verdict_and_regimes(tmp_path):
    args = (tmp_path / "r", tmp_path / "f")
    v = hierarchy(hierarchy_rows(), *args, "ok")
    assert v["holds"] is True, v["summary"]
    assert (tmp_path / "f" / "hierarchy_ok.png").stat().st_size > 1000
    assert (tmp_path / "r" / "hierarchy_layers_ok.csv").is_file() and (
        tmp_path / "r" / "hierarchy_steps_ok.csv"
    ).is_file()
    reg = v["evidence"]["regimes"]
    assert reg["theorem3_kl"]["median_abs_rel_err_kl_le_0.1"] == pytest.approx(0.02)
    assert reg["theorem3_kl"]["breaks_at"] is None and reg["theorem2_p"]["breaks_at"] is not None  # 30 % off
    assert hierarchy(hierarchy_rows(amplified=False), *args, "flat")["holds"] is False
    assert hierarchy(hierarchy_rows(thm3_err=1.0), *args, "thm3_off")["holds"] is False
    assert hierarchy([{"method": "rtn", "settings": {"bits": 4}, "kl": 1.0}], *args, "none")["holds"] is None
    json.dumps(v, allow_nan=True)


def test_regime_bins_are_decades():
    df = layer_table(hierarchy_rows())
    reg = regimes(df)
    for b in reg["theorem3_kl"]["bins"]:
        assert b["to"] == pytest.approx(10 * b["from"]) and b["points"] > 0
    assert sum(b["points"] for b in reg["theorem3_kl"]["bins"]) == reg["theorem3_kl"]["points"] == len(df)


# ------------------------------------------------------------------ exp 3 ---------------


def compounding_row(seed=0, sigma=1.0, theory_true=True, kl_jump=True, K=300, N=24, label=0.3):
    """Greedy decoding simulated as theory/compounding.py describes it: margin m_t on the
    base path, Gaussian noise d_t on it, a flip where m + d < 0."""
    rng = np.random.default_rng(seed)
    m = np.abs(rng.normal(0.0, 3.0, (K, N)))
    d = rng.normal(0.0, sigma, (K, N))
    flip = (m + d < 0) if theory_true else (rng.random((K, N)) < 0.3)
    first = np.where(flip.any(1), flip.argmax(1), N)
    kl = np.full((K, N), 0.2)
    after = np.arange(N)[None] > first[:, None]
    kl_free = np.where(after, 2.0 if kl_jump else 0.2, 0.2)
    pp = {
        "margin": m.tolist(),
        "dpair": d.tolist(),
        "flip": flip.astype(float).tolist(),
        "kl": kl.tolist(),
        "kl_free": kl_free.tolist(),
    }
    return _row(
        "magnitude",
        {"sparsity": label},
        kl=float(sigma),
        first_divergence=first.tolist(),
        steps={"per_prompt": pp, "mean": {"kl": kl.mean(0).tolist()}},
    )


def test_survival_prediction_matches_a_simulated_decoder():
    r = compounding_row(sigma=1.5)
    pp = r["steps"]["per_prompt"]
    pred = survival_predictions(pp["margin"], pp["dpair"])
    first = np.asarray(r["first_divergence"])
    meas = (first[:, None] > np.arange(24)[None]).mean(0)
    assert pred["sigma"] == pytest.approx(1.5, rel=0.05)
    assert np.abs(pred["pooled"].mean(0) - meas).max() < 0.08


def test_compounding_verdict_flips(tmp_path):
    args = (tmp_path / "r", tmp_path / "f")
    ok = [compounding_row(seed=i, sigma=s, label=s) for i, s in enumerate((0.8, 1.5, 2.5))]
    v = compounding(ok, *args, "ok")
    assert v["holds"] is True, v["summary"]
    assert v["evidence"]["identity_match_mean"] == 1.0
    assert (tmp_path / "f" / "compounding_ok.png").stat().st_size > 1000
    no_jump = [compounding_row(seed=i, sigma=s, label=s, kl_jump=False) for i, s in enumerate((0.8, 1.5, 2.5))]
    assert compounding(no_jump, *args, "no_jump")["holds"] is False
    random_flips = [compounding_row(seed=i, sigma=s, label=s, theory_true=False) for i, s in enumerate((0.3, 0.5))]
    v = compounding(random_flips, *args, "random")
    assert v["holds"] is False and v["evidence"]["median_curve_err_pooled"] > 0.15, v["summary"]
    assert compounding([{"method": "rtn", "settings": {"bits": 4}, "kl": 1.0}], *args, "none")["holds"] is None


# ------------------------------------------------------------------ exp 7 ---------------


def strata_row(s, dnll_slope=+1.0, rho_hoyer=0.3, model="synthetic"):
    b = np.arange(5)
    dnll = s * (1 + dnll_slope * 0.5 * b)
    kl = s * (1 + 0.3 * b)
    st = {
        "bins": 5,
        "n": [20] * 5,
        "nll_base": (0.5 * b).tolist(),
        "p_target": np.exp(-0.5 * b).tolist(),
        "dnll": dnll.tolist(),
        "kl": kl.tolist(),
        "kl_pred": (0.9 * kl).tolist(),
        "top1": (1 - 0.1 * b).tolist(),
        "hoyer_base": (0.4 + 0.01 * b).tolist(),
        "hoyer_comp": (0.41 + 0.01 * b).tolist(),
        "gate_off_base": None,
        "gate_off_comp": None,
        "spearman_vs_nll_base": {
            "hoyer_base": rho_hoyer,
            "hoyer_comp": rho_hoyer,
            "kl": 0.5,
            "dnll": 0.2,
            "kl_pred": 0.5,
            "hoyer_shift": None,
            "gate_off_base": None,
            "gate_off_comp": None,
        },
    }
    return _row("magnitude", {"sparsity": s}, model=model, kl=float(kl.mean()), strata=st)


def test_rare_targets_verdict_flips(tmp_path):
    args = (tmp_path / "r", tmp_path / "f")
    v = rare_targets([strata_row(s) for s in (0.1, 0.3, 0.5)], *args, "ok")
    assert v["holds"] is True, v["summary"]
    assert v["evidence"]["median_dnll_ratio_rare_over_common"] == pytest.approx(3.0)
    assert v["evidence"]["theorem3_tracks_bins"] == pytest.approx(1.0)
    assert (tmp_path / "f" / "rare_targets_ok.png").stat().st_size > 1000
    assert rare_targets([strata_row(s, dnll_slope=-0.3) for s in (0.1, 0.3)], *args, "common_first")["holds"] is False
    assert rare_targets([strata_row(s, rho_hoyer=-0.2) for s in (0.1, 0.3)], *args, "dense_on_hard")["holds"] is False
    assert rare_targets([{"method": "rtn", "settings": {"bits": 4}, "kl": 1.0}], *args, "none")["holds"] is None


# ------------------------------------------------------------------ exp 8 ---------------


def decoding_rows(aligned_spread, base_spread):
    rows = []
    for model, spread in (("smollm2-135m", aligned_spread), ("gemma3-270m", base_spread)):
        for s in (0.2, 0.4):
            st = {
                name: {
                    "gen_prefix_agreement": 0.5 + spread * i / 3,
                    "gen_token_agreement": 0.5,
                    "first_divergence_mean": 10.0,
                }
                for i, name in enumerate(("greedy", "temp0.7", "topp0.9", "beam4"))
            }
            rows.append(_row("magnitude", {"sparsity": s}, model=model, kl=s, strategies=st))
    return rows


def test_decoding_verdict_flips(tmp_path):
    args = (tmp_path / "r", tmp_path / "f")
    v = decoding(decoding_rows(0.05, 0.4), *args, "ok")
    assert v["holds"] is True, v["summary"]
    assert v["evidence"]["median_spread"] == {"gemma3-270m": pytest.approx(0.4), "smollm2-135m": pytest.approx(0.05)}
    assert (tmp_path / "f" / "decoding_ok.png").stat().st_size > 1000
    assert decoding(decoding_rows(0.4, 0.05), *args, "reversed")["holds"] is False
    one = [r for r in decoding_rows(0.05, 0.4) if r["model"] == "smollm2-135m"]
    assert decoding(one, *args, "one")["holds"] is None
    assert math.isfinite(decoding(one, *args, "one")["evidence"]["median_spread"]["smollm2-135m"])
