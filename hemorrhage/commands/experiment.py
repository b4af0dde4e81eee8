"""hemorrhage experiment NAME --sweep results/sweep_X.jsonl [--sweep ...] [--json]

Run one experiment (or `all`) on stored sweeps, no model needed: hierarchy (exp 1),
mc_vs_generation (exp 2), compounding (exp 3), thresholds (exp 4), ppl_not_enough (exp 6),
rare_targets (exp 7), decoding (exp 8).  Several --sweep files (e.g. a real model and the
control) are read together and compared.  Writes results/NAME_<stem>.csv and
figures/NAME_<stem>.png and says whether the seed's claim held on these data.  Rules: each
experiment module's docstring (hemorrhage.validate.experiments lists them).
"""

from __future__ import annotations

from pathlib import Path

from hemorrhage.commands.common import check_dirs, print_json


def add_arguments(p) -> None:
    from hemorrhage.validate.experiments import EXPERIMENTS

    p.add_argument("name", choices=EXPERIMENTS + ("all",), help="which experiment (all: every one)")
    p.add_argument(
        "--sweep",
        required=True,
        action="append",
        help="a sweep's JSON Lines file (hemorrhage sweep --out); repeat to compare several",
    )
    p.add_argument("--stem", help="name of the outputs (default: the sweep's file stem, or 'models' for several)")
    p.add_argument("--results", default="results", help="folder for the tidy CSV (default results)")
    p.add_argument("--figures", default="figures", help="folder for the figure (default figures)")
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")


def run(args) -> int:
    from hemorrhage.errors import UserError
    from hemorrhage.validate.experiments import run_all, run_experiment
    from hemorrhage.validate.sweep import read_rows

    check_dirs(args, "--results", "--figures")
    rows = []
    for s in args.sweep:
        sweep = Path(s)
        if not sweep.is_file():
            raise UserError(f"--sweep {sweep}: no such file")
        got = read_rows(sweep, repair=False)
        if not got or not all(isinstance(r, dict) and "kl" in r for r in got):
            raise UserError(f"--sweep {sweep}: not a sweep file (no rows with kl)")
        rows += got
    stem = args.stem or (Path(args.sweep[0]).stem if len(args.sweep) == 1 else "models")
    quiet = lambda msg: None  # noqa: E731
    verdicts = (
        run_all(rows, args.results, args.figures, stem, log=quiet)
        if args.name == "all"
        else {args.name: run_experiment(args.name, rows, args.results, args.figures, stem)}
    )
    if args.json:
        print_json(verdicts if args.name == "all" else verdicts[args.name])
        return 0
    for v in verdicts.values():
        print(f"{v['experiment']} on {', '.join(args.sweep)} ({v['settings']} settings)")
        print(f"claim: {v['claim']}")
        print(v["summary"])
        print(f"table: {v['table']}\nfigure: {v['figure']}\n")
    return 0
