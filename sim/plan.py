r"""A per-tensor compression plan that meets a KL budget, with its predicted cost stated.

    spec = PlanSpec(method="rtn", levels=(2, 3, 4, 6, 8), avg=3.0)        # or budget_kl=0.1
    plan = make_plan(loaded, spec, PredictConfig())                        # the plan.json dict
    check_plan(plan, loaded)                                                # UserError if it is not for this model

1. Shares (sim.plan_sensitivity): k_tj = ½Σ F_ii δw_i² for tensor t at level j, F the diagonal
   Fisher of the softmax from backward passes on `fisher_windows` calibration windows.
2. Solve (sim.plan_solve, exact): --avg-bits A: min Σ_t α k_tj subject to Σ_t n_t b_t ≤ A·Σ n_t;
   --sparsity S: the same with the kept weights, Σ n_t (1 − s_t) ≤ (1 − S)·Σ n_t;
   --budget-kl K: min Σ n_t b_t subject to α Σ k_tj ≤ K.
3. Check (sim.plan_predict): the predictor on the plan's whole ΔW gives KL_plan (its point
   estimate), ½Var_p of the whole Δz_lin, top-1 and first divergence.  Additivity is
   α = KL_plan / Σ_t k_t: the factor by which the per-tensor shares miss the whole plan's
   response (cross terms between and within tensors).  With a KL budget the plan is solved
   again with the shares scaled by α until the whole plan's KL is within the budget (at most
   `iterations` rounds; the cheapest plan that met it is kept).  The plan states KL_plan as
   `predicted_kl`; each tensor's `predicted_kl_share` is its k_t scaled so the shares sum to it.

Fingerprint: sha256 of the checkpoint's config.json (keys sorted) and the linears' paths and
shapes; a plan applies only to a model with the same one (`check_plan`).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hemorrhage.sim.plan_sensitivity import (
    KEEP_UNITS,
    PRUNE_METHODS,
    QUANT_METHODS,
    factors,
    fisher_diag,
    sensitivity_table,
)
from hemorrhage.sim.plan_solve import solve

from hemorrhage.errors import UserError

PLAN_FORMAT = "hemorrhage-plan-1"
METHODS = QUANT_METHODS + PRUNE_METHODS


@dataclass(frozen=True)
class PlanSpec:
    """What to plan.  levels: the bits (rtn, gptq) or sparsities (pruning) a tensor may take;
    exactly one of budget_kl (nats, the predictor's point estimate) and avg (bits per weight of
    the codes, or the weight-weighted mean sparsity)."""

    method: str
    levels: tuple
    budget_kl: float | None = None
    avg: float | None = None
    group_size: int | None = None
    symmetric: bool = False
    fisher_windows: int = 8
    draws: int = 2
    iterations: int = 3

    def __post_init__(self):
        if self.method not in METHODS:
            raise UserError(f"plan covers {', '.join(METHODS)}; got {self.method!r}")
        if (self.budget_kl is None) == (self.avg is None):
            raise UserError("give exactly one of --budget-kl and --avg-bits / --sparsity")
        if not self.levels:
            raise UserError("the list of levels is empty")
        quant = self.method in QUANT_METHODS
        if self.budget_kl is not None and not (np.isfinite(self.budget_kl) and self.budget_kl > 0):
            raise UserError(
                f"--budget-kl must be a finite number > 0 (the float32 floor is 0: any change "
                f"of the weights costs some KL), got {self.budget_kl}"
            )
        if self.budget_kl is not None and not quant:
            raise UserError("pruning plans take --sparsity (the average); --budget-kl is for rtn and gptq")
        if self.avg is not None:
            lo, hi = min(self.levels), max(self.levels)
            what = "--avg-bits" if quant else "--sparsity"
            if not lo <= self.avg <= hi:
                raise UserError(
                    f"{what} {self.avg:g} is outside the levels' range [{lo:g}, {hi:g}]: "
                    f"no mix of them has that average"
                )
        for name in ("fisher_windows", "draws", "iterations"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1")

    @property
    def axis(self) -> str:
        return "bits" if self.method in QUANT_METHODS else "sparsity"


def fingerprint(loaded) -> str:
    """sha256 (16 hex) of config.json and the compressible linears' paths and shapes."""
    from hemorrhage.sim.compress.registry import linears

    h = hashlib.sha256()
    cfg = Path(loaded.path) / "config.json"
    if cfg.is_file():
        h.update(json.dumps(json.loads(cfg.read_text()), sort_keys=True).encode())
    for path, _, _, layer in linears(loaded.model):
        h.update(f"{path}:{tuple(int(s) for s in np.shape(layer.weight()))};".encode())
    return h.hexdigest()[:16]


