"""Exp 2 `mc_vs_generation` (seed 002, arXiv 2603.24652): "multiple choice survives, generation
does not".  Generation has collapsed at a setting when the greedy continuation is identical
for less than GEN_COLLAPSED (50 %) of its length before the first differing token
(gen_prefix_agreement = first_divergence_mean / new_tokens).  The claim holds when (a) the
regime exists: some setting collapses generation while MC agreement stays ≥ MC_HIGH (0.8),
and (b) in that regime the answer-subspace KL is ≪ the full-vocabulary KL at the answer
position: median of mc_kl_choices / mc_kl_full over those settings ≤ SUBSPACE_RATIO (0.25).
Settings past the regime (everything destroyed, e.g. 2 bits) neither help nor hurt.  No
collapsed setting in the grid: None (the grid never reaches the regime the claim is about).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from hemorrhage.validate.exp_common import (
    GEN_COLLAPSED,
    MC_HIGH,
    condensed_settings,
    finite,
    rows_frame,
    theme,
    verdict,
    write_table,
)

SUBSPACE_RATIO = 0.25


def mc_vs_generation(rows, results="results", figures="figures", stem="sweep") -> dict:
    """Exp 2: MC agreement and answer-subspace KL vs full KL, top-1 and generation agreement."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from hemorrhage.validate.plots import save

    df = rows_frame(rows)
    cols = [
        "model",
        "method",
        "setting",
        "label",
        "axis",
        "level",
        "kl",
        "top1_agreement",
        "mc_agreement",
        "mc_kl_choices",
        "mc_kl_full",
        "gen_token_agreement",
        "gen_prefix_agreement",
        "first_divergence_mean",
        "new_tokens",
        "collapsed",
    ]
    tab = df[cols].copy()
    tab["subspace_ratio"] = tab.mc_kl_choices / tab.mc_kl_full
    tab["gen_collapsed"] = tab.gen_prefix_agreement < GEN_COLLAPSED
    table = write_table(tab, results, f"mc_vs_generation_{stem}")

    theme()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8), layout="constrained")
    names = {
        "mc_agreement": "multiple choice: same answer",
        "top1_agreement": "next token: same top-1",
        "gen_prefix_agreement": "generation: share before 1st divergence",
        "gen_token_agreement": "generation: same token",
    }
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
    ok = tab[
        np.isfinite(tab.mc_kl_choices) & np.isfinite(tab.mc_kl_full) & (tab.mc_kl_choices > 0) & (tab.mc_kl_full > 0)
    ]
    if len(ok):
        sns.scatterplot(ok, x="mc_kl_full", y="mc_kl_choices", hue="method", s=70, ax=ax2)
        lo, hi = (
            float(min(ok.mc_kl_full.min(), ok.mc_kl_choices.min())),
            float(max(ok.mc_kl_full.max(), ok.mc_kl_choices.max())),
        )
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
    ev = {
        "settings_generation_collapsed": coll.label.tolist(),
        "settings_mc_survives_generation_collapsed": regime.label.tolist(),
        "mc_agreement_where_generation_collapsed": [finite(x) for x in coll.mc_agreement],
        "gen_prefix_agreement_where_collapsed": [finite(x) for x in coll.gen_prefix_agreement],
        "median_subspace_kl_ratio_in_regime": finite(med_ratio),
        "median_subspace_kl_ratio_all_settings": finite(all_ratio.median()) if len(all_ratio) else None,
    }
    if not len(coll):
        holds, why = None, "no setting in this grid collapses generation, so the claim is not tested here"
    else:
        sub_ok = math.isfinite(med_ratio) and med_ratio <= SUBSPACE_RATIO
        ev.update(mc_survives=bool(len(regime)), subspace_kl_much_smaller=bool(sub_ok))
        holds = bool(len(regime) and sub_ok)
        why = (
            f"generation collapsed at {len(coll)} setting(s); MC agreement stayed ≥ {MC_HIGH} at {len(regime)} "
            f"of them"
            + (
                f" ({condensed_settings(regime.label)}); there the choice-subspace KL / full KL median is "
                f"{med_ratio:.3g} ({'≪' if sub_ok else 'not ≪'} 1: ≤ {SUBSPACE_RATIO} needed)"
                if len(regime)
                else ""
            )
        )
    ev["by_task"] = by_task(rows, set(coll.model + " " + coll.label))
    return verdict(
        "mc_vs_generation",
        "multiple-choice answers survive compression that collapses "
        "generation; the answer-subspace KL is much smaller than the full KL",
        holds,
        why,
        ev,
        {"mc_high": MC_HIGH, "gen_collapsed_below": GEN_COLLAPSED, "subspace_ratio_max": SUBSPACE_RATIO},
        table,
        figure,
        len(tab),
    )


def by_task(rows, collapsed: set[str]) -> dict:
    """Per model and MC task: the base's accuracy against chance (a task the base cannot do
    says little), and the median agreement and subspace/full KL ratio over the settings where
    generation collapsed (`collapsed`: "model method setting" labels)."""
    from hemorrhage.validate.exp_common import identity, records

    acc: dict = {}
    for r in records(rows):
        model, method, setting, _, _ = identity(r)
        for task, t in (r.get("mc_by_task") or {}).items():
            a = acc.setdefault(
                f"{model}: {task}",
                {
                    "acc_base": t.get("acc_base"),
                    "chance": t.get("chance"),
                    "items": t.get("items"),
                    "agreement": [],
                    "ratio": [],
                },
            )
            if f"{model} {method} {setting}" in collapsed:
                a["agreement"].append(t.get("agreement", math.nan))
                kf = t.get("kl_full") or math.nan
                a["ratio"].append((t.get("kl_choices") or math.nan) / kf if kf else math.nan)
    out = {}
    for k, a in acc.items():
        ag, ra = np.asarray(a["agreement"], float), np.asarray(a["ratio"], float)
        ch = a["chance"]
        out[k] = {
            "items": a["items"],
            "acc_base": a["acc_base"],
            "chance": ch,
            "base_above_chance": None if ch is None or a["acc_base"] is None else bool(a["acc_base"] > ch),
            "median_agreement_where_generation_collapsed": finite(np.nanmedian(ag)) if np.isfinite(ag).any() else None,
            "median_subspace_ratio_where_generation_collapsed": finite(np.nanmedian(ra))
            if np.isfinite(ra).any()
            else None,
        }
    return out
