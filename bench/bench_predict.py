"""Predicting a compression grid vs measuring it, timed in the same run.

    python bench/bench_predict.py --model smollm2-135m                # the issue's full grid
    python bench/bench_predict.py --model gemma3-270m --grid 'rtn:bits=3,4,8;magnitude:sparsity=0.3,0.5'

Prediction: `hemorrhage.sim.predict.predict` (calibration statistics, base generation,
linearisation, every JVP, the regime forwards), timed twice: cold (the first call in the
process, XLA compilation included) and warm (the same call again: what a second plan costs
in one session).  Measurement:
`Measurer` — each setting compressed with `compress_from_args` and measured with the
project's own `validate.measure` (what `hemorrhage measure` / `sweep` run) on exactly the
prediction's data: its held-out windows, its prompts and greedy continuations, and 24
cloze items for the measured MC-vs-generation gap (no per-layer lens, no strata: those are
not predicted).  The base phase of the measurement is computed once and timed as setup.

Targets (the issue): predicted KL within ×1.5 of measured wherever measured KL ≤ 0.5;
cliff (KL crosses 1 nat, `cliff_crossing`) within ±0.5 bit / ±0.05 sparsity; predicting
≤ 2 % of measuring.  Everything is printed and written to --out (JSON); nothing asserts.

Resumable: each measured row goes to <out>.partial.jsonl as soon as it exists (with its own
wall time), keyed on what the measurement depends on (model, grid, tokens, calibration), so a
rerun reuses them and a run killed on a shared machine loses one row at most; the measuring
time is then the sum of the stored rows.  The prediction is always made afresh.
`--phase measure` only measures; `--phase predict` only predicts (and reports, once every
row is stored).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def row_seconds(row: dict) -> float:
    """A measured row's wall time: under `timings` (sim.timings) or, in rows stored before that, `seconds`."""
    return float((row.get("timings") or {}).get("seconds", row.get("seconds", math.nan)))


