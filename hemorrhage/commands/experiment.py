"""hemorrhage experiment NAME --sweep results/sweep_X.jsonl [--results results] [--figures figures] [--json]

Run one experiment on a stored sweep (no model needed): mc_vs_generation (exp 2: multiple
choice survives, generation does not), thresholds (exp 4: the cliff in bits / sparsity with
a bootstrap CI), ppl_not_enough (exp 6: perplexity vs capability metrics, Spearman ρ).
Writes results/NAME_<sweep stem>.csv and figures/NAME_<sweep stem>.png and says whether the
seed's claim held on these data.  Rules: hemorrhage.validate.experiments' docstring.
"""

from __future__ import annotations

from pathlib import Path

from hemorrhage.commands.common import print_json

NAMES = ("mc_vs_generation", "thresholds", "ppl_not_enough")


def add_arguments(p) -> None:
    p.add_argument("name", choices=NAMES, help="which experiment")
    p.add_argument("--sweep", required=True, help="a sweep's JSON Lines file (hemorrhage sweep --out)")
    p.add_argument("--results", default="results", help="folder for the tidy CSV (default results)")
    p.add_argument("--figures", default="figures", help="folder for the figure (default figures)")
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")


def run(args) -> int:
    from hemorrhage.errors import UserError
    from hemorrhage.validate.experiments import run_experiment
    from hemorrhage.validate.sweep import read_rows

    sweep = Path(args.sweep)
    if not sweep.is_file():
        raise UserError(f"--sweep {sweep}: no such file")
    rows = read_rows(sweep, repair=False)
    if not rows or not all(isinstance(r, dict) and "kl" in r for r in rows):
        raise UserError(f"--sweep {sweep}: not a sweep file (no rows with kl)")
    v = run_experiment(args.name, rows, args.results, args.figures, sweep.stem)
    if args.json:
        print_json(v)
        return 0
    print(f"{v['experiment']} on {sweep} ({v['settings']} settings)")
    print(f"claim: {v['claim']}")
    print(v["summary"])
    print(f"table: {v['table']}\nfigure: {v['figure']}")
    return 0
