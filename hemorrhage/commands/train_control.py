"""hemorrhage train-control [--seed S] [--steps N] [--minutes M] [--quick] [--out DIR] [--json]

Train the clean fp32 control model (a small Llama, from scratch, on the packaged
Wikipedia + Shakespeare train text) and cache it as a Hugging Face folder, so that
`--model control` works in every command.  See hemorrhage/sim/train.py for the recipe.
"""

from hemorrhage.commands.common import print_json


def add_arguments(p) -> None:
    p.add_argument("--seed", type=int, default=0, help="initialisation and data order (default 0)")
    p.add_argument("--steps", type=int, help="optimizer steps (default 1200; --quick: 40)")
    p.add_argument(
        "--minutes",
        type=float,
        default=15.0,
        help="wall-clock budget: if this CPU is too slow for --steps within it, fewer steps are run "
        "(said on stderr, recorded in hemorrhage.json); 0 = no budget (default 15)",
    )
    p.add_argument("--lr", type=float, help="peak learning rate (default 3e-3)")
    p.add_argument(
        "--quick", action="store_true", help="a tiny model trained for a few dozen steps (tests; not the control)"
    )
    p.add_argument(
        "--out", help="output folder (default: the cache's models/control, or models/control-quick with --quick)"
    )
    p.add_argument("--force", action="store_true", help="retrain even if the output folder holds a model")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--timings",
        action="store_true",
        help="with --json: include the wall-clock seconds (`timings`; never stored in hemorrhage.json)",
    )


def run(args) -> int:
    import json
    from pathlib import Path

    from hemorrhage.errors import UserError
    from hemorrhage.sim import train
    from hemorrhage.sim.outputs import check_path

    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be ≥ 1, got {args.steps}")
    if args.minutes is not None and args.minutes < 0:
        raise UserError(f"--minutes must be ≥ 0, got {args.minutes}")
    if args.seed < 0:
        raise UserError(f"--seed must be ≥ 0, got {args.seed}")
    spec = (train.QUICK if args.quick else train.ControlSpec()).replace(steps=args.steps, lr=args.lr)
    out = Path(args.out).expanduser() if args.out else train.control_path(quick=args.quick)
    check_path(out, want="dir")  # below a file, not writable: one line now, not after the training
    if out.exists() and not train.is_trained(out) and any(out.iterdir()):
        raise UserError(f"{out} exists and is not a control model folder; choose another --out")
    if train.is_trained(out) and not args.force:
        report = json.loads((out / "hemorrhage.json").read_text())
        report["path"], report["cached"] = str(out), True
    else:
        minutes = args.minutes if args.minutes else None
        report = train.train_control(spec, seed=args.seed, out_dir=out, minutes=minutes)
        report["cached"] = False
    if args.json:
        print_json(report, timings=args.timings)
        return 0
    _print(report)
    return 0


def _print(r: dict) -> None:
    spec = r["spec"]
    print(f"control model: {r['path']}" + ("  (cached; --force retrains)" if r.get("cached") else ""))
    print(
        f"  {r['n_params'] / 1e6:.2f} M parameters (d={spec['d_model']}, {spec['n_layers']} layers, "
        f"GQA {spec['n_heads']}/{spec['n_kv_heads']}, d_ff {spec['d_ff']}, vocab {spec['vocab_size']}), "
        f"seed {r['seed']}, {r['steps']} steps, {r['tokens_seen'] / 1e6:.2f} M tokens seen"
        + (
            ""
            if "timings" not in r
            # a cached model's file keeps no timings
            else f", trained in {r['timings']['train_seconds']:.0f} s ({r['timings']['total_seconds']:.0f} s in all)"
        )
    )
    for src, h in r["heldout"].items():
        print(
            f"  held-out {src:<11} perplexity {h['ppl']:8.1f}   unigram {h['unigram_ppl']:8.1f}   "
            f"(ratio {h['ratio_to_unigram']:.3f}, {h['scored_tokens']} tokens)"
        )
    for s in r["samples"]:
        print(f"  greedy   {s['prompt']!r} -> {s['greedy']!r}")
        print(f"  sampled  {s['prompt']!r} -> {s['sampled_t0.8']!r}")
    print(f"  note: {r.get('base_note', '')}")
