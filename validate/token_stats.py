"""Statistics over the scored tokens, as llama.cpp's `llama-perplexity --kl-divergence` prints them.

Our own implementation of the definitions in llama.cpp's tools/perplexity/perplexity.cpp, on
the per-token arrays `validate.measure` already has (no extra forward pass).  With x_1..x_N
the per-token values (fp32 from the jitted pass; every reduction here in float64):

    mean        x̄ = Σ x_i / N
    stderr      s/√N with s² = Σ (x_i − x̄)² / (N − 1): the standard error of the mean.  llama.cpp
                writes it sqrt((⟨x²⟩ − x̄²)/(N − 1)), the same number (and prints 0 for N ≤ 10; here
                N < 2 has no standard error: NaN, i.e. null with a reason).  For a 0/1 variable
                (top-1 agreement, rate t) it is exactly the binomial sqrt(t(1 − t)/(N − 1)).
    percentile  linear interpolation between order statistics: with x_(0) ≤ … ≤ x_(N−1) sorted
                and h = (N − 1)·q/100, x_(⌊h⌋) + (h − ⌊h⌋)(x_(⌊h⌋+1) − x_(⌊h⌋)).  This is numpy's
                default (`method="linear"`, Hyndman–Fan type 7) and also what llama.cpp's
                `percentile` lambda computes; the differences are that llama.cpp evaluates it in
                fp32 with the fraction rounded to fp32 (0.999f), here in float64, and that an inf
                next to an equal inf stays inf here (numpy's lerp gives NaN).  The median is q = 50,
                the mean of the two middle values for even N, as llama.cpp's.

What is summarised (p base, q compressed next-token distributions; y the target token):

    kl_*            KL(p ‖ q) per token: stderr, median, percentiles, max, min (the mean is `kl`)
    kl_reverse*     KL(q ‖ p) per token: its mean `kl_reverse` and the same summary
    top1_stderr     of the top-1 agreement rate (llama.cpp's "Same top p")
    delta_p_*       Δp = q(y) − p(y), the change of the probability of the correct token
                    (llama.cpp's Δp: p = exp(−NLL)): mean, stderr, median, percentiles (also 75
                    and 25, as llama.cpp), max, min; delta_p_rms = sqrt(⟨Δp²⟩) with the delta-
                    method error se(Δp²)/(2·rms) (0 when every Δp² is equal)
    ln_ppl_ratio    ln(PPL_q/PPL_p) = mean of d_i = NLL_q,i − NLL_p,i; its stderr is that of the
                    mean of d, which equals llama.cpp's sqrt(se_q² + se_p² − 2·cov) (the tokens
                    are paired, so the correlation between the two NLLs is removed)
    ppl_stderr,     exp(mean NLL)·se(NLL), the delta method, as llama.cpp's "Mean PPL(Q) ± …"
    ppl_base_stderr
Percentile keys: kl_p999 = 99.9 %, kl_p99, kl_p95, kl_p90, kl_median, kl_p10, kl_p05, kl_p01 = 1 %,
kl_p001 = 0.1 %.
"""

from __future__ import annotations

import math

import numpy as np

# key suffix -> percentile q (%); the order is the order printed and stored
PERCENTILES: dict[str, float] = {
    "p999": 99.9,
    "p99": 99.0,
    "p95": 95.0,
    "p90": 90.0,
    "median": 50.0,
    "p10": 10.0,
    "p05": 5.0,
    "p01": 1.0,
    "p001": 0.1,
}
# llama.cpp's Δp table also has the quartiles
DELTA_P_PERCENTILES: dict[str, float] = {
    **{k: v for k, v in PERCENTILES.items() if v > 50},
    "p75": 75.0,
    "median": 50.0,
    "p25": 25.0,
    **{k: v for k, v in PERCENTILES.items() if v < 50},
}


