"""The experiments over stored sweeps, one registry: run one, run all, redraw every figure.

    rows = read_rows("results/sweep_smollm2-135m.jsonl")      # validate.sweep
    v = run_experiment("mc_vs_generation", rows, results="results", figures="figures", stem="sweep_x")
    v["holds"]      # True / False / None (None: these data cannot test the claim), v["summary"]

Each experiment reads only measured numbers (validate/measure.py defines every field), so
none needs a model; rows of several models (e.g. a real model and the clean control) may be
mixed and are compared in the figures.  Verdict format: validate/exp_common.py.

    hierarchy          exp 1  validate/exp_hierarchy.py    h → z → p per layer and per step, Theorems 1–3
    mc_vs_generation   exp 2  validate/exp_mc.py           multiple choice survives, generation does not
    compounding        exp 3  validate/exp_compounding.py  survival of free-running generation vs theory
    thresholds         exp 4  validate/exp_thresholds.py   the cliff in bits / sparsity, bootstrap CI
    ppl_not_enough     exp 6  validate/exp_ppl.py          perplexity vs capability metrics (LLM-KICK)
    rare_targets       exp 7  validate/exp_rare_targets.py rare targets first; sparsity vs difficulty
    decoding           exp 8  validate/exp_decoding.py     greedy / sampling / beam under compression
    retrieval                 validate/exp_retrieval.py    retrieval survives where generation collapses (rows with --retrieval)
    in_context                validate/exp_in_context.py   robust in-context retrieval at ≥ 50 % sparsity (rows of validate/in_context.py)
    phase                     validate/exp_phase.py        power law → exponential breakpoints per kind; ordering at equal bytes
    expand                    validate/exp_expand.py       layer expansion vs attention (rows of expand + results/expand/attention_*.json)
Exp 5 (Signal Degradation vs Computation Collapse) needs the model: `hemorrhage diagnose`
(validate/diagnose.py); its stored results/diagnose/*.json are redrawn here.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

REGISTRY = {
    "hierarchy": ("exp_hierarchy", "hierarchy"),
    "mc_vs_generation": ("exp_mc", "mc_vs_generation"),
    "compounding": ("exp_compounding", "compounding"),
    "thresholds": ("exp_thresholds", "thresholds"),
    "ppl_not_enough": ("exp_ppl", "ppl_not_enough"),
    "rare_targets": ("exp_rare_targets", "rare_targets"),
    "decoding": ("exp_decoding", "decoding"),
    "retrieval": ("exp_retrieval", "retrieval"),
    "in_context": ("exp_in_context", "in_context"),
    "phase": ("exp_phase", "phase"),
    "expand": ("exp_expand", "expand"),
}
EXPERIMENTS = tuple(REGISTRY)


def run_experiment(name: str, rows, results="results", figures="figures", stem="sweep") -> dict:
    from hemorrhage.errors import UserError

    if name not in REGISTRY:
        raise UserError(f"unknown experiment {name!r}; valid: {', '.join(EXPERIMENTS)}")
    if not len(rows):
        raise UserError("the sweep holds no rows")
    module, fn = REGISTRY[name]
    return getattr(importlib.import_module(f"hemorrhage.validate.{module}"), fn)(
        rows, results=results, figures=figures, stem=stem
    )


def run_all(rows, results="results", figures="figures", stem="sweep", log=print) -> dict[str, dict]:
    """Every experiment on the same rows; the verdicts are also written to
    results/verdicts_<stem>.json (atomically)."""
    from hemorrhage.sim.outputs import atomic_write_text

    out = {}
    for name in EXPERIMENTS:
        v = run_experiment(name, rows, results, figures, stem)
        out[name] = v
        log(f"{v['figure'] or '(no figure)'}  [{v['summary']}]")
    Path(results).mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        Path(results) / f"verdicts_{stem}.json", json.dumps(out, indent=1, sort_keys=True, allow_nan=True, default=str)
    )
    return out


def summary_markdown(verdicts: dict[str, dict[str, dict]], diagnose: dict | None = None, sections=()) -> str:
    """One table: experiment × sweep, each cell the verdict word; then every summary line;
    then exp 5 over the stored diagnoses (validate.diagnose.stored_verdict); then `sections`,
    markdown texts of the runs that span several sweeps (results/summary/*.md, in name order)."""
    word = {True: "holds", False: "**does not hold**", None: "not tested"}
    stems = list(verdicts)
    lines = [
        "# Verdicts of every experiment on every stored sweep",
        "",
        "Written by `hemorrhage figures` from results/*.jsonl (`models`: all sweeps together). "
        "Each claim, rule and threshold is in the experiment's module docstring (validate/README.md).",
        "",
        "| experiment | " + " | ".join(stems) + " |",
        "|---|" + "---|" * len(stems),
    ]
    for name in EXPERIMENTS:
        lines.append(f"| {name} | " + " | ".join(word[verdicts[s][name]["holds"]] for s in stems) + " |")
    for s in stems:
        lines += ["", f"## {s}", ""]
        lines += [f"- **{name}**: {verdicts[s][name]['summary']}" for name in EXPERIMENTS]
    if diagnose is not None:
        lines += [
            "",
            "## Exp 5: Signal Degradation or Computation Collapse (results/diagnose)",
            "",
            f"- **diagnose**: {diagnose['summary']}",
            "",
            "| model | setting | verdict | final KL | top-1 agreement | early collapsed blocks |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['model']} | {r['setting'].split(', ', 1)[-1]} | {r['verdict'].replace('_', ' ')} | "
            f"{r['final_kl']:.4g} | {r['top1_agreement']:.3f} | {len(r['early_collapsed_blocks'])} |"
            for r in diagnose["evidence"]["diagnoses"]
        ]
    for text in sections:
        lines += ["", text.strip()]
    return "\n".join(lines) + "\n"


def _sweeps(results: Path, log) -> dict[str, list[dict]]:
    from hemorrhage.errors import UserError
    from hemorrhage.validate.sweep import read_rows

    out = {}
    for sweep in sorted(results.glob("*.jsonl")):
        try:
            rows = read_rows(sweep, repair=False)
        except UserError as e:
            log(f"skipped {sweep}: {e}")
            continue
        if not rows or not all(isinstance(r, dict) and "kl" in r for r in rows):
            log(f"skipped {sweep}: not a sweep file (no rows with kl)")
            continue
        out[sweep.stem] = rows
    return out


def regenerate(results="results", figures="figures", log=print) -> list[str]:
    """Every figure from the stored results, no model needed: each results/*.jsonl sweep →
    every experiment's figure; with sweeps of ≥ 2 models, the same over all of them together
    (stem `models`: the real models beside the clean control); results/hierarchy/*.csv →
    the main job's figure; results/diagnose/*.json → the diagnosis figure;
    results/recovery/recovery.csv → the recovery figure."""
    import pandas as pd

    from hemorrhage.validate.plots import diagnose_figure, hierarchy_figure

    results, figures, written = Path(results), Path(figures), []
    sweeps = _sweeps(results, log)
    verdicts = {}
    for stem, rows in sweeps.items():
        verdicts[stem] = run_all(rows, results, figures, stem, log)
    models = {str(r.get("model")) for rows in sweeps.values() for r in rows}
    if len(models) > 1:
        allrows = [r for rows in sweeps.values() for r in rows]
        verdicts["models"] = run_all(allrows, results, figures, "models", log)
    written += [v["figure"] for vs in verdicts.values() for v in vs.values() if v["figure"]]
    if verdicts:
        from hemorrhage.sim.outputs import atomic_write_text
        from hemorrhage.validate.diagnose import stored_verdict

        diag = stored_verdict(results / "diagnose")
        sections = [p.read_text() for p in sorted((results / "summary").glob("*.md"))]
        atomic_write_text(results / "SUMMARY.md", summary_markdown(verdicts, diag, sections))
        log(str(results / "SUMMARY.md"))
    for csv in sorted((results / "hierarchy").glob("*.csv")):
        df = pd.read_csv(csv)
        need = {"layer", "cos_h", "cos_z", "cos_p", "kl", "kl_pred"}
        if not need <= set(df.columns):
            log(f"skipped {csv}: not a hierarchy table")
            continue
        first = df.iloc[0]
        title = (
            f"{first.get('model', '?')}, {first.get('method', '?')} ({first.get('setting', '?')}) vs its base "
            f"— redrawn from {csv.name}"
        )
        written.append(str(hierarchy_figure(df, figures / f"{csv.stem}.png", title)))
        log(written[-1])
    for js in sorted((results / "diagnose").glob("*.json")):
        try:
            res = json.loads(js.read_text())
            layers, title = res["layers"], res["title"]
        except (OSError, ValueError, KeyError, TypeError):
            log(f"skipped {js}: not a stored diagnosis")
            continue
        written.append(str(diagnose_figure(layers, figures / f"{js.stem}.png", title)))
        log(written[-1])
    rec = results / "recovery" / "recovery.csv"
    if rec.is_file():
        from hemorrhage.validate.recovery import recovery_figure

        df = pd.read_csv(rec)
        try:
            title = json.loads((rec.parent / "figure.json").read_text())["title"]
        except (OSError, ValueError, KeyError):
            title = "Recovery by KL distillation (masks and grids fixed)"
        written.append(str(recovery_figure(df, figures / "recovery.png", title)))
        log(written[-1])
    return written
