r"""The plan's solver: one setting per tensor, a multiple-choice knapsack solved exactly.

    sol = solve(costs, kls, max_cost=C)          # minimise Σ kl  subject to Σ cost ≤ C
    sol = solve(costs, kls, max_kl=K)            # minimise Σ cost subject to Σ kl ≤ K
    sol.choice[t] (option index per tensor), sol.cost, sol.kl, sol.exact

Tensors t = 1..T, each with options j (a bit width, a sparsity): an integer cost c_tj (the
tensor's weights × its bits, or × its kept share in grid units: the quantity the average is
taken of) and a predicted KL share k_tj.  The objective is separable and the constraint a
sum, so dynamic programming over the total cost is exact (the multiple-choice knapsack,
Kellerer, Pferschy & Pisinger, *Knapsack Problems*, 2004, ch. 11):

    D_0(c) = 0 if c = 0 else ∞,   D_t(c) = min_j D_{t−1}(c − c_tj) + k_tj

D_T(c) is the least KL at total cost exactly c; the --avg-bits plan is argmin_{c ≤ C} D_T(c),
the --budget-kl plan the least c with D_T(c) ≤ K.  Costs are first divided by their common
divisor (the tensors' weight counts share a large one: 576·192 on SmolLM2), so the table
has Σ_t max_j c_tj cells (≈ 8·10³ for SmolLM2 at ≤ 8 bits).  Where it would exceed
`max_cells` the costs are rounded to a coarser unit (`exact` False; the constraint is then
checked on the true costs and the plan moved to the nearest feasible one by the greedy
below).

The greedy fallback is the Lagrangian relaxation walked along each tensor's lower convex
hull of (cost, kl): upgrades in order of decreasing −Δkl/Δcost (Everett 1963); it is optimal
for the relaxation and within one upgrade of the integer optimum.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import reduce

import numpy as np

from hemorrhage.errors import UserError


@dataclass(frozen=True)
class Solution:
    """choice: option index per tensor; cost: Σ c_tj of the true costs; kl: Σ k_tj; exact:
    solved by the exact table (False: costs rounded to a coarser unit, or the greedy)."""

    choice: list[int]
    cost: int
    kl: float
    exact: bool


def _check(costs, kls) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if len(costs) != len(kls) or not costs:
        raise ValueError("costs and kls: one list of options per tensor, at least one tensor")
    c = [np.asarray(x, np.int64) for x in costs]
    k = [np.asarray(x, np.float64) for x in kls]
    for ci, ki in zip(c, k):
        if ci.shape != ki.shape or ci.ndim != 1 or ci.size == 0:
            raise ValueError("each tensor needs as many costs as KL shares, at least one")
        if (ci < 0).any():
            raise ValueError("costs must be >= 0")
    return c, k


def _table(c: list[np.ndarray], k: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(D_T [C+1], choice [T, C+1] int16): the least KL at each exact total cost and the option
    that reached it, per tensor (NaN shares count as +∞: a setting that cannot be priced is
    never chosen)."""
    total = int(sum(int(ci.max()) for ci in c))
    d = np.full(total + 1, np.inf)
    d[0] = 0.0
    arg = np.zeros((len(c), total + 1), np.int16)
    for t, (ci, ki) in enumerate(zip(c, k)):
        new = np.full(total + 1, np.inf)
        for j, (cj, kj) in enumerate(zip(ci, np.where(np.isnan(ki), np.inf, ki))):
            cand = np.full(total + 1, np.inf)
            cand[cj:] = d[: total + 1 - cj] + kj
            better = cand < new
            new[better] = cand[better]
            arg[t, better] = j
        d = new
    return d, arg


def _backtrack(arg: np.ndarray, c: list[np.ndarray], at: int) -> list[int]:
    choice = [0] * len(c)
    for t in range(len(c) - 1, -1, -1):
        j = int(arg[t, at])
        choice[t] = j
        at -= int(c[t][j])
    return choice


