"""A grid of compression settings measured against one base: resumable, two-phase.

    grid = parse_grid("magnitude:sparsity=0.1,0.3,0.5;rtn:bits=8,4,3,2")
    run_sweep(loaded, grid, MeasureConfig(), "results/sweep_smollm2-135m.jsonl")

Grid syntax (`--grid`): entries separated by ';', each `METHOD` or `METHOD:KEY=V1,V2,...`.
A comma-separated token that holds '=' starts the next key, so an entry may vary several
settings and their product is taken:
    "magnitude:sparsity=0.1,0.5"              2 settings
    "rtn:bits=4,3,group_size=64,128"           4 settings (bits × group_size)
    "magnitude:pattern=2:4,4:8"                N:M patterns (only the first ':' ends the name)
    "drop:part=mlp,n_drop=2,4,8;w8a8"          a method with no settings: its defaults
Values are read as true/false, int, float or text and cast to the method's field type
(sparsity=0 is the float 0.0); calib_samples, calib_seqlen, seed and calib_source may be
set per entry and otherwise come from the command line.  Every setting is validated by
building its method before anything heavy runs, so a typo is one line, not a crash later.

Phases.  1: the base's residuals, NLL, MC scores and generations on the measurement data
(validate.measure.BaseCache) are computed once and written atomically to
`<out stem>.base.npz` beside the output; a rerun reuses the file when it was made for the
same model (name, folder, weight files) and the same measurement config.  2: each setting is
compressed from the base and measured against the cached base.

Output and resume.  `--out` is JSON Lines: one row per finished setting, written as ONE
write() of the whole line, then flush + fsync, in grid order.  Each row carries `key` =
[model, method, grid settings] (canonical JSON).  On start the file is read; a trailing
line without its newline (a run killed mid-write) is cut off, only from a file proven to be a
sweep file (validate/sweep_file.py: anything else is refused untouched); rows whose key is in the grid
are done and skipped, so an interrupted sweep (even SIGKILL) reruns to exactly one row per
setting.  Rows record the measurement config and calibration defaults; resuming with
different ones is refused (a row set must be measured one way).  A row is everything
`measure` returns minus bulky arrays (per-layer kl, cos_h and top1 kept when --per-layer).
NaN/inf from a collapsed model are results (collapsed = true, notes say why), written as
NaN/Infinity.  A setting whose compression raises is reported on stderr and not written (a
rerun retries it); the sweep goes on and exits 1 at the end.  No timings are in the rows: the
same command with the same seeds gives a byte-identical file.

Devices (`--devices N`, `--mesh`; validate/sweep_workers.py, sim/shard.py).  N settings are
measured at once, one per device group, each group holding its own copy of the base; this
thread still appends every row itself, one write each, in grid order (a later setting that
finishes first waits), so the file, its resume and its bytes are those of a one-device run
(on devices of one kind; a mesh with model > 1 or data > 1 reorders sums: equal to fp32
rounding).  The calibration windows are drawn once per distinct calibration setting before
any setting runs.  Multi-host: only process 0 (`shard.is_writer()`) locks and writes.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import sys
from pathlib import Path

from hemorrhage.errors import UserError
from hemorrhage.validate.resident import bound_memory
from hemorrhage.validate.sweep_file import (  # noqa: F401  (its format)
    append_row,
    base_path_for,
    check_sweep_out,
    lock_for_append,
    read_rows,
)

CALIB_KEYS = ("calib_samples", "calib_seqlen", "seed", "calib_source")
_CALIB_TYPES = {"calib_samples": int, "calib_seqlen": int, "seed": int, "calib_source": str}


# ------------------------------------------------------------------ the grid -----------


def _literal(text: str):
    t = text.strip()
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    if t.lower() == "none":
        return None
    for cast in (int, float):
        try:
            return cast(t)
        except ValueError:
            pass
    return t


def _cast(method_cls, key: str, value):
    """Cast a literal to the method field's declared type (annotations are strings)."""
    if key in _CALIB_TYPES:
        typ = _CALIB_TYPES[key].__name__
    else:
        fields = {f.name: f.type for f in dataclasses.fields(method_cls)}
        typ = str(fields.get(key, ""))
    if value is None or isinstance(value, bool):
        return value
    if typ.startswith("float") and isinstance(value, int):
        return float(value)
    if typ.startswith("str") and not isinstance(value, str):
        return str(value) if not isinstance(value, float) else repr(value)
    return value


