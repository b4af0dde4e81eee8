r"""From per-token numbers to a prediction: means, bootstrap intervals, the point estimate
between the two closures (`blend`) and the cliff (`cliff_crossing`, shared with validate/).

sim.predict's package docstring states the models and the point estimate; pricing produces, per family, the
per-token KL, ½Var_p and top-1 of the linear and the dephased change that `summarise` reads.
"""

from __future__ import annotations

import math

import numpy as np


def cliff_crossing(levels, kl, threshold: float = 1.0, axis: str = "bits") -> tuple[float | None, str]:
    """(level, status) where KL first reaches `threshold` going from mild to strong compression.

    axis 'bits': strength grows as bits fall; 'sparsity': as sparsity grows.  Between the
    two grid points that bracket the crossing, log KL is interpolated linearly in the level.
    status: 'inside'; 'at_mildest' (already ≥ threshold at the mildest level, which is
    returned); 'beyond' (never reached, None).  NaN/inf KL counts as above the threshold."""
    x = np.asarray(levels, np.float64)
    y = np.asarray(kl, np.float64)
    order = np.argsort(-x if axis == "bits" else x, kind="stable")
    x, y = x[order], y[order]
    y = np.where(np.isfinite(y), np.maximum(y, 1e-300), np.inf)
    if y[0] >= threshold:
        return float(x[0]), "at_mildest"
    for i in range(len(x) - 1):
        if y[i] < threshold <= y[i + 1]:
            if not np.isfinite(y[i + 1]):
                return float(x[i + 1]), "inside"
            f = (math.log(threshold) - math.log(y[i])) / (math.log(y[i + 1]) - math.log(y[i]))
            return float(x[i] + f * (x[i + 1] - x[i])), "inside"
    return None, "beyond"


def _family_name(fam) -> str:
    return " ".join(
        [fam["method"]]
        + [
            f"{k}={v}"
            for k, v in fam["fixed"].items()
            if k in ("group_size", "symmetric", "pattern", "act_order") and v
        ]
    )


def blend(linear, dephased, w: float):
    """The point estimate between the two closures: KL_lin^(1−w)·KL_deph^w (w = 0 linear,
    ½ the band's centre on a log scale, 1 dephased; zeros stay zero, inf/NaN propagate)."""
    linear, dephased = np.asarray(linear, np.float64), np.asarray(dephased, np.float64)
    if w == 0:
        return linear
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(linear > 0, np.power(linear, 1 - w) * np.power(dephased, w), linear)