def _greedy(c, k, max_cost=None, max_kl=None) -> list[int]:
    """The Lagrangian walk along the lower convex hulls (module docstring)."""
    hulls = []
    for ci, ki in zip(c, k):
        order = sorted(range(ci.size), key=lambda j: (ci[j], ki[j]))
        hull: list[int] = []
        for j in order:
            if hull and ki[j] >= ki[hull[-1]]:
                continue  # dearer and no better
            while len(hull) >= 2:
                a, b = hull[-2], hull[-1]
                # b above the segment a–j: not on the lower hull
                if (ki[b] - ki[a]) * (ci[j] - ci[a]) >= (ki[j] - ki[a]) * (ci[b] - ci[a]):
                    hull.pop()
                else:
                    break
            hull.append(j)
        hulls.append(hull)
    choice = [h[0] for h in hulls]
    steps = []
    for t, h in enumerate(hulls):
        for a, b in itertools.pairwise(h):
            dc = max(int(c[t][b] - c[t][a]), 1)
            steps.append(((k[t][a] - k[t][b]) / dc, t, b))
    steps.sort(key=lambda s: -s[0])
    cost = sum(int(c[t][j]) for t, j in enumerate(choice))
    kl = sum(float(k[t][j]) for t, j in enumerate(choice))
    for _, t, b in steps:
        if max_kl is not None and kl <= max_kl:
            break
        dc = int(c[t][b] - c[t][choice[t]])
        if max_cost is not None and cost + dc > max_cost:
            continue
        kl += float(k[t][b] - k[t][choice[t]])
        cost += dc
        choice[t] = b
    return choice


def solve(
    costs: list[np.ndarray],
    kls: list[np.ndarray],
    *,
    max_cost: int | None = None,
    max_kl: float | None = None,
    max_cells: int = 4_000_000,
) -> Solution:
    """The plan (module docstring): costs[t] int [options], kls[t] float [options]; exactly
    one of max_cost, max_kl.  UserError when no choice meets the constraint (the cheapest plan costs more than max_cost, or the best
    plan's KL is above max_kl)."""
    if (max_cost is None) == (max_kl is None):
        raise ValueError("give exactly one of max_cost, max_kl")
    c, k = _check(costs, kls)
    unit = reduce(math.gcd, (int(x) for ci in c for x in ci if x > 0), 0) or 1
    span = sum(int(ci.max()) for ci in c) // unit
    exact = span <= max_cells
    if not exact:  # round to a unit that fits the table; the true costs decide feasibility below
        unit = -(-sum(int(ci.max()) for ci in c) // max_cells)
    cu = [np.rint(ci / unit).astype(np.int64) for ci in c]
    d, arg = _table(cu, k)
    cells = np.arange(d.size)
    if max_cost is not None:
        if sum(int(ci.min()) for ci in c) > max_cost:
            raise UserError("no plan is that small: every tensor at its cheapest setting is already larger")
        ok = np.flatnonzero((cells * unit <= max_cost) & np.isfinite(d))
        at = int(ok[np.argmin(d[ok])])
    else:
        ok = np.flatnonzero(d <= max_kl)
        if ok.size == 0:
            best = float(np.min(d))
            raise UserError(
                f"no plan meets the KL budget {max_kl:g}: the best setting of every tensor "
                f"is predicted at {best:.4g}; raise the budget or add higher bits / lower sparsity"
            )
        at = int(ok[0])
    choice = _backtrack(arg, cu, at)
    true_cost = sum(int(c[t][j]) for t, j in enumerate(choice))
    if max_cost is not None and true_cost > max_cost:  # only when rounded: fall back to the greedy
        choice, exact = _greedy(c, k, max_cost=max_cost), False
    kl = sum(float(k[t][j]) for t, j in enumerate(choice))
    if max_kl is not None and kl > max_kl:
        choice, exact = _greedy(c, k, max_kl=max_kl), False
    return Solution(
        choice=[int(j) for j in choice],
        cost=sum(int(c[t][j]) for t, j in enumerate(choice)),
        kl=sum(float(k[t][j]) for t, j in enumerate(choice)),
        exact=bool(exact),
    )
