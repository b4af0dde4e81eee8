"""Experiments 2, 4 and 6 over a stored sweep: a tidy CSV, a figure and a plain verdict each.

    rows = read_rows("results/sweep_smollm2-135m.jsonl")      # validate.sweep
    v = run_experiment("mc_vs_generation", rows, results="results", figures="figures", stem="sweep_x")
    v["holds"]      # True / False / None (None: these data cannot test the claim), v["summary"]

Every experiment takes the sweep rows (a list of dicts as `hemorrhage sweep` writes them, or
a DataFrame, or synthetic dicts carrying `method`/`settings` and the metric fields at the top
level) and needs NO model: it only reads the measured numbers (validate/measure.py defines
each field).  Verdict format (JSON-able):

    {"experiment": NAME, "claim": the seed's claim in one line, "holds": bool | None,
     "summary": one sentence, "evidence": {the numbers behind it}, "rules": {thresholds},
     "table": CSV path, "figure": PNG path, "settings": number of rows used}

Exp 2 `mc_vs_generation` (seed 002, arXiv 2603.24652): "multiple choice survives, generation
does not".  Generation has collapsed at a setting when the greedy continuation is identical
for less than GEN_COLLAPSED (50 %) of its length before the first differing token
(gen_prefix_agreement = first_divergence_mean / new_tokens).  The claim holds when (a) the
regime exists: some setting collapses generation while MC agreement stays ≥ MC_HIGH (0.8),
and (b) in that regime the answer-subspace KL is ≪ the full-vocabulary KL at the answer
position: median of mc_kl_choices / mc_kl_full over those settings ≤ SUBSPACE_RATIO (0.25).
Settings past the regime (everything destroyed, e.g. 2 bits) neither help nor hurt.  No
collapsed setting in the grid: None (the grid never reaches the regime the claim is about).

Exp 4 `thresholds`: validate/exp_thresholds.py (cliff per method with a bootstrap CI).

Exp 6 `ppl_not_enough` (seed 003, LLM-KICK, arXiv 2310.01382): "perplexity misses capability
loss".  Spearman ρ (scipy.stats.spearmanr) across settings between ppl and each capability
metric (kl, top1_agreement, mc_agreement, gen_token_agreement, gen_prefix_agreement).  The
oriented ρ is ρ(ppl, damage) with damage = the metric for kl and −metric for agreements, so
+1 means "ppl ranks the settings exactly as this metric does".  ppl ranks differently from a
metric when its oriented ρ < RHO_SAME (0.9).  Hidden damage: a setting whose ppl rose by at
most PPL_MILD (20 %) while MC agreement < MC_HIGH or generation collapsed.  The claim holds
when ppl ranks differently from at least one of the MC/generation metrics or hidden damage
exists; None with fewer than 3 settings.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

MC_HIGH, GEN_COLLAPSED, SUBSPACE_RATIO = 0.8, 0.5, 0.25
RHO_SAME, PPL_MILD = 0.9, 1.2
EXPERIMENTS = ("mc_vs_generation", "thresholds", "ppl_not_enough")
NUMERIC = ("kl", "kl_pred", "top1_agreement", "ppl", "ppl_base", "mc_agreement", "mc_acc", "mc_acc_base",
           "mc_kl_choices", "mc_kl_full", "first_divergence_mean", "gen_token_agreement",
           "gen_prefix_agreement", "gen_identical", "new_tokens", "cos_h", "cos_z", "cos_p")
LEVEL_KEYS = (("bits", "bits"), ("sparsity", "sparsity"), ("n_drop", "n_drop"))


def _label(settings: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in settings.items() if k not in ("calib_samples", "calib_seqlen",
                                                                         "seed", "calib_source")) or "default"


def _level(method: str, settings: dict) -> tuple[str | None, float]:
    """(axis, level): bits for quantizers, sparsity for unstructured pruning, n_drop for
    layer drop; N:M patterns and methods without a level: (None, NaN)."""
    if settings.get("pattern"):
        return None, math.nan
    for key, axis in LEVEL_KEYS:
        if settings.get(key) is not None:
            return axis, float(settings[key])
    return None, math.nan


def rows_frame(rows):
    """One tidy row per setting: model, method, setting, axis, level, family and the metrics."""
    import pandas as pd

    if isinstance(rows, pd.DataFrame):
        rows = rows.to_dict("records")
    out = []
    for r in rows:
        grid = r.get("grid") or {}
        method = grid.get("method") or r.get("method") or "?"
        settings = dict(grid.get("settings") or r.get("settings") or {})
        axis, level = _level(method, settings)
        rest = _label({k: v for k, v in settings.items() if k != axis})  # a family shares all but its level
        fam = method + ("" if rest == "default" else f" {rest}")
        rec = {"model": str(r.get("model", "")), "method": method, "setting": _label(settings), "axis": axis,
               "level": level, "family": f"{fam} ({axis})" if axis else fam,
               "collapsed": bool(r.get("collapsed", False))}
        for k in NUMERIC:
            v = r.get(k)
            rec[k] = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan
        out.append(rec)
    df = pd.DataFrame(out, columns=["model", "method", "setting", "axis", "level", "family", "collapsed",
                                    *NUMERIC])
    missing = df.gen_prefix_agreement.isna() & df.first_divergence_mean.notna() & (df.new_tokens > 0)
    df.loc[missing, "gen_prefix_agreement"] = df.first_divergence_mean / df.new_tokens
    df["ppl_ratio"] = df.ppl / df.ppl_base
    df["label"] = df.method + " " + df.setting
    return df


def _finite(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _write(df, results: Path, stem: str) -> Path:
    from hemorrhage.sim.fetch import atomic_write_text

    path = Path(results) / f"{stem}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, df.to_csv(index=False))
    return path


def _theme():
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")


# ------------------------------------------------------------------ exp 2 --------------

def mc_vs_generation(rows, results="results", figures="figures", stem="sweep") -> dict:
    """Exp 2: MC agreement and answer-subspace KL vs full KL, top-1 and generation agreement."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from hemorrhage.validate.plots import save

    df = rows_frame(rows)
    cols = ["model", "method", "setting", "label", "axis", "level", "kl", "top1_agreement", "mc_agreement",
            "mc_kl_choices",
            "mc_kl_full", "gen_token_agreement", "gen_prefix_agreement", "first_divergence_mean", "new_tokens",
            "collapsed"]
    tab = df[cols].copy()
    tab["subspace_ratio"] = tab.mc_kl_choices / tab.mc_kl_full
    tab["gen_collapsed"] = tab.gen_prefix_agreement < GEN_COLLAPSED
    table = _write(tab, results, f"mc_vs_generation_{stem}")

    _theme()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8), layout="constrained")
    names = {"mc_agreement": "multiple choice: same answer", "top1_agreement": "next token: same top-1",
             "gen_prefix_agreement": "generation: share before 1st divergence",
             "gen_token_agreement": "generation: same token"}
    long = tab.melt(id_vars=["label", "kl"], value_vars=list(names), var_name="agreement", value_name="value")
    long["agreement"] = long.agreement.map(names)
    long = long[np.isfinite(long.kl) & (long.kl > 0) & np.isfinite(long.value)]
    if len(long):
        sns.lineplot(long.sort_values("kl"), x="kl", y="value", hue="agreement", marker="o", ax=ax1)
        ax1.set_xscale("log")
    ax1.axhline(MC_HIGH, color="grey", ls=":", lw=1)
    ax1.set_ylim(-0.05, 1.05)
    ax1.set_xlabel("full-vocabulary KL(p ‖ q) per token (each point = one setting)")
    ax1.set_ylabel("agreement with the base")
    ax1.set_title("Multiple choice survives where generation does not?", fontsize=11)
    ok = tab[np.isfinite(tab.mc_kl_choices) & np.isfinite(tab.mc_kl_full) & (tab.mc_kl_choices > 0)
             & (tab.mc_kl_full > 0)]
    if len(ok):
        sns.scatterplot(ok, x="mc_kl_full", y="mc_kl_choices", hue="method", s=70, ax=ax2)
        lo, hi = float(min(ok.mc_kl_full.min(), ok.mc_kl_choices.min())), float(
            max(ok.mc_kl_full.max(), ok.mc_kl_choices.max()))
        ax2.plot([lo, hi], [lo, hi], "k--", lw=1, label="equal")
        ax2.plot([lo, hi], [SUBSPACE_RATIO * lo, SUBSPACE_RATIO * hi], "k:", lw=1, label=f"×{SUBSPACE_RATIO}")
        ax2.set_xscale("log")
        ax2.set_yscale("log")
        ax2.legend(fontsize=8)
    ax2.set_xlabel("KL over the full vocabulary at the answer position")
    ax2.set_ylabel("KL over the answer choices (p renormalised)")
    ax2.set_title("Is the answer subspace damaged less than the full p?", fontsize=11)
    fig.suptitle(f"Exp 2, {stem}: multiple choice vs generation", fontsize=11)
    figure = save(fig, Path(figures) / f"mc_vs_generation_{stem}.png")

    coll = tab[tab.gen_collapsed]
    regime = coll[coll.mc_agreement >= MC_HIGH]  # generation collapsed, multiple choice survives
    ratio = regime.subspace_ratio[np.isfinite(regime.subspace_ratio)]
    med_ratio = float(ratio.median()) if len(ratio) else math.nan
    all_ratio = tab.subspace_ratio[np.isfinite(tab.subspace_ratio)]
    ev = {"settings_generation_collapsed": coll.label.tolist(),
          "settings_mc_survives_generation_collapsed": regime.label.tolist(),
          "mc_agreement_where_generation_collapsed": [_finite(x) for x in coll.mc_agreement],
          "gen_prefix_agreement_where_collapsed": [_finite(x) for x in coll.gen_prefix_agreement],
          "median_subspace_kl_ratio_in_regime": _finite(med_ratio),
          "median_subspace_kl_ratio_all_settings": _finite(all_ratio.median()) if len(all_ratio) else None}
    if not len(coll):
        holds, why = None, "no setting in this grid collapses generation, so the claim is not tested here"
    else:
        sub_ok = math.isfinite(med_ratio) and med_ratio <= SUBSPACE_RATIO
        ev.update(mc_survives=bool(len(regime)), subspace_kl_much_smaller=bool(sub_ok))
        holds = bool(len(regime) and sub_ok)
        why = (f"generation collapsed at {len(coll)} setting(s); MC agreement stayed ≥ {MC_HIGH} at {len(regime)} "
               f"of them" + (f" ({', '.join(regime.label)}); there the choice-subspace KL / full KL median is "
                             f"{med_ratio:.3g} ({'≪' if sub_ok else 'not ≪'} 1: ≤ {SUBSPACE_RATIO} needed)"
                             if len(regime) else ""))
    return _verdict("mc_vs_generation", "multiple-choice answers survive compression that collapses "
                    "generation; the answer-subspace KL is much smaller than the full KL",
                    holds, why, ev, {"mc_high": MC_HIGH, "gen_collapsed_below": GEN_COLLAPSED,
                                     "subspace_ratio_max": SUBSPACE_RATIO}, table, figure, len(tab))


