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

import numpy as np

from hemorrhage.commands.common import (
    add_compression,
    add_mesh,
    add_model,
    check_compression,
    compress_loaded,
    load_model,
    mesh_shape,
    place_on_mesh,
    print_json,
)
from hemorrhage.commands.plan import add_plan_flag, compress_with_plan, read_plan_arg


def add_measure_arguments(p, *, per_layer_default: bool = True) -> None:
    """The measurement flags, shared with `hemorrhage sweep`."""
    g = p.add_argument_group("measurement (defaults sized for a CPU)")
    g.add_argument("--windows", type=int, default=4, help="held-out windows for ppl/KL (default 4)")
    g.add_argument("--seqlen", type=int, default=128, help="tokens per window; non-overlapping (default 128)")
    g.add_argument("--source", default="wiki", help="held-out text: wiki, shakespeare or code (default wiki)")
    g.add_argument(
        "--mc-tasks",
        default="cloze",
        help="comma-separated multiple-choice tasks: cloze, navigate, sports_understanding, "
        "date_understanding, arithmetic, mmlu (default cloze)",
    )
    g.add_argument("--mc-items", type=int, default=24, help="items per MC task, 0 = none (default 24)")
    g.add_argument("--mc-seed", type=int, default=0, help="seed that draws the MC items")
    g.add_argument("--prompts", type=int, default=8, help="generation prompts, 0 = none (default 8)")
    g.add_argument("--prompt-len", type=int, default=16, help="tokens per prompt (default 16)")
    g.add_argument("--new-tokens", type=int, default=32, help="greedy tokens generated per prompt (default 32)")
    g.add_argument(
        "--strategies",
        default="greedy",
        help="comma-separated decoding strategies compared with the base: greedy, tempT, toppP, "
        "beamW, e.g. greedy,temp0.7,topp0.9,beam4 (default greedy)",
    )
    g.add_argument("--gen-seed", type=int, default=0, help="seed of the sampling strategies (base and compressed)")
    g.add_argument(
        "--no-steps", dest="steps", action="store_false", help="skip the per-step teacher-forced / free-running metrics"
    )
    g.add_argument(
        "--strata-bins",
        type=int,
        default=5,
        help="quantiles of the base's target NLL the damage is split by, 0 = none (default 5)",
    )
    g.add_argument(
        "--retrieval",
        type=int,
        default=0,
        metavar="N",
        help="also measure retrieval over N held-out Wikipedia documents (recall@1/@10, MRR, "
        "embedding_cos; validate/retrieval.py); 0 = none, the default, since 1000 documents "
        "add minutes on a CPU (an encoder such as minilm-l6 always measures it, 1000 when 0)",
    )
    if per_layer_default:
        g.add_argument(
            "--no-per-layer",
            dest="per_layer",
            action="store_false",
            help="skip the per-layer logit lens (the slowest part)",
        )
    else:
        g.add_argument(
            "--per-layer",
            dest="per_layer",
            action="store_true",
            help="also measure every layer's logit lens (rows keep per-layer kl, cos_h, top1)",
        )
    p.set_defaults(per_layer=per_layer_default)


def measure_config(args):
    from hemorrhage.validate.measure import MeasureConfig

    tasks = tuple(t.strip() for t in str(args.mc_tasks).split(",") if t.strip())
    return MeasureConfig(
        windows=args.windows,
        seqlen=args.seqlen,
        source=args.source,
        mc_tasks=tasks,
        mc_items=args.mc_items,
        mc_seed=args.mc_seed,
        prompts=args.prompts,
        prompt_len=args.prompt_len,
        new_tokens=args.new_tokens,
        per_layer=args.per_layer,
        strategies=tuple(t.strip() for t in str(args.strategies).split(",") if t.strip()),
        gen_seed=args.gen_seed,
        steps=args.steps,
        strata_bins=args.strata_bins,
        retrieval=getattr(args, "retrieval", 0),
    )


def add_arguments(p) -> None:
    add_model(p)
    add_compression(p)
    add_measure_arguments(p)
    add_mesh(p)
    add_plan_flag(p)
    p.add_argument("--json", action="store_true", help="print every metric as JSON (NaN/Infinity kept)")


def _log(msg: str) -> None:
    print(f"[measure] {msg}", file=sys.stderr, flush=True)


