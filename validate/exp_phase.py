"""Phase transitions per kind of compression: the follow-up's breakpoints and ordering.

Claims (Model Hemorrhage's follow-up, phase transitions, npj AI 2026; /work/shared/SEEDS.md §4,
§7): PPL against the compression share x follows a power law, then an exponential past a
breakpoint x_c (validate/phase_fit.py states the form and the fit), and x_c falls in

    structured 30–45 %   unstructured 55–65 %   low-rank 17–30 %   quantization < 3 bits

and "quantization ≻ unstructured ≻ structured ≻ low-rank at equal bytes".

x, the compression share of a setting (bytes kept = 1 − x):
    unstructured  magnitude / wanda / sparsegpt / owl: x = sparsity (ideal sparse storage: the
                  kept values only, no index or mask bytes)
    N:M           the same methods with a pattern: x = its sparsity (2:4 and 4:8 are both 0.5,
                  one distinct x: no curve to fit, reported as too few points)
    quantization  rtn / gptq / awq: x = 1 − bits/16 (against fp16 weights, as the brief has it;
                  scales and zero points not counted); x_c < 3 bits ⇔ x_c > 1 − 3/16 = 0.8125
    structured    heads / channels / slice: x = record["param_share_removed"]
    low-rank      lowrank: x = record["param_share_removed"]
Layer drop, expand and w8a8 have no place on this axis and are left out (listed).  Rows of
results/sweep_structured_<model>.jsonl (the structured sweep) are added when that file exists.

Family = one method with all other settings fixed.  For each family, PPL and KL are fitted
(status "fitted" with x_c and its bootstrap CI, or "no breakpoint", or "too few points"), and
beside them today's 1-nat crossing and hinge of validate/exp_thresholds.py (fit_family on KL,
in the same x units).
Range verdict per kind: a family agrees when its PPL breakpoint CI overlaps the range (without a
CI it is reported, not compared); a kind holds when every comparable family agrees.
Ordering (per model): the kind's best family (lowest mean ln PPL over the x it covers, ln PPL
interpolated linearly between settings) against the next kind's, on a common grid over the
overlap of their x ranges: A ≻ B when A's ln PPL is lower at every grid point; reversed when
higher at every point; "mixed" otherwise; no overlap: not compared.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from hemorrhage.validate.phase_fit import BOOT, fit_with_ci, predict

RANGES = {
    "structured": (0.30, 0.45),
    "unstructured": (0.55, 0.65),
    "low-rank": (0.17, 0.30),
    "quantization": (1 - 3 / 16, 1.0),
}
ORDER = ("quantization", "unstructured", "structured", "low-rank")
KINDS = ORDER + ("N:M",)
_UNSTRUCTURED, _QUANT = ("magnitude", "wanda", "sparsegpt", "owl"), ("rtn", "gptq", "awq")
_STRUCTURED, _LOWRANK = ("heads", "channels", "slice"), ("lowrank",)
_LEVEL_KEYS = ("sparsity", "bits", "share", "rank_ratio", "param_ratio", "pattern")
N_ORDER_GRID = 50


def placement(method: str, settings: dict, record: dict) -> tuple[str | None, float]:
    """(kind, compression share x) of one setting; (None, nan) off this axis."""
    try:
        if method in _UNSTRUCTURED:
            if settings.get("pattern"):
                n, m = (int(v) for v in str(settings["pattern"]).split(":"))
                return "N:M", float(settings.get("sparsity") or 1 - n / m)
            return "unstructured", float(settings["sparsity"])
        if method in _QUANT:
            return "quantization", 1.0 - float(settings["bits"]) / 16.0
        if method in _STRUCTURED + _LOWRANK:
            kind = "structured" if method in _STRUCTURED else "low-rank"
            return kind, float(record["param_share_removed"])
    except (KeyError, TypeError, ValueError):
        pass
    return None, math.nan


def with_structured_sweep(rows, results) -> list[dict]:
    """`rows` plus those of results/sweep_structured_<model>.jsonl for each model in them (once each)."""
    from hemorrhage.validate.exp_common import records
    from hemorrhage.validate.sweep import read_rows

    rows = records(rows)
    seen = {json.dumps(r.get("key"), sort_keys=True) for r in rows if r.get("key") is not None}
    for model in sorted({Path(str(r.get("model", ""))).name for r in rows}):
        path = Path(results) / f"sweep_structured_{model}.jsonl"
        if not path.is_file():
            continue
        for r in read_rows(path, repair=False):
            k = json.dumps(r.get("key"), sort_keys=True)
            if r.get("key") is None or k not in seen:
                seen.add(k)
                rows.append(r)
    return rows


def families(rows) -> tuple[dict, list[str]]:
    """{(model, kind, family label): {"x": [...], "ppl": [...], "kl": [...]}}, and the methods left out."""
    fams, skipped = {}, set()
    for r in rows:
        grid = r.get("grid") or {}
        method = grid.get("method") or r.get("method") or "?"
        settings = dict(grid.get("settings") or r.get("settings") or {})
        kind, x = placement(method, settings, r.get("record") or {})
        if kind is None:
            skipped.add(method)
            continue
        rest = ",".join(
            f"{k}={v}"
            for k, v in sorted(settings.items())
            if k not in _LEVEL_KEYS and k not in ("calib_samples", "calib_seqlen", "seed", "calib_source")
        )
        label = method + ("" if kind != "N:M" else " N:M") + (f" {rest}" if rest else "")
        f = fams.setdefault((str(r.get("model", "")), kind, label), {"x": [], "ppl": [], "kl": []})
        f["x"].append(x)
        f["ppl"].append(float(r.get("ppl", math.nan)))
        f["kl"].append(float(r.get("kl", math.nan)))
    return fams, sorted(skipped)


def _log_curve(f: dict, grid) -> np.ndarray:
    """ln PPL interpolated at `grid` inside the family's x range, NaN outside."""
    x, y = np.asarray(f["x"]), np.log(np.maximum(np.asarray(f["ppl"], float), 1e-300))
    fin = np.isfinite(y)
    y = np.where(fin, y, (y[fin].max() if fin.any() else 0.0) + 1.0)
    o = np.argsort(x)
    x, y = x[o], y[o]
    return np.where((grid >= x[0]) & (grid <= x[-1]), np.interp(grid, x, y), np.nan)


