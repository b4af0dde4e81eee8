"""Experiment 4: thresholds — where is the cliff, per method, with a confidence interval?

A sweep row holds token MEANS only (no per-token KL), so a bootstrap over tokens is not
possible from the stored rows.  Two estimates per method family (method × axis: bits for
quantizers, sparsity for unstructured pruning, n_drop for layer drop; N:M patterns have no
level and are left out), both in the family's own units:

* `crossing` — the documented rule: the level where the token-mean KL first reaches 1 nat
  going from mild to strong compression, log KL interpolated linearly between the two grid
  points that bracket it (sim.predict.cliff_crossing, shared with `hemorrhage predict`).
* `hinge` — the parametric alternative, the seed's "linear, then exponential" (seed 004):
  least squares of log KL on strength s (s = −bits, or the sparsity / n_drop) with a hinge
      log KL = a + b·s + c·max(0, s − s₀),   c ≥ 0 (the slope steepens at s₀),
  s₀ scanned over a fine grid between the second and the second-to-last level (so both
  slopes rest on ≥ 2 levels: the hinge is identifiable).  Needs ≥ 4 distinct levels, and
  the hinge must cut the straight line's squared error by ≥ MIN_GAIN (10 %), else there is
  no cliff in those points (hinge None; such bootstrap resamples are dropped).
CI (both): 95 % percentile bootstrap over GRID POINTS — resample the family's (level, KL)
points with replacement, refit (a resample with fewer distinct levels than the fit needs, or
with no crossing, is dropped; `boot_used` says how many were kept).  It measures how much
the estimate leans on individual grid points, not token noise.  A family is one
method with all its other settings fixed (e.g. rtn group_size=64 over bits).  A non-finite
KL (a collapsed model) enters as max finite log KL + 1 (above every measured point).

Claims compared (seed 004 and the brief): quantization has its cliff at 3 bits (compared
range 2.5–3.5 bits); unstructured pruning collapses near 50–80 % sparsity (0.5–0.8).  A
family agrees when its hinge CI (or, without a hinge, its crossing CI or point) overlaps the
range (a crossing CI needs ≥ 3 distinct levels; an estimate without a CI is reported but not
compared).  holds = every comparable family agrees; None when no family is comparable.
Note for the packaged models: the base is a dequantized 4–5-bit GGUF, so low-bit RTN can
land on its grid and look artificially lossless.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

CLAIMS = {
    "bits": (2.5, 3.5, "quantization: cliff at 3 bits (seed 004)"),
    "sparsity": (0.5, 0.8, "unstructured pruning: collapse near 50–80 % sparsity (seed 004)"),
}
KL_CLIFF, BOOT, SEED, N_S0, MIN_GAIN = 1.0, 400, 0, 201, 0.1


def crossing(levels, kl, axis: str, threshold: float = KL_CLIFF) -> tuple[float | None, str]:
    """The 1-nat crossing: sim.predict.cliff_crossing (the same rule `hemorrhage predict` uses);
    the local copy below only if that module or its signature is not there."""
    ax = "bits" if axis == "bits" else "sparsity"
    from hemorrhage.sim.predict import cliff_crossing

    return cliff_crossing(levels, kl, threshold=threshold, axis=ax)


def _strength(levels, axis: str) -> np.ndarray:
    x = np.asarray(levels, float)
    return -x if axis == "bits" else x


def _logkl(kl) -> np.ndarray:
    y = np.log(np.maximum(np.asarray(kl, float), 1e-12))
    fin = np.isfinite(y)
    if not fin.all():
        y = np.where(fin, y, (y[fin].max() if fin.any() else 0.0) + 1.0)
    return y


def hinge_fit(s, y, s0_grid=None) -> dict | None:
    """Least-squares hinge y = a + b·s + c·max(0, s − s₀) with c ≥ 0; None if < 4 distinct s."""
    s, y = np.asarray(s, float), np.asarray(y, float)
    if len(np.unique(s)) < 4:
        return None
    u = np.unique(s)
    if s0_grid is None:
        s0_grid = np.linspace(s.min(), s.max(), N_S0)[1:-1]
    s0_grid = s0_grid[(s0_grid >= u[1]) & (s0_grid <= u[-2])]  # ≥ 2 levels on each side
    if not len(s0_grid):
        return None
    X = np.stack(
        [
            np.ones((len(s0_grid), len(s))),
            np.broadcast_to(s, (len(s0_grid), len(s))),
            np.maximum(0.0, s[None, :] - s0_grid[:, None]),
        ],
        -1,
    )  # [G n 3]
    coef = np.linalg.pinv(X) @ y  # [G 3]
    resid = (X @ coef[..., None])[..., 0] - y[None, :]
    sse = np.sum(resid**2, -1)
    sse = np.where(coef[:, 2] >= 0, sse, np.inf)
    if not np.isfinite(sse).any():
        return None
    g = int(np.argmin(sse))
    line = np.stack([np.ones_like(s), s], -1)
    sse_line = float(np.sum((line @ np.linalg.lstsq(line, y, rcond=None)[0] - y) ** 2))
    if sse_line <= 1e-12 or sse[g] > (1 - MIN_GAIN) * sse_line:
        return None  # a straight line does as well: no cliff in these points
    return {
        "s0": float(s0_grid[g]),
        "a": float(coef[g, 0]),
        "b": float(coef[g, 1]),
        "c": float(coef[g, 2]),
        "sse": float(sse[g]),
    }


def _ci(vals) -> tuple[float | None, float | None]:
    v = np.asarray([x for x in vals if x is not None and math.isfinite(x)], float)
    if len(v) < 10:
        return None, None
    return float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))


def fit_family(levels, kl, axis: str, boot: int = BOOT, seed: int = SEED) -> dict:
    """Crossing and hinge (level units) with 95 % bootstrap-over-grid-points CIs."""
    levels, kl = np.asarray(levels, float), np.asarray(kl, float)
    s, y = _strength(levels, axis), _logkl(kl)
    x_of = (lambda s0: -s0) if axis == "bits" else (lambda s0: s0)
    cross, status = crossing(levels, kl, axis)
    h = hinge_fit(s, y)
    s0_grid = np.linspace(s.min(), s.max(), N_S0)[1:-1] if len(s) > 1 else None
    rng = np.random.default_rng(seed)
    bc, bh = [], []
    for _ in range(boot if len(levels) >= 2 else 0):
        i = rng.integers(0, len(levels), len(levels))
        u = np.unique(i)
        if len(u) >= 2 and len(np.unique(levels)) >= 3:
            c, st = crossing(levels[u], kl[u], axis)
            bc.append(c if st == "inside" else None)
        if h is not None:
            hb = hinge_fit(s[i], y[i], s0_grid)
            bh.append(x_of(hb["s0"]) if hb else None)
    out = {
        "axis": axis,
        "levels": levels.tolist(),
        "kl": kl.tolist(),
        "crossing": cross,
        "crossing_status": status,
        "crossing_ci": list(_ci(bc)),
        "hinge": x_of(h["s0"]) if h else None,
        "hinge_fit": h,
        "hinge_ci": list(_ci(bh)) if h else [None, None],
        "boot_used": {"crossing": sum(v is not None for v in bc), "hinge": sum(v is not None for v in bh)},
    }
    return out


def _agrees(fam: dict) -> bool | None:
    claim = CLAIMS.get(fam["axis"])
    if claim is None:
        return None
    lo, hi = claim[0], claim[1]
    for key in ("hinge", "crossing"):
        ci = fam[f"{key}_ci"]
        if ci[0] is not None:
            return bool(ci[0] <= hi and ci[1] >= lo)
    return None


def thresholds(rows, results="results", figures="figures", stem="sweep", boot: int = BOOT) -> dict:
    """Exp 4: per family, the cliff (1-nat crossing and hinge) with CIs; the seed's claims."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    from hemorrhage.validate.exp_common import rows_frame, theme as _theme, verdict as _verdict, write_table as _write
    from hemorrhage.validate.plots import save

    df = rows_frame(rows)
    lev = df[df.axis.notna() & np.isfinite(df.level)]
    fams = {}
    for (model, family, axis), g in lev.groupby(["model", "family", "axis"], sort=False):
        g = g.sort_values("level").drop_duplicates("level")
        fam = fit_family(g.level.to_numpy(), g.kl.to_numpy(), axis, boot=boot)
        fam.update(
            model=model,
            method=g.method.iloc[0],
            agrees_with_seed=_agrees(fam),
            seed_claim=CLAIMS.get(axis, (None, None, None))[2],
        )
        fams[family if lev.model.nunique() == 1 else f"{model}: {family}"] = fam
    tab = pd.DataFrame(
        [
            {
                "family": k,
                "model": f["model"],
                "method": f["method"],
                "axis": f["axis"],
                "n_levels": len(f["levels"]),
                "crossing_1nat": f["crossing"],
                "crossing_status": f["crossing_status"],
                "crossing_lo": f["crossing_ci"][0],
                "crossing_hi": f["crossing_ci"][1],
                "hinge": f["hinge"],
                "hinge_lo": f["hinge_ci"][0],
                "hinge_hi": f["hinge_ci"][1],
                "seed_lo": CLAIMS.get(f["axis"], (None,))[0],
                "seed_hi": CLAIMS.get(f["axis"], (None, None))[1],
                "agrees_with_seed": f["agrees_with_seed"],
            }
            for k, f in fams.items()
        ],
        columns=[
            "family",
            "model",
            "method",
            "axis",
            "n_levels",
            "crossing_1nat",
            "crossing_status",
            "crossing_lo",
            "crossing_hi",
            "hinge",
            "hinge_lo",
            "hinge_hi",
            "seed_lo",
            "seed_hi",
            "agrees_with_seed",
        ],
    )
    table = _write(tab, results, f"thresholds_{stem}")

    _theme()
    axes_used = [a for a in ("bits", "sparsity", "n_drop") if any(f["axis"] == a for f in fams.values())] or ["bits"]
    fig, axs = plt.subplots(1, len(axes_used), figsize=(6.5 * len(axes_used), 4.8), layout="constrained", squeeze=False)
    for ax, axis in zip(axs[0], axes_used):
        # one palette per panel: a models figure has more families in all than 10 colours
        here = [k for k, f in fams.items() if f["axis"] == axis]
        pal = dict(zip(here, sns.color_palette("tab10" if len(here) <= 10 else "husl", n_colors=max(1, len(here)))))
        for name in here:
            f = fams[name]
            x, y = np.asarray(f["levels"]), _logkl(f["kl"])
            ax.plot(x, np.exp(y), "o", color=pal[name], label=name)
            h = f["hinge_fit"]
            if h:
                xs = np.linspace(x.min(), x.max(), 200)
                ss = _strength(xs, axis)
                ax.plot(
                    xs,
                    np.exp(h["a"] + h["b"] * ss + h["c"] * np.maximum(0, ss - h["s0"])),
                    "-",
                    color=pal[name],
                    lw=1.2,
                )
                ax.axvline(f["hinge"], color=pal[name], ls="--", lw=1)
                if f["hinge_ci"][0] is not None:
                    ax.axvspan(*f["hinge_ci"], color=pal[name], alpha=0.12, lw=0)
            if f["crossing"] is not None and f["crossing_status"] == "inside":
                lo, hi = f["crossing_ci"]
                xerr = None if lo is None else [[max(0.0, f["crossing"] - lo)], [max(0.0, hi - f["crossing"])]]
                ax.errorbar([f["crossing"]], [KL_CLIFF], xerr=xerr, fmt="X", ms=10, capsize=4, color=pal[name])
        ax.axhline(KL_CLIFF, color="k", ls=":", lw=1, label="KL = 1 nat")
        if axis in CLAIMS:
            ax.axvspan(CLAIMS[axis][0], CLAIMS[axis][1], color="red", alpha=0.08, lw=0, label="seed's claimed cliff")
        ax.set_yscale("log")
        if axis == "bits":
            ax.invert_xaxis()
        ax.set_xlabel(
            {"bits": "bits per weight (fewer → stronger)", "sparsity": "sparsity", "n_drop": "layers dropped"}[axis]
        )
        ax.set_ylabel("KL(p ‖ q) per token")
        ax.set_title("Where is the cliff?  (dashed: hinge, band: its 95% CI; ✕: 1-nat crossing ± CI)", fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(f"Exp 4, {stem}: thresholds", fontsize=11)
    figure = save(fig, Path(figures) / f"thresholds_{stem}.png")

    comp = {k: f["agrees_with_seed"] for k, f in fams.items() if f["agrees_with_seed"] is not None}
    if not comp:
        holds, why = (
            None,
            (
                "no method family has enough grid points on a bits or sparsity axis to place a cliff "
                "(a crossing with a CI needs KL to reach 1 nat inside a grid of ≥ 3 levels; a hinge needs ≥ 4 levels)"
            ),
        )
    else:
        holds = all(comp.values())
        why = "; ".join(
            f"{k}: hinge {_fmt(fams[k]['hinge'], fams[k]['hinge_ci'])}, 1-nat crossing "
            f"{_fmt(fams[k]['crossing'], fams[k]['crossing_ci'])} → "
            f"{'agrees' if v else 'disagrees'} with {CLAIMS[fams[k]['axis']][:2]}"
            for k, v in comp.items()
        )
    ev = {k: {kk: vv for kk, vv in f.items() if kk not in ("hinge_fit",)} for k, f in fams.items()}
    return _verdict(
        "thresholds",
        "a cliff at ~3 bits for quantization; unstructured pruning collapses near 50–80 % sparsity (seed 004)",
        holds,
        why,
        ev,
        {
            "kl_cliff_nats": KL_CLIFF,
            "bootstrap": f"{boot} resamples of grid points, 95 % percentile",
            "claims": {k: v[:2] for k, v in CLAIMS.items()},
        },
        table,
        figure,
        len(df),
    )


def _fmt(x, ci) -> str:
    if x is None:
        return "none"
    return f"{x:.3g}" + (f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci and ci[0] is not None else "")
