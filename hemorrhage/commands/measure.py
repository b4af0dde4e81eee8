"""hemorrhage measure --model M --method METHOD [settings] [--json]

Compress once and measure the result against its base: perplexity of both, KL / top-1 /
cos(h, z, p) / Var_p(Δz) at the final layer and per layer, multiple-choice agreement and the
answer-subspace vs full-vocabulary KL, and where greedy generation first diverges.  Every
field is defined in hemorrhage.validate.measure's docstring; `dtype_floor` (the base in
--dtype against the base in fp32, so no damage is read below the dtype's resolution) in
hemorrhage.validate.dtype_floor's.
"""

from __future__ import annotations

import sys
import time

from hemorrhage.commands.common import (add_compression, add_mesh, add_model, check_compression, compress_loaded,
                                        load_model, mesh_shape, place_on_mesh, print_json)


def add_measure_arguments(p, *, per_layer_default: bool = True) -> None:
    """The measurement flags, shared with `hemorrhage sweep`."""
    g = p.add_argument_group("measurement (defaults sized for a CPU)")
    g.add_argument("--windows", type=int, default=4, help="held-out windows for ppl/KL (default 4)")
    g.add_argument("--seqlen", type=int, default=128, help="tokens per window; non-overlapping (default 128)")
    g.add_argument("--source", default="wiki", help="held-out text: wiki or shakespeare (default wiki)")
    g.add_argument("--mc-tasks", default="cloze",
                   help="comma-separated multiple-choice tasks: cloze, navigate, sports_understanding, "
                        "date_understanding, arithmetic, mmlu (default cloze)")
    g.add_argument("--mc-items", type=int, default=24, help="items per MC task, 0 = none (default 24)")
    g.add_argument("--mc-seed", type=int, default=0, help="seed that draws the MC items")
    g.add_argument("--prompts", type=int, default=8, help="generation prompts, 0 = none (default 8)")
    g.add_argument("--prompt-len", type=int, default=16, help="tokens per prompt (default 16)")
    g.add_argument("--new-tokens", type=int, default=32, help="greedy tokens generated per prompt (default 32)")
    g.add_argument("--strategies", default="greedy",
                   help="comma-separated decoding strategies compared with the base: greedy, tempT, toppP, "
                        "beamW, e.g. greedy,temp0.7,topp0.9,beam4 (default greedy)")
    g.add_argument("--gen-seed", type=int, default=0, help="seed of the sampling strategies (base and compressed)")
    g.add_argument("--no-steps", dest="steps", action="store_false",
                   help="skip the per-step teacher-forced / free-running metrics")
    g.add_argument("--strata-bins", type=int, default=5,
                   help="quantiles of the base's target NLL the damage is split by, 0 = none (default 5)")
    if per_layer_default:
        g.add_argument("--no-per-layer", dest="per_layer", action="store_false",
                       help="skip the per-layer logit lens (the slowest part)")
    else:
        g.add_argument("--per-layer", dest="per_layer", action="store_true",
                       help="also measure every layer's logit lens (rows keep per-layer kl, cos_h, top1)")
    p.set_defaults(per_layer=per_layer_default)


def measure_config(args):
    from hemorrhage.validate.measure import MeasureConfig

    tasks = tuple(t.strip() for t in str(args.mc_tasks).split(",") if t.strip())
    return MeasureConfig(windows=args.windows, seqlen=args.seqlen, source=args.source, mc_tasks=tasks,
                         mc_items=args.mc_items, mc_seed=args.mc_seed, prompts=args.prompts,
                         prompt_len=args.prompt_len, new_tokens=args.new_tokens, per_layer=args.per_layer,
                         strategies=tuple(t.strip() for t in str(args.strategies).split(",") if t.strip()),
                         gen_seed=args.gen_seed, steps=args.steps, strata_bins=args.strata_bins)


def add_arguments(p) -> None:
    add_model(p)
    add_compression(p)
    add_measure_arguments(p)
    add_mesh(p)
    p.add_argument("--json", action="store_true", help="print every metric as JSON (NaN/Infinity kept)")


def _log(msg: str) -> None:
    print(f"[measure] {msg}", file=sys.stderr, flush=True)


def run(args) -> int:
    from hemorrhage.validate.measure import base_cache, measure

    config = measure_config(args)  # validates before the model loads
    check_compression(args)
    shape = mesh_shape(args)
    loaded, mesh = place_on_mesh(load_model(args), shape)
    check_compression(args, loaded.model)  # what depends on the model, before the base phase's minutes
    t0 = time.perf_counter()
    base = base_cache(loaded, config, log=_log)
    t1 = time.perf_counter()
    comp, record = compress_loaded(loaded, args, mesh)
    t2 = time.perf_counter()
    res = measure(loaded, comp, base, record)
    res["dtype_floor"] = dtype_floor_of(args, loaded, base.tokens)
    _log(f"base phase {t1 - t0:.1f} s, compression {t2 - t1:.1f} s, measurement {time.perf_counter() - t2:.1f} s")
    if args.json:
        print_json(res)
        return 0
    print_report(res)
    return 0