def stderr(x) -> float:
    """Standard error of the mean, s/√N (s with N − 1).  NaN when N < 2 or a value is NaN; inf
    when a value is ±inf (the spread of an infinite sample is unbounded, not undefined)."""
    x = np.asarray(x, np.float64)
    if x.size < 2 or np.isnan(x).any():
        return float("nan")
    if np.isinf(x).any():
        return float("inf")
    return float(np.std(x, ddof=1) / math.sqrt(x.size))


def percentile(sorted_x: np.ndarray, q: float) -> float:
    """The q-th percentile (0 ≤ q ≤ 100) of an ascending float64 array, linear interpolation
    (module docstring).  NaN for an empty array."""
    n = sorted_x.size
    if n == 0:
        return float("nan")
    h = (n - 1) * q / 100.0
    lo = min(math.floor(h), n - 1)
    hi = min(lo + 1, n - 1)
    a, b = float(sorted_x[lo]), float(sorted_x[hi])
    frac = h - lo
    if frac == 0.0 or a == b:  # exact order statistic; also keeps inf next to inf inf
        return a
    return a + frac * (b - a)


def describe(x, name: str, qs: dict[str, float] = PERCENTILES) -> dict[str, float]:
    """{name_stderr, name_<percentile>…, name_max, name_min} of per-token values x.  Any NaN
    makes every entry NaN: a distribution with values missing has no honest percentiles."""
    x = np.asarray(x, np.float64).reshape(-1)
    out = {f"{name}_stderr": stderr(x)}
    if x.size == 0 or np.isnan(x).any():
        out.update({f"{name}_{k}": float("nan") for k in qs})
        out.update({f"{name}_max": float("nan"), f"{name}_min": float("nan")})
        return out
    s = np.sort(x)
    out.update({f"{name}_{k}": percentile(s, q) for k, q in qs.items()})
    out.update({f"{name}_max": float(s[-1]), f"{name}_min": float(s[0])})
    return out


def token_statistics(kl, kl_reverse, top1, nll_base, nll) -> dict[str, float]:
    """Every statistic of the module docstring from per-token arrays of one length N:
    KL(p‖q), KL(q‖p), top-1 agreement (0/1), the base's and the compressed model's NLL of
    the target.  Values are floats; NaN where not computable (the caller nulls them)."""
    nll_base = np.asarray(nll_base, np.float64)
    nll = np.asarray(nll, np.float64)
    kl_reverse = np.asarray(kl_reverse, np.float64)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        dp = np.exp(-nll) - np.exp(-nll_base)
        d = nll - nll_base
        dp2 = dp * dp
        out: dict[str, float] = {}
        out.update(describe(kl, "kl"))
        out["kl_reverse"] = _mean(kl_reverse)
        out.update(describe(kl_reverse, "kl_reverse"))
        out["top1_stderr"] = stderr(top1)
        out["delta_p_mean"] = _mean(dp)
        out.update(describe(dp, "delta_p", DELTA_P_PERCENTILES))
        rms, se2 = float(np.sqrt(_mean(dp2))), stderr(dp2)
        out["delta_p_rms"] = rms
        # delta method: d sqrt(m) = dm / (2 sqrt(m)); no spread in Δp² means no error at all
        out["delta_p_rms_stderr"] = 0.0 if se2 == 0.0 else float(np.float64(se2) / (2.0 * rms))
        out["ln_ppl_ratio"] = _mean(d)
        out["ln_ppl_ratio_stderr"] = stderr(d)
        out["ppl_stderr"] = float(np.exp(_mean(nll)) * stderr(nll))
        out["ppl_base_stderr"] = float(np.exp(_mean(nll_base)) * stderr(nll_base))
    return out


def stat_keys() -> tuple[str, ...]:
    """The keys `token_statistics` returns, in its order (for null + reason and the docs)."""
    z = np.zeros(3)
    return tuple(token_statistics(z, z, z, z, z))


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else float("nan")
