"""Experiment 1 (spine): the representation hierarchy, layer by layer.

Compress a real model, run base and compressed on the same held-out Wikipedia
windows, and at every layer's logit lens measure cos(h), cos(z), cos(p), KL and the
theorems' predictions (validate/metrics.py).  The seed's claim (arXiv 2603.24652):
damage is mild in h and z but amplified in p, and ½Var_p(Δz) predicts the KL.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

METRICS = (
    "cos_h",
    "cos_z",
    "cos_p",
    "kl",
    "kl_pred",
    "var_p",
    "var_r",
    "one_minus_cos_p_pred",
    "one_minus_cos_h_pred",
    "top1",
)


def setting_label(record: dict) -> str:
    s = record.get("settings", {})
    keys = ("sparsity", "pattern", "bits", "group_size", "part", "n_drop")
    parts = [f"{k}={s[k]}" for k in keys if s.get(k) is not None]
    if s.get("pattern"):
        parts = [p for p in parts if not p.startswith("sparsity")]
    return ",".join(parts) or "default"


def measure_hierarchy(loaded, comp_model, tokens) -> dict[str, np.ndarray]:
    """Per-layer means (arrays of length L+1) of every metric over `tokens` [B T]."""
    import jax.numpy as jnp

    from hemorrhage.validate.metrics import per_layer

    tokens = jnp.asarray(tokens)
    tr_b = loaded.model.trace(tokens)
    tr_c = comp_model.trace(tokens)
    L1, B, T, d = tr_b.h.shape
    res = per_layer(loaded.model, comp_model, tr_b.h.reshape(L1, B * T, d), tr_c.h.reshape(L1, B * T, d))
    return {k: np.asarray(v, np.float64) for k, v in res.items()}


def hierarchy_table(loaded, record: dict, per_layer_metrics: dict):
    """Tidy table: one row per model × method × setting × layer."""
    import pandas as pd

    n = len(per_layer_metrics["kl"])
    df = pd.DataFrame({k: per_layer_metrics[k] for k in METRICS})
    df.insert(0, "layer", np.arange(n))
    df.insert(0, "setting", setting_label(record))
    df.insert(0, "method", record["method"])
    df.insert(0, "model", loaded.name)
    df["kl_pred_rel_err"] = (df["kl_pred"] - df["kl"]) / df["kl"].where(df["kl"] > 0)
    return df


def verdict(df) -> dict:
    """Does the seed's claim hold here?  Amplification h → p at the last layer, and
    the ½Var_p prediction's error where the KL is small (the theorem's regime)."""
    last = df.iloc[-1]
    d_h, d_z, d_p = 1 - last.cos_h, 1 - last.cos_z, 1 - last.cos_p
    small = df[(df.kl > 0) & (df.kl <= 0.1)]
    return {
        "final_kl": float(last.kl),
        "final_top1_agreement": float(last.top1),
        "final_one_minus_cos": {"h": float(d_h), "z": float(d_z), "p": float(d_p)},
        "p_damaged_more_than_h": bool(d_p > d_h),
        "kl_pred_median_rel_err_where_kl_le_0.1": (float(small.kl_pred_rel_err.abs().median()) if len(small) else None),
        "collapsed": bool(not np.isfinite(df.kl).all()),
    }


def write_table(df, out_dir: Path, stem: str) -> Path:
    from hemorrhage.sim.outputs import atomic_write_text

    path = Path(out_dir) / f"{stem}.csv"
    atomic_write_text(path, df.to_csv(index=False))
    return path
