r"""Damage stratified by how hard each token is for the base (seed 000's hypotheses, exp 7).

Seed 000 (the inquiring line) says: (a) damage hides on common prompts and shows on
low-probability targets first; (b) hidden states sparsify on hard or unfamiliar inputs,
and a fixed pruning mask overrides that input-conditional choice.

Per scored token of the held-out windows (validate.measure):
    nll_base      −log p_base(target): the token's difficulty for the base
    dnll          nll_comp − nll_base: what compression costs on that very target
    kl, kl_pred   KL(p ‖ q) and Theorem 3's ½Var_p(Δz) at that position
    top1          argmax agreement with the base
    hoyer_*       Hoyer sparsity (layers.hoyer: 0 flat, 1 one-hot) of the MLP hidden
                  activation act(gate x) ⊙ up x, mean over layers, base / compressed
    gate_off_*    share of gate pre-activations ≤ 0 (SwiGLU/GeGLU units mostly off),
                  mean over layers and units; NaN for GPT-2 (no gate)

Bins: `bins` quantiles of nll_base over the scored tokens (bin 0 = easiest, the targets the
base is surest of; the last bin = the rarest targets).  The base is the same for every
setting of a sweep, so every row bins the same tokens the same way.  Spearman ρ over
tokens (finite pairs only) between nll_base and each quantity; None where undefined (a
constant, e.g. dnll = 0 for the base itself).

Why (a) is expected even without any "rarity" mechanism: Theorem 3 gives
KL ≈ ½Var_p(Δz), and Var_p is small when p is peaked on the target (p_a → 1 gives
Var_p → 0), so confident positions are damaged less; kl_pred per bin tests that reading.
"""

from __future__ import annotations

import numpy as np

from hemorrhage.validate.arrays import rounded

QUANTITIES = (
    "nll_base",
    "p_target",
    "dnll",
    "kl",
    "kl_pred",
    "top1",
    "hoyer_base",
    "hoyer_comp",
    "gate_off_base",
    "gate_off_comp",
)
RANKED = ("dnll", "kl", "kl_pred", "hoyer_base", "hoyer_comp", "hoyer_shift", "gate_off_base", "gate_off_comp")


def token_sparsity(trace, scored: slice | None = None) -> dict[str, np.ndarray]:
    """Per token [B·T'] of a Trace: hoyer (mean over layers) and gate_off (NaN without gates);
    `scored` picks the positions along T (default all but the last of each window)."""
    sl = slice(None, -1) if scored is None else scored
    ho = np.asarray(trace.mlp_hoyer, np.float64)[:, :, sl].mean(0).reshape(-1)
    if trace.gate_pos is None:
        off = np.full_like(ho, np.nan)
    else:
        off = 1.0 - np.asarray(trace.gate_pos[:, :, sl], np.float64).mean(axis=(0, 3)).reshape(-1)
    return {"hoyer": ho, "gate_off": off}


def _spearman(x, y) -> float | None:
    """ρ over the finite pairs; None where it is undefined (a constant, as for the base itself)."""
    from scipy.stats import spearmanr

    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.unique(x[ok]).size < 2 or np.unique(y[ok]).size < 2:
        return None
    return float(spearmanr(x[ok], y[ok]).statistic)


def strata(per_token: dict[str, np.ndarray], bins: int = 5) -> dict:
    """The row's `strata` section from per-token arrays (keys as in the module docstring,
    minus p_target and dnll, which are derived here; nll_comp instead of dnll)."""
    t = {k: np.asarray(v, np.float64) for k, v in per_token.items()}
    nb = t["nll_base"]
    with np.errstate(invalid="ignore", over="ignore"):
        t["p_target"] = np.exp(-nb)
        t["dnll"] = t.pop("nll_comp") - nb
        t["hoyer_shift"] = t["hoyer_comp"] - t["hoyer_base"]
    edges = np.quantile(nb, np.linspace(0.0, 1.0, bins + 1))
    which = np.clip(np.searchsorted(edges[1:-1], nb, side="right"), 0, bins - 1)
    out = {"bins": int(bins), "edges_nll_base": rounded(edges), "n": [int((which == b).sum()) for b in range(bins)]}
    for k in QUANTITIES:
        if k.startswith("gate_off") and np.isnan(t[k]).all():  # no gate in this family: not applicable
            out[k] = None
            continue
        out[k] = rounded([t[k][which == b].mean() if (which == b).any() else np.nan for b in range(bins)])
    out["spearman_vs_nll_base"] = {k: _spearman(nb, t[k]) for k in RANKED}
    return out