def response_seconds(loaded, cfg, reps: int = 3) -> float:
    """Warm wall time of one response as the predictor makes it (best of `reps`): the JVP of
    the block linears on the prediction's tokens (with the Taylor-mode pass when the estimate
    uses it) and its logit metrics at one point.  Times the number of responses the grid
    needs, it is the floor of this estimator on these tokens: what no setup, compilation or
    mask work saved elsewhere can go below, only fewer responses or fewer tokens."""
    import jax

    from hemorrhage.sim.predict import Context, Linearization, held_out_sets

    sets, _, _ = held_out_sets(loaded, cfg)
    lr = Linearization(loaded.model, sets, taylor=cfg.dephasing)
    ctx = Context(lr, cfg)
    ctx.h_eval = lr.h["eval"][:, :-1].reshape(-1, lr.h["eval"].shape[-1])
    dws = [1e-3 * jax.random.normal(jax.random.key(i), w.shape) for i, w in enumerate(lr.weights)]

    def one() -> float:
        t0 = time.perf_counter()
        dh = lr.respond(dws)
        he2 = ctx.second(dh)
        met = ctx.metrics([ctx.flat(dh)[0]], [0], [1.0], dh2s=None if he2 is None else [he2])  # numpy: waits
        jax.block_until_ready((dh, met))
        return time.perf_counter() - t0

    one()  # compiles
    return min(one() for _ in range(reps))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--grid", default="full", help="'full' (the issue's grid) or a sweep-style grid")
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--probes", type=int, default=2)
    ap.add_argument("--prune-anchors", type=int, default=3)
    ap.add_argument("--regime-tokens", type=int, default=32)
    ap.add_argument("--estimate", choices=("centre", "dephased", "linear"), default="centre")
    ap.add_argument("--out", help="JSON output (default results/bench_predict_MODEL.json)")
    ap.add_argument(
        "--phase",
        choices=("all", "measure", "predict"),
        default="all",
        help="'measure': only the measured rows (resumable); 'predict': only a fresh prediction",
    )
    ap.add_argument("--once", action="store_true", help="predict once (cold only), no warm second prediction")
    ap.add_argument(
        "--measured-from",
        metavar="JSON",
        help="reuse the measured rows (and their timings) of an earlier --out JSON of the same grid and data",
    )
    args = ap.parse_args(argv)

    import gc

    import jax

    from hemorrhage.sim import load
    from hemorrhage.sim.outputs import atomic_write_text  # a killed run leaves the old file whole
    from hemorrhage.sim.predict import FULL_GRID, PredictConfig, predict
    from hemorrhage.validate.predict_check import Measurer, measured_cliffs
    from hemorrhage.validate.resident import bound_memory
    from hemorrhage.validate.sweep import parse_grid

    grid = parse_grid(FULL_GRID if args.grid == "full" else args.grid)
    cfg = PredictConfig(
        windows=args.windows,
        seqlen=args.seqlen,
        prompts=args.prompts,
        new_tokens=args.new_tokens,
        probes=args.probes,
        prune_anchors=args.prune_anchors,
        regime_tokens=args.regime_tokens,
        estimate=args.estimate,
    )
    out = Path(args.out or f"results/bench_predict_{Path(args.model).name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    # resumable (a shared machine may kill a long run): every measured row is stored as soon as
    # it exists, with its own timing, keyed on what the measurement depends on (not on the
    # predictor's own settings), and reused by a rerun.  The prediction is cheap and is always
    # made afresh unless --phase measure.
    mcfg = {
        k: getattr(cfg, k)
        for k in (
            "windows",
            "seqlen",
            "source",
            "prompts",
            "prompt_len",
            "new_tokens",
            "calib_samples",
            "calib_seqlen",
            "calib_seed",
        )
    }
    key = json.dumps([args.model, grid, mcfg], sort_keys=True, default=str)
    part = out.with_suffix(".partial.jsonl")
    done = []
    if part.exists():
        done = [json.loads(x) for x in part.read_text().splitlines() if x.strip()]
        done = done if done and done[0].get("key") == key else []
    if not done:
        done = [{"key": key}]
        if args.measured_from:  # the measuring half of an earlier run: its rows and wall times
            old = json.loads(Path(args.measured_from).read_text())
            rows_old = old["measured"]["points"]
            if len(rows_old) != len(grid):
                sys.exit(
                    f"bench_predict: {args.measured_from} holds {len(rows_old)} measured rows, the grid has {len(grid)}"
                )
            done.append({"setup": old["seconds_measure"] - sum(map(row_seconds, rows_old))})
            done += [{"i": i, "row": r} for i, r in enumerate(rows_old)]
        atomic_write_text(part, "".join(json.dumps(d) + "\n" for d in done))
    loaded = load(args.model, quiet=True)
    log = lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True)  # noqa: E731
    pred = None
    if args.phase != "measure":
        t0 = time.perf_counter()
        stages: list[str] = []
        pred = predict(loaded, grid, cfg, log=lambda m: (stages.append(m), log(m)))
        pred["stages"] = stages  # "<seconds since start>  <stage>", for where the time goes
        pred["bench_seconds"] = time.perf_counter() - t0
        t_pred = pred["bench_seconds"]
        # the same prediction again in this process: XLA programs already compiled, as for a
        # researcher who predicts a second plan (or reruns) in one session
        t0 = time.perf_counter()
        again = pred if args.once else predict(loaded, grid, cfg)
        t_warm = float("nan") if args.once else time.perf_counter() - t0
        same = all(a["kl"] == b["kl"] for a, b in zip(pred["points"], again["points"]))
        log(f"prediction {t_pred:.1f} s cold, {t_warm:.1f} s warm (same numbers: {same})")
        del again
        gc.collect()
        jax.clear_caches()
    rows = {d["i"]: d["row"] for d in done if "row" in d}
    setup = next((d["setup"] for d in done if "setup" in d), None)
    if len(rows) < len(grid) and args.phase != "predict":
        t0 = time.perf_counter()
        meas_fn = Measurer(loaded, cfg)
        if setup is None:
            setup = time.perf_counter() - t0
            with part.open("a") as f:
                f.write(json.dumps({"setup": setup}) + "\n")
        for i, (method, settings) in enumerate(grid):
            if i in rows:
                continue
            log(f"measuring {method} {settings}")
            rows[i] = meas_fn(method, settings)
            with part.open("a") as f:
                f.write(json.dumps({"i": i, "row": rows[i]}) + "\n")
            bound_memory(log)  # as a sweep: a 0.5 B model's programs outgrew 24 GB by the 11th setting
    if pred is None or len(rows) < len(grid):
        print(f"{len(rows)}/{len(grid)} settings measured" + ("" if pred else "; no prediction made (--phase measure)"))
        return 0
    meas = {"points": [rows[i] for i in range(len(grid))]}
    t_meas = setup + sum(map(row_seconds, meas["points"]))
    cl = measured_cliffs(pred, meas, cfg.kl_threshold)

    print(f"\n{args.model}: {len(grid)} settings, {cfg.windows}x{cfg.seqlen} tokens, {cfg.prompts} prompts")
    print(
        f"{'setting':<34} {'kl_pred':>9} {'kl_meas':>9} {'ratio':>6} {'top1 p/m':>11} {'1st div p/m':>12} "
        f"{'nonlin':>7} {'gap p/m':>11}"
    )
    hits = total = 0
    by_method: dict[str, list[int]] = {}
    for p, m in zip(pred["points"], meas["points"]):
        ratio = p["kl"] / m["kl"] if m["kl"] > 0 else math.inf
        s = f"{p['family']} {p['level']}"
        reg = p.get("regime", {}).get("nonlinearity", float("nan"))
        print(
            f"{s:<34} {p['kl']:>9.4g} {m['kl']:>9.4g} {ratio:>6.2f} {p['top1_agreement']:>5.3f}/{m['top1_agreement']:<5.3f} "
            f"{p.get('first_divergence_mean', float('nan')):>5.1f}/{m.get('first_divergence_mean', float('nan')):<6.1f} "
            f"{reg:>7.3f} {p.get('mc_vs_gen_gap', float('nan')):>5.2f}/{m.get('mc_vs_gen_gap', float('nan')):<5.2f}"
        )
        if m["kl"] <= 0.5:
            ok = 1 / 1.5 <= ratio <= 1.5
            hits, total = hits + ok, total + 1
            h = by_method.setdefault(p["family"], [0, 0])
            h[0] += ok
            h[1] += 1
    print(
        f"\nKL within x1.5 where measured KL <= 0.5: {hits}/{total}  "
        + "  ".join(f"{k}: {a}/{b}" for k, (a, b) in by_method.items())
    )
    lin = [(p["kl_linear"], m["kl"]) for p, m in zip(pred["points"], meas["points"]) if "kl_linear" in p]
    if lin:  # the other closure (the linear response) as a point estimate, for the record
        err = lambda pairs: [abs(math.log(max(a, 1e-30) / mk)) for a, mk in pairs if 0 < mk <= 3]  # noqa: E731
        e_lin = err(lin)
        e_pt = err([(p["kl"], m["kl"]) for p, m in zip(pred["points"], meas["points"]) if "kl_linear" in p])
        print(
            f"linear KL within x1.5 where measured KL <= 0.5: "
            f"{sum(1 / 1.5 <= a / mk <= 1.5 for a, mk in lin if mk <= 0.5)}/{sum(mk <= 0.5 for _, mk in lin)}; "
            f"mean |log(pred/meas)| where measured KL <= 3: point estimate ({cfg.estimate}) "
            f"{sum(e_pt) / max(len(e_pt), 1):.3f}, linear {sum(e_lin) / max(len(e_lin), 1):.3f}"
        )
    print(
        f"\n{'family':<24} {'cliff pred':>10} {'interval':>15} {'measured':>9} {'diff':>7} {'target':>7} "
        f"{'linear':>9} {'model interval':>15} {'in it':>5} {'fwd-corr':>9}"
    )
    for c in cl:
        tol = 0.5 if c["axis"] == "bits" else 0.05
        diff = (c["cliff"] - c["measured"]) if c["cliff"] is not None and c["measured"] is not None else None
        iv = "-" if c["interval"] is None else f"[{c['interval'][0]:.2f},{c['interval'][1]:.2f}]"
        f = lambda x: "none" if x is None else f"{x:.3f}"  # noqa: E731
        ok = (
            "ok"
            if diff is not None and abs(diff) <= tol
            else ("both none" if diff is None and c["cliff"] == c["measured"] else "miss")
        )
        mi = c.get("model_interval")
        inside = "-" if mi is None or c["measured"] is None else ("yes" if mi[0] <= c["measured"] <= mi[1] else "no")
        mi = "-" if mi is None else f"[{mi[0]:.2f},{mi[1]:.2f}]"
        print(
            f"{c['family']:<24} {f(c['cliff']):>10} {iv:>15} {f(c['measured']):>9} "
            f"{'-' if diff is None else f'{diff:+.3f}':>7} {ok:>7} {f(c.get('cliff_linear')):>9} {mi:>15} {inside:>5} "
            f"{f(c.get('cliff_forward_corrected')) + (' !' if c.get('forward_check_doubts') else ''):>9}"
        )
    ratio, ratio_warm = t_pred / t_meas, t_warm / t_meas
    print(
        f"\ntime: measure {t_meas:.1f} s; predict {t_pred:.1f} s cold (compilation included), ratio "
        f"{100 * ratio:.2f} %; {t_warm:.1f} s warm (second prediction in the process), ratio {100 * ratio_warm:.2f} % "
        "(target <= 2 %)"
    )
    # the floor of the prediction: one JVP (≈ 2 forwards of the blocks) per probe of a
    # quantization family and per anchor of a pruning family, on every token it scores
    anchors = {
        (p["method"], p["family"]): len(p["noise"]["anchors"])
        for p in pred["points"]
        if "anchors" in p.get("noise", {})
    }
    fams = {(p["method"], p["family"]) for p in pred["points"]}
    n_jvp = sum(anchors.get(f, cfg.probes) for f in fams)
    n_tok = cfg.windows * cfg.seqlen + cfg.prompts * (cfg.prompt_len + cfg.new_tokens - 1)
    print(
        f"JVPs: {n_jvp} over {n_tok} tokens each ({len(fams)} families); measuring: {len(grid)} compressions "
        f"and evaluations ({t_meas / max(len(grid), 1):.1f} s each)"
    )
    t_resp = response_seconds(loaded, cfg)
    floor = n_jvp * t_resp
    print(
        f"floor: one response (JVP{' + Taylor-mode pass' if cfg.dephasing else ''} + logit metrics, warm) "
        f"{t_resp:.2f} s; x {n_jvp} = {floor:.1f} s = {100 * floor / t_meas:.2f} % of measuring "
        "(the responses alone, before any setup, compilation, masks or factorisations)"
    )
    atomic_write_text(
        out,
        json.dumps(
            {
                "model": args.model,
                "predicted": pred,
                "measured": meas,
                "cliffs": cl,
                "seconds_predict": t_pred,
                "seconds_predict_warm": t_warm,
                "seconds_measure": t_meas,
                "ratio": ratio,
                "ratio_warm": ratio_warm,
                "seconds_per_response": t_resp,
                "responses": n_jvp,
                "ratio_floor": floor / t_meas,
                "kl_hits": [hits, total],
            },
            indent=1,
            default=str,
            allow_nan=True,
        ),
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
