"""The seeds' success cases on real models: the runs behind results/summary/2_success_cases.md.

    hemorrhage success encoder --model minilm-l6 --grid "magnitude:sparsity=0.1,0.5"
    hemorrhage success retrieval --rows results/retrieval/sweep_smollm2-135m.jsonl ...
    hemorrhage success in_context --model smollm2-135m --grid "..." [--items 48]
    hemorrhage success calibration --model smollm2-135m [--predict]

`encoder`: an encoder's rows over a grid (validate.exp_retrieval.encoder_rows; `hemorrhage sweep`
measures causal models; a causal model's rows come from `hemorrhage sweep --retrieval N`).
`retrieval`: exp_retrieval's verdict over stored rows (JSON Lines).  `in_context`: the rows of
validate/in_context.py and exp_in_context's verdict.  `calibration`: exp_calibration's matrix,
optionally with the predictor's.  Rows go to results/<exp>/<stem>.jsonl (written atomically,
whole), tables and figures to results/ and figures/ as every experiment writes them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _log(msg: str) -> None:
    print(f"[success] {msg}", file=sys.stderr, flush=True)


def _write_rows(rows: list[dict], path: Path) -> Path:
    from hemorrhage.sim.outputs import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True, allow_nan=True, default=str) + "\n" for r in rows))
    return path


def _read_rows(paths) -> list[dict]:
    rows = []
    for p in paths:
        rows += [json.loads(x) for x in Path(p).read_text().splitlines() if x.strip()]
    return rows


def _print_verdict(v: dict) -> None:
    print(f"{v['experiment']}: {v['summary']}\ntable: {v['table']}\nfigure: {v['figure']}")


def run(args) -> int:
    """One of the four runs; `args` as `hemorrhage success` parses them (hemorrhage/commands/success.py)."""
    from hemorrhage.sim import load
    from hemorrhage.validate.sweep import parse_grid

    results = Path(args.results)
    if args.what == "retrieval":
        from hemorrhage.validate.exp_retrieval import retrieval

        _print_verdict(retrieval(_read_rows(args.rows), results, args.figures, args.stem))
        return 0
    if args.what == "encoder":
        from hemorrhage.validate.exp_retrieval import encoder_rows
        from hemorrhage.validate.measure import MeasureConfig

        grid = parse_grid(args.grid)
        loaded = load(args.model, quiet=True)
        rows = encoder_rows(loaded, grid, MeasureConfig(retrieval=args.documents))
        print(_write_rows(rows, results / "retrieval" / f"sweep_{Path(args.model).name}.jsonl"))
        return 0
    if args.what == "in_context":
        from hemorrhage.validate.exp_in_context import in_context
        from hemorrhage.validate.in_context import in_context_rows

        grid = parse_grid(args.grid)
        loaded = load(args.model, quiet=True)
        stem = Path(args.model).name
        rows = in_context_rows(
            loaded,
            grid,
            n=args.items,
            log=_log,  # rows kept after each setting
            on_row=lambda rows: _write_rows(rows, results / "in_context" / f"rows_{stem}.jsonl"),
        )
        _print_verdict(in_context(rows, results, args.figures, stem))
        return 0
    from hemorrhage.validate.exp_calibration import calibration, calibration_matrix, predicted_matrix, source_tokens

    methods = parse_grid(args.methods)
    loaded = load(args.model, quiet=True)
    import pandas as pd

    kw = {"calib_samples": args.calib_samples, "eval_windows": args.eval_windows}
    tokens = source_tokens(loaded, **kw)
    parts = []
    for method in methods:  # the verdict is rewritten after each method: a killed run keeps what it measured
        parts.append(calibration_matrix(loaded, [method], *tokens, log=_log))
        v = calibration(pd.concat(parts, ignore_index=True), None, results, args.figures, Path(args.model).name)
    if args.predict:
        v = calibration(
            pd.concat(parts, ignore_index=True),
            predicted_matrix(loaded, methods, **kw, log=_log),
            results,
            args.figures,
            Path(args.model).name,
        )
    _print_verdict(v)
    return 0