def best_family(fams: dict, model: str, kind: str):
    """The kind's family with the lowest mean ln PPL over its own x range (None if none)."""
    cands = [(k, f) for k, f in fams.items() if k[0] == model and k[1] == kind and len(set(f["x"])) >= 2]
    if not cands:
        return None
    return min(
        cands,
        key=lambda kf: (float(np.nanmean(_log_curve(kf[1], np.linspace(min(kf[1]["x"]), max(kf[1]["x"]), 50)))), kf[0]),
    )


def compare(fa: dict, fb: dict) -> dict:
    lo, hi = max(min(fa["x"]), min(fb["x"])), min(max(fa["x"]), max(fb["x"]))
    if not hi > lo:
        return {"overlap": None, "result": "not compared (no common x range)"}
    grid = np.linspace(lo, hi, N_ORDER_GRID)
    d = _log_curve(fa, grid) - _log_curve(fb, grid)
    res = "better" if (d < 0).all() else ("worse" if (d > 0).all() else "mixed")
    return {"overlap": [float(lo), float(hi)], "mean_dlnppl": float(np.mean(d)), "result": res}


def phase(rows, results="results", figures="figures", stem="sweep", boot: int = BOOT) -> dict:
    import pandas as pd

    from hemorrhage.validate.exp_common import verdict, write_table
    from hemorrhage.validate.exp_thresholds import fit_family

    rows = with_structured_sweep(rows, results)
    fams, skipped = families(rows)
    table, fits = [], {}
    for (model, kind, label), f in sorted(fams.items()):
        x, kl = np.asarray(f["x"]), np.asarray(f["kl"], float)
        o = np.argsort(x)
        thr = fit_family(x[o], kl[o], "sparsity", boot=boot) if len(set(x)) >= 2 else None
        for metric in ("ppl", "kl"):
            fit = fit_with_ci(x, np.asarray(f[metric], float), boot=boot)
            fits[(model, kind, label, metric)] = fit
            lo, hi = fit["x_c_ci"]
            rng = RANGES.get(kind)
            agrees = (
                None
                if rng is None or metric != "ppl" or fit["status"] != "fitted" or lo is None
                else bool(lo <= rng[1] and hi >= rng[0])
            )
            table.append(
                {
                    "model": model,
                    "kind": kind,
                    "family": label,
                    "metric": metric,
                    "n_points": len(x),
                    "status": fit["status"],
                    "x_c": fit["x_c"],
                    "x_c_lo": lo,
                    "x_c_hi": hi,
                    "bits_at_x_c": 16 * (1 - fit["x_c"]) if kind == "quantization" and fit["x_c"] else None,
                    "boot_used": fit["boot_used"],
                    "a": fit.get("a") if fit["x_c"] else None,
                    "b": fit.get("b") if fit["x_c"] else None,
                    "c": fit.get("c") if fit["x_c"] else None,
                    "crossing_1nat_x": thr["crossing"] if thr else None,
                    "hinge_x": thr["hinge"] if thr else None,
                    "hinge_lo": thr["hinge_ci"][0] if thr else None,
                    "hinge_hi": thr["hinge_ci"][1] if thr else None,
                    "claimed_lo": rng[0] if rng else None,
                    "claimed_hi": rng[1] if rng else None,
                    "agrees_with_claim": agrees,
                }
            )
    df = pd.DataFrame(table)
    table_path = write_table(df, results, f"phase_{stem}")

    by_kind = {}
    for kind in RANGES:
        got = [t for t in table if t["kind"] == kind and t["metric"] == "ppl" and t["agrees_with_claim"] is not None]
        by_kind[kind] = None if not got else all(t["agrees_with_claim"] for t in got)
    models = sorted({k[0] for k in fams})
    order = {}
    for model in models:
        best = {k: best_family(fams, model, k) for k in ORDER}
        for a, b in zip(ORDER, ORDER[1:]):
            if best[a] is None or best[b] is None:
                order[f"{model}: {a} vs {b}"] = {"result": "not compared (a kind has no sweep)"}
                continue
            order[f"{model}: {a} vs {b}"] = {"a": best[a][0][2], "b": best[b][0][2], **compare(best[a][1], best[b][1])}
    tested_order = [v["result"] for v in order.values() if v["result"] in ("better", "worse", "mixed")]
    order_holds = None if not tested_order else all(r == "better" for r in tested_order)
    parts = [v for v in list(by_kind.values()) + [order_holds] if v is not None]
    holds = None if not parts else all(parts)
    why = "; ".join(
        [
            f"{k} range {RANGES[k][0]:.3g}–{RANGES[k][1]:.3g}: "
            + {True: "agrees", False: "disagrees", None: "not comparable"}[v]
            for k, v in by_kind.items()
        ]
        + [
            f"ordering {k}: {v['result']}"
            + (
                f" (mean Δln PPL {v['mean_dlnppl']:+.3g} over x {v['overlap'][0]:.2f}–{v['overlap'][1]:.2f})"
                if "mean_dlnppl" in v
                else ""
            )
            for k, v in order.items()
        ]
    )
    figure = _figure(fams, fits, models, Path(figures) / f"phase_{stem}.png", stem)
    ev = {"families": table, "ranges_by_kind": by_kind, "ordering": order, "left_out_methods": skipped}
    rules = {
        "form": "y = a x^b (x < x_c), y(x_c) exp(c (x - x_c)) (x >= x_c), least squares in ln y",
        "breakpoint": "BIC vs one power law and c > b/x_c; >= 5 distinct x",
        "bootstrap": f"{boot} resamples of settings, 95 % percentile",
        "ranges": RANGES,
        "x": "validate/exp_phase.py docstring",
    }
    return verdict(
        "phase",
        "PPL vs compression: power law then exponential, breakpoints structured 30–45 %, "
        "unstructured 55–65 %, low-rank 17–30 %, quantization < 3 bits; quantization ≻ unstructured "
        "≻ structured ≻ low-rank at equal bytes (Model Hemorrhage follow-up)",
        holds,
        why,
        ev,
        rules,
        table_path,
        figure,
        len(rows),
    )