def run(args) -> int:
    from hemorrhage.validate.measure import measure
    from hemorrhage.validate.base_phase import base_cache
    from hemorrhage.validate.retrieval import is_encoder

    config = measure_config(args)  # validates before the model loads
    plan = read_plan_arg(args)
    if plan is None:
        check_compression(args)
    shape = mesh_shape(args)
    floor_ref = floor_reference(args, config)  # before the model in --dtype exists: never both copies
    loaded, mesh = place_on_mesh(load_model(args), shape)
    if plan is None:
        check_compression(args, loaded.model)  # what depends on the model, before the base phase's minutes
    else:
        from hemorrhage.sim.plan import check_plan

        check_plan(plan, loaded)  # another model's plan, a tensor it lacks: before the base phase
    if is_encoder(loaded.model):  # no LM head: retrieval only, language-model metrics null with the reason
        return _run_encoder(args, loaded, config, mesh, plan)
    t0 = time.perf_counter()
    base = base_cache(loaded, config, log=_log)
    t1 = time.perf_counter()
    comp, record = compress_loaded(loaded, args, mesh) if plan is None else compress_with_plan(loaded, plan, args, mesh)
    t2 = time.perf_counter()
    res = measure(loaded, comp, base, record)
    del comp  # what it did not share with the base goes before the floor's forwards
    res["dtype_floor"] = dtype_floor_of(args, loaded, base.tokens, floor_ref)
    _log(f"base phase {t1 - t0:.1f} s, compression {t2 - t1:.1f} s, measurement {time.perf_counter() - t2:.1f} s")
    if args.json:
        print_json(res)
        return 0
    print_report(res)
    return 0


def _run_encoder(args, loaded, config, mesh, plan) -> int:
    from hemorrhage.validate.measure_encoder import measure_encoder

    comp, record = compress_loaded(loaded, args, mesh) if plan is None else compress_with_plan(loaded, plan, args, mesh)
    res = measure_encoder(loaded, comp, config, record)
    if args.json:
        print_json(res)
        return 0
    from hemorrhage.validate.computable import show

    r = res["retrieval"]
    print(
        f"{res['model']}, {res['method']} {res['settings']}  ({r['n_queries']} queries, {r['n_documents']} documents)"
    )
    print(
        f"recall@1 {show(res, 'retrieval_recall_at_1_base', '.3f')} -> {show(res, 'retrieval_recall_at_1', '.3f')}   "
        f"recall@10 {show(res, 'retrieval_recall_at_10_base', '.3f')} -> {show(res, 'retrieval_recall_at_10', '.3f')}"
        f"   MRR {show(res, 'retrieval_mrr_base', '.3f')} -> {show(res, 'retrieval_mrr', '.3f')}   "
        f"embedding cos {show(res, 'embedding_cos', '.4f')}"
    )
    print("language-model metrics: not computable (the model is an encoder, no LM head)")
    print(f"note: {res['base_note']}")
    return 0


def floor_reference(args, config):
    """(tokens, fp32 logits at their scored positions) of the base for the dtype floor, taken
    from an fp32 load that is dropped before the model is loaded in --dtype; None when the
    model will be held in fp32 or its dtype is only known once loaded (pickle weights).

    Why first: loading the fp32 copy beside the bf16 model held 3× the bf16 weights' bytes; the
    reference logits [windows, seqlen−1, vocab] are a fraction of that (validate.dtype_floor)."""
    from hemorrhage.sim import load
    from hemorrhage.sim.windows import eval_windows
    from hemorrhage.sim.models.weights import held_dtype
    from hemorrhage.sim.hub.registry import resolve
    from hemorrhage.validate.dtype_floor import reference_logits

    if getattr(args, "dtype", "auto") == "float32":
        return None
    path = resolve(args.model)
    if held_dtype(path, args.dtype) in (None, "float32"):
        return None
    ref = load(args.model, allow_pickle=getattr(args, "allow_pickle", False), quiet=True, dtype="float32")
    tokens = eval_windows(
        ref.tokenizer, config.source, seqlen=config.seqlen, stride=config.seqlen, max_windows=config.windows
    )
    return np.asarray(tokens), reference_logits(ref.model, tokens)


