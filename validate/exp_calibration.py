"""Exp `calibration` (Model Hemorrhage, Ma et al. 2025): "the calibration data chosen for
GPTQ / AWQ / Wanda / SparseGPT decide what survives".  Each method is calibrated on each text
source and evaluated on each: a sources × sources matrix of KL and top-1 per method.

    df = calibration_matrix(loaded, [("gptq", {"bits": 3}), ("wanda", {"sparsity": 0.5})])
    df = predicted_matrix(loaded, methods)         # the same cells from the linear response
    v = calibration(df, pred, results="results", figures="figures", stem="smollm2-135m")

Data (sim/data.py text sources, each split by document into train and held-out): wiki
(Wikipedia articles), shakespeare (plays and poems) and code (HumanEval's functions, prompt
and canonical body).  Calibration: `calib_samples` windows of `calib_seqlen` tokens drawn
from the source's *train* split (sim.data.calibration_tokens, `seed`); evaluation: the first
`eval_windows` windows of `eval_seqlen` tokens of its *held-out* split (sim.data.eval_windows).
So no evaluation token was seen in calibration, even on the diagonal.

Cell (method m, calibration c, evaluation e), over the evaluation tokens t:

    kl    = mean_t KL(p_base,t ‖ p_m|c,t)        top1 = mean_t [argmax p_base,t = argmax p_m|c,t]

Rules.  In column (m, e), in-domain calibration wins when the diagonal cell c = e has the lowest
KL of the column; its advantage is the ratio of the mean off-diagonal KL to the diagonal KL.
The claim holds when in-domain wins in at least WIN_SHARE (2/3) of the columns and the median
advantage is at least ADVANTAGE (1.1: ≥ 10 % less damage in domain); it does not hold otherwise.
The predictor (sim.predict: the linear response, calibration statistics from each source,
`PredictConfig.calib_source`) "sees it" when its KL picks the same best calibration source as
the measurement in at least WIN_SHARE of the columns (None when it was not run).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from hemorrhage.validate.exp_common import theme, verdict, write_table

SOURCES = ("wiki", "shakespeare", "code")
METHODS = (("gptq", {"bits": 3}), ("wanda", {"sparsity": 0.5}), ("sparsegpt", {"sparsity": 0.5}))
WIN_SHARE, ADVANTAGE = 2 / 3, 1.1


def _label(method: str, settings: dict) -> str:
    return f"{method} " + ",".join(f"{k}={v}" for k, v in settings.items())


def _compare(base_logits, comp_logits) -> tuple[float, float]:
    from hemorrhage.validate.arrays import kl_rows, log_softmax_rows

    V = base_logits.shape[-1]
    lp, lq = (log_softmax_rows(np.asarray(x, np.float64).reshape(-1, V)) for x in (base_logits, comp_logits))
    kl = kl_rows(lp, lq)
    top1 = np.argmax(lp, -1) == np.argmax(lq, -1)
    return float(np.mean(kl)), float(np.mean(top1))


def source_tokens(
    loaded,
    sources=SOURCES,
    *,
    calib_samples: int = 8,
    calib_seqlen: int = 128,
    seed: int = 0,
    eval_windows: int = 2,
    eval_seqlen: int = 128,
) -> tuple[dict, dict]:
    """({source: calibration windows of its train split}, {source: held-out evaluation windows})."""
    from hemorrhage.sim.windows import calibration_tokens
    from hemorrhage.sim.windows import eval_windows as windows

    tok = loaded.tokenizer
    calib = {s: calibration_tokens(tok, s, calib_samples, calib_seqlen, seed) for s in sources}
    evals = {s: windows(tok, s, seqlen=eval_seqlen, stride=eval_seqlen, max_windows=eval_windows) for s in sources}
    return calib, evals


def calibration_matrix(loaded, methods, calib: dict, evals: dict, log=None) -> "pd.DataFrame":  # noqa: F821
    """One row per (method, calibration source, evaluation source): kl, top1 (module docstring);
    calib and evals as `source_tokens` returns them."""
    import pandas as pd

    from hemorrhage.sim.compress import make_method
    from hemorrhage.sim.compress.registry import compress
    from hemorrhage.sim.models.base import forward

    sources = list(calib)
    base = {s: np.asarray(forward(loaded.model, evals[s]))[:, :-1] for s in sources}
    out = []
    for name, settings in methods:
        method = make_method(name, **settings)
        for c in sources:
            comp, _ = compress(loaded.model, method, calib[c])
            for e in sources:
                kl, top1 = _compare(base[e], np.asarray(forward(comp, evals[e]))[:, :-1])
                out.append(
                    {
                        "model": str(loaded.name),
                        "method": _label(name, settings),
                        "calib": c,
                        "eval": e,
                        "kl": kl,
                        "top1": top1,
                        "eval_tokens": int(base[e].shape[0] * base[e].shape[1]),
                        "calib_tokens": int(calib[c].size),
                    }
                )
            del comp
            if log:
                log(
                    f"{_label(name, settings)} calibrated on {c}: "
                    + ", ".join(f"{r['eval']} KL {r['kl']:.4g}" for r in out[-len(sources) :])
                )
    return pd.DataFrame(out)


def predicted_matrix(
    loaded,
    methods=METHODS,
    sources=SOURCES,
    *,
    calib_samples: int = 8,
    calib_seqlen: int = 128,
    seed: int = 0,
    eval_windows: int = 2,
    eval_seqlen: int = 128,
    log=None,
):
    """The predictor's KL (sim.predict, no compressed model built) for every cell, with the
    calibration statistics of each source; rows as `calibration_matrix` with kl_pred."""
    import pandas as pd

    from hemorrhage.sim.predict import PredictConfig, predict

    grid = [(name, dict(settings)) for name, settings in methods]
    out = []
    for e in sources:
        for c in sources:
            cfg = PredictConfig(
                windows=eval_windows,
                seqlen=eval_seqlen,
                source=e,
                prompts=0,
                regime_tokens=0,
                calib_samples=calib_samples,
                calib_seqlen=calib_seqlen,
                calib_seed=seed,
                calib_source=c,
                estimate="linear",
                prune_anchors=1,
                bootstrap=20,
            )
            res = predict(loaded, grid, cfg)
            for (name, settings), pt in zip(methods, res["points"]):
                out.append({"method": _label(name, settings), "calib": c, "eval": e, "kl_pred": float(pt["kl"])})
            if log:
                log(
                    f"predicted on {e}, calibrated on {c}: "
                    + ", ".join(f"{r['kl_pred']:.4g}" for r in out[-len(grid) :])
                )
    return pd.DataFrame(out)


def _columns(df, value: str) -> list[dict]:
    """Per (method, eval) column: the best calibration by `value` and the in-domain advantage."""
    cols = []
    for (method, e), g in df.groupby(["method", "eval"], sort=False):
        diag = g[g.calib == e][value]
        off = g[g.calib != e][value]
        if not len(diag) or not len(off):
            continue
        d = float(diag.iloc[0])
        cols.append(
            {
                "method": method,
                "eval": e,
                "best": str(g.loc[g[value].idxmin(), "calib"]),
                "advantage": float(off.mean() / d) if d > 0 else math.inf,
            }
        )
    return cols


def calibration(df, pred=None, results="results", figures="figures", stem="sweep") -> dict:
    import matplotlib.pyplot as plt
    import seaborn as sns

    from hemorrhage.validate.plots import save

    claim = "in-domain calibration data decide what survives (GPTQ / Wanda / SparseGPT; Model Hemorrhage)"
    rules = {"win_share": WIN_SHARE, "advantage": ADVANTAGE}
    if pred is not None and len(pred):
        df = df.merge(pred[["method", "calib", "eval", "kl_pred"]], on=["method", "calib", "eval"], how="left")
    table = write_table(df, results, f"calibration_{stem}")
    cols = _columns(df, "kl")
    wins = sum(c["best"] == c["eval"] for c in cols)
    adv = float(np.median([c["advantage"] for c in cols])) if cols else math.nan
    ev = {"columns": cols, "in_domain_wins": wins, "n_columns": len(cols), "median_advantage": adv}
    sees = None
    if "kl_pred" in df and df.kl_pred.notna().any():
        pcols = {(c["method"], c["eval"]): c["best"] for c in _columns(df, "kl_pred")}
        same = sum(pcols.get((c["method"], c["eval"])) == c["best"] for c in cols)
        sees = bool(cols) and same >= WIN_SHARE * len(cols)
        ev.update(
            predicted_best_matches=same,
            predicted_columns=[{"method": m, "eval": e, "best": b} for (m, e), b in pcols.items()],
        )
    ev["predictor_sees_it"] = sees
    if not cols:
        holds, why = None, "no calibration × evaluation matrix with off-diagonal cells"
    else:
        holds = bool(wins >= WIN_SHARE * len(cols) and adv >= ADVANTAGE)
        why = (
            f"in-domain calibration gives the lowest KL in {wins} of {len(cols)} (method, evaluation) columns; "
            f"median off-/in-domain KL ratio {adv:.2f}"
        )
        if sees is not None:
            why += (
                f"; the linear response picks the measured best calibration source in "
                f"{ev['predicted_best_matches']} of {len(cols)} columns"
            )

    theme()
    methods = list(dict.fromkeys(df.method))
    panels = [("kl", "measured KL"), ("top1", "top-1 agreement")] + (
        [("kl_pred", "predicted KL")] if sees is not None else []
    )
    fig, axes = plt.subplots(
        len(panels),
        max(1, len(methods)),
        figsize=(4.2 * max(1, len(methods)), 3.6 * len(panels)),
        layout="constrained",
        squeeze=False,
    )
    for j, m in enumerate(methods):
        g = df[df.method == m]
        for i, (value, name) in enumerate(panels):
            mat = g.pivot(index="calib", columns="eval", values=value)
            order = [s for s in SOURCES if s in mat.index] + [s for s in mat.index if s not in SOURCES]
            mat = mat.loc[order, [s for s in order if s in mat.columns]]
            sns.heatmap(
                mat, annot=True, fmt=".3g", cmap="rocket_r" if value != "top1" else "rocket", cbar=False, ax=axes[i, j]
            )
            axes[i, j].set_title(f"{m}: {name}", fontsize=10)
            axes[i, j].set_xlabel("evaluated on")
            axes[i, j].set_ylabel("calibrated on")
    figure = save(fig, Path(figures) / f"calibration_{stem}.png")
    return verdict("calibration", claim, holds, why, ev, rules, table, figure, len(df))