def dtype_floor_of(args, loaded, tokens) -> dict:
    """The base in --dtype against the same base in fp32 on the measured windows
    (validate.dtype_floor); the fp32 copy is loaded only for this and dropped after."""
    from hemorrhage.validate.dtype_floor import dtype_floor

    if loaded.dtype == "float32":
        return dtype_floor(loaded.model, "float32", tokens)
    from hemorrhage.sim import load

    ref = load(args.model, allow_pickle=getattr(args, "allow_pickle", False), quiet=True, dtype="float32")
    return dtype_floor(loaded.model, loaded.dtype, tokens, ref.model)


def print_report(res: dict) -> None:
    """The human table; a null metric reads 'not computable (reason)' (validate.computable)."""
    from hemorrhage.validate.computable import reasons, show

    g = lambda k, spec=".4g": show(res, k, spec)  # noqa: E731
    print(f"{res['model']}, {res['method']} {res['settings']}  ({res['config']['scored_tokens']} scored tokens)")
    print(f"ppl {g('ppl_base')} -> {g('ppl')}   KL {g('kl')} (½Var_p(Δz) {g('kl_pred')})   "
          f"top-1 agreement {g('top1_agreement', '.3f')}")
    print(f"cos h/z/p {g('cos_h', '.4f')} / {g('cos_z', '.4f')} / {g('cos_p', '.4f')}")
    floor = res.get("dtype_floor") or {}
    if floor.get("dtype", "float32") != "float32":  # damage below this is below the dtype's resolution
        print(f"{floor['dtype']} floor (base in {floor['dtype']} vs fp32): KL {show(floor, 'kl')}, top-1 agreement "
              f"{show(floor, 'top1_agreement', '.3f')}" + (f"; first non-finite {floor['nonfinite']}"
                                                           if floor.get("nonfinite") else ""))
    if "kl_stderr" in res:
        print_distributions(res)
    if "mc_agreement" in res:
        print(f"MC ({res['mc_items']} items): agreement {g('mc_agreement', '.3f')}, accuracy {g('mc_acc_base', '.3f')} "
              f"-> {g('mc_acc', '.3f')}; KL over the choices {g('mc_kl_choices')} vs full vocabulary "
              f"{g('mc_kl_full')} at the answer position")
    if "first_divergence_mean" in res:
        print(f"generation: first divergence at step {g('first_divergence_mean', '.2f')} of {res['new_tokens']} "
              f"(mean of {res['prompts']} prompts), identical continuations {g('gen_identical', '.2f')}")
    for name, st in res.get("strategies", {}).items():
        print(f"  {name:<10} first divergence {show(st, 'first_divergence_mean', '.2f')}, "
              f"same token {show(st, 'gen_token_agreement', '.2f')}")
    if "steps" in res:
        st = res["steps"]
        print(f"teacher-forced along the base's path: top-1 agreement {show(st, 'tf_agreement', '.3f')}; first flip = "
              f"free-running first divergence in {show(st, 'tf_first_flip_matches_free_running', '.0%')} "
              f"of prompts")
    for line in reasons(res) + [r for s in res.get("strategies", {}).values() for r in reasons(s)] + reasons(
            res.get("steps", {})):
        print(f"not computable: {line}")
    if res["collapsed"]:
        print("COLLAPSED: " + " ".join(res["notes"]))
    print(f"note: {res['base_note']}")


def print_distributions(res: dict) -> None:
    """The per-token distributions as llama.cpp's --kl-divergence prints them (value ± standard
    error; percentiles of the scored tokens, validate/token_stats.py)."""
    from hemorrhage.validate.computable import show
    from hemorrhage.validate.token_stats import DELTA_P_PERCENTILES, PERCENTILES

    g = lambda k, spec=".4g": show(res, k, spec)  # noqa: E731
    pm = lambda k, se, spec=".4g": f"{g(k, spec)} ± {g(se, spec)}"  # noqa: E731

    def row(name: str, qs: dict) -> str:
        cells = [f"max {g(name + '_max')}"] + [f"{'median' if k == 'median' else f'{q:g}%'} {g(f'{name}_{k}')}"
                                               for k, q in qs.items()] + [f"min {g(name + '_min')}"]
        return "  ".join(cells)

    print(f"ln(PPL_q/PPL_p) {pm('ln_ppl_ratio', 'ln_ppl_ratio_stderr')}   ppl {pm('ppl_base', 'ppl_base_stderr')} -> "
          f"{pm('ppl', 'ppl_stderr')}")
    print(f"KL(p‖q) {pm('kl', 'kl_stderr')}   KL(q‖p) {pm('kl_reverse', 'kl_reverse_stderr')}   "
          f"same top p {pm('top1_agreement', 'top1_stderr', '.4f')}")
    print(f"  KL(p‖q) per token: {row('kl', PERCENTILES)}")
    print(f"  KL(q‖p) per token: {row('kl_reverse', PERCENTILES)}")
    print(f"Δp = q(target) − p(target): mean {pm('delta_p_mean', 'delta_p_stderr')}   "
          f"RMS {pm('delta_p_rms', 'delta_p_rms_stderr')}")
    print(f"  Δp per token: {row('delta_p', DELTA_P_PERCENTILES)}")
