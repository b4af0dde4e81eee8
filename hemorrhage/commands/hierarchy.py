"""hemorrhage hierarchy --model M --method magnitude --sparsity 0.5

The main job: compress, measure per layer cos(h), cos(z), cos(p), KL(p‖q) on
held-out Wikipedia, print the table, write the tidy CSV and the figure.
"""

from pathlib import Path

from hemorrhage.commands.common import (add_compression, add_model, check_compression, check_dirs, compress_loaded,
                                        load_model, print_json)


def add_arguments(p) -> None:
    add_model(p)
    add_compression(p)
    p.add_argument("--windows", type=int, default=4, help="held-out Wikipedia windows measured")
    p.add_argument("--seqlen", type=int, default=128, help="tokens per measured window")
    p.add_argument("--results", default="results/hierarchy", help="folder for the tidy CSV")
    p.add_argument("--figures", default="figures", help="folder for the figure")
    p.add_argument("--json", action="store_true", help="print the per-layer metrics as JSON")


def run(args) -> int:
    from hemorrhage.errors import UserError
    from hemorrhage.sim.data import eval_windows
    from hemorrhage.validate import hierarchy as H
    from hemorrhage.validate.plots import hierarchy_figure

    if args.windows < 1 or args.seqlen < 2:
        raise UserError("--windows must be ≥ 1 and --seqlen ≥ 2")
    if args.sparsity is not None and not 0.0 <= args.sparsity < 1.0:
        raise UserError(f"--sparsity must be in [0, 1), got {args.sparsity}")
    check_compression(args)
    check_dirs(args, "--results", "--figures")
    loaded = load_model(args)
    comp, record = compress_loaded(loaded, args)
    tokens = eval_windows(loaded.tokenizer, "wiki", seqlen=args.seqlen, stride=args.seqlen,
                          max_windows=args.windows)
    df = H.hierarchy_table(loaded, record, H.measure_hierarchy(loaded, comp, tokens))
    stem = f"hierarchy_{Path(loaded.name).name}_{record['method']}_{H.setting_label(record)}".replace(",", "_")
    table = H.write_table(df, args.results, stem)
    title = (f"{loaded.name}, {record['method']} ({H.setting_label(record)}) vs its base — "
             f"{tokens.size} held-out Wikipedia tokens.  {loaded.base_note}")
    fig = hierarchy_figure(df, Path(args.figures) / f"{stem}.png", title)
    summary = {"model": loaded.name, "record": record, "tokens": int(tokens.size), "table": str(table),
               "figure": str(fig), "base_note": loaded.base_note, "verdict": H.verdict(df),
               "per_layer": {k: df[k].tolist() for k in H.METRICS}}
    if args.json:
        print_json(summary)
        return 0
    cols = ["layer", "cos_h", "cos_z", "cos_p", "kl", "kl_pred", "top1"]
    print(df[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    v = summary["verdict"]
    print(f"\nfinal KL {v['final_kl']:.4g}, top-1 agreement {v['final_top1_agreement']:.3f}; "
          f"1−cos h/z/p = {v['final_one_minus_cos']['h']:.3g}/{v['final_one_minus_cos']['z']:.3g}/"
          f"{v['final_one_minus_cos']['p']:.3g} -> p damaged more than h: {v['p_damaged_more_than_h']}")
    print(f"table: {table}\nfigure: {fig}\nnote: {loaded.base_note}")
    return 0
