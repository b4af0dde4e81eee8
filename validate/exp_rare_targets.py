r"""Experiment 7 over a sweep: do rare targets pay first, and do hidden states sparsify on hard
inputs (seed 000's hypotheses)?  Stratified by how hard a token is.

(a) "Damage hides on common prompts and shows on low-probability targets first."  Rows'
    `strata` (validate/strata.py) split the scored tokens into quantiles of the base's
    NLL of the target (bin 0: the base is surest; last bin: the rarest targets).  Per
    setting: dnll (the extra NLL of the target) and KL in the rarest bin over the commonest
    one.  The hypothesis holds when, over the damaged settings (KL > 1e-3), the median dnll
    ratio is > RATIO_MIN (1: rare targets pay more).  Theorem 3 reads it as geometry, not
    rarity: KL ≈ ½Var_p(Δz) and Var_p vanishes when p is peaked on the target, so the KL
    per bin is compared with ½Var_p per bin (`theorem3_tracks_bins`: Spearman ρ over bins
    and settings).
(b) "Hidden states sparsify on hard or unfamiliar inputs; a fixed pruning mask overrides
    that input-conditional choice."  Spearman ρ over tokens between the base NLL and the
    Hoyer sparsity of the MLP activation, for the base (the same in every row) and each
    compressed model.  (b) holds when the base's ρ ≥ RHO_MIN (0.1); "the mask overrides it"
    is reported as the compressed ρ of pruning settings next to the base's.
holds = (a) and (b).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from hemorrhage.validate.exp_common import finite, identity, num, records, spread_pick, theme, verdict, write_table

RATIO_MIN, RHO_MIN, DAMAGED = 1.0, 0.1, 1e-3
PRUNING = ("magnitude", "wanda", "sparsegpt", "owl")


def strata_frames(rows):
    """(per bin × setting, per setting) DataFrames from the rows' `strata`."""
    import pandas as pd

    bins, summ = [], []
    for r in records(rows):
        st = r.get("strata")
        if not st:
            continue
        model, method, setting, axis, level = identity(r)
        nb = st["bins"]
        df = pd.DataFrame(
            {"model": model, "method": method, "setting": setting, "label": f"{method} {setting}", "bin": np.arange(nb)}
        )
        for k in (
            "n",
            "nll_base",
            "p_target",
            "dnll",
            "kl",
            "kl_pred",
            "top1",
            "hoyer_base",
            "hoyer_comp",
            "gate_off_base",
            "gate_off_comp",
        ):
            v = st.get(k)
            df[k] = np.asarray(v, float) if v is not None else np.nan
        bins.append(df)
        rho = st.get("spearman_vs_nll_base", {})
        g = lambda k: np.nan if rho.get(k) is None else float(rho[k])  # noqa: E731
        with np.errstate(divide="ignore", invalid="ignore"):
            summ.append(
                {
                    "model": model,
                    "method": method,
                    "setting": setting,
                    "label": f"{method} {setting}",
                    "kl": num(r.get("kl")),
                    "dnll_ratio": df.dnll.iloc[-1] / df.dnll.iloc[0],
                    "kl_ratio": df.kl.iloc[-1] / df.kl.iloc[0],
                    "rho_hoyer_base": g("hoyer_base"),
                    "rho_hoyer_comp": g("hoyer_comp"),
                    "rho_gate_off_base": g("gate_off_base"),
                    "rho_kl": g("kl"),
                    "rho_dnll": g("dnll"),
                    "rho_hoyer_shift": g("hoyer_shift"),
                }
            )
    if not bins:
        return pd.DataFrame(), pd.DataFrame()
    return pd.concat(bins, ignore_index=True), pd.DataFrame(summ)


