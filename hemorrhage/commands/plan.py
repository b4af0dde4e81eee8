"""hemorrhage plan --model M --method rtn|gptq --bits 2,3,4,6,8 (--budget-kl K | --avg-bits A) --out plan.json
       hemorrhage plan --model M --method magnitude|wanda|sparsegpt --sparsity S --out plan.json

A per-tensor compression plan: which linears keep more bits (or less sparsity) so the model
stays below a KL budget at the smallest size, or has the least predicted KL at a given
average.  Each tensor's share of the KL comes from the diagonal Fisher of the softmax times
that setting's real weight error; the plan is solved exactly over the tensors' choices and
its whole ΔW is then priced by the linear response (`hemorrhage predict`'s), which states its
KL, top-1 agreement and first divergence (hemorrhage.sim.plan's docstring).
Apply it with `hemorrhage compress --plan plan.json` or `hemorrhage measure --plan plan.json`;
--validate compresses and measures it here.

A budget below the floor: in float32 the floor is 0 (the same weights give the same
logits), so the budget must be > 0; a bfloat16/float16 model already differs from its fp32
self by the dtype's floor (validate.dtype_floor), and a budget at or below that is refused.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hemorrhage.commands.common import add_model, add_overwrite, load_model, print_json

QUANT = ("rtn", "gptq")


def add_arguments(p) -> None:
    add_model(p)
    g = p.add_argument_group("the plan")
    g.add_argument("--method", required=True, choices=("rtn", "gptq", "magnitude", "wanda", "sparsegpt"))
    g.add_argument(
        "--bits", default="2,3,4,6,8", help="quantization: the bit widths a tensor may take (default 2,3,4,6,8)"
    )
    g.add_argument("--group-size", type=int, help="quantization: weights per scale (default per channel)")
    g.add_argument("--symmetric", action="store_true", help="quantization: symmetric grid, no zero point")
    g.add_argument(
        "--budget-kl", type=float, help="quantization: the smallest plan whose predicted KL is within this (nats)"
    )
    g.add_argument(
        "--avg-bits", type=float, help="quantization: the least predicted KL at this average bits per weight"
    )
    g.add_argument("--sparsity", type=float, help="pruning: the least predicted KL at this average sparsity")
    g.add_argument("--levels", help="pruning: the sparsities a tensor may take (default the average ± 0.3 by 0.05)")
    g.add_argument("--out", required=True, help="the plan file to write (JSON)")
    add_overwrite(p)
    d = p.add_argument_group("data and estimate (defaults sized for a CPU)")
    d.add_argument("--fisher-windows", type=int, default=8, help="calibration windows of the Fisher (default 8)")
    d.add_argument("--draws", type=int, default=2, help="label draws from p per Fisher window (default 2)")
    d.add_argument("--windows", type=int, default=2, help="held-out windows of the whole-plan check (default 2)")
    d.add_argument("--seqlen", type=int, default=128, help="tokens per window (default 128)")
    d.add_argument("--prompts", type=int, default=4, help="generation prompts, 0 = none (default 4)")
    d.add_argument("--new-tokens", type=int, default=32, help="greedy tokens per prompt (default 32)")
    d.add_argument(
        "--calib-samples", type=int, default=16, help="calibration windows (gptq, wanda, sparsegpt; default 16)"
    )
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--regime-tokens", type=int, default=32, help="tokens of the nonlinearity check, 0 = skip")
    d.add_argument(
        "--estimate",
        choices=("centre", "dephased", "linear"),
        default="centre",
        help="the predictor's point estimate (as `hemorrhage predict`)",
    )
    p.add_argument(
        "--validate", action="store_true", help="also compress with the plan and measure it beside the prediction"
    )
    p.add_argument("--figure", help="also draw the plan and the size–KL frontier to this PNG")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")


def _floats(text: str, flag: str) -> tuple:
    from hemorrhage.errors import UserError

    try:
        vals = tuple(float(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise UserError(f"{flag} must be a comma-separated list of numbers, got {text!r}") from None
    if not vals:
        raise UserError(f"{flag} is empty")
    return tuple(sorted(set(vals)))


def spec_of(args):
    """The PlanSpec of the command line, every setting checked (before the model loads)."""
    from hemorrhage.errors import UserError
    from hemorrhage.sim.compress import make_method
    from hemorrhage.sim.plan import PlanSpec

    quant = args.method in QUANT
    if quant:
        if args.sparsity is not None or args.levels:
            raise UserError(
                "--sparsity and --levels are for pruning; quantization takes --bits and --budget-kl or --avg-bits"
            )
        bits = _floats(args.bits, "--bits")
        if any(b != int(b) for b in bits):
            raise UserError(f"--bits must be whole numbers, got {args.bits!r}")
        levels = tuple(int(b) for b in bits)
        for b in levels:
            make_method(args.method, bits=b, group_size=args.group_size, symmetric=args.symmetric)
        avg = args.avg_bits
    else:
        if args.avg_bits is not None or args.budget_kl is not None:
            raise UserError("pruning plans take --sparsity (the average); --avg-bits and --budget-kl are for rtn/gptq")
        if args.sparsity is None:
            raise UserError("give --sparsity, the average sparsity of the plan")
        avg = args.sparsity
        if args.levels:
            levels = _floats(args.levels, "--levels")
        else:
            levels = tuple(round(avg + 0.05 * k, 4) for k in range(-6, 7) if 0 <= round(avg + 0.05 * k, 4) < 0.96)
        for s in levels:
            make_method(args.method, sparsity=s)
    return PlanSpec(
        method=args.method,
        levels=levels,
        budget_kl=args.budget_kl,
        avg=avg,
        group_size=args.group_size if quant else None,
        symmetric=bool(args.symmetric) and quant,
        fisher_windows=args.fisher_windows,
        draws=args.draws,
    )


def _config(args):
    from hemorrhage.sim.predict import PredictConfig

    return PredictConfig(
        windows=args.windows,
        seqlen=args.seqlen,
        prompts=args.prompts,
        new_tokens=args.new_tokens,
        calib_samples=args.calib_samples,
        calib_seqlen=args.seqlen,
        calib_seed=args.seed,
        seed=args.seed,
        regime_tokens=args.regime_tokens,
        estimate=args.estimate,
    )


def is_plan_file(path: Path) -> bool:
    try:
        return json.loads(Path(path).read_text()).get("format") == "hemorrhage-plan-1"
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False


def check_floor(args, loaded, budget: float | None, cfg) -> None:
    """A budget at or below the dtype's floor (module docstring) is refused before planning."""
    if budget is None or loaded.dtype == "float32":
        return
    from hemorrhage.errors import UserError
    from hemorrhage.sim import load
    from hemorrhage.sim.windows import eval_windows
    from hemorrhage.validate.dtype_floor import dtype_floor

    ref = load(args.model, allow_pickle=getattr(args, "allow_pickle", False), quiet=True, dtype="float32")
    toks = eval_windows(loaded.tokenizer, cfg.source, seqlen=cfg.seqlen, stride=cfg.seqlen, max_windows=cfg.windows)
    floor = dtype_floor(loaded.model, loaded.dtype, toks, ref.model)
    if floor["kl"] is None or budget <= floor["kl"]:
        raise UserError(
            f"--budget-kl {budget:g} is at or below the {loaded.dtype} floor "
            f"(KL of the base in {loaded.dtype} vs fp32: {floor['kl']}); no compression can be "
            f"told apart below it"
        )


