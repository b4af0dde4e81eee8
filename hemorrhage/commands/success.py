"""hemorrhage success {encoder,retrieval,in_context,calibration} ...

The seeds' success cases on real models (validate/success_runs.py): an encoder's retrieval rows
over a grid, the retrieval verdict over stored rows, in-context retrieval (exact match on
passages that hold the answer) and the calibration-data matrix.  Tables go to --results,
figures to --figures, rows to --results/<experiment>/.
"""

from __future__ import annotations

from hemorrhage.commands.common import check_dirs


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="what", required=True, parser_class=type(p))
    e = sub.add_parser("encoder", help="a sentence encoder's retrieval rows over a grid")
    e.add_argument("--model", default="minilm-l6")
    e.add_argument("--grid", required=True, help="compression settings, as `hemorrhage sweep --grid`")
    e.add_argument("--documents", type=int, default=1000, help="held-out documents retrieved (default 1000)")
    r = sub.add_parser("retrieval", help="the retrieval verdict over stored rows")
    r.add_argument("--rows", action="append", required=True, help="a JSON Lines file of rows; repeat for several")
    r.add_argument("--stem", default="success")
    c = sub.add_parser("in_context", help="in-context retrieval: exact match on passages that hold the answer")
    c.add_argument("--model", default="smollm2-135m")
    c.add_argument("--grid", required=True)
    c.add_argument("--items", type=int, default=48, help="cloze questions (default 48)")
    k = sub.add_parser("calibration", help="KL when calibrating on each source and evaluating on each")
    k.add_argument("--model", default="smollm2-135m")
    k.add_argument("--methods", default="gptq:bits=3;wanda:sparsity=0.5;sparsegpt:sparsity=0.5")
    k.add_argument("--calib-samples", type=int, default=8)
    k.add_argument("--eval-windows", type=int, default=2)
    k.add_argument("--predict", action="store_true", help="the predictor's matrix beside the measured one")
    for s in (e, r, c, k):
        s.add_argument("--results", default="results", help="folder for tables and rows (default results)")
        s.add_argument("--figures", default="figures", help="folder for figures (default figures)")


def run(args) -> int:
    from hemorrhage.validate.success_runs import run as run_success

    check_dirs(args, "--results", "--figures")
    for name in ("documents", "items", "calib_samples", "eval_windows"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            from hemorrhage.errors import UserError

            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    return run_success(args)