def rare_targets(rows, results="results", figures="figures", stem="sweep") -> dict:
    """Exp 7: (a) damage by target rarity, (b) activation sparsity vs difficulty."""
    from scipy.stats import spearmanr

    bins, summ = strata_frames(rows)
    claim = "damage shows on low-probability targets first; hidden states sparsify on hard inputs (seed 000)"
    rules = {"dnll_ratio_min": RATIO_MIN, "rho_min": RHO_MIN, "damaged_kl": DAMAGED}
    if bins.empty:
        return verdict(
            "rare_targets", claim, None, "no row carries strata (measure with --strata-bins > 0)", {}, rules, "", "", 0
        )
    table = write_table(bins, results, f"rare_targets_{stem}")
    write_table(summ, results, f"rare_targets_settings_{stem}")
    figure = _figure(bins, summ, Path(figures) / f"rare_targets_{stem}.png", stem)
    dam = summ[np.isfinite(summ.kl) & (summ.kl > DAMAGED)]
    ratio = dam.dnll_ratio[np.isfinite(dam.dnll_ratio)]
    med_ratio = float(ratio.median()) if len(ratio) else math.nan
    ok = bins[np.isfinite(bins.kl) & np.isfinite(bins.kl_pred)]
    rho_thm3 = float(spearmanr(ok.kl, ok.kl_pred).statistic) if len(ok) >= 3 else math.nan
    rho_base = summ.groupby("model").rho_hoyer_base.first()
    prune = summ[summ.method.isin(PRUNING)]
    ev = {
        "median_dnll_ratio_rare_over_common": finite(med_ratio),
        "median_kl_ratio_rare_over_common": finite(dam.kl_ratio.median()) if len(dam) else None,
        "theorem3_tracks_bins": finite(rho_thm3),
        "rho_base_nll_vs_hoyer": {m: finite(v) for m, v in rho_base.items()},
        "rho_comp_nll_vs_hoyer_pruning": {
            f"{m}: {lab}": finite(v) for m, lab, v in zip(prune.model, prune.label, prune.rho_hoyer_comp)
        },
        "rho_base_nll_vs_gate_off": {m: finite(v) for m, v in summ.groupby("model").rho_gate_off_base.first().items()},
    }
    if not len(ratio) or not np.isfinite(rho_base).any():
        holds, why = None, "no damaged setting with strata, or the base's sparsity correlation is undefined"
    else:
        a = med_ratio > RATIO_MIN
        b = bool((rho_base[np.isfinite(rho_base)] >= RHO_MIN).all())
        holds = bool(a and b)
        rb = ", ".join(f"{m} {v:+.2f}" for m, v in rho_base.items() if np.isfinite(v))
        why = (
            f"(a) the rarest targets' extra NLL is {med_ratio:.3g}× the commonest's (median over {len(ratio)} "
            f"damaged settings; {'>' if a else '≤'} {RATIO_MIN}); ½Var_p follows the KL across bins "
            f"(Spearman {rho_thm3:+.2f}); (b) base ρ(NLL, MLP Hoyer sparsity) = {rb} "
            f"({'≥' if b else '<'} {RHO_MIN})"
        )
    return verdict("rare_targets", claim, holds, why, ev, rules, table, figure, len(summ))


def _figure(bins, summ, path: Path, stem: str) -> Path:
    import matplotlib.pyplot as plt
    import seaborn as sns

    from hemorrhage.validate.plots import save

    theme()
    fig, axs = plt.subplots(1, 3, figsize=(19, 5.2), layout="constrained")
    keep = [summ.label.iloc[i] for i in spread_pick(summ.kl.to_numpy(), 6)]
    b = bins[bins.label.isin(keep)]
    b = b.assign(who=(b.model + ": " if b.model.nunique() > 1 else "") + b.label)
    sns.lineplot(b[np.isfinite(b.dnll)], x="bin", y="dnll", hue="who", marker="o", ax=axs[0])
    axs[0].axhline(0, color="k", lw=0.8)
    axs[0].set_xlabel("quantile of the base's NLL of the target (0: commonest … rarest)")
    axs[0].set_ylabel("extra NLL of the target, compressed − base")
    axs[0].set_title("(a) Do rare targets pay first?", fontsize=11)
    axs[0].legend(fontsize=6)
    long = b.melt(id_vars=["who", "bin"], value_vars=["kl", "kl_pred"], var_name="quantity", value_name="value")
    long = long[np.isfinite(long.value) & (long.value > 0)].replace({"kl": "KL measured", "kl_pred": "½Var_p(Δz)"})
    sns.lineplot(long, x="bin", y="value", hue="who", style="quantity", marker="o", ax=axs[1], legend=False)
    axs[1].set_yscale("log")
    axs[1].set_xlabel("quantile of the base's NLL of the target")
    axs[1].set_ylabel("KL (solid) and Theorem 3's ½Var_p (dashed)")
    axs[1].set_title("… or is it Var_p: confident positions move less?", fontsize=11)
    sp = bins.groupby(["model", "bin"], as_index=False).hoyer_base.first().rename(columns={"hoyer_base": "hoyer"})
    sp["who"] = sp.model + ": base"
    pr = b[b.method.isin(PRUNING)][["who", "bin", "hoyer_comp"]].rename(columns={"hoyer_comp": "hoyer"})
    import pandas as pd

    sns.lineplot(pd.concat([sp, pr]), x="bin", y="hoyer", hue="who", marker="o", ax=axs[2])
    axs[2].set_xlabel("quantile of the base's NLL of the target (hard →)")
    axs[2].set_ylabel("Hoyer sparsity of the MLP activation (mean over layers)")
    axs[2].set_title("(b) Do hidden states sparsify on hard inputs?", fontsize=11)
    axs[2].legend(fontsize=6)
    for ax in axs:
        ax.set_xticks(sorted(bins.bin.unique()))
    fig.suptitle(f"Exp 7, {stem}: rare targets and hard inputs (seed 000)", fontsize=12)
    return save(fig, path)