def parse_grid(spec: str) -> list[tuple[str, dict]]:
    """[(method, settings)] in grid order, each validated (UserError: one line)."""
    from hemorrhage.sim.compress import METHODS, make_method
    from hemorrhage.sim.compress.registry import check_calibration

    if not spec or not spec.strip():
        raise UserError("--grid is empty; e.g. --grid 'magnitude:sparsity=0.1,0.5;rtn:bits=4'")
    out: list[tuple[str, dict]] = []
    for entry in (e.strip() for e in spec.split(";")):
        if not entry:
            continue
        name, _, rest = entry.partition(":")
        name = name.strip()
        if name not in METHODS:
            raise UserError(f"--grid: unknown method {name!r} in {entry!r}; valid: {', '.join(sorted(METHODS))}")
        axes: list[tuple[str, list]] = []
        for tok in (t.strip() for t in rest.split(",")) if rest.strip() else ():
            if "=" in tok:
                key, _, val = tok.partition("=")
                key = key.strip().replace("-", "_")
                if not key or any(k == key for k, _ in axes):
                    raise UserError(f"--grid: bad or repeated key {key!r} in {entry!r}")
                axes.append((key, [val]))
            elif not axes:
                raise UserError(f"--grid: {entry!r}: expected KEY=VALUE after '{name}:', got {tok!r}")
            else:
                axes[-1][1].append(tok)
        for key, vals in axes:
            if any(not v.strip() for v in vals):
                raise UserError(f"--grid: empty value for {key!r} in {entry!r}")
        cls = METHODS[name]
        combos = itertools.product(*[[(k, _cast(cls, k, _literal(v))) for v in vals] for k, vals in axes])
        for combo in combos:
            settings = dict(combo)
            method_settings = {k: v for k, v in settings.items() if k not in CALIB_KEYS}
            try:
                check_calibration(**{k: v for k, v in settings.items() if k in CALIB_KEYS})
                make_method(name, **method_settings)
            except UserError as e:
                raise UserError(f"--grid: {name} {settings}: {e}") from None
            except (TypeError, ValueError) as e:
                raise UserError(f"--grid: {name} {settings}: {str(e).splitlines()[0]}") from None
            out.append((name, settings))
    if not out:
        raise UserError("--grid holds no setting")
    return out


def row_key(model: str, method: str, settings: dict) -> str:
    return json.dumps([model, method, {k: settings[k] for k in sorted(settings)}], sort_keys=True)


# ------------------------------------------------------------------ the run ------------


def run_sweep(
    loaded,
    grid: list[tuple[str, dict]],
    config,
    out: Path,
    *,
    calib: dict | None = None,
    progress: bool = True,
    log=None,
    devices: int = 1,
    mesh_shape: dict | None = None,
) -> dict:
    """Measure every setting of `grid` not yet in `out`.  Returns {'rows', 'done_before',
    'computed', 'failed': [(method, settings, error)], 'placement': {key: [devices]}}.

    devices > 1: that many settings at once, one per device group of `mesh_shape` devices
    (validate.sweep_workers); rows are still written one at a time in grid order."""
    from hemorrhage.sim import shard
    from hemorrhage.sim.windows import adds_bos

    log = log or (lambda msg: print(f"[sweep] {msg}", file=sys.stderr, flush=True))
    out = Path(out)
    writer = shard.is_writer()  # multi-host: process 0 writes, the others only compute
    if writer:
        check_sweep_out(out)  # a file that is not a sweep's is never appended to or cut
    out.parent.mkdir(parents=True, exist_ok=True)
    calib = {k: v for k, v in (calib or {}).items() if v is not None}
    run_info = {"config": config.as_dict(), "calib": calib}
    if adds_bos(loaded.tokenizer):  # windows start with BOS (Gemma): rows measured before that are not reused
        run_info["bos"] = True
    fd = lock_for_append(out) if writer else None
    try:
        failed, n_done, n_todo, placement = _run_locked(
            loaded, grid, config, out, fd, calib, run_info, progress, log, devices, mesh_shape
        )
    finally:
        if fd is not None:
            os.close(fd)
    rows = read_rows(out, repair=False)
    order: dict[str, int] = {}
    for m, st in grid:
        order.setdefault(row_key(loaded.name, m, st), len(order))
    rows = sorted((r for r in rows if r["key"] in order), key=lambda r: order[r["key"]])
    return {
        "rows": rows,
        "done_before": n_done,
        "computed": n_todo - len(failed),
        "failed": failed,
        "placement": placement,
    }


