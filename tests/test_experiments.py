"""Experiments 2, 4, 6 (validate/experiments.py, validate/exp_thresholds.py) on synthetic
sweep rows with a known answer, and the `experiment` / `figures` commands.  The real-model
path (a tiny sweep on SmolLM2, then `hemorrhage experiment` on it) is in test_tutorials.py:
tutorial 1 runs that sweep anyway, so it is not paid for twice."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hemorrhage.cli import main
from hemorrhage.validate.exp_thresholds import fit_family, hinge_fit
from hemorrhage.validate.exp_mc import mc_vs_generation
from hemorrhage.validate.exp_ppl import ppl_not_enough, spearman_table
from hemorrhage.validate.exp_common import rows_frame

SPARSITY = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
BITS = [8, 6, 5, 4, 3, 2]


def _logkl_sparsity(s, cliff=0.6):
    return -5 + 1.0 * s + 20 * max(0.0, s - cliff)


def synthetic_rows(
    cliff=0.6, bits_cliff=3.2, mc=0.95, sub_ratio=0.05, gen_collapse=True, ppl_tracks=True, noise=0.0, seed=0
):
    """Magnitude pruning whose log KL is a hinge at `cliff`, RTN with a hinge at `bits_cliff`."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in SPARSITY:
        kl = math.exp(_logkl_sparsity(s, cliff) + noise * rng.normal())
        gen = (1 - s) if gen_collapse else 0.9
        ppl = 10 * math.exp(3 * s) if ppl_tracks else 10 * (1 + 0.1 * s)
        rows.append(
            {
                "grid": {"method": "magnitude", "settings": {"sparsity": s}},
                "model": "synthetic",
                "kl": kl,
                "top1_agreement": 1 - s / 2,
                "ppl": ppl,
                "ppl_base": 10.0,
                "mc_agreement": mc,
                "mc_kl_full": kl,
                "mc_kl_choices": sub_ratio * kl,
                "first_divergence_mean": 32 * gen,
                "new_tokens": 32,
                "gen_token_agreement": gen,
                "collapsed": False,
            }
        )
    for b in BITS:
        kl = math.exp(-6 + 0.3 * (8 - b) + 3 * max(0.0, bits_cliff - b) + noise * rng.normal())
        rows.append(
            {
                "method": "rtn",
                "settings": {"bits": b},
                "model": "synthetic",
                "kl": kl,
                "top1_agreement": 0.95,
                "ppl": 10.5,
                "ppl_base": 10.0,
            }
        )
    return rows


# ------------------------------------------------------------------ exp 4: the cliff ----


def test_hinge_recovers_known_level_within_ci():
    fam = fit_family(SPARSITY, [math.exp(_logkl_sparsity(s)) for s in SPARSITY], "sparsity")
    assert abs(fam["hinge"] - 0.6) < 0.02
    lo, hi = fam["hinge_ci"]
    assert lo <= 0.6 <= hi and hi - lo < 0.5
    # the 1-nat crossing: log KL = -4.4 + 21 (s - 0.6) on the bracketing segment
    assert fam["crossing_status"] == "inside" and abs(fam["crossing"] - (0.6 + 4.4 / 21)) < 1e-9
    # noisy data: still inside the CI
    rng = np.random.default_rng(1)
    kl = [math.exp(_logkl_sparsity(s) + 0.15 * rng.normal()) for s in SPARSITY]
    fam = fit_family(SPARSITY, kl, "sparsity")
    assert fam["hinge_ci"][0] <= 0.6 <= fam["hinge_ci"][1]
    assert fam["crossing_ci"][0] <= 0.6 + 4.4 / 21 + 0.03 and fam["crossing_ci"][1] >= 0.6 + 4.4 / 21 - 0.03
    # bits: strength grows as bits fall
    kl = [math.exp(-6 + 0.3 * (8 - b) + 3 * max(0.0, 3.2 - b)) for b in BITS]
    fam = fit_family(BITS, kl, "bits")
    assert abs(fam["hinge"] - 3.2) < 0.05 and fam["hinge_ci"][0] <= 3.2 <= fam["hinge_ci"][1]
    assert fam["crossing"] is None and fam["crossing_status"] == "beyond"
    assert hinge_fit([1, 2, 3], [0, 1, 2]) is None  # < 4 levels: no hinge
    # the 1-nat crossing of the experiment is sim.predict's rule, on both axes
    from hemorrhage.validate.exp_thresholds import crossing

    assert crossing(BITS, [0.01, 0.1, 0.5, 2, 9, 20], "bits")[1] == "inside"
    assert crossing([0.1, 0.5, 0.9], [0.1, 0.2, 0.5], "sparsity") == (None, "beyond")
    assert crossing([0.1, 0.5], [2, 3], "sparsity") == (0.1, "at_mildest")


