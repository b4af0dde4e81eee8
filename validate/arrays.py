"""NumPy helpers shared by the measurement modules (float64, NaN/inf kept as results)."""

from __future__ import annotations

import numpy as np


def mean(x) -> float:
    """Mean in float64; NaN for an empty array (NaN/inf inside propagate: a collapsed model)."""
    x = np.asarray(x, np.float64)
    return float(x.mean()) if x.size else float("nan")


def kl_rows(logp: np.ndarray, logq: np.ndarray) -> np.ndarray:
    """KL(p ‖ q) per row from log-probabilities (float64; 0·log 0 = 0).

    NaN for a row whose reference log p holds a NaN or +inf: p is then no distribution, and
    skipping its NaN terms (NaN > 0 is false) would sum nothing and report a KL of 0."""
    logp, logq = logp.astype(np.float64), logq.astype(np.float64)
    p = np.exp(logp)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        terms = np.where(p > 0, p * (logp - logq), 0.0)
    bad_ref = np.any(np.isnan(logp) | (logp == np.inf), -1)
    return np.where(bad_ref, np.nan, terms.sum(-1))


def log_softmax_rows(s: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        m = np.max(s, -1, keepdims=True)
        return s - m - np.log(np.sum(np.exp(s - m), -1, keepdims=True))


def rounded(x, digits: int = 6):
    """Nested lists of floats with `digits` significant digits (compact, deterministic JSON)."""
    a = np.asarray(x, np.float64)
    if a.ndim == 0:
        v = float(a)
        return float(f"{v:.{digits}g}") if np.isfinite(v) else v
    return [rounded(v, digits) for v in a]