def _log(msg: str) -> None:
    print(f"[plan] {msg}", file=sys.stderr, flush=True)


def run(args) -> int:
    from hemorrhage.sim.outputs import atomic_write_text, check_output_file, check_path
    from hemorrhage.sim.plan import Planner

    spec = spec_of(args)
    cfg = _config(args)
    out = check_output_file(args.out, is_ours=None if args.overwrite else is_plan_file, what="hemorrhage plan")
    if args.figure:
        check_path(args.figure, want="file", flag="--figure")
    loaded = load_model(args)
    check_floor(args, loaded, spec.budget_kl, cfg)
    planner = Planner(loaded, spec, cfg, log=_log)
    plan = planner.plan(avg=spec.avg, budget_kl=spec.budget_kl)
    if args.validate or args.figure:
        from hemorrhage.validate.plan_check import frontier, measure_plan

        if args.validate:
            plan["measured"] = measure_plan(loaded, plan, cfg, log=_log)
        if args.figure:
            from hemorrhage.validate.plan_figure import draw_plan

            draw_plan(plan, frontier(planner, measure=args.validate, log=_log), args.figure)
    text = json.dumps({k: v for k, v in plan.items() if k != "timings"}, indent=1, allow_nan=True) + "\n"
    atomic_write_text(out, text)
    if args.json:
        print_json(plan)
        return 0
    _print(plan, out)
    return 0