def test_thresholds_verdict_flips(tmp_path):
    from hemorrhage.validate.exp_thresholds import thresholds

    v = thresholds(synthetic_rows(), tmp_path / "r", tmp_path / "f", "ok", boot=200)
    assert v["holds"] is True, v["summary"]
    assert (tmp_path / "f" / "thresholds_ok.png").is_file() and (tmp_path / "r" / "thresholds_ok.csv").is_file()
    v = thresholds(synthetic_rows(cliff=0.2, bits_cliff=6.2), tmp_path / "r", tmp_path / "f", "early", boot=200)
    assert v["holds"] is False, v["summary"]
    ev = v["evidence"]
    assert ev["magnitude (sparsity)"]["agrees_with_seed"] is False and ev["rtn (bits)"]["agrees_with_seed"] is False
    # bits × group_size: one family per group size, each fitted over bits
    grouped = [
        {**r, "settings": {**r["settings"], "group_size": g}}
        for g in (64, 128)
        for r in synthetic_rows()
        if "grid" not in r
    ]
    assert sorted(rows_frame(grouped).family.unique()) == ["rtn group_size=128 (bits)", "rtn group_size=64 (bits)"]
    v = thresholds(grouped, tmp_path / "r", tmp_path / "f", "grouped", boot=50)
    assert set(v["evidence"]) == {"rtn group_size=64 (bits)", "rtn group_size=128 (bits)"}
    # two grid points: nothing comparable
    few = [r for r in synthetic_rows() if r.get("grid", {}).get("settings", {}).get("sparsity") in (0.1, 0.9)]
    assert thresholds(few, tmp_path / "r", tmp_path / "f", "few", boot=50)["holds"] is None


# ------------------------------------------------------------------ exp 2 ---------------


def test_mc_vs_generation_verdict_flips(tmp_path):
    args = (tmp_path / "r", tmp_path / "f")
    v = mc_vs_generation(synthetic_rows(), *args, "ok")
    assert v["holds"] is True, v["summary"]
    assert set(v) >= {"experiment", "claim", "holds", "summary", "evidence", "table", "figure"}
    assert (tmp_path / "f" / "mc_vs_generation_ok.png").is_file()
    assert mc_vs_generation(synthetic_rows(mc=0.3), *args, "mc_low")["holds"] is False
    assert mc_vs_generation(synthetic_rows(sub_ratio=1.0), *args, "no_subspace")["holds"] is False
    assert mc_vs_generation(synthetic_rows(gen_collapse=False), *args, "no_collapse")["holds"] is None
    json.dumps(v, allow_nan=True)  # JSON-able


# ------------------------------------------------------------------ exp 6 ---------------


