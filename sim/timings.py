"""Wall-clock numbers live apart from results, so the same command gives the same bytes.

Every result that measures time (a compression record, a prediction, the control's
training report) keeps it under one key, `timings`, a dict of seconds:

    record = {"method": "rtn", ..., "timings": {"seconds": 1.234}}

What is printed with --json or written to a file drops that key (at any depth) unless the
user asked for it (`--timings`); the human-readable table may still show the time.
"""

from __future__ import annotations

KEY = "timings"


def without_timings(obj):
    """A copy of obj (nested dicts and lists) with every `timings` key removed."""
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if k != KEY}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(without_timings(v) for v in obj)
    return obj


def seconds(obj: dict, name: str = "seconds", default: float = float("nan")) -> float:
    """obj["timings"][name], or `default` where the result carries no timings (e.g. read from a file)."""
    return float((obj.get(KEY) or {}).get(name, default))