def _calibration(loaded, cfg, n: int):
    from hemorrhage.sim.windows import calibration_tokens

    return calibration_tokens(loaded.tokenizer, "wiki", n, cfg.calib_seqlen, cfg.calib_seed)


class Planner:
    """The base linearised, its Fisher and the share table, computed once; plans at any
    constraint (`plan`) and uniform settings (`uniform`) priced from them."""

    def __init__(self, loaded, spec: PlanSpec, cfg, *, log=None):
        from hemorrhage.sim.plan_predict import plan_context

        self.t0 = time.perf_counter()
        self.say = (lambda m: log(f"{time.perf_counter() - self.t0:7.1f} s  {m}")) if log else (lambda m: None)
        self.loaded, self.spec, self.cfg = loaded, spec, cfg
        stats = None
        if spec.method in ("gptq", "wanda", "sparsegpt"):
            from hemorrhage.sim.compress.calib import layer_hessians

            self.say("calibration statistics")
            stats = layer_hessians(loaded.model, _calibration(loaded, cfg, cfg.calib_samples))
        self.say("linearising the base")
        self.ctx = plan_context(loaded, cfg, stats)
        self.say("diagonal Fisher")
        fisher = fisher_diag(self.ctx.lr, _calibration(loaded, cfg, spec.fisher_windows), spec.draws, cfg.seed)
        self.say("per-tensor shares")
        self.tab = sensitivity_table(
            self.ctx.lr,
            fisher,
            spec.method,
            list(spec.levels),
            stats=stats,
            group_size=spec.group_size,
            symmetric=spec.symmetric,
        )
        self.us = factors(self.ctx.lr, stats) if spec.method in ("gptq", "sparsegpt") else None
        self.n_total = sum(self.tab.n_weights)
        self.seconds_setup = time.perf_counter() - self.t0

    def whole(self, levels: list) -> dict:
        """sim.plan_predict.whole_plan of tensor t at levels[t]."""
        from hemorrhage.sim.plan_predict import plan_dws, whole_plan

        s = self.spec
        return whole_plan(
            self.ctx,
            plan_dws(
                self.ctx,
                s.method,
                levels,
                factors=self.us,
                group_size=s.group_size,
                symmetric=s.symmetric,
                seed=self.cfg.seed,
            ),
        )

    def limit(self, avg: float) -> int:
        """The solver's cost limit of an average (bits, or sparsity: kept weights × KEEP_UNITS)."""
        lim = avg * self.n_total if self.spec.axis == "bits" else (1 - avg) * self.n_total * KEEP_UNITS
        return int(np.floor(lim + 1e-9 * lim))

    def plan(self, *, avg: float | None = None, budget_kl: float | None = None) -> dict:
        """The plan at one constraint (module docstring), as `hemorrhage plan` writes it."""
        tab, tried, alpha = self.tab, [], 1.0
        rounds = self.spec.iterations if budget_kl is not None else 1
        for it in range(rounds):
            kls = [k * alpha for k in tab.kl]
            sol = (
                solve(tab.cost, kls, max_cost=self.limit(avg))
                if avg is not None
                else solve(tab.cost, kls, max_kl=budget_kl)
            )
            self.say(f"round {it}: whole-plan response")
            whole = self.whole([tab.levels[j] for j in sol.choice])
            raw = sum(float(tab.kl[t][j]) for t, j in enumerate(sol.choice))
            tried.append((sol, whole, raw))
            if budget_kl is None or whole["kl"] <= budget_kl:
                break
            # the shares undershoot the whole plan by kl/raw: price them at that rate and solve again
            alpha = max(alpha * 1.05, whole["kl"] / raw if raw > 0 else alpha * 2)
        ok = [x for x in tried if budget_kl is None or x[1]["kl"] <= budget_kl]
        sol, whole, raw = min(ok, key=lambda x: x[0].cost) if ok else tried[-1]
        constraint = {"budget_kl": budget_kl} if budget_kl is not None else {f"avg_{self.spec.axis}": avg}
        return _record(
            self.loaded,
            self.spec,
            tab,
            sol,
            whole,
            raw,
            alpha,
            bool(ok),
            len(tried),
            constraint,
            time.perf_counter() - self.t0,
        )

    def uniform(self, level) -> dict:
        """Every tensor at `level`: the whole-plan prediction, bytes and average."""
        whole = self.whole([level] * len(self.tab.paths))
        j = self.tab.levels.index(level)
        return {
            "level": level,
            "predicted_kl": whole["kl"],
            "predicted_top1": whole["top1_agreement"],
            "bytes": int(sum(int(b[j]) for b in self.tab.bytes)),
            "sum_of_shares": float(sum(float(k[j]) for k in self.tab.kl)),
        }


