"""hemorrhage diagnose --model M --method rtn --bits 2 [--json]

Signal Degradation or Computation Collapse: the verdict and the evidence per block.
"""

from pathlib import Path

from hemorrhage.commands.common import add_compression, add_model, check_dirs, compress_loaded, load_model, print_json


def add_arguments(p) -> None:
    add_model(p)
    add_compression(p, default_method="rtn")
    p.add_argument("--windows", type=int, default=2, help="held-out Wikipedia windows")
    p.add_argument("--seqlen", type=int, default=64)
    p.add_argument("--figures", default="figures", help="folder for the figure ('' for none)")
    p.add_argument(
        "--results",
        default="results/diagnose",
        help="folder for the stored verdict and evidence, JSON ('' for none); `hemorrhage figures` "
        "redraws the figure from it",
    )
    p.add_argument("--json", action="store_true")


def run(args) -> int:
    from hemorrhage.errors import UserError
    from hemorrhage.sim.windows import eval_windows
    from hemorrhage.validate.diagnose import diagnose
    from hemorrhage.validate.hierarchy import setting_label
    from hemorrhage.validate.plots import diagnose_figure

    if args.windows < 1 or args.seqlen < 2:
        raise UserError("--windows must be ≥ 1 and --seqlen ≥ 2")
    check_dirs(args, "--results", "--figures")
    loaded = load_model(args)
    comp, record = compress_loaded(loaded, args)
    tokens = eval_windows(loaded.tokenizer, "wiki", seqlen=args.seqlen, stride=args.seqlen, max_windows=args.windows)
    res = diagnose(loaded.model, comp, tokens, record)
    res.update(model=loaded.name, record=record, base_note=loaded.base_note)
    stem = f"diagnose_{Path(loaded.name).name}_{record['method']}_{setting_label(record)}".replace(",", "_")
    res["title"] = f"{loaded.name}, {record['method']} ({setting_label(record)}): {res['verdict'].replace('_', ' ')}"
    if args.figures:
        res["figure"] = str(diagnose_figure(res["layers"], Path(args.figures) / f"{stem}.png", res["title"]))
    if args.results:
        import json

        from hemorrhage.sim.outputs import atomic_write_text

        Path(args.results).mkdir(parents=True, exist_ok=True)
        res["table"] = str(Path(args.results) / f"{stem}.json")
        atomic_write_text(Path(res["table"]), json.dumps(res, indent=1, sort_keys=True, allow_nan=True, default=str))
    if args.json:
        print_json(res)
        return 0
    print(
        f"verdict: {res['verdict']}  (final KL {res['final_kl']:.4g}, top-1 agreement "
        f"{res['top1_agreement']:.3f}, collapsed blocks {res['collapsed_blocks'] or 'none'})"
    )
    print(f"{'block':>5} {'label':>12} {'KL lens':>9} {'CKA':>6} {'gate flip':>9} {'Δentropy':>9} {'restore h':>9}")
    for x in res["layers"]:
        print(
            f"{x['block']:>5} {x['label']:>12} {x['kl_lens']:>9.4g} {x['cka']:>6.3f} {x['gate_flip']:>9.3f} "
            f"{x['entropy_shift']:>9.3f} {x['restore_h']:>9.3f}"
        )
    if res.get("figure"):
        print(f"figure: {res['figure']}")
    return 0