def test_spearman_and_ppl_verdict(tmp_path):
    rows = [
        {
            "method": "magnitude",
            "settings": {"sparsity": s},
            "ppl": p,
            "ppl_base": 1.0,
            "kl": p,
            "top1_agreement": 1 - s,
            "mc_agreement": m,
            "gen_token_agreement": 1 - s,
            "first_divergence_mean": 8 * (1 - s),
            "new_tokens": 8,
        }
        for s, p, m in zip([0.1, 0.2, 0.3, 0.4, 0.5], [1, 2, 3, 4, 5], [0.9, 1.0, 0.7, 0.8, 0.6])
    ]
    rho = {r["metric"]: r for r in spearman_table(rows_frame(rows))}
    # ranks of mc: 4 5 2 3 1, of ppl: 1..5 -> Σd² = 36, ρ = 1 − 6·36/(5·24) = −0.8
    assert rho["mc_agreement"]["spearman_rho"] == pytest.approx(-0.8)
    assert rho["mc_agreement"]["oriented_rho"] == pytest.approx(0.8) and not rho["mc_agreement"]["same_ranking"]
    assert rho["kl"]["spearman_rho"] == pytest.approx(1.0) and rho["kl"]["same_ranking"]
    assert rho["top1_agreement"]["spearman_rho"] == pytest.approx(-1.0)
    from scipy.stats import spearmanr

    assert rho["mc_agreement"]["spearman_rho"] == pytest.approx(
        spearmanr([1, 2, 3, 4, 5], [0.9, 1.0, 0.7, 0.8, 0.6])[0]
    )

    args = (tmp_path / "r", tmp_path / "f")
    # ppl tracks every capability metric and rises fast where generation collapses: claim fails
    tracks = synthetic_rows(mc=0.95)
    for r in tracks:
        if "grid" in r:
            r["mc_agreement"] = 1 - r["grid"]["settings"]["sparsity"] / 10
    v = ppl_not_enough([r for r in tracks if "grid" in r], *args, "tracks")
    assert v["holds"] is False, v["summary"]
    # ppl barely moves while generation collapses: hidden damage, the claim holds
    v = ppl_not_enough([r for r in synthetic_rows(ppl_tracks=False) if "grid" in r], *args, "hidden")
    assert v["holds"] is True and v["evidence"]["hidden_damage_settings"], v["summary"]
    assert (tmp_path / "f" / "ppl_not_enough_hidden.png").is_file()
    assert ppl_not_enough(rows[:2], *args, "two")["holds"] is None


# ------------------------------------------------------------------ commands ------------


def _write_results(root):
    import pandas as pd

    from hemorrhage.validate.sweep import append_row

    (root / "hierarchy").mkdir(parents=True)
    for r in synthetic_rows():
        append_row(root / "sweep_synth.jsonl", r)
    L = np.arange(5)
    pd.DataFrame(
        {
            "model": "m",
            "method": "magnitude",
            "setting": "sparsity=0.5",
            "layer": L,
            "cos_h": 1 - 1e-3 * (L + 1),
            "cos_z": 1 - 2e-3 * (L + 1),
            "cos_p": 1 - 1e-2 * (L + 1),
            "kl": 1e-2 * (L + 1),
            "kl_pred": 1.1e-2 * (L + 1),
        }
    ).to_csv(root / "hierarchy" / "hier_x.csv", index=False)


def _write_rich_sweep(root, stem="sweep_rich", model="synthetic-b"):
    """A second model's sweep whose rows carry every nested section (per layer, steps,
    strata, strategies), built from the synthetic rows of test_exp_synthetic."""
    from test_exp_synthetic import compounding_row, decoding_rows, hierarchy_rows, strata_row

    from hemorrhage.validate.sweep import append_row

    rows = hierarchy_rows()
    for r, s in zip(rows, (0.1, 0.3, 0.5, 0.7)):
        c = compounding_row(seed=int(10 * s), sigma=1 + s, label=s, K=40, N=12)
        r.update(
            model=model,
            first_divergence=c["first_divergence"],
            steps={**c["steps"], "mean": r["steps"]["mean"]},
            strata=strata_row(s)["strata"],
            strategies=decoding_rows(0.05, 0.4)[0]["strategies"],
            top1_agreement=0.9,
            ppl=10.0,
            ppl_base=9.0,
        )
        append_row(root / f"{stem}.jsonl", r)


def _write_diagnoses(root):
    """Two stored diagnoses as `hemorrhage diagnose` writes them: 4-bit degrades, 2-bit collapses."""
    (root / "diagnose").mkdir(parents=True)
    for bits, verdict in ((4, "signal_degradation"), (2, "computation_collapse")):
        layers = [
            {
                "block": b,
                "label": "collapse" if bits == 2 else "degradation",
                "restore_h": 0.1 * b,
                "restore_attn": 0.05,
                "restore_mlp": 0.05,
                "cka": 0.9,
                "gate_flip": 0.1,
                "entropy_shift": 0.0,
            }
            for b in range(4)
        ]
        res = {
            "model": "m",
            "record": {"method": "rtn", "settings": {"bits": bits}},
            "verdict": verdict,
            "title": f"m, rtn (bits={bits}): {verdict}",
            "final_kl": 1.0 / bits,
            "top1_agreement": 0.5,
            "early_collapsed_blocks": [0, 1] if bits == 2 else [],
            "layers": layers,
        }
        (root / "diagnose" / f"diagnose_m_rtn_bits={bits}.json").write_text(json.dumps(res))


