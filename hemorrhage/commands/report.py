"""hemorrhage report --sweep results/sweep_M.jsonl [--sweep ...] [--predict P.json] --out report/

One static page to send a colleague: the models and their base notes, each experiment's
claim, verdict, evidence, figure and table, the predictor's table where one is given (or
bench/bench_predict_<model>.json lies beside the sweep), the notation, and the command that
reproduces each number.  `--out` gets index.html with the PNGs and CSVs beside it; it opens
with no server and no network (hemorrhage.validate.report).
"""

from __future__ import annotations

import shlex

from hemorrhage.commands.common import add_overwrite


def add_arguments(p) -> None:
    p.add_argument(
        "--sweep",
        required=True,
        action="append",
        help="a sweep's JSON Lines file (hemorrhage sweep --out); repeat for several models",
    )
    p.add_argument(
        "--predict",
        action="append",
        default=[],
        help="a `hemorrhage predict --json` output (or bench_predict_*.json) to show as the predictor's "
        "table; repeatable",
    )
    p.add_argument("--out", default="report", help="folder for index.html and its figures (default report)")
    add_overwrite(p)


def run(args) -> int:
    from hemorrhage.validate.report import write_report

    command = "hemorrhage report " + " ".join(
        [f"--sweep {shlex.quote(s)}" for s in args.sweep]
        + [f"--predict {shlex.quote(s)}" for s in args.predict]
        + [f"--out {shlex.quote(args.out)}"]
    )
    page = write_report(args.sweep, args.out, predict=args.predict, overwrite=args.overwrite, command=command)
    print(page)
    return 0
