"""A 20-setting sweep on one model: what is computed once and what per setting, timed in
the same run.

    python bench/bench_sweep.py [--model smollm2-135m] [--devices 1] [--out DIR]

The grid (20 settings): magnitude × 6 sparsities, rtn × 4 bit widths × 2 group sizes (32, 64),
wanda × 2, gptq × 2, awq × 2, with small measurement sizes (2 windows × 64 tokens, 4 MC
items, 2 prompts × 8 new tokens, no per-layer lens) and 4 × 64 calibration tokens.

Counted (by wrapping the functions the sweep calls, results unchanged):
    base phase        compute_base calls (1: base residuals, NLL, MC scores, generations)
    calibration       windows drawn vs reused (registry.CALIB_STATS: one draw per distinct
                      calibration setting, every later calibrated setting reuses it), and raw
                      tokenizations of a whole text split (0 once the token ids are cached on disk)
    per setting       compress_from_args + measure wall time; the first setting of each
                      method kind includes its compilation, so first vs the rest is shown

Baseline (same run): the same 20 settings measured one by one as `hemorrhage measure` would,
each paying the base phase and the calibration draw again = sweep time + 19 × (base phase +
one calibration draw), both timed here.  Then the sweep is run again on its own output: all
20 rows are found, nothing is recomputed (resume).  Nothing asserts; everything is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GRID = (
    "magnitude:sparsity=0.1,0.2,0.3,0.4,0.5,0.6;rtn:bits=8,6,4,3,group_size=32,64;"
    "wanda:sparsity=0.3,0.5;gptq:bits=4,3,group_size=64;awq:bits=4,3,group_size=64"
)


def _wrap(module, name: str, counts: dict, times: dict):
    """Count the calls of module.name and time the ones that return (a setting that raises
    is not measured, so its time would pair with the wrong setting)."""
    real = getattr(module, name)

    def wrapped(*a, **k):
        t = time.perf_counter()
        counts[name] += 1
        out = real(*a, **k)
        times[name].append(time.perf_counter() - t)
        return out

    setattr(module, name, wrapped)
    return real


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--grid", default=GRID)
    ap.add_argument("--devices", type=int, default=1, help="settings at once (validate.sweep_workers)")
    ap.add_argument("--out", help="folder for the sweep file (default: a temporary one)")
    args = ap.parse_args()

    import dataclasses

    import hemorrhage.sim.compress as C
    import hemorrhage.sim.data as D
    import hemorrhage.sim.windows as W
    import hemorrhage.validate.base_phase as B
    import hemorrhage.validate.measure as M

    from hemorrhage.sim import load
    from hemorrhage.sim.compress import registry
    from hemorrhage.validate.sweep import base_path_for, parse_grid, run_sweep
    from hemorrhage.validate.sweep_file import check_sweep_out

    grid = parse_grid(args.grid)
    counts, times = defaultdict(int), defaultdict(list)
    for mod, name in (
        (B, "compute_base"),
        (D, "split_text"),
        (W, "calibration_tokens"),
        (C, "compress_from_args"),
        (M, "measure"),
    ):
        _wrap(mod, name, counts, times)
    t = time.perf_counter()
    loaded = load(args.model, quiet=True)
    load_s = time.perf_counter() - t
    tok_cls, tok_call = type(loaded.tokenizer), type(loaded.tokenizer).__call__

    def counting_call(self, text=None, *a, **k):  # a whole text split (not an MC item) being tokenized
        if isinstance(text, str) and len(text) > 20_000:
            counts["tokenize_whole_split"] += 1
        return tok_call(self, text, *a, **k)

    tok_cls.__call__ = counting_call
    small = dict(
        windows=2,
        seqlen=64,
        mc_items=4,
        prompts=2,
        prompt_len=8,
        new_tokens=8,
        per_layer=False,
        steps=False,
        strata_bins=0,
    )
    fields = {f.name for f in dataclasses.fields(M.MeasureConfig)}
    config = M.MeasureConfig(**{k: v for k, v in small.items() if k in fields})
    calib = {"calib_samples": 4, "calib_seqlen": 64, "seed": 0}
    folder = Path(args.out or tempfile.mkdtemp(prefix="bench_sweep_"))
    out = folder / f"sweep_{Path(args.model).name}.jsonl"
    check_sweep_out(out)  # only a sweep file and base cache hemorrhage wrote are removed below
    out.unlink(missing_ok=True)  # a fresh sweep: nothing to resume, no base phase on disk
    base_path_for(out).unlink(missing_ok=True)
    logs: list[str] = []

    def log(msg: str) -> None:
        logs.append(f"{time.perf_counter() - t0:8.1f} s  {msg}")
        print(f"[sweep] {msg}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    res = run_sweep(loaded, grid, config, out, calib=calib, progress=False, log=log, devices=args.devices)
    sweep_s = time.perf_counter() - t0
    done = [(m, st) for m, st in grid if not any(f[0] == m and f[1] == st for f in res["failed"])]
    per = [c + m for c, m in zip(times["compress_from_args"], times["measure"])]  # in grid order (1 device)
    first_of_kind, rest, by_method = [], [], defaultdict(list)
    seen = set()
    for (method, settings), s in zip(done, per):
        by_method[method].append(round(s, 1))
        kind = (method, settings.get("bits"), settings.get("group_size"))  # static in the graph: a new compile
        (rest if kind in seen else first_of_kind).append(s)
        seen.add(kind)
    base_s = sum(times["compute_base"])
    # one uncached calibration draw, timed now (the sweep drew once, then reused)
    registry._CALIB_MEMO.clear()
    t = time.perf_counter()
    registry.calibration_tokens_for(loaded, **{**registry.CALIB_DEFAULTS, **calib})
    draw_s = time.perf_counter() - t
    naive_s = sweep_s + (len(grid) - 1) * (base_s + draw_s)
    t = time.perf_counter()
    again = run_sweep(loaded, grid, config, out, calib=calib, progress=False, log=log)
    resume_s = time.perf_counter() - t

    summary = {
        "model": args.model,
        "settings": len(grid),
        "devices": args.devices,
        "cpu_threads": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "model_load_s": round(load_s, 1),
        "sweep_s": round(sweep_s, 1),
        "base_phase_s": round(base_s, 1),
        "base_phase_calls": counts["compute_base"],
        "calibration": {
            "windows_drawn": registry.CALIB_STATS["drawn"] - 1,
            "windows_reused": registry.CALIB_STATS["reused"],
            "calibration_tokens_calls": counts["calibration_tokens"] - 1,
            "text_split_reads": counts["split_text"],
            "whole_split_tokenizations": counts["tokenize_whole_split"],
            "one_draw_s": round(draw_s, 4),
        },
        "per_setting_s": {
            "first_of_each_kind_mean": round(sum(first_of_kind) / max(len(first_of_kind), 1), 2),
            "rest_mean": round(sum(rest) / max(len(rest), 1), 2),
            "n_first": len(first_of_kind),
            "n_rest": len(rest),
            "by_method": dict(by_method),
        },
        "one_by_one_estimate_s": round(naive_s, 1),
        "ratio_one_by_one_over_sweep": round(naive_s / sweep_s, 3),
        "rerun": {"s": round(resume_s, 2), "done_before": again["done_before"], "computed": again["computed"]},
        "rows": len(res["rows"]),
        "failed": res["failed"],
        "log": logs,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
