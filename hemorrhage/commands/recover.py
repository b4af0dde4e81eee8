"""hemorrhage recover --model M --method METHOD [settings] --steps N [--lr LR] [--loss kl|text] [--json]

Can training undo the damage?  Compress, then fine-tune the compressed model with optax
while its masks and quantization grids stay fixed (straight-through estimator for the
quantized weights; --lora-rank for LoRA), against the base model's next-token
distributions (KL distillation, default) or the text; re-measure on held-out text.
See hemorrhage/sim/recover.py.
"""

from hemorrhage.commands.common import (
    add_compression,
    add_model,
    add_overwrite,
    check_export_out,
    compress_loaded,
    load_model,
    print_json,
)


def add_arguments(p) -> None:
    add_model(p)
    add_compression(p)
    g = p.add_argument_group("recovery")
    g.add_argument("--steps", type=int, default=50, help="optimizer steps (default 50)")
    g.add_argument(
        "--lr",
        type=float,
        default=1e-4,
        help="Adam learning rate of pruned / dense weights, in weight units (default 1e-4)",
    )
    g.add_argument(
        "--ste-lr",
        type=float,
        default=0.005,
        help="Adam learning rate of quantized latents, in grid steps per update (default 0.005)",
    )
    g.add_argument(
        "--loss",
        choices=("kl", "text"),
        default="kl",
        help="kl: distil the base's distributions (default); text: next-token loss on the text",
    )
    g.add_argument("--batch", type=int, default=4, help="training windows per step")
    g.add_argument("--train-seqlen", type=int, default=128, help="tokens per training window")
    g.add_argument("--pool", type=int, default=64, help="training windows drawn from the train split")
    g.add_argument("--lora-rank", type=int, default=0, help="train a rank-r LoRA update of the latent (0: full)")
    g.add_argument("--eval-every", type=int, help="also measure every N steps (history in --json)")
    m = p.add_argument_group("measurement (held-out Wikipedia)")
    m.add_argument("--windows", type=int, default=4, help="held-out windows measured")
    m.add_argument("--seqlen", type=int, default=128, help="tokens per measured window")
    m.add_argument("--prompts", type=int, default=8, help="held-out prompts for generation agreement (0: none)")
    m.add_argument("--new-tokens", type=int, default=32, help="greedy tokens generated per prompt")
    p.add_argument(
        "--out",
        help="also write the recovered model as a Hugging Face folder here (new, empty, or an "
        "earlier export: only its files are replaced)",
    )
    add_overwrite(p)
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")


def run(args) -> int:
    import sys

    from hemorrhage.errors import UserError
    from hemorrhage.sim.recover import make_probe, recover

    for name in ("batch", "pool", "windows", "new_tokens"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(args, name)}")
    if args.steps < 0:
        raise UserError(f"--steps must be ≥ 0, got {args.steps}")
    if not args.lr > 0 or not args.ste_lr > 0:
        raise UserError(f"--lr and --ste-lr must be > 0, got {args.lr} and {args.ste_lr}")
    if args.lora_rank < 0 or args.prompts < 0:
        raise UserError("--lora-rank and --prompts must be ≥ 0")
    if args.eval_every is not None and args.eval_every < 1:
        raise UserError(f"--eval-every must be ≥ 1, got {args.eval_every}")
    if args.seqlen < 2 or args.train_seqlen < 2:
        raise UserError("--seqlen and --train-seqlen must be ≥ 2")
    if args.sparsity is not None and not 0.0 <= args.sparsity < 1.0:
        raise UserError(f"--sparsity must be in [0, 1), got {args.sparsity}")
    if args.out:
        check_export_out(args)  # before the model loads: a user's folder, a path below a file
    loaded = load_model(args)
    comp, record = compress_loaded(loaded, args)
    probe = make_probe(
        loaded, windows=args.windows, seqlen=args.seqlen, prompts=args.prompts, new_tokens=args.new_tokens
    )
    log = None if args.json else (lambda msg: print(f"[recover] {msg}", file=sys.stderr, flush=True))
    rec = recover(
        loaded,
        comp,
        steps=args.steps,
        lr=args.lr,
        ste_lr=args.ste_lr,
        batch=args.batch,
        seqlen=args.train_seqlen,
        pool=args.pool,
        loss=args.loss,
        lora_rank=args.lora_rank,
        seed=args.seed,
        probe=probe,
        eval_every=args.eval_every,
        log=log,
    )
    out = {"model": loaded.name, "record": record, "base_note": loaded.base_note, **rec.summary()}
    if args.out:
        from hemorrhage.sim.compress import export_hf

        out["exported"] = str(
            export_hf(rec.model, loaded.path, args.out, {**record, "recovery": rec.settings}, overwrite=args.overwrite)
        )
    if args.json:
        print_json(out)
        return 0
    print(
        f"{loaded.name}, {record['method']} {record.get('settings', {})}: {args.steps} steps of "
        f"{args.loss} training, lr {args.lr:g}, STE lr {args.ste_lr:g} grid steps"
        + (f", LoRA r={args.lora_rank}" if args.lora_rank else "")
    )
    rows = [
        ("KL(p‖q)", "kl"),
        ("top-1 agreement", "top1"),
        ("Var_p(Δz)", "var_p"),
        ("perplexity", "ppl"),
        ("gen. prefix agreement", "gen_prefix_agreement"),
    ]
    print(f"{'':>24} {'before':>10} {'after':>10}")
    for label, k in rows:
        if f"{k}_before" in out:
            print(f"{label:>24} {out[k + '_before']:>10.4g} {out[k + '_after']:>10.4g}")
    c = rec.constraints
    print(
        f"masks exact: {c['masks_exact']}, grids fixed: {c['grids_fixed']}, weights changed: "
        f"{c['weights_changed']:.3f}"
        + (f", codes changed: {c['codes_changed']:.4f}" if c["codes_changed"] is not None else "")
    )
    if out.get("exported"):
        print(f"recovered model: {out['exported']}")
    print(f"note: {loaded.base_note}")
    return 0
