"""hemorrhage figures [--results results] [--figures figures]

Redraw every figure from the stored results, without the model: each sweep
results/*.jsonl gives the three experiment figures (mc_vs_generation, thresholds,
ppl_not_enough); each results/hierarchy/*.csv gives its hierarchy figure.  Then
results/report/index.html: one static page over every stored sweep, linking these figures.
"""

from __future__ import annotations

from pathlib import Path

from hemorrhage.commands.common import check_dirs


def add_arguments(p) -> None:
    p.add_argument("--results", default="results", help="folder of stored results (default results)")
    p.add_argument("--figures", default="figures", help="folder for the figures (default figures)")


def run(args) -> int:
    from hemorrhage.errors import UserError
    from hemorrhage.validate.experiments import regenerate

    if not Path(args.results).is_dir():
        raise UserError(f"--results {args.results}: no such folder")
    check_dirs(args, "--results", "--figures")  # SUMMARY.md and verdicts are rewritten in --results
    written = regenerate(args.results, args.figures)
    print(f"{len(written)} figures written under {args.figures}")
    from hemorrhage.validate.report import write_stored_report

    write_stored_report(args.results, args.figures)  # results/report/index.html: one page for every stored sweep
    return 0
