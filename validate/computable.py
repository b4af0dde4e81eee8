"""Metrics that could not be computed: null plus a reason, never a perfect score.

A measurement compares the compressed model with its base.  Where the logits a metric
needs are not finite (NaN, or ±inf that softmax turns into NaN) the metric has no value:
an argmax of NaN is index 0 on both sides and would read as agreement, a KL whose
reference p is NaN sums no terms and would read as 0.  So every dict of results keeps one
shape:

    {"top1_agreement": null, ..., "not_computable": {"top1_agreement": "logits not finite: ..."}}

a null value always has a sibling entry in the same object's `not_computable` saying why.
inf stays inf where it is the honest value (KL(p ‖ q) with q = 0 where p > 0 is +inf);
only NaN, which no metric here can take as a true value, becomes null.
"""

from __future__ import annotations

import math

KEY = "not_computable"


def is_missing(v) -> bool:
    """None or a float NaN (a value that could not be computed)."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def null_nans(d: dict, keys, reason: str) -> dict:
    """Set every NaN scalar d[k] (k in keys) to None and record `reason` under d[KEY][k].

    A key already None keeps its recorded reason (or gets this one if it has none).  Returns d."""
    for k in keys:
        if k in d and is_missing(d[k]):
            d[k] = None
            d.setdefault(KEY, {}).setdefault(k, reason)
    return d


def mark(d: dict, keys, reason: str) -> dict:
    """Set d[k] = None for every k in keys (present or not) with `reason`: the inputs are known
    to be unusable, whatever number the arithmetic happened to give.  Returns d."""
    for k in keys:
        d[k] = None
        d.setdefault(KEY, {})[k] = reason
    return d


def count_reason(what: str, bad_base: int, bad_comp: int, n: int, unit: str) -> str:
    """'logits not finite: base at 3, compressed at 62 of 62 scored positions' (only the sides that are)."""
    sides = [f"{name} at {k}" for name, k in (("base", bad_base), ("compressed", bad_comp)) if k]
    return f"{what} not finite: {', '.join(sides) or 'none'} of {n} {unit}"


def show(d: dict, key: str, spec: str = ".4g") -> str:
    """d[key] formatted with `spec`, or 'not computable (logits not finite)' for a null (the
    reason up to its first colon; `reasons` lists them whole); '-' when absent."""
    if key not in d:
        return "-"
    v = d[key]
    if is_missing(v):
        why = (d.get(KEY) or {}).get(key)
        return f"not computable ({why.split(':')[0]})" if why else "not computable"
    return format(v, spec)


def reasons(d: dict) -> list[str]:
    """'key, key2: reason' once per distinct reason in d's not_computable, for a table's foot."""
    by: dict[str, list[str]] = {}
    for k, why in sorted((d.get(KEY) or {}).items()):
        by.setdefault(why, []).append(k)
    return [f"{', '.join(keys)}: {why}" for why, keys in by.items()]
