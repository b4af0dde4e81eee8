"""hemorrhage sweep --model M --grid "magnitude:sparsity=0.1,0.3,0.5;rtn:bits=8,4,3,2" [--out F]

Measure a grid of compression settings against one base (`hemorrhage measure`'s metrics,
one JSON line per setting).  Resumable: kill it and rerun the same command, it continues
where it stopped (no row lost or repeated).  The base phase is computed once and cached
beside the output (<out stem>.base.npz).  Grid syntax and file format: see
hemorrhage.validate.sweep's docstring.

--devices N measures N settings at once, one per device (or per group of --mesh devices,
e.g. --devices 4 --mesh data=2 on 8 GPUs); the file is still written in grid order, one row
per setting (hemorrhage.validate.sweep_workers).
"""

from __future__ import annotations

import sys
from pathlib import Path

from hemorrhage.commands.common import add_mesh, add_model, load_model, mesh_shape, print_json
from hemorrhage.commands.measure import add_measure_arguments, measure_config


def add_arguments(p) -> None:
    add_model(p)
    p.add_argument(
        "--grid",
        required=True,
        help="settings: 'METHOD:KEY=V1,V2[,KEY2=...];METHOD2:...', e.g. "
        "'magnitude:sparsity=0.1,0.3,0.5;rtn:bits=8,4,3,2' (product over keys)",
    )
    p.add_argument(
        "--out",
        help="JSON Lines output, one row per setting (default results/sweep_MODEL.jsonl); "
        "an existing file must be a sweep file (it is resumed), anything else is refused",
    )
    c = p.add_argument_group("calibration defaults (a grid entry may override them)")
    c.add_argument("--calib-samples", type=int, default=16, help="calibration windows of real text")
    c.add_argument("--calib-seqlen", type=int, default=128, help="tokens per calibration window")
    c.add_argument("--seed", type=int, default=0, help="calibration seed")
    add_measure_arguments(p, per_layer_default=False)
    d = p.add_argument_group("devices (hemorrhage.sim.shard)")
    d.add_argument(
        "--devices",
        type=int,
        default=1,
        help="settings measured at once, one per device group (default 1: in order, one device)",
    )
    add_mesh(d)
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--json", action="store_true", help="print all rows as one JSON list at the end")


def run(args) -> int:
    from hemorrhage.errors import UserError
    from hemorrhage.validate.sweep import check_sweep_out, parse_grid, run_sweep

    grid = parse_grid(args.grid)  # all validation before the model loads
    config = measure_config(args)
    if args.calib_samples < 1 or args.calib_seqlen < 2:
        raise UserError("--calib-samples must be >= 1 and --calib-seqlen >= 2")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    if args.devices < 1:
        raise UserError(f"--devices must be >= 1, got {args.devices}")
    shape = mesh_shape(args)
    if args.devices > 1 or shape:
        from hemorrhage.sim.shard import device_groups

        device_groups(args.devices, shape)  # enough devices? (before the model loads)
    # the default name is the model's as load() names it (str(--model)), so it is known now
    out = check_sweep_out(Path(args.out or f"results/sweep_{Path(args.model).name}.jsonl"))
    loaded = load_model(args)
    res = run_sweep(
        loaded,
        grid,
        config,
        out,
        progress=not args.no_progress,
        devices=args.devices,
        mesh_shape=shape,
        calib={"calib_samples": args.calib_samples, "calib_seqlen": args.calib_seqlen, "seed": args.seed},
    )
    rows = res["rows"]
    if args.json:
        print_json(rows)
    else:
        # n/c: not computable (null in the row; its not_computable says why)
        cell = lambda r, k, spec: "n/c" if r.get(k, 0.0) is None else format(r.get(k, float("nan")), spec)  # noqa: E731
        print(
            f"{'method':<10} {'settings':<28} {'kl':>9} {'±kl':>9} {'kl_p99':>9} {'top1':>6} {'ppl':>10} {'mc_agr':>6} "
            f"{'1st_div':>7}"
        )
        for r in rows:
            s = ",".join(f"{k}={v}" for k, v in r["grid"]["settings"].items()) or "default"
            print(
                f"{r['grid']['method']:<10} {s:<28} {cell(r, 'kl', '.4g'):>9} {cell(r, 'kl_stderr', '.2g'):>9} "
                f"{cell(r, 'kl_p99', '.4g'):>9} {cell(r, 'top1_agreement', '.3f'):>6} "
                f"{cell(r, 'ppl', '.4g'):>10} {cell(r, 'mc_agreement', '.3f'):>6} "
                f"{cell(r, 'first_divergence_mean', '.2f'):>7}" + ("  collapsed" if r["collapsed"] else "")
            )
        if any(r.get("not_computable") for r in rows):
            print("n/c: not computable (null in the row, its reason under not_computable)")
        print(f"{len(rows)} rows in {out} ({res['done_before']} from before, {res['computed']} new)")
    if res["failed"]:
        for method, settings, err in res["failed"]:
            print(f"hemorrhage: sweep: {method} {settings} failed: {err}", file=sys.stderr)
        print(
            f"hemorrhage: sweep: {len(res['failed'])} settings failed (not written; a rerun retries them)",
            file=sys.stderr,
        )
        return 1
    return 0
