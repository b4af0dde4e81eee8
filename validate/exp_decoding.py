r"""Experiment 8 over a sweep: does the decoding strategy change what compression costs?

Rows measured with several `--strategies` (validate/steps.py: greedy, tempT, toppP,
beamW; sampling shares its random numbers between base and compressed model) carry, per
strategy, the agreement of the compressed continuation with the base's under the same
strategy: gen_prefix_agreement (share before the first divergence), gen_token_agreement,
first_divergence_mean.

Spread at a setting = max − min of gen_prefix_agreement over the strategies.  Seed 004
(Model Hemorrhage): aligned (instruction-tuned) models are stable across greedy, sampling
and beam, base models vary a lot.  Rule: with an aligned and a base model in the rows
(ALIGNED names the instruction-tuned ones), the claim holds when the aligned model's
median spread is smaller than the base model's; with one kind only it is not tested and
the spreads are reported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hemorrhage.validate.exp_common import finite, identity, num, records, theme, verdict, write_table

ALIGNED = ("smollm2-135m",)  # SmolLM2-135M-Instruct; gemma3-270m and the control are base models
METRICS = ("gen_prefix_agreement", "gen_token_agreement", "first_divergence_mean")


def decoding_frame(rows):
    import pandas as pd

    out = []
    for r in records(rows):
        st = r.get("strategies")
        if not st:
            continue
        model, method, setting, axis, level = identity(r)
        for name, m in st.items():
            out.append(
                {
                    "model": model,
                    "aligned": model in ALIGNED or "instruct" in model.lower(),
                    "method": method,
                    "setting": setting,
                    "label": f"{method} {setting}",
                    "strategy": name,
                    "kl": num(r.get("kl")),
                    **{k: num(m.get(k)) for k in METRICS},
                }
            )
    return pd.DataFrame(out)


def decoding(rows, results="results", figures="figures", stem="sweep") -> dict:
    """Exp 8: agreement with the base per strategy, and its spread across strategies."""
    df = decoding_frame(rows)
    claim = "aligned models are stable across greedy, sampling and beam; base models vary a lot (seed 004)"
    rules = {"spread": "max − min over strategies of gen_prefix_agreement", "aligned_models": list(ALIGNED)}
    if df.empty:
        return verdict(
            "decoding",
            claim,
            None,
            "no row compares several decoding strategies (measure with --strategies greedy,temp0.7,topp0.9,beam4)",
            {},
            rules,
            "",
            "",
            0,
        )
    table = write_table(df, results, f"decoding_{stem}")
    sp = df.groupby(["model", "aligned", "label"], as_index=False).agg(
        kl=("kl", "first"),
        spread=("gen_prefix_agreement", lambda x: float(x.max() - x.min())),
        strategies=("strategy", "nunique"),
    )
    sp = sp[sp.strategies > 1]
    write_table(sp, results, f"decoding_spread_{stem}")
    figure = _figure(df, sp, Path(figures) / f"decoding_{stem}.png", stem)
    by_model = sp.groupby(["model", "aligned"]).spread.median()
    per_strategy = df.groupby(["model", "strategy"]).gen_prefix_agreement.mean()
    ev = {
        "median_spread": {m: finite(v) for (m, _), v in by_model.items()},
        "mean_prefix_agreement": {f"{m}: {s}": finite(v) for (m, s), v in per_strategy.items()},
    }
    kinds = {a for _, a in by_model.index}
    if len(sp) == 0:
        holds, why = None, "no setting was measured under more than one strategy"
    elif kinds != {True, False}:
        holds = None
        why = (
            f"only {'aligned' if True in kinds else 'base'} models here, so aligned vs base is not tested; "
            "median spread " + ", ".join(f"{m} {v:.3f}" for (m, _), v in by_model.items())
        )
    else:
        al = float(by_model[[a for _, a in by_model.index]].median())
        ba = float(by_model[[not a for _, a in by_model.index]].median())
        holds = bool(al < ba)
        why = (
            f"median spread of prefix agreement across strategies: aligned {al:.3f} vs base {ba:.3f} "
            f"({'smaller' if holds else 'not smaller'})"
        )
    return verdict("decoding", claim, holds, why, ev, rules, table, figure, int(sp.shape[0]))


def _figure(df, sp, path: Path, stem: str) -> Path:
    import matplotlib.pyplot as plt
    import seaborn as sns

    from hemorrhage.validate.plots import save

    theme()
    fig, axs = plt.subplots(1, 2, figsize=(14, 5), layout="constrained")
    ok = df[np.isfinite(df.kl) & (df.kl > 0)]
    if len(ok):
        sns.lineplot(
            ok.sort_values("kl"),
            x="kl",
            y="gen_prefix_agreement",
            hue="strategy",
            style="model" if ok.model.nunique() > 1 else None,
            marker="o",
            ax=axs[0],
        )
        axs[0].set_xscale("log")
        axs[0].legend(fontsize=7)
    axs[0].set_ylim(-0.03, 1.03)
    axs[0].set_xlabel("KL(p ‖ q) per token of the setting")
    axs[0].set_ylabel("share of the continuation before the first divergence")
    axs[0].set_title("Same strategy for base and compressed: how long do they agree?", fontsize=11)
    if len(sp):
        sp = sp.assign(kind=np.where(sp.aligned, "aligned (instruction-tuned)", "base"))
        sns.stripplot(sp, x="model", y="spread", hue="kind", size=5, alpha=0.6, ax=axs[1])
        sns.pointplot(
            sp,
            x="model",
            y="spread",
            estimator="median",
            errorbar=None,
            color="k",
            markers="D",
            linestyles="none",
            ax=axs[1],
            label="median",
        )
    axs[1].set_ylabel("max − min over strategies (prefix agreement)")
    axs[1].set_title("Spread across strategies: aligned vs base models", fontsize=11)
    fig.suptitle(f"Exp 8, {stem}: decoding strategy under compression", fontsize=12)
    return save(fig, path)
