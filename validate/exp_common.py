"""What every experiment over a sweep shares: the tidy frame, table/figure writing, verdicts.

An experiment takes sweep rows (dicts as `hemorrhage sweep` writes them, a DataFrame, or
synthetic dicts carrying `method`/`settings` and the metric fields at the top level) and
needs no model.  Verdict format (JSON-able):

    {"experiment": NAME, "claim": the seed's claim in one line, "holds": bool | None,
     "summary": one sentence, "evidence": {the numbers behind it}, "rules": {thresholds},
     "table": CSV path, "figure": PNG path, "settings": number of rows used}

holds is None when these data cannot test the claim (the summary says why).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

MC_HIGH, GEN_COLLAPSED = 0.8, 0.5  # MC survives at ≥ 0.8 agreement; generation collapsed below 0.5 prefix
NUMERIC = (
    "kl",
    "kl_pred",
    "top1_agreement",
    "ppl",
    "ppl_base",
    "mc_agreement",
    "mc_acc",
    "mc_acc_base",
    "mc_kl_choices",
    "mc_kl_full",
    "first_divergence_mean",
    "gen_token_agreement",
    "gen_prefix_agreement",
    "gen_identical",
    "new_tokens",
    "cos_h",
    "cos_z",
    "cos_p",
    "var_p_dz",
)
LEVEL_KEYS = (("bits", "bits"), ("sparsity", "sparsity"), ("n_drop", "n_drop"))
CALIB_KEYS = ("calib_samples", "calib_seqlen", "seed", "calib_source")


def label(settings: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in settings.items() if k not in CALIB_KEYS) or "default"


def condensed_settings(labels) -> str:
    """Setting labels ("method k=v,k=v", as `rows_frame` writes them) for a sentence: one entry
    per method and fixed settings, its levels (bits, sparsity, n_drop) as their range and count,
    "magnitude sparsity 0.3–0.8 (6)"; a label without a level, or alone in its group, as it is;
    a label repeated (several models) once.  Groups in order of first appearance."""
    groups: dict[tuple, list] = {}
    for lab in dict.fromkeys(str(x) for x in labels):
        method, _, rest = lab.partition(" ")
        pairs = [p.partition("=") for p in rest.split(",")] if rest else []
        key = next((k for k, _ in LEVEL_KEYS if any(p[0] == k for p in pairs)), None)
        try:
            value = float(next(p[2] for p in pairs if p[0] == key)) if key else None
        except ValueError:
            value, key = None, None
        fixed = ",".join(f"{k}={v}" for k, _, v in pairs if k != key)
        groups.setdefault((method, fixed, key) if key else (lab,), []).append((value, lab))
    out = []
    for g, members in groups.items():
        if len(g) == 1 or len(members) == 1:
            out += [lab for _, lab in members]
            continue
        method, fixed, key = g
        lo, hi = min(v for v, _ in members), max(v for v, _ in members)
        out.append(f"{method}{' ' + fixed if fixed else ''} {key} {lo:g}–{hi:g} ({len(members)})")
    return ", ".join(out)


def level(method: str, settings: dict) -> tuple[str | None, float]:
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
        axis, lv = level(method, settings)
        rest = label({k: v for k, v in settings.items() if k != axis})  # a family shares all but its level
        fam = method + ("" if rest == "default" else f" {rest}")
        rec = {
            "model": str(r.get("model", "")),
            "method": method,
            "setting": label(settings),
            "axis": axis,
            "level": lv,
            "family": f"{fam} ({axis})" if axis else fam,
            "collapsed": bool(r.get("collapsed", False)),
        }
        for k in NUMERIC:
            v = r.get(k)
            rec[k] = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan
        out.append(rec)
    df = pd.DataFrame(out, columns=["model", "method", "setting", "axis", "level", "family", "collapsed", *NUMERIC])
    missing = df.gen_prefix_agreement.isna() & df.first_divergence_mean.notna() & (df.new_tokens > 0)
    df.loc[missing, "gen_prefix_agreement"] = df.first_divergence_mean / df.new_tokens
    df["ppl_ratio"] = df.ppl / df.ppl_base
    df["label"] = df.method + " " + df.setting
    return df


def num(x) -> float:
    """A row's number as float; NaN for a metric that was not computable (null) or is absent."""
    return math.nan if x is None else float(x)


def finite(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def write_table(df, results: Path, stem: str) -> Path:
    from hemorrhage.sim.outputs import atomic_write_text

    path = Path(results) / f"{stem}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, df.to_csv(index=False))
    return path


def theme():
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")


def verdict(name, claim, holds, why, ev, rules, table, figure, n) -> dict:
    word = {True: "HOLDS", False: "DOES NOT HOLD", None: "NOT TESTED"}[holds]
    return {
        "experiment": name,
        "claim": claim,
        "holds": holds,
        "summary": f"{word}: {why}",
        "evidence": ev,
        "rules": rules,
        "table": str(table),
        "figure": str(figure),
        "settings": int(n),
    }


def records(rows) -> list[dict]:
    """The rows as a list of dicts (a DataFrame is turned back into records)."""
    import pandas as pd

    return rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)


def identity(r: dict) -> tuple[str, str, str, str | None, float]:
    """(model, method, setting label, axis, level) of one row."""
    grid = r.get("grid") or {}
    method = grid.get("method") or r.get("method") or "?"
    settings = dict(grid.get("settings") or r.get("settings") or {})
    axis, lv = level(method, settings)
    return str(r.get("model", "")), method, label(settings), axis, lv


def spread_pick(values, k: int = 6) -> list[int]:
    """Indices of ≤ k entries spread evenly over the sorted finite `values` (e.g. one setting
    per damage level for a readable figure)."""
    v = np.asarray(values, float)
    idx = np.flatnonzero(np.isfinite(v))
    if len(idx) <= k:
        return [int(i) for i in idx[np.argsort(v[idx])]]
    order = idx[np.argsort(v[idx])]
    return [int(order[int(round(j))]) for j in np.linspace(0, len(order) - 1, k)]