def test_figures_and_experiment_commands(tmp_path, capsys):
    res, fig = tmp_path / "results", tmp_path / "figures"
    _write_results(res)
    _write_rich_sweep(res)
    _write_rich_sweep(res, "sweep_rich2", "synthetic-c")  # two models with steps: figures compare them
    _write_diagnoses(res)
    (res / "summary").mkdir()  # sections of runs over several sweeps, kept across regenerations
    (res / "summary" / "2_b.md").write_text("## section b\n\n- second\n")
    (res / "summary" / "1_a.md").write_text("## section a\n\n- first\n")
    assert main(["figures", "--results", str(res), "--figures", str(fig)]) == 0
    for name in (
        "mc_vs_generation_sweep_synth",
        "thresholds_sweep_synth",
        "ppl_not_enough_sweep_synth",
        "hier_x",
        "hierarchy_sweep_rich",
        "compounding_sweep_rich",
        "rare_targets_sweep_rich",
        "decoding_sweep_rich",
        "hierarchy_models",
        "thresholds_models",
        "compounding_models",
        "rare_targets_models",
    ):  # `models`: both sweeps together
        assert (fig / f"{name}.png").stat().st_size > 1000, name
    verdicts = json.loads((res / "verdicts_sweep_rich.json").read_text())
    assert verdicts["hierarchy"]["holds"] is True and verdicts["rare_targets"]["holds"] is True
    summary = (res / "SUMMARY.md").read_text()
    assert "| hierarchy | " in summary and "## models" in summary and verdicts["hierarchy"]["summary"] in summary
    assert "HOLDS: m: RTN 4-bit signal_degradation, 2-bit computation_collapse → agrees" in summary
    assert summary.index("## Exp 5") < summary.index("## section a\n\n- first") < summary.index("## section b")
    assert (fig / "diagnose_m_rtn_bits=2.png").stat().st_size > 1000
    capsys.readouterr()
    assert (
        main(
            [
                "experiment",
                "thresholds",
                "--sweep",
                str(res / "sweep_synth.jsonl"),
                "--results",
                str(res),
                "--figures",
                str(fig),
                "--json",
            ]
        )
        == 0
    )
    v = json.loads(capsys.readouterr().out)
    assert v["experiment"] == "thresholds" and v["holds"] is True
    assert main(["experiment", "thresholds", "--sweep", str(tmp_path / "nope.jsonl")]) == 2
    assert main(["experiment", "nope", "--sweep", str(res / "sweep_synth.jsonl")]) == 2
    assert main(["figures", "--results", str(tmp_path / "missing")]) == 2


def test_condensed_settings_reads_as_ranges_and_keeps_every_setting():
    """A verdict's list of settings: each method's levels as their range and count, fixed
    settings kept apart, settings without a level as they are, a setting named twice once."""
    from hemorrhage.validate.exp_common import condensed_settings

    labels = [
        "rtn bits=2",
        "rtn bits=3",
        "rtn bits=4",
        "rtn bits=3,group_size=64",
        "rtn bits=4,group_size=64",
        "magnitude sparsity=0.3",
        "magnitude sparsity=0.8",
        "magnitude pattern=2:4",
        "gptq bits=2",
        "drop n_drop=1,part=attn",
        "drop n_drop=3,part=attn",
        "rtn bits=2",
    ]
    assert condensed_settings(labels) == (
        "rtn bits 2–4 (3), rtn group_size=64 bits 3–4 (2), magnitude sparsity 0.3–0.8 "
        "(2), magnitude pattern=2:4, gptq bits=2, drop part=attn n_drop 1–3 (2)"
    )
    assert condensed_settings([]) == ""
