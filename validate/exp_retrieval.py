"""Exp `retrieval` (issue 24; the representation-hierarchy paper's contrast, LLM-KICK): "retrieval
survives where generation collapses".  Rows are `measure` results with retrieval
(`--retrieval N`, validate/retrieval.py): a causal model's sweep rows carry generation beside
retrieval; an encoder's rows (minilm-l6) carry retrieval only.  A causal row's mean-pooled
numbers (top level) and last-token ones (`retrieval_last_token`) become two rows of the table,
two embedders of one compressed model (column `embedder`), each counted on its own below.

Rules.  Retrieval survives at a setting when recall@1 ≥ (1 − RECALL_TOL) · the base's recall@1
(RECALL_TOL = 5 %).  Generation has collapsed when gen_prefix_agreement < GEN_COLLAPSED (50 %,
as exp 2).  (a) The claim holds when some causal setting collapses generation and retrieval
survives at at least half of the collapsed settings; it does not hold when retrieval survives
at fewer than half (counted per setting and pooling); None without a collapsed causal setting
(the grid never reaches the regime).
(b) Theorem 1 (theory/ cosine bound: the relative change of a representation sets 1 − cos)
predicts the recall loss when the Spearman correlation, over every row, of 1 − embedding_cos
with the relative recall loss 1 − recall@1 / recall@1_base is ≥ RHO_MIN (0.7); reported beside
(a) as `cos_predicts` (None with fewer than 4 rows).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from hemorrhage.validate.exp_common import GEN_COLLAPSED, identity, records, theme, verdict, write_table

RECALL_TOL = 0.05
RHO_MIN = 0.7
COLS = (
    "retrieval_recall_at_1",
    "retrieval_recall_at_1_base",
    "retrieval_recall_at_10",
    "retrieval_mrr",
    "embedding_cos",
    "gen_prefix_agreement",
    "kl",
    "mc_agreement",
)


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _poolings(r: dict) -> list[tuple[str, dict]]:
    """(pooling, the row's retrieval numbers) per pooling a row holds: the top level (the
    encoder's own pooling, or a causal LM's mean pooling) and `retrieval_last_token`."""
    top = (r.get("retrieval") or {}).get("pooling") or "mean"
    out = [(top, r)]
    if isinstance(r.get("retrieval_last_token"), dict):
        out.append(("last", r["retrieval_last_token"]))
    return out


def retrieval_frame(rows):
    """One row per (setting, pooling): a causal LM's mean and last-token embeddings are two
    embedders of one compressed model, sharing its KL, MC and generation numbers."""
    import pandas as pd

    out = []
    for r in records(rows):
        model, method, setting, axis, lv = identity(r)
        for pooling, src in _poolings(r):
            rec = {
                "model": model,
                "pooling": pooling,
                "embedder": f"{model} ({pooling})",
                "method": method,
                "setting": setting,
                "axis": axis,
                "level": lv,
                **{k: _num(src.get(k) if k.startswith(("retrieval", "embedding")) else r.get(k)) for k in COLS},
            }
            if "first_divergence_mean" in r and math.isnan(rec["gen_prefix_agreement"]) and r.get("new_tokens"):
                rec["gen_prefix_agreement"] = _num(r["first_divergence_mean"]) / float(r["new_tokens"])
            out.append(rec)
    df = pd.DataFrame(out, columns=["model", "pooling", "embedder", "method", "setting", "axis", "level", *COLS])
    df["recall_loss"] = 1.0 - df.retrieval_recall_at_1 / df.retrieval_recall_at_1_base
    df["retrieval_survives"] = df.retrieval_recall_at_1 >= (1 - RECALL_TOL) * df.retrieval_recall_at_1_base
    df["gen_collapsed"] = df.gen_prefix_agreement < GEN_COLLAPSED
    return df[np.isfinite(df.retrieval_recall_at_1)]


def spearman(a, b) -> float:
    import pandas as pd

    a, b = pd.Series(np.asarray(a, float)), pd.Series(np.asarray(b, float))
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 4:
        return math.nan
    return float(a[ok].rank().corr(b[ok].rank()))


def retrieval(rows, results="results", figures="figures", stem="sweep") -> dict:
    import matplotlib.pyplot as plt

    from hemorrhage.validate.plots import save

    claim = "retrieval survives where generation collapses; embedding_cos (Theorem 1) predicts the recall loss"
    rules = {"recall_tol": RECALL_TOL, "gen_collapsed": GEN_COLLAPSED, "rho_min": RHO_MIN}
    df = retrieval_frame(rows)
    table = write_table(df, results, f"retrieval_{stem}")
    collapsed = df[df.gen_collapsed]
    survive = int(collapsed.retrieval_survives.sum())
    rho = spearman(1.0 - df.embedding_cos, df.recall_loss)
    where = [f"{r.embedder} {r.method} {r.setting}" for r in collapsed[collapsed.retrieval_survives].itertuples()]
    ev = {
        "collapsed_settings": len(collapsed),
        "retrieval_survives_there": survive,
        "where": where,
        "spearman_one_minus_cos_vs_recall_loss": rho,
        "spearman_per_embedder": {m: spearman(1.0 - g.embedding_cos, g.recall_loss) for m, g in df.groupby("embedder")},
        "cos_predicts": None if math.isnan(rho) else bool(rho >= RHO_MIN),
        "survives_per_model": {m: int(g.retrieval_survives.sum()) for m, g in df.groupby("embedder")},
        "settings_per_model": {m: len(g) for m, g in df.groupby("embedder")},
    }
    if not len(df):
        holds, why = None, "no row measured retrieval (measure / sweep --retrieval N)"
    elif not len(collapsed):
        holds, why = None, "no causal setting in these rows collapses generation"
    else:
        holds = survive >= len(collapsed) / 2
        why = f"retrieval within {RECALL_TOL:.0%} of the base at {survive} of {len(collapsed)} collapsed settings"
    why += f"; ρ(1 − embedding_cos, recall loss) = {rho:.2f}" if not math.isnan(rho) else ""

    theme()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained")
    for model, g in df.groupby("embedder"):
        ax1.scatter(1.0 - g.embedding_cos, g.recall_loss, label=model, s=24)
        c = g[np.isfinite(g.gen_prefix_agreement)]
        if len(c):
            ax2.scatter(
                c.gen_prefix_agreement, c.retrieval_recall_at_1 / c.retrieval_recall_at_1_base, label=model, s=24
            )
    ax1.set_xscale("symlog", linthresh=1e-3)
    ax1.set_xlabel("1 − embedding_cos (compressed vs base)")
    ax1.set_ylabel("relative recall@1 loss")
    ax1.set_title("Does the embedding cosine predict the recall loss?", fontsize=11)
    ax2.axhline(1 - RECALL_TOL, color="grey", ls=":", lw=1)
    ax2.axvline(GEN_COLLAPSED, color="grey", ls=":", lw=1)
    ax2.set_xlabel("generation: share before the first divergence")
    ax2.set_ylabel("recall@1 / base recall@1")
    ax2.set_title("Retrieval survives where generation collapses?", fontsize=11)
    for ax in (ax1, ax2):
        if not len(df):
            ax.text(0.5, 0.5, "no row measured retrieval", ha="center", va="center", transform=ax.transAxes)
        elif ax.collections:
            ax.legend(fontsize=8)
    figure = save(fig, Path(figures) / f"retrieval_{stem}.png")
    return verdict("retrieval", claim, holds, why, ev, rules, table, figure, len(df))


def encoder_rows(loaded, grid, config) -> list[dict]:
    """`measure_encoder` rows of an encoder (minilm-l6) over a sweep grid (validate.sweep.parse_grid),
    in the sweep rows' shape, for this experiment (`hemorrhage sweep` measures causal models)."""
    from hemorrhage.sim.compress import compress_from_args
    from hemorrhage.validate.measure import measure_encoder

    rows = []
    for method, settings in grid:
        comp, record = compress_from_args(loaded, method, **settings)
        rows.append({"grid": {"method": method, "settings": settings}, **measure_encoder(loaded, comp, config, record)})
        del comp
    return rows