def _print(plan: dict, out) -> None:
    ax = plan["axis"]
    add = plan["additivity"]
    print(
        f"{plan['model']}: {plan['method']} plan, {len(plan['tensors'])} tensors, avg {ax} {plan[f'avg_{ax}']:.4g}, "
        f"{plan['bytes'] / 2**20:.2f} MiB of linear weights ({plan['bytes'] / plan['fp32_bytes']:.4f} of fp32)"
    )
    fd = plan["predicted_first_divergence"]
    print(
        f"predicted KL {plan['predicted_kl']:.4g}  top-1 {plan['predicted_top1']:.3f}  first divergence "
        f"{'-' if fd is None else f'{fd:.3g}'}"
    )
    print(
        f"additivity: whole plan / Σ per-tensor shares = {add['whole_over_sum']:.3g} "
        f"(½Var_p: {add['whole_second_order_over_sum']:.3g}); shares scaled by {add['share_scale_used']:.3g}"
    )
    if plan["solver"]["meets_budget"] is False:
        print("! no plan tried met the budget on the whole-plan prediction: the last one is written")
    m = plan.get("measured")
    if m:
        print(
            f"measured KL {m['kl']:.4g}  top-1 {m['top1_agreement']:.3f}  (predicted / measured KL "
            f"{plan['predicted_kl'] / m['kl'] if m['kl'] else float('inf'):.3g})"
        )
    print(f"wrote {out}")


# ------------------------------------------------------------------ --plan of compress / measure


def add_plan_flag(p) -> None:
    p.add_argument(
        "--plan",
        help="apply a per-tensor plan written by `hemorrhage plan` (its method and settings; "
        "then no --bits/--sparsity/--pattern/--group-size)",
    )


def read_plan_arg(args):
    """The --plan file's dict (None without --plan), read and checked before the model loads."""
    if not getattr(args, "plan", None):
        return None
    from hemorrhage.errors import UserError
    from hemorrhage.sim.compress.per_tensor import PerTensor
    from hemorrhage.sim.compress.registry import check_calibration
    from hemorrhage.sim.plan import read_plan

    given = [
        f"--{k.replace('_', '-')}"
        for k in ("bits", "sparsity", "pattern", "group_size")
        if getattr(args, k, None) is not None
    ]
    if given:
        raise UserError(f"--plan sets every tensor's setting; drop {', '.join(given)}")
    check_calibration(calib_samples=args.calib_samples, calib_seqlen=args.calib_seqlen, seed=args.seed)
    plan = read_plan(args.plan)
    PerTensor.from_plan(plan)  # every level valid for its method
    return plan


def compress_with_plan(loaded, plan: dict, args, mesh=None):
    """(model, record) of the plan on `loaded` (fingerprint and tensors checked first)."""
    from hemorrhage.sim.compress.per_tensor import compress_plan

    return compress_plan(
        loaded, plan, calib_samples=args.calib_samples, calib_seqlen=args.calib_seqlen, seed=args.seed, mesh=mesh
    )