def summarise(res: dict, fam: dict, cfg) -> dict:
    """Token/probe means, bootstrap intervals (tokens and probes resampled together for all
    levels, so the cliff's interval sees correlated curves), the cliff.  Both closures are
    averaged on their own and blended at the level of the means (`blend`, cfg.estimate)."""
    per = {k: v.astype(np.float64) for k, v in res["per_token"].items()}  # each [S K N]
    w = cfg.dephased_weight
    S, K, N = per["kl"].shape
    rng = np.random.default_rng(cfg.seed)
    pk = rng.integers(0, K, (cfg.bootstrap, K))
    tk = rng.integers(0, N, (cfg.bootstrap, N))
    resample = lambda a: np.stack([a[:, pk[b]][:, :, tk[b]].mean((1, 2)) for b in range(cfg.bootstrap)], 1)  # noqa: E731
    mean = {k: v.mean((1, 2)) for k, v in per.items()}  # [S]
    kl, half_var_p = (
        blend(mean["kl"], mean["kl_dephased"], w),
        blend(mean["half_var_p"], mean["half_var_p_dephased"], w),
    )
    t1 = (1 - w) * mean["top1"] + w * mean["top1_dephased"]
    boot = blend(resample(per["kl"]), resample(per["kl_dephased"]), w)  # [S B]
    boot_t1 = resample((1 - w) * per["top1"] + w * per["top1_dephased"])
    axis = fam["axis"]
    name = _family_name(fam)
    levels = [getattr(m, axis) if axis else getattr(m, "sparsity") for _, m in fam["points"]]
    rho = _forward_ratio(res, levels)
    pts = []
    for s in range(S):
        pt = {
            "family": name,
            "level": levels[s],
            "kl": float(kl[s]),
            "kl_interval": [float(np.percentile(boot[s], 5)), float(np.percentile(boot[s], 95))],
            "kl_second_order": float(half_var_p[s]),
            "top1_agreement": float(t1[s]),
            "top1_interval": [float(np.percentile(boot_t1[s], 5)), float(np.percentile(boot_t1[s], 95))],
        }
        if cfg.dephasing:
            pt.update(
                kl_linear=float(mean["kl"][s]),
                kl_dephased=float(mean["kl_dephased"][s]),
                top1_linear=float(mean["top1"][s]),
                top1_dephased=float(mean["top1_dephased"][s]),
            )
        if res["gen"] and res["gen"][s] is not None:
            pt.update(res["gen"][s])
            pt["mc_vs_gen_gap"] = pt["top1_agreement"] - pt["gen_identical"]
        if res["regime"] and res["regime"][s] is not None:
            pt["regime"] = res["regime"][s]
        if rho[s] is not None:
            pt["kl_forward_corrected"] = float(mean["kl"][s]) * rho[s]
        n = res["notes"]
        if "ref_bits" in n:  # quantization: Δz(b) = scale·Δz(ref_bits), κ the low-bit correction
            pt["noise"] = {"ref_bits": n["ref_bits"], "scale": n["scale"][s], "kappa": n["kappa"][s]}
        elif "anchors" in n:  # pruning: Δz(s) = scale·Δz(nearest anchor), E the pruned weight energy
            pt["noise"] = {"anchors": n["anchors"], "energy": n["energy"][s], "scale": n["scale"][s]}
        pts.append(pt)
    cliff = None
    if axis and S > 1:
        value, status = cliff_crossing(levels, kl, cfg.kl_threshold, axis)
        reps = [cliff_crossing(levels, boot[:, b], cfg.kl_threshold, axis) for b in range(cfg.bootstrap)]
        vals = np.array([v for v, _ in reps if v is not None])
        cliff = {
            "method": fam["method"],
            "family": name,
            "settings": fam["fixed"],
            "axis": axis,
            "cliff": value,
            "status": status,
            "threshold_kl": cfg.kl_threshold,
            "estimate": cfg.estimate,
            "interval": ([float(np.percentile(vals, 5)), float(np.percentile(vals, 95))] if len(vals) else None),
            "beyond_share": float(np.mean([v is None for v, _ in reps])),
            "nonlinearity_near_cliff": _regime_at(res, levels, value, axis),
        }
        if all(r is not None for r in rho):
            corrected, _ = cliff_crossing(levels, [p["kl_forward_corrected"] for p in pts], cfg.kl_threshold, axis)
            cliff["cliff_forward_corrected"] = corrected
        # a level the estimate puts before the cliff failed the forward check (kl_prediction_ok): the
        # crossing itself is in doubt, read the forward-corrected cliff (flags past it leave it be)
        cliff["forward_check_doubts"] = any(
            not p.get("regime", {}).get("kl_prediction_ok", True) and p["kl"] < cfg.kl_threshold for p in pts
        )
        if cfg.dephasing:
            ends = [cliff_crossing(levels, mean[k], cfg.kl_threshold, axis)[0] for k in ("kl", "kl_dephased")]
            cliff["cliff_linear"], cliff["cliff_dephased"] = ends
            cliff["model_interval"] = None if None in ends else [min(ends), max(ends)]
    return {"points": pts, "cliff": cliff}


def _forward_ratio(res, levels) -> list:
    """Per level, KL(W+ΔW)/KL_lin on the regime tokens (clipped to [0.1, 10]): the level's own
    forward, or for an interpolated pruning level its anchor's; None where not measured."""
    regs = res["regime"] or [None] * len(levels)
    exact = {
        levels[i]: r["kl_forward_over_linear"]
        for i, r in enumerate(regs)
        if r is not None and "kl_forward_over_linear" in r
    }
    out = []
    for lv, r in zip(levels, regs):
        v = exact.get(lv if r is None or "anchor" not in r else r["anchor"])
        out.append(None if v is None or not math.isfinite(v) else float(np.clip(v, 0.1, 10.0)))
    return out


def _regime_at(res, levels, value, axis):
    """Nonlinearity r of the grid point nearest the cliff on its stronger side (None if unknown)."""
    if value is None or not res["regime"]:
        return None
    cand = [
        i
        for i, lv in enumerate(levels)
        if (lv <= value if axis == "bits" else lv >= value) and res["regime"][i] is not None
    ]
    if not cand:
        return None
    i = min(cand, key=lambda i: abs(levels[i] - value))
    return res["regime"][i]["nonlinearity"]
