"""How many units (KV groups or MLP channels) each layer loses under a removed share.

    uniform   round(share·U) of each layer's U units (the same in every layer)
    global    the round(share·ΣU) lowest-scoring units over all layers, one kept per layer
    owl       OWL's per-layer shares (pruning.OWL), then round(s_l·U), one kept per layer

`round` is half up; structured.py documents the scores and the removal.
"""

from __future__ import annotations

import numpy as np

from hemorrhage.errors import UserError

SCHEDULES = ("uniform", "global", "owl")


def _round(x: float) -> int:
    return int(np.floor(float(x) + 0.5))  # half up (Python's round goes half to even: 2.5 -> 2)


def check_share(share) -> float:
    if isinstance(share, bool) or not isinstance(share, (int, float, np.integer, np.floating)):
        raise UserError(f"share must be a number in [0, 1), got {share!r}")
    if not 0.0 <= float(share) < 1.0:
        raise UserError(f"share must be in [0, 1), got {share}")
    return float(share)


def uniform_counts(units: list[int | None], share: float, what: str) -> list[int]:
    counts = []
    for i, u in enumerate(units):
        if u is None:
            counts.append(0)
            continue
        n = _round(share * u)
        if n >= u:
            raise UserError(
                f"{what}: share {share:g} removes all {u} {NOUN[what]} of layer {i} "
                f"(round(share·{u}) = {n}); a share below {(u - 0.5) / u:.4g} keeps one"
            )
        counts.append(n)
    return counts


NOUN = {"heads": "KV groups", "channels": "MLP channels"}


def check_total(units, share: float, what: str) -> int:
    live = [u for u in units if u is not None]
    n = _round(share * sum(live))
    if n > sum(live) - len(live):
        raise UserError(
            f"{what}: share {share:g} removes {n} of {sum(live)} {NOUN[what]}, more than can go "
            f"while every layer keeps one ({sum(live) - len(live)})"
        )
    return n


def global_counts(scores, units, share: float, what: str) -> list[int]:
    n = check_total(units, share, what)
    flat = sorted((float(s), i, j) for i, sc in enumerate(scores) if sc is not None for j, s in enumerate(sc))
    counts = [0] * len(units)
    for _, i, _ in flat:
        if n == 0:
            break
        if counts[i] < units[i] - 1:
            counts[i] += 1
            n -= 1
    return counts


def owl_counts(model, calib_tokens, units, share: float, what: str) -> tuple[list[int], list[float]]:
    from hemorrhage.sim.compress.pruning import OWL

    owl = OWL(sparsity=share)
    layer_s, _ = owl.schedule(owl.outlier_ratios(model, calib_tokens))
    counts = [0 if u is None else min(_round(float(s) * u), u - 1) for s, u in zip(layer_s, units)]
    return counts, [float(s) for s in layer_s]
