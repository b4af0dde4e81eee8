"""hemorrhage hierarchy --model M --method magnitude --sparsity 0.5

The main job: compress, measure per layer cos(h), cos(z), cos(p), KL(p‖q) on
held-out Wikipedia, print the table, write the tidy CSV and the figure.
"""

from pathlib import Path

from hemorrhage.commands.common import (
    add_compression,
    add_model,
    check_compression,
    check_dirs,
    compress_loaded,
    load_model,
    print_json,
)


def add_arguments(p) -> None:
    add_model(p)
    add_compression(p)
    p.add_argument("--windows", type=int, default=4, help="held-out Wikipedia windows measured")
    p.add_argument("--seqlen", type=int, default=128, help="tokens per measured window")
    p.add_argument("--results", default="results/hierarchy", help="folder for the tidy CSV")
    p.add_argument("--figures", default="figures", help="folder for the figure")
    p.add_argument("--json", action="store_true", help="print the per-layer metrics as JSON")
    p.add_argument(
        "--counterfactual",
        action="store_true",
        help="also feed each compressed attention / MLP sublayer the dense model's input and measure "
        "the damage it adds on its own (the seed's scripts; validate/sublayer.py): CSV and figure",
    )
    p.add_argument(
        "--raw-lens",
        action="store_true",
        help="also read the cumulative lens without the final norm (head on the raw residual, as the "
        "seed's scripts do), beside the default lens",
    )


def run(args) -> int:
    from hemorrhage.errors import UserError
    from hemorrhage.sim.windows import eval_windows
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
    tokens = eval_windows(loaded.tokenizer, "wiki", seqlen=args.seqlen, stride=args.seqlen, max_windows=args.windows)
    df = H.hierarchy_table(loaded, record, H.measure_hierarchy(loaded, comp, tokens))
    stem = f"hierarchy_{Path(loaded.name).name}_{record['method']}_{H.setting_label(record)}".replace(",", "_")
    table = H.write_table(df, args.results, stem)
    title = (
        f"{loaded.name}, {record['method']} ({H.setting_label(record)}) vs its base — "
        f"{tokens.size} held-out Wikipedia tokens.  {loaded.base_note}"
    )
    fig = hierarchy_figure(df, Path(args.figures) / f"{stem}.png", title)
    summary = {
        "model": loaded.name,
        "record": record,
        "tokens": int(tokens.size),
        "table": str(table),
        "figure": str(fig),
        "base_note": loaded.base_note,
        "verdict": H.verdict(df),
        "per_layer": {k: df[k].tolist() for k in H.METRICS},
    }
    if args.counterfactual or args.raw_lens:
        summary["views"] = _views(args, loaded, comp, tokens, df, stem, title)
    if args.json:
        print_json(summary)
        return 0
    cols = ["layer", "cos_h", "cos_z", "cos_p", "kl", "kl_pred", "top1"]
    print(df[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    v = summary["verdict"]
    print(
        f"\nfinal KL {v['final_kl']:.4g}, top-1 agreement {v['final_top1_agreement']:.3f}; "
        f"1−cos h/z/p = {v['final_one_minus_cos']['h']:.3g}/{v['final_one_minus_cos']['z']:.3g}/"
        f"{v['final_one_minus_cos']['p']:.3g} -> p damaged more than h: {v['p_damaged_more_than_h']}"
    )
    print(f"table: {table}\nfigure: {fig}\nnote: {loaded.base_note}")
    for k, v in summary.get("views", {}).items():
        print(f"{k}: {v}")
    return 0


def _views(args, loaded, comp, tokens, df, stem: str, title: str) -> dict:
    """--counterfactual / --raw-lens: their tables, one figure, and where they disagree with the lens."""
    from hemorrhage.validate import hierarchy as H
    from hemorrhage.validate import sublayer as S

    cum = {k: df[k].to_numpy() for k in ("kl", "cos_h")}
    out, raw, cf = {}, None, None
    if args.raw_lens:
        raw = S.lens_layers(loaded.model, comp, tokens, norm=False)
        import pandas as pd

        out["raw_lens_table"] = str(
            H.write_table(pd.DataFrame({"layer": range(len(raw["kl"])), **raw}), args.results, f"{stem}_rawlens")
        )
    if args.counterfactual:
        cf = S.counterfactual_table(loaded.model, comp, tokens)
        out["counterfactual_table"] = str(H.write_table(cf, args.results, f"{stem}_counterfactual"))
        out["disagreement"] = S.disagreement(cum["kl"], cf)
    out["views_figure"] = str(S.views_figure(cum, cf, raw, Path(args.figures) / f"{stem}_views.png", title))
    return out
