"""hemorrhage check --model M [--json]"""

from hemorrhage.commands.common import add_model, load_model, print_json


def add_arguments(p) -> None:
    add_model(p)
    p.add_argument("--windows", type=int, default=2, help="held-out Wikipedia windows to compare")
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument("--greedy-tokens", type=int, default=20)
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args) -> int:
    from hemorrhage.sim.hub.loading import load_tokenizer
    from hemorrhage.sim.models.loader import checkpoint_files
    from hemorrhage.sim.models.weights import held_dtype
    from hemorrhage.sim.hub.preflight import check_checkpoint, check_has_weights
    from hemorrhage.sim.hub.registry import resolve
    from hemorrhage.validate.check import check_against_torch, torch_side

    # transformers' side first, its model dropped before ours loads: one fp32 copy at a time
    path = resolve(args.model)
    check_has_weights(path)  # a config-only folder: pointed to `hemorrhage memory`
    checkpoint_files(path, getattr(args, "allow_pickle", False))  # what load() refuses, refused before torch runs
    check_checkpoint(path)
    held_dtype(path, getattr(args, "dtype", "auto"))
    ref = torch_side(path, load_tokenizer(path), windows=args.windows, seqlen=args.seqlen, n_greedy=args.greedy_tokens)
    res = check_against_torch(
        load_model(args), windows=args.windows, seqlen=args.seqlen, n_greedy=args.greedy_tokens, reference=ref
    )
    if args.json:
        print_json(res)
    else:
        verdict = "PASS" if res["passed"] else "FAIL"
        print(
            f"{verdict} {res['model']}: max|Δz| = {res['max_abs_logit_diff']:.2e} "
            f"(tolerance {res['tolerance']:.0e}, |z| ≤ {res['max_abs_logit']:.1f}) over "
            f"{res['tokens_compared']} tokens; greedy {res['greedy_tokens']} tokens identical: "
            f"{res['greedy_match']}"
        )
        print(f"  jax:   {res['continuation_jax']!r}\n  torch: {res['continuation_torch']!r}")
    return 0 if res["passed"] else 1