def _verdict(name, claim, holds, why, ev, rules, table, figure, n) -> dict:
    word = {True: "HOLDS", False: "DOES NOT HOLD", None: "NOT TESTED"}[holds]
    return {"experiment": name, "claim": claim, "holds": holds, "summary": f"{word}: {why}",
            "evidence": ev, "rules": rules, "table": str(table), "figure": str(figure), "settings": int(n)}


# ------------------------------------------------------------------ exp 6 --------------

CAPABILITY = (("kl", +1), ("top1_agreement", -1), ("mc_agreement", -1), ("gen_token_agreement", -1),
              ("gen_prefix_agreement", -1))


def spearman_table(df) -> list[dict]:
    """Spearman ρ(ppl, metric) over the settings where both are finite, and the oriented ρ."""
    from scipy.stats import spearmanr

    out = []
    for m, sign in CAPABILITY:
        ok = np.isfinite(df.ppl) & np.isfinite(df[m])
        n = int(ok.sum())
        rho = math.nan
        if n >= 3 and df.ppl[ok].nunique() > 1 and df[m][ok].nunique() > 1:
            rho = float(spearmanr(df.ppl[ok], df[m][ok]).statistic)
        out.append({"metric": m, "n": n, "spearman_rho": rho, "oriented_rho": sign * rho,
                    "same_ranking": bool(math.isfinite(rho) and sign * rho >= RHO_SAME)})
    return out