def _run_locked(loaded, grid, config, out, fd, calib, run_info, progress, log, devices, mesh_shape):
    from tqdm import tqdm

    from hemorrhage.validate.computable import show
    from hemorrhage.validate.measure import row_view
    from hemorrhage.validate.base_phase import base_cache
    from hemorrhage.validate.sweep_workers import make_runner

    existing = read_rows(out, repair=fd is not None)
    for r in existing:
        if not isinstance(r, dict) or "key" not in r:
            raise UserError(f"{out} is not a sweep file (a line without a key); use another --out")
        if r.get("sweep") != run_info:
            raise UserError(
                f"{out} holds rows measured with other settings ({_diff(r.get('sweep'), run_info)}); "
                f"use another --out or the same flags"
            )
    done = {r["key"] for r in existing}
    seen, todo = set(), []
    for method, settings in grid:
        key = row_key(loaded.name, method, settings)
        if key in seen:
            continue
        seen.add(key)
        if key not in done:
            todo.append((key, method, settings))
    n_total, n_done = len(seen), len(seen & done)
    log(f"{n_total} settings, {n_done} already in {out}, {len(todo)} to run")
    failed: list = []
    if not todo:
        return failed, n_done, 0, {}
    base = base_cache(loaded, config, base_path_for(out) if fd is not None else None, log=log)
    _draw_calibration(loaded, todo, calib, log)
    runner = make_runner(loaded, devices, mesh_shape, log)
    bar = tqdm(
        total=n_total,
        initial=n_done,
        desc="sweep",
        unit="setting",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        for (key, method, settings), (status, res) in runner.run(todo, calib, base):
            label = f"{method} " + (",".join(f"{k}={v}" for k, v in settings.items()) or "default")
            bar.set_postfix_str(label)
            if status == "err":
                e = res
                msg = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
                failed.append((method, settings, f"{type(e).__name__}: {msg}"))
                tqdm.write(f"[sweep] FAILED {label}: {type(e).__name__}: {msg}", file=sys.stderr)
                bar.update(1)
                continue
            row = {"key": key, "grid": {"method": method, "settings": settings}, "sweep": run_info, **row_view(res)}
            if fd is not None:
                append_row(out, row, fd)
            tqdm.write(
                f"[sweep] {label}: kl {show(res, 'kl')} ± {show(res, 'kl_stderr', '.2g')}, "
                f"top-1 {show(res, 'top1_agreement', '.3f')}, "
                f"ppl {show(res, 'ppl')}"
                # retrieval (--retrieval N) beside KL/MC/generation: one model, one setting, one row
                + (f", recall@1 {show(res, 'retrieval_recall_at_1', '.3f')}" if "retrieval_mrr" in res else "")
                + (" COLLAPSED" if res["collapsed"] else ""),
                file=sys.stderr,
            )
            bar.update(1)
            if devices <= 1:  # with worker threads running, compiled programs are left alone
                bound_memory(lambda m: tqdm.write(f"[sweep] {m}", file=sys.stderr))
    finally:
        bar.close()
    return failed, n_done, len(todo), runner.placement


def _draw_calibration(loaded, todo, calib: dict, log) -> None:
    """Draw each distinct set of calibration windows once, before any setting runs: every
    calibrated setting after the first reuses it (registry.calibration_tokens_for memoises),
    and parallel workers never tokenize concurrently.  Errors are left to the setting."""
    from hemorrhage.sim.compress.registry import calibration_tokens_for, plan

    sets, n = set(), 0
    for _, method, settings in todo:
        try:
            _, c = plan(method, **{**calib, **settings})
            if c is not None:
                n += 1
                if tuple(sorted(c.items())) not in sets:
                    calibration_tokens_for(loaded, **c)
                    sets.add(tuple(sorted(c.items())))
        except UserError:
            continue
    if n:
        log(f"calibration inputs: {len(sets)} distinct set(s) of windows drawn once for {n} calibrated setting(s)")


def _diff(a, b) -> str:
    if not isinstance(a, dict):
        return "no record of how"
    keys = sorted(set(a.get("config", {})) | set(b.get("config", {})))
    d = [k for k in keys if a.get("config", {}).get(k) != b["config"].get(k)]
    if a.get("calib") != b.get("calib"):
        d.append("calibration")
    return ", ".join(d) or "?"