def dtype_floor_of(args, loaded, tokens, floor_ref=None) -> dict:
    """The base in --dtype against the same base in fp32 on the measured windows
    (validate.dtype_floor), from `floor_ref` (floor_reference) when it was taken on these
    windows, else from an fp32 copy loaded only for this and dropped after."""
    from hemorrhage.validate.dtype_floor import dtype_floor

    if loaded.dtype == "float32":
        return dtype_floor(loaded.model, "float32", tokens)
    if floor_ref is not None and np.array_equal(floor_ref[0], np.asarray(tokens)):
        return dtype_floor(loaded.model, loaded.dtype, tokens, z_ref=floor_ref[1])
    from hemorrhage.sim import load

    ref = load(args.model, allow_pickle=getattr(args, "allow_pickle", False), quiet=True, dtype="float32")
    return dtype_floor(loaded.model, loaded.dtype, tokens, ref.model)


def print_report(res: dict) -> None:
    """The human table; a null metric reads 'not computable (reason)' (validate.computable)."""
    from hemorrhage.validate.computable import reasons, show

    g = lambda k, spec=".4g": show(res, k, spec)  # noqa: E731
    print(f"{res['model']}, {res['method']} {res['settings']}  ({res['config']['scored_tokens']} scored tokens)")
    print(
        f"ppl {g('ppl_base')} -> {g('ppl')}   KL {g('kl')} (½Var_p(Δz) {g('kl_pred')})   "
        f"top-1 agreement {g('top1_agreement', '.3f')}"
    )
    print(f"cos h/z/p {g('cos_h', '.4f')} / {g('cos_z', '.4f')} / {g('cos_p', '.4f')}")
    floor = res.get("dtype_floor") or {}
    if floor.get("dtype", "float32") != "float32":  # damage below this is below the dtype's resolution
        print(
            f"{floor['dtype']} floor (base in {floor['dtype']} vs fp32): KL {show(floor, 'kl')}, top-1 agreement "
            f"{show(floor, 'top1_agreement', '.3f')}"
            + (f"; first non-finite {floor['nonfinite']}" if floor.get("nonfinite") else "")
        )
    if "kl_stderr" in res:
        print_distributions(res)
    if "mc_agreement" in res:
        print(
            f"MC ({res['mc_items']} items): agreement {g('mc_agreement', '.3f')}, accuracy {g('mc_acc_base', '.3f')} "
            f"-> {g('mc_acc', '.3f')}; KL over the choices {g('mc_kl_choices')} vs full vocabulary "
            f"{g('mc_kl_full')} at the answer position"
        )
    if "first_divergence_mean" in res:
        print(
            f"generation: first divergence at step {g('first_divergence_mean', '.2f')} of {res['new_tokens']} "
            f"(mean of {res['prompts']} prompts), identical continuations {g('gen_identical', '.2f')}"
        )
    for name, st in res.get("strategies", {}).items():
        print(
            f"  {name:<10} first divergence {show(st, 'first_divergence_mean', '.2f')}, "
            f"same token {show(st, 'gen_token_agreement', '.2f')}"
        )
    if "steps" in res:
        st = res["steps"]
        print(
            f"teacher-forced along the base's path: top-1 agreement {show(st, 'tf_agreement', '.3f')}; first flip = "
            f"free-running first divergence in {show(st, 'tf_first_flip_matches_free_running', '.0%')} "
            f"of prompts"
        )
    for line in (
        reasons(res)
        + [r for s in res.get("strategies", {}).values() for r in reasons(s)]
        + reasons(res.get("steps", {}))
    ):
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
        cells = (
            [f"max {g(name + '_max')}"]
            + [f"{'median' if k == 'median' else f'{q:g}%'} {g(f'{name}_{k}')}" for k, q in qs.items()]
            + [f"min {g(name + '_min')}"]
        )
        return "  ".join(cells)

    print(
        f"ln(PPL_q/PPL_p) {pm('ln_ppl_ratio', 'ln_ppl_ratio_stderr')}   ppl {pm('ppl_base', 'ppl_base_stderr')} -> "
        f"{pm('ppl', 'ppl_stderr')}"
    )
    print(
        f"KL(p‖q) {pm('kl', 'kl_stderr')}   KL(q‖p) {pm('kl_reverse', 'kl_reverse_stderr')}   "
        f"same top p {pm('top1_agreement', 'top1_stderr', '.4f')}"
    )
    print(f"  KL(p‖q) per token: {row('kl', PERCENTILES)}")
    print(f"  KL(q‖p) per token: {row('kl_reverse', PERCENTILES)}")
    print(
        f"Δp = q(target) − p(target): mean {pm('delta_p_mean', 'delta_p_stderr')}   "
        f"RMS {pm('delta_p_rms', 'delta_p_rms_stderr')}"
    )
    print(f"  Δp per token: {row('delta_p', DELTA_P_PERCENTILES)}")