def ppl_not_enough(rows, results="results", figures="figures", stem="sweep") -> dict:
    """Exp 6: ppl, KL, top-1, MC and generation agreement side by side; Spearman vs ppl."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    from hemorrhage.validate.plots import save

    df = rows_frame(rows)
    cols = ["model", "method", "setting", "ppl_base", "ppl", "ppl_ratio", "kl", "top1_agreement", "mc_agreement",
            "gen_token_agreement", "gen_prefix_agreement", "collapsed"]
    tab = df[cols].copy()
    for m, _ in CAPABILITY:  # rank of each setting by damage (1 = least damaged)
        tab[f"rank_{m}"] = (tab[m] if m == "kl" else -tab[m]).rank(method="average")
    tab["rank_ppl"] = tab.ppl.rank(method="average")
    table = _write(tab, results, f"ppl_not_enough_{stem}")
    rho = spearman_table(df)
    _write(pd.DataFrame(rho), results, f"ppl_not_enough_{stem}_spearman")

    _theme()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8), layout="constrained")
    long = df.melt(id_vars=["label", "method", "ppl_ratio"], value_vars=[m for m, s in CAPABILITY if s < 0],
                   var_name="metric", value_name="agreement")
    long = long[np.isfinite(long.ppl_ratio) & np.isfinite(long.agreement)]
    if len(long):
        sns.scatterplot(long, x="ppl_ratio", y="agreement", hue="metric", style="method", s=60, ax=ax1)
        ax1.set_xscale("log")
        ax1.legend(fontsize=7)
    ax1.axvline(PPL_MILD, color="grey", ls=":", lw=1)
    ax1.set_xlabel("perplexity / base perplexity")
    ax1.set_ylabel("agreement with the base")
    ax1.set_title("Same perplexity, different capability?", fontsize=11)
    rd = pd.DataFrame(rho)
    rd = rd[np.isfinite(rd.oriented_rho)]
    if len(rd):
        sns.barplot(rd, x="metric", y="oriented_rho", hue="metric", legend=False, ax=ax2)
    ax2.axhline(RHO_SAME, color="k", ls="--", lw=1)
    ax2.set_ylim(-1.05, 1.05)
    ax2.set_ylabel("Spearman ρ(ppl, damage); +1 = same order")
    ax2.tick_params(axis="x", labelrotation=20, labelsize=8)
    ax2.set_title(f"Does ppl rank the settings like each metric?  (dashed: {RHO_SAME})", fontsize=11)
    fig.suptitle(f"Exp 6, {stem}: perplexity is not enough (LLM-KICK)", fontsize=11)
    figure = save(fig, Path(figures) / f"ppl_not_enough_{stem}.png")

    capab = [r for r in rho if r["metric"] in ("mc_agreement", "gen_token_agreement", "gen_prefix_agreement")
             and math.isfinite(r["spearman_rho"])]
    differ = [r["metric"] for r in capab if not r["same_ranking"]]
    hidden = df[(df.ppl_ratio <= PPL_MILD) & ((df.mc_agreement < MC_HIGH) | (df.gen_prefix_agreement < GEN_COLLAPSED))]
    ev = {"spearman": rho, "ranks_differently_from": differ, "hidden_damage_settings": hidden.label.tolist()}
    if len(df) < 3 or not capab:
        holds, why = None, f"{len(df)} settings with finite ppl and MC/generation metrics: too few to rank (need 3)"
    else:
        holds = bool(differ or len(hidden))
        why = ("ppl ranks the settings " + (f"differently from {', '.join(differ)}" if differ else
                                             "like the MC and generation metrics")
               + (f"; {len(hidden)} setting(s) lose capability with ppl up ≤ {PPL_MILD - 1:.0%}" if len(hidden) else ""))
    return _verdict("ppl_not_enough", "perplexity misses capability loss that task metrics show (LLM-KICK)",
                    holds, why, ev, {"rho_same": RHO_SAME, "ppl_mild_ratio": PPL_MILD, "mc_high": MC_HIGH,
                                     "gen_collapsed_below": GEN_COLLAPSED}, table, figure, len(df))


# ------------------------------------------------------------------ dispatch -----------

def run_experiment(name: str, rows, results="results", figures="figures", stem="sweep") -> dict:
    from hemorrhage.errors import UserError

    if name == "thresholds":
        from hemorrhage.validate.exp_thresholds import thresholds

        fn = thresholds
    elif name in ("mc_vs_generation", "ppl_not_enough"):
        fn = globals()[name]
    else:
        raise UserError(f"unknown experiment {name!r}; valid: {', '.join(EXPERIMENTS)}")
    if not len(rows):
        raise UserError("the sweep holds no rows")
    return fn(rows, results=results, figures=figures, stem=stem)


def regenerate(results="results", figures="figures", log=print) -> list[str]:
    """Every figure from the stored results: each results/*.jsonl sweep → the three experiment
    figures; each results/hierarchy/*.csv → validate.plots.hierarchy_figure.  No model needed."""
    import pandas as pd

    from hemorrhage.errors import UserError
    from hemorrhage.validate.plots import hierarchy_figure
    from hemorrhage.validate.sweep import read_rows

    results, figures, written = Path(results), Path(figures), []
    for sweep in sorted(results.glob("*.jsonl")):
        try:
            rows = read_rows(sweep, repair=False)
        except UserError as e:
            log(f"skipped {sweep}: {e}")
            continue
        if not rows or not all(isinstance(r, dict) and "kl" in r for r in rows):
            log(f"skipped {sweep}: not a sweep file (no rows with kl)")
            continue
        for name in EXPERIMENTS:
            v = run_experiment(name, rows, results, figures, sweep.stem)
            written.append(v["figure"])
            log(f"{v['figure']}  [{v['summary']}]")
    for csv in sorted((results / "hierarchy").glob("*.csv")):
        df = pd.read_csv(csv)
        need = {"layer", "cos_h", "cos_z", "cos_p", "kl", "kl_pred"}
        if not need <= set(df.columns):
            log(f"skipped {csv}: not a hierarchy table")
            continue
        first = df.iloc[0]
        title = (f"{first.get('model', '?')}, {first.get('method', '?')} ({first.get('setting', '?')}) vs its base "
                 f"— redrawn from {csv.name}")
        written.append(str(hierarchy_figure(df, figures / f"{csv.stem}.png", title)))
        log(written[-1])
    return written
