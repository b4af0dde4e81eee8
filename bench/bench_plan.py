"""bench_plan: does the per-tensor plan (hemorrhage plan) beat the uniform setting and two
hand-made baselines of equal size, and does it predict its own KL?

    python bench/bench_plan.py [--model smollm2-135m] [--out results/bench_plan.json]

Per family (RTN at average 3.0 and 4.0 bits; magnitude and Wanda at average sparsity 0.5),
every candidate compressed for real and measured with validate.measure on the planner's own
held-out windows (one run each: compression and measurement are deterministic):
  plan       sim.plan, the whole-plan prediction beside the measurement
  uniform    every tensor at the average (equal size)
  heuristic  quantization: the first and last blocks at 8 bits, the rest at the two bit widths
             around what is left, as many at the higher one as the average allows
  imatrix    quantization: the same exact solver on an activation-weighted error
             ½Σ_ij E[x_j²] δw_ij² (llama.cpp's importance matrix weights the rounding
             error by the mean squared activation of each input column) instead of the Fisher
  owl        pruning: OWL's outlier-weighted per-block sparsity at the same average
Timing: planning (Fisher, shares, solve, whole-plan JVPs) against measuring the uniform grid
it replaces (compress + measure at every level), one run each, same machine, same process.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax.numpy as jnp

ROOT = Path(__file__).resolve().parents[1]


def _log(msg):
    print(f"[bench_plan] {msg}", file=sys.stderr, flush=True)


def heuristic_levels(planner, avg: float) -> list:
    """First and last blocks at the top bit width, the rest filled up to the average."""
    tab = planner.tab
    n_blocks = 1 + max(int(p.split(".")[1]) for p in tab.paths)
    top = max(tab.levels)
    edge = [int(p.split(".")[1]) in (0, n_blocks - 1) for p in tab.paths]
    left = avg * planner.n_total - sum(n for n, e in zip(tab.n_weights, edge) if e) * top
    rest = [i for i, e in enumerate(edge) if not e]
    x = left / sum(tab.n_weights[i] for i in rest)
    lo = max([b for b in tab.levels if b <= x], default=min(tab.levels))
    hi = min([b for b in tab.levels if b > lo], default=lo)
    levels = [top if e else lo for e in edge]
    spent = sum(tab.n_weights[i] * lo for i in rest)
    for i in rest:  # in path order: earlier blocks first, as hand recipes keep early layers
        if spent + tab.n_weights[i] * (hi - lo) <= left:
            levels[i] = hi
            spent += tab.n_weights[i] * (hi - lo)
    return levels


def imatrix_levels(planner, avg: float) -> list:
    from hemorrhage.sim.compress.calib import layer_hessians
    from hemorrhage.sim.windows import calibration_tokens
    from hemorrhage.sim.plan_sensitivity import sensitivity_table
    from hemorrhage.sim.plan_solve import solve

    cfg, lr = planner.cfg, planner.ctx.lr
    stats = layer_hessians(
        planner.loaded.model,
        calibration_tokens(planner.loaded.tokenizer, "wiki", cfg.calib_samples, cfg.calib_seqlen, cfg.calib_seed),
    )
    act = [jnp.broadcast_to(0.5 * jnp.diag(stats[p].hessian())[None, :], w.shape) for p, w in zip(lr.paths, lr.weights)]
    s = planner.spec
    tab = sensitivity_table(lr, act, s.method, list(s.levels), group_size=s.group_size, symmetric=s.symmetric)
    sol = solve(tab.cost, tab.kl, max_cost=planner.limit(avg))
    return [tab.levels[j] for j in sol.choice]


def plan_from_levels(planner, levels, name):
    """A plan dict (for compress_plan) of given levels, priced by the whole-plan prediction."""
    from hemorrhage.sim.plan import PLAN_FORMAT, fingerprint

    s = planner.spec
    whole = planner.whole(levels)
    avg = sum(lv * n for lv, n in zip(levels, planner.tab.n_weights)) / planner.n_total
    return {
        "format": PLAN_FORMAT,
        "model": name,
        "fingerprint": fingerprint(planner.loaded),
        "method": s.method,
        "axis": s.axis,
        "settings": {"group_size": s.group_size, "symmetric": s.symmetric},
        "tensors": [{"path": p, s.axis: lv} for p, lv in zip(planner.tab.paths, levels)],
        "predicted_kl": whole["kl"],
        f"avg_{s.axis}": avg,
    }


def family(loaded, cfg, method, levels, avgs, log):
    """Every prediction first (the planner's linearisation then goes: memory), then every measurement."""
    import gc

    import jax
    from hemorrhage.sim.plan import Planner, PlanSpec
    from hemorrhage.validate.plan_check import PlanMeasurer

    out = {"method": method, "levels": list(levels), "points": []}
    t0 = time.perf_counter()
    planner = Planner(loaded, PlanSpec(method=method, levels=tuple(levels), avg=avgs[0]), cfg, log=log)
    plans = {a: planner.plan(avg=a) for a in avgs}
    out["seconds_plan"] = time.perf_counter() - t0
    axis = planner.spec.axis
    rows = []
    for a in avgs:
        plan = plans[a]
        row = {
            "avg": a,
            "plan_avg": plan[f"avg_{axis}"],
            "plan_predicted_kl": plan["predicted_kl"],
            "plan_predicted_top1": plan["predicted_top1"],
            "additivity": plan["additivity"],
            "_plan": plan,
            "uniform_predicted_kl": planner.uniform(a)["predicted_kl"] if a in levels else None,
        }
        if axis == "bits":
            for name, fn in (("heuristic", heuristic_levels), ("imatrix", imatrix_levels)):
                row["_" + name] = plan_from_levels(planner, fn(planner, a), name)
        rows.append(row)
    del planner
    gc.collect()
    jax.clear_caches()
    meas = PlanMeasurer(loaded, cfg)
    t1 = time.perf_counter()
    uniform = {lv: meas.uniform(method, {axis: lv}) for lv in levels}
    out["seconds_uniform_grid"] = time.perf_counter() - t1
    out["uniform_grid"] = {str(k): v["kl"] for k, v in uniform.items()}
    for row in rows:
        a, plan = row["avg"], row.pop("_plan")
        row["plan"] = meas.plan(plan)
        row["uniform"] = uniform[a] if a in uniform else meas.uniform(method, {axis: a})
        if axis == "bits":
            for name in ("heuristic", "imatrix"):
                p = row.pop("_" + name)
                row[name] = {**meas.plan(p), "predicted_kl": p["predicted_kl"], "avg": p["avg_bits"]}
        else:
            row["owl"] = meas.uniform("owl", {"sparsity": a, "base": method})
        m = row["plan"]["kl"]
        row["plan_over_uniform"] = m / row["uniform"]["kl"]
        row["predicted_over_measured"] = plan["predicted_kl"] / m
        log(
            f"{method} avg {a}: plan KL {m:.4g} (pred {plan['predicted_kl']:.4g}) vs uniform "
            f"{row['uniform']['kl']:.4g}"
            + "".join(f", {k} {row[k]['kl']:.4g}" for k in ("heuristic", "imatrix", "owl") if k in row)
        )
        out["points"].append(row)
    out["plan_over_grid_time"] = out["seconds_plan"] / out["seconds_uniform_grid"]
    return out


def main(argv=None) -> int:
    from hemorrhage.sim import load
    from hemorrhage.sim.outputs import atomic_write_text
    from hemorrhage.sim.predict import PredictConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--families", default="rtn,magnitude,wanda")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench_plan.json"))
    args = ap.parse_args(argv)
    # the linear closure: the dephased one's Taylor-mode pass needs memory a shared CPU box lacks
    cfg = PredictConfig(windows=2, seqlen=128, prompts=2, new_tokens=16, regime_tokens=16, estimate="linear")
    loaded = load(args.model, quiet=True)
    res = {
        "model": args.model,
        "config": {"windows": cfg.windows, "seqlen": cfg.seqlen, "prompts": cfg.prompts, "estimate": cfg.estimate},
        "families": [],
    }
    todo = {
        "rtn": ((2, 3, 4, 6, 8), (3.0, 4.0)),
        "gptq": ((2, 3, 4, 6, 8), (3.0, 4.0)),
        "magnitude": ((0.3, 0.4, 0.5, 0.6, 0.7), (0.5,)),
        "wanda": ((0.3, 0.4, 0.5, 0.6, 0.7), (0.5,)),
    }
    for fam in args.families.split(","):
        levels, avgs = todo[fam]
        res["families"].append(family(loaded, cfg, fam, levels, avgs, _log))
        atomic_write_text(Path(args.out), json.dumps(res, indent=1, default=float) + "\n")
    for f in res["families"]:
        for r in f["points"]:
            base = {k: r[k]["kl"] for k in ("uniform", "heuristic", "imatrix", "owl") if k in r}
            print(
                f"{args.model} {f['method']} avg {r['avg']}: plan KL {r['plan']['kl']:.4g} "
                f"(predicted {r['plan_predicted_kl']:.4g}, ×{r['predicted_over_measured']:.2f}); "
                + ", ".join(f"{k} {v:.4g}" for k, v in base.items())
                + f"; plan/uniform {r['plan_over_uniform']:.3f}"
            )
        print(
            f"{f['method']}: planning {f['seconds_plan']:.0f} s vs uniform grid {f['seconds_uniform_grid']:.0f} s "
            f"({100 * f['plan_over_grid_time']:.0f} %)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
