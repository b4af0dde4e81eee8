"""hemorrhage predict --model M --method METHOD [settings | --grid SPEC|full] [--validate] [--json]

Predict the damage of a compression plan before compressing: KL to the base, top-1
agreement, first divergence of greedy generation, the multiple-choice vs generation gap,
whether the linear response still holds, and for a grid the cliff (where KL crosses
1 nat) with an interval, per method.  Uses only the weights, a calibration batch of real
text and JVPs of the base (hemorrhage.sim.predict's docstring has every definition).
--validate compresses every setting for real and prints predicted vs measured.
"""

from __future__ import annotations

import math
import sys

from hemorrhage.commands.common import add_model, load_model, print_json

PLAN_KEYS = ("sparsity", "pattern", "bits", "group_size")


def add_arguments(p) -> None:
    add_model(p)
    g = p.add_argument_group("the plan: one setting, or a grid")
    g.add_argument("--method", help="rtn, gptq, magnitude, wanda or sparsegpt (one setting)")
    g.add_argument("--sparsity", type=float, help="pruning: share of weights removed, in [0, 1)")
    g.add_argument("--pattern", help="pruning: N:M pattern, e.g. 2:4")
    g.add_argument("--bits", type=int, help="quantization: bits per weight")
    g.add_argument("--group-size", type=int, help="quantization: weights per scale (default per channel)")
    g.add_argument(
        "--grid",
        help="'METHOD:KEY=V1,V2;...' as for `hemorrhage sweep`, or 'full' "
        "(bits 2–8 × rtn, rtn group 64, gptq; sparsity 0.1–0.9 × magnitude, wanda, "
        "sparsegpt; 2:4 of each)",
    )
    d = p.add_argument_group("data (defaults sized for a CPU)")
    d.add_argument("--windows", type=int, default=2, help="held-out windows for KL / top-1 (default 2)")
    d.add_argument("--seqlen", type=int, default=128, help="tokens per window (default 128)")
    d.add_argument("--source", default="wiki", help="held-out text: wiki, shakespeare or code (default wiki)")
    d.add_argument("--prompts", type=int, default=4, help="generation prompts, 0 = none (default 4)")
    d.add_argument("--prompt-len", type=int, default=16, help="tokens per prompt (default 16)")
    d.add_argument("--new-tokens", type=int, default=32, help="greedy tokens per prompt (default 32)")
    d.add_argument("--calib-samples", type=int, default=16, help="calibration windows (default 16, as compress)")
    d.add_argument("--calib-seqlen", type=int, default=128, help="tokens per calibration window (default 128)")
    d.add_argument("--seed", type=int, default=0, help="calibration seed (default 0)")
    e = p.add_argument_group("the estimate")
    e.add_argument("--probes", type=int, default=2, help="noise probes per quantization family (default 2)")
    e.add_argument(
        "--prune-anchors",
        type=int,
        default=3,
        help="exact JVPs per pruning family; the levels between are scaled by the pruned energy (default 3)",
    )
    e.add_argument(
        "--regime-tokens",
        type=int,
        default=32,
        help="tokens of the nonlinearity check per grid point, 0 = skip (default 32)",
    )
    e.add_argument("--kl-threshold", type=float, default=1.0, help="the cliff: KL in nats (default 1)")
    e.add_argument(
        "--estimate",
        choices=("centre", "dephased", "linear"),
        default="centre",
        help="the point estimate: the centre (log scale) of the linear and the dephased closure, "
        "one of them ('linear' skips the Taylor-mode pass; theory.dephasing)",
    )
    p.add_argument("--validate", action="store_true", help="also compress each setting and measure it: side by side")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--timings", action="store_true", help="with --json: include the wall-clock seconds (`timings`)")


def _grid(args):
    from hemorrhage.errors import UserError
    from hemorrhage.sim.predict import FULL_GRID
    from hemorrhage.validate.sweep import parse_grid

    given = {k: getattr(args, k) for k in PLAN_KEYS if getattr(args, k) is not None}
    if args.grid:
        if args.method or given:
            raise UserError("give either --grid or --method with its settings, not both")
        return parse_grid(FULL_GRID if args.grid.strip() == "full" else args.grid)
    if not args.method:
        raise UserError("give --method METHOD [--bits/--sparsity/--pattern/--group-size] or --grid")
    from hemorrhage.sim.compress import make_method

    make_method(args.method, **given)  # validates the setting before the model loads
    return [(args.method, given)]


def _config(args):
    from hemorrhage.sim.predict import PredictConfig

    return PredictConfig(
        windows=args.windows,
        seqlen=args.seqlen,
        source=args.source,
        prompts=args.prompts,
        prompt_len=args.prompt_len,
        new_tokens=args.new_tokens,
        probes=args.probes,
        prune_anchors=args.prune_anchors,
        calib_samples=args.calib_samples,
        calib_seqlen=args.calib_seqlen,
        calib_seed=args.seed,
        regime_tokens=args.regime_tokens,
        kl_threshold=args.kl_threshold,
        estimate=args.estimate,
    )


def _log(msg: str) -> None:
    print(f"[predict] {msg}", file=sys.stderr, flush=True)