def make_plan(loaded, spec: PlanSpec, cfg, *, log=None) -> dict:
    """The plan (module docstring) as the JSON-able dict `hemorrhage plan` writes; cfg a
    sim.predict.PredictConfig (held-out windows, prompts, calibration, regime tokens)."""
    return Planner(loaded, spec, cfg, log=log).plan(avg=spec.avg, budget_kl=spec.budget_kl)


def _record(loaded, spec, tab, sol, whole, raw, alpha, met, rounds, constraint, seconds) -> dict:
    n_total = sum(tab.n_weights)
    total = whole["kl"]
    tensors = []
    for t, j in enumerate(sol.choice):
        k = float(tab.kl[t][j])
        tensors.append(
            {
                "path": tab.paths[t],
                spec.axis: tab.levels[j],
                "n_weights": tab.n_weights[t],
                "bytes": int(tab.bytes[t][j]),
                "kl_share_raw": k,
                "predicted_kl_share": k / raw * total if raw > 0 else 0.0,
            }
        )
    avg = sum(x[spec.axis] * x["n_weights"] for x in tensors) / n_total
    out = {
        "format": PLAN_FORMAT,
        "model": str(getattr(loaded, "name", "")),
        "fingerprint": fingerprint(loaded),
        "method": spec.method,
        "axis": spec.axis,
        "levels": list(spec.levels),
        "settings": {"group_size": spec.group_size, "symmetric": spec.symmetric} if spec.axis == "bits" else {},
        "constraint": constraint,
        "tensors": tensors,
        "predicted_kl": total,
        "predicted_top1": whole["top1_agreement"],
        "predicted_first_divergence": whole["first_divergence_mean"],
        f"avg_{spec.axis}": avg,
        "bytes": int(sum(x["bytes"] for x in tensors)),
        "fp32_bytes": int(4 * n_total),
        "n_weights": int(n_total),
        "prediction": {k: whole[k] for k in ("kl_linear", "kl_dephased", "kl_second_order", "gen_identical", "regime")},
        "additivity": {
            "sum_of_shares": raw,
            "whole_over_sum": total / raw if raw > 0 else None,
            "whole_second_order_over_sum": whole["kl_second_order"] / raw if raw > 0 else None,
            "share_scale_used": alpha,
            "rounds": rounds,
        },
        "solver": {"exact": sol.exact, "meets_budget": met if "budget_kl" in constraint else None},
        "timings": {"seconds": round(seconds, 2)},
    }
    return out


def read_plan(path) -> dict:
    """The plan file's dict; UserError unless it is a readable hemorrhage plan."""
    p = Path(path).expanduser()
    try:
        plan = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"--plan {p}: not a readable plan file ({type(e).__name__})") from None
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT or not isinstance(plan.get("tensors"), list):
        raise UserError(f"--plan {p}: not a hemorrhage plan (written by `hemorrhage plan`)")
    if plan.get("method") not in METHODS or plan.get("axis") not in ("bits", "sparsity"):
        raise UserError(f"--plan {p}: unknown method {plan.get('method')!r}")
    return plan


def check_plan(plan: dict, loaded) -> dict[str, float]:
    """{path: level} of a plan for `loaded`; UserError when the plan was made for another
    model (fingerprint) or names a tensor the model lacks (or leaves one out)."""
    from hemorrhage.sim.compress.registry import linears

    have = [p for p, _, _, _ in linears(loaded.model)]
    settings = {}
    for t in plan["tensors"]:
        if not isinstance(t, dict) or not isinstance(t.get("path"), str) or plan["axis"] not in t:
            raise UserError("the plan's tensors need a path and a level each")
        settings[t["path"]] = t[plan["axis"]]
    lacks = sorted(set(settings) - set(have))
    if lacks:
        raise UserError(
            f"the plan names a tensor the model lacks: {lacks[0]} (the plan is for "
            f"{plan.get('model') or 'another model'})"
        )
    if plan.get("fingerprint") != fingerprint(loaded):
        raise UserError(
            f"the plan was made for another model ({plan.get('model')!r}, fingerprint "
            f"{plan.get('fingerprint')}); this one is {fingerprint(loaded)}"
        )
    missing = [p for p in have if p not in settings]
    if missing:
        raise UserError(f"the plan has no setting for {missing[0]}")
    return settings
