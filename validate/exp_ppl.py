"""Exp 6 `ppl_not_enough` (seed 003, LLM-KICK, arXiv 2310.01382): "perplexity misses capability
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

from hemorrhage.validate.exp_common import GEN_COLLAPSED, MC_HIGH, rows_frame, theme, verdict, write_table

RHO_SAME, PPL_MILD = 0.9, 1.2


CAPABILITY = (
    ("kl", +1),
    ("top1_agreement", -1),
    ("mc_agreement", -1),
    ("gen_token_agreement", -1),
    ("gen_prefix_agreement", -1),
)


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
        out.append(
            {
                "metric": m,
                "n": n,
                "spearman_rho": rho,
                "oriented_rho": sign * rho,
                "same_ranking": bool(math.isfinite(rho) and sign * rho >= RHO_SAME),
            }
        )
    return out


def ppl_not_enough(rows, results="results", figures="figures", stem="sweep") -> dict:
    """Exp 6: ppl, KL, top-1, MC and generation agreement side by side; Spearman vs ppl."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    from hemorrhage.validate.plots import save

    df = rows_frame(rows)
    cols = [
        "model",
        "method",
        "setting",
        "ppl_base",
        "ppl",
        "ppl_ratio",
        "kl",
        "top1_agreement",
        "mc_agreement",
        "gen_token_agreement",
        "gen_prefix_agreement",
        "collapsed",
    ]
    tab = df[cols].copy()
    for m, _ in CAPABILITY:  # rank of each setting by damage (1 = least damaged)
        tab[f"rank_{m}"] = (tab[m] if m == "kl" else -tab[m]).rank(method="average")
    tab["rank_ppl"] = tab.ppl.rank(method="average")
    table = write_table(tab, results, f"ppl_not_enough_{stem}")
    rho = spearman_table(df)
    write_table(pd.DataFrame(rho), results, f"ppl_not_enough_{stem}_spearman")

    theme()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8), layout="constrained")
    long = df.melt(
        id_vars=["label", "method", "ppl_ratio"],
        value_vars=[m for m, s in CAPABILITY if s < 0],
        var_name="metric",
        value_name="agreement",
    )
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

    capab = [
        r
        for r in rho
        if r["metric"] in ("mc_agreement", "gen_token_agreement", "gen_prefix_agreement")
        and math.isfinite(r["spearman_rho"])
    ]
    differ = [r["metric"] for r in capab if not r["same_ranking"]]
    hidden = df[(df.ppl_ratio <= PPL_MILD) & ((df.mc_agreement < MC_HIGH) | (df.gen_prefix_agreement < GEN_COLLAPSED))]
    ev = {"spearman": rho, "ranks_differently_from": differ, "hidden_damage_settings": hidden.label.tolist()}
    if len(df) < 3 or not capab:
        holds, why = None, f"{len(df)} settings with finite ppl and MC/generation metrics: too few to rank (need 3)"
    else:
        holds = bool(differ or len(hidden))
        why = (
            "ppl ranks the settings "
            + (f"differently from {', '.join(differ)}" if differ else "like the MC and generation metrics")
            + (f"; {len(hidden)} setting(s) lose capability with ppl up ≤ {PPL_MILD - 1:.0%}" if len(hidden) else "")
        )
    return verdict(
        "ppl_not_enough",
        "perplexity misses capability loss that task metrics show (LLM-KICK)",
        holds,
        why,
        ev,
        {"rho_same": RHO_SAME, "ppl_mild_ratio": PPL_MILD, "mc_high": MC_HIGH, "gen_collapsed_below": GEN_COLLAPSED},
        table,
        figure,
        len(df),
    )