def run(args) -> int:
    from hemorrhage.sim.predict import PREDICTABLE, predict
    from hemorrhage.validate.predict_check import measure_grid, measured_cliffs

    grid = _grid(args)
    from hemorrhage.errors import UserError

    bad = [m for m, _ in grid if m not in PREDICTABLE]
    from hemorrhage.sim.compress import METHODS

    why = getattr(METHODS.get(bad[0]), "predict_refusal", None) if bad else None
    if why:  # a method that says why the predictor cannot price it
        raise UserError(f"predict does not cover {bad[0]}: {why}")
    if bad:
        raise UserError(f"predict covers {', '.join(PREDICTABLE)}; got {bad[0]!r}")
    cfg = _config(args)
    loaded = load_model(args)
    res = predict(loaded, grid, cfg, log=_log)
    if args.validate:
        meas = measure_grid(loaded, grid, cfg, log=_log)
        for p, m in zip(res["points"], meas["points"]):
            p["measured"] = {
                k: m[k]
                for k in (
                    "kl",
                    "top1_agreement",
                    "first_divergence_mean",
                    "gen_identical",
                    "mc_agreement",
                    "mc_vs_gen_gap",
                )
                if k in m
            }
            p["kl_ratio"] = None if m["kl"] is None else p["kl"] / m["kl"] if m["kl"] > 0 else math.inf
        res["cliffs"] = measured_cliffs(res, meas, cfg.kl_threshold)
        res["timings"]["seconds_measure"] = meas["timings"]["seconds"]
    if args.json:
        print_json(res, timings=args.timings)
        return 0
    _print(res, args.validate)
    return 0


def _print(res: dict, validate: bool) -> None:
    f = lambda x, n=4: "-" if x is None else f"{x:.{n}g}"  # noqa: E731
    print(f"{res['model']}: predicted from the base ({res['timings']['seconds']:.1f} s)")
    head = (
        f"{'setting':<30} {'kl':>9} {'interval':>19} {'kl lin':>9} {'½Var_p':>9} {'top1':>6} {'1st div':>7} "
        f"{'nonlin':>7}"
    )
    print(head + ("   measured kl  top1  1st div  kl ratio  MC−gen gap p/m" if validate else ""))
    for p in res["points"]:
        reg = p.get("regime", {})
        flag = (" !" if not reg.get("kl_prediction_ok", True) else "") + (
            "" if reg.get("linear_regime_ok", True) else " ~"
        )
        flag += " C" if reg.get("collapse_signature") else ""
        iv = f"[{f(p['kl_interval'][0], 3)}, {f(p['kl_interval'][1], 3)}]"
        line = (
            f"{p['family'] + ' ' + str(p['level']):<30} {f(p['kl']):>9} {iv:>19} {f(p.get('kl_linear')):>9} "
            f"{f(p['kl_second_order']):>9} "
            f"{p['top1_agreement']:>6.3f} {f(p.get('first_divergence_mean'), 3):>7} "
            f"{f(reg.get('nonlinearity'), 2):>7}{flag}"
        )
        if validate:
            m = p["measured"]
            line += (
                f"   {f(m['kl']):>11} {f(m['top1_agreement'], 3):>5} {f(m.get('first_divergence_mean'), 3):>8} "
                f"{f(p['kl_ratio'], 3):>9}  {f(p.get('mc_vs_gen_gap'), 2):>5}/{f(m.get('mc_vs_gen_gap'), 2):<5}"
            )
        print(line)
    for c in res["cliffs"]:
        if c["cliff"] is None:
            where, iv = "beyond the grid", f" (inside in {100 * (1 - c['beyond_share']):.0f} % of resamples)"
        else:
            where = f"{c['cliff']:.3g}" + (" (at or before the mildest level)" if c["status"] == "at_mildest" else "")
            iv = "" if c["interval"] is None else f" (5–95 %: {c['interval'][0]:.3g}–{c['interval'][1]:.3g})"
        mi = c.get("model_interval")
        band = "" if mi is None else f"; linear and dephased closures {mi[0]:.3g}–{mi[1]:.3g}"
        meas = f"; measured {f(c.get('measured'), 3)}" if "measured" in c else ""
        fwd = (
            f"; ! the forward check puts it at {f(c.get('cliff_forward_corrected'), 3)}"
            if c.get("forward_check_doubts") and "cliff_forward_corrected" in c
            else ""
        )
        print(f"cliff {c['family']}: KL crosses {c['threshold_kl']:g} nat at {c['axis']} {where}{iv}{band}{fwd}{meas}")
    regs = [p.get("regime", {}) for p in res["points"]]
    if any(not r.get("linear_regime_ok", True) for r in regs):
        print(
            "~ nonlinearity > 0.3: Δz is no longer linear in ΔW (the KL prediction was seen to hold up to ≈ 0.9, "
            "the cliff)"
        )
    if any(not r.get("kl_prediction_ok", True) for r in regs):
        print(
            "! the forward with W + ΔW gives < 0.45 × (the prediction overshoots) or > 1/0.45 × the linear KL "
            "(it undershoots) on the regime tokens"
        )
    if any(r.get("collapse_signature") for r in regs):
        print(
            "C early gate flips > 25 % or attention entropy shift > 0.15: validate.diagnose's Computation "
            "Collapse evidence"
        )