def _figure(fams, fits, models, path: Path, stem: str) -> Path:
    import matplotlib.pyplot as plt
    import seaborn as sns

    from hemorrhage.validate.exp_common import theme
    from hemorrhage.validate.plots import save

    theme()
    pal = dict(zip(KINDS, sns.color_palette("tab10", len(KINDS))))
    fig, axs = plt.subplots(
        max(1, len(models)), 2, figsize=(12, 4.3 * max(1, len(models))), squeeze=False, layout="constrained"
    )
    for row, model in enumerate(models or [""]):
        for col, metric in enumerate(("ppl", "kl")):
            ax = axs[row][col]
            for kind in KINDS:
                best = best_family(fams, model, kind)
                if best is None:
                    continue
                (_, _, label), f = best
                x, y = np.asarray(f["x"]), np.asarray(f[metric], float)
                ax.plot(1 - x, y, "o", color=pal[kind], label=f"{kind}: {label}")
                fit = fits[(model, kind, label, metric)]
                if fit.get("status") in ("fitted", "no breakpoint"):
                    xs = np.linspace(max(x[x > 0].min(), 1e-3), x.max(), 200)
                    ax.plot(
                        1 - xs, predict(fit, xs), "-" if fit["status"] == "fitted" else ":", color=pal[kind], lw=1.2
                    )
                if fit.get("status") == "fitted":
                    ax.axvline(1 - fit["x_c"], color=pal[kind], ls="--", lw=1)
                    if fit["x_c_ci"][0] is not None:
                        ax.axvspan(1 - fit["x_c_ci"][1], 1 - fit["x_c_ci"][0], color=pal[kind], alpha=0.12, lw=0)
            ax.set_yscale("log")
            ax.invert_xaxis()
            ax.set_xlabel("bytes kept, 1 − x (share of fp16 / dense weights)")
            ax.set_ylabel({"ppl": "perplexity", "kl": "KL(p ‖ q) per token"}[metric])
            ax.set_title(
                f"{model}: {metric.upper()} (solid: fit, dotted: no breakpoint; dashed: x_c, band: CI)", fontsize=9
            )
            ax.legend(fontsize=7)
    fig.suptitle(f"Phase transitions per kind, {stem}", fontsize=11)
    return save(fig, path)
