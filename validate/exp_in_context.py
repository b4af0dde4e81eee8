"""Exp `in_context` (LLM-KICK, Jaiswal et al. 2023): "compressed LLMs stay robust in-context
retrievers at ≥ 50 % sparsity", beside closed-book knowledge.  Rows: validate/in_context.py's
`in_context_rows` (one per setting: ic_* open book, cb_* closed book; sweep-row shaped).

Rules.  In-context retrieval is robust at a setting when its exact match keeps at least
1 − EM_TOL (EM_TOL = 10 %) of the base's: ic_em ≥ (1 − EM_TOL)·ic_em_base.  The claim holds
when it is robust at every unstructured pruning setting of the rows with sparsity exactly
SPARSITY (0.5) and does not hold when any of them is not; None without such a row or when the
base answers none (ic_em_base = 0: nothing to keep).  Beside it, per setting, the share of
closed-book exact match kept (cb_em / cb_em_base, NaN when the base knows none) and of the
in-context one: LLM-KICK's contrast is that the in-context share stays higher.  Evidence:
the highest sparsity / lowest bit width at which each method stays robust.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from hemorrhage.validate.exp_common import identity, records, theme, verdict, write_table

EM_TOL = 0.10
SPARSITY = 0.5
COLS = (
    "ic_em",
    "ic_em_base",
    "ic_agreement",
    "ic_span_nll",
    "ic_span_nll_base",
    "cb_em",
    "cb_em_base",
    "cb_agreement",
    "cb_span_nll",
    "cb_span_nll_base",
    "ic_items",
)


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def in_context_frame(rows):
    import pandas as pd

    out = []
    for r in records(rows):
        model, method, setting, axis, lv = identity(r)
        out.append(
            {
                "model": model,
                "method": method,
                "setting": setting,
                "axis": axis,
                "level": lv,
                **{k: _num(r.get(k)) for k in COLS},
            }
        )
    df = pd.DataFrame(out, columns=["model", "method", "setting", "axis", "level", *COLS])
    with np.errstate(invalid="ignore", divide="ignore"):
        df["ic_kept"] = df.ic_em / df.ic_em_base
        df["cb_kept"] = df.cb_em / df.cb_em_base
    df["ic_robust"] = df.ic_em >= (1 - EM_TOL) * df.ic_em_base
    return df[np.isfinite(df.ic_em)]


def _limits(df) -> dict:
    """Per model and method: the highest sparsity (lowest bits) still robust, scanning from mild."""
    out = {}
    for (model, method), g in df[df.axis.notna()].groupby(["model", "method"]):
        axis = g.axis.iloc[0]
        g = g.sort_values("level", ascending=axis != "bits")
        last = None
        for r in g.itertuples():
            if not r.ic_robust:
                break
            last = float(r.level)
        out[f"{model} {method}"] = {"axis": axis, "robust_up_to": last}
    return out


def in_context(rows, results="results", figures="figures", stem="sweep") -> dict:
    import matplotlib.pyplot as plt

    from hemorrhage.validate.plots import save

    claim = f"compressed models stay robust in-context retrievers at ≥ {SPARSITY:.0%} sparsity (LLM-KICK)"
    rules = {"em_tol": EM_TOL, "sparsity": SPARSITY}
    df = in_context_frame(rows)
    table = write_table(df, results, f"in_context_{stem}")
    at = df[(df.axis == "sparsity") & np.isclose(df.level.fillna(-1), SPARSITY)]
    ev = {
        "at_sparsity": [
            {
                "model": r.model,
                "method": r.method,
                "ic_em": r.ic_em,
                "ic_em_base": r.ic_em_base,
                "ic_agreement": r.ic_agreement,
                "cb_em": r.cb_em,
                "cb_em_base": r.cb_em_base,
            }
            for r in at.itertuples()
        ],
        "limits": _limits(df),
    }
    if not len(df):
        holds, why = None, "no row measured in-context retrieval (validate.in_context.in_context_rows)"
    elif not len(at):
        holds, why = None, f"no pruning row at sparsity {SPARSITY}"
    elif (at.ic_em_base <= 0).all():
        holds, why = None, "the base answers no in-context question"
    else:
        holds = bool(at.ic_robust.all())
        parts = [
            f"{r.model} {r.method}: EM {r.ic_em:.2f} vs base {r.ic_em_base:.2f} "
            f"(kept {r.ic_kept:.0%}; closed book {r.cb_em:.2f} vs {r.cb_em_base:.2f}), "
            f"agreement with the base {r.ic_agreement:.2f}"
            for r in at.itertuples()
        ]
        why = f"at {SPARSITY:.0%} sparsity " + "; ".join(parts)

    theme()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained")
    for ax, axis in zip(axes, ("sparsity", "bits")):
        sub = df[df.axis == axis]
        for (model, method), g in sub.groupby(["model", "method"]):
            g = g.sort_values("level")
            (line,) = ax.plot(g.level, g.ic_em, "o-", label=f"{model} {method}: in context")
            ax.plot(g.level, g.cb_em, "s--", color=line.get_color(), alpha=0.7, label=f"{model} {method}: closed book")
            ax.plot(g.level, g.ic_agreement, ":", color=line.get_color(), alpha=0.7)
        for model, g in sub.groupby("model"):
            ax.axhline(g.ic_em_base.iloc[0], color="grey", lw=1)
            ax.axhline((1 - EM_TOL) * g.ic_em_base.iloc[0], color="grey", lw=1, ls=":")
        if axis == "sparsity":
            ax.axvline(SPARSITY, color="grey", ls="--", lw=1)
        else:
            ax.invert_xaxis()
        ax.set_xlabel(axis)
        ax.set_ylabel("exact match (dotted: agreement with the base)")
        ax.set_title(f"In-context retrieval vs closed book, by {axis}", fontsize=11)
        if len(sub):
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, f"no {axis} row", ha="center", va="center", transform=ax.transAxes)
    figure = save(fig, Path(figures) / f"in_context_{stem}.png")
    return verdict("in_context", claim, holds, why, ev, rules, table, figure, len(df))
