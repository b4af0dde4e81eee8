"""One static page per study: every verdict, figure and table of a sweep, readable without the repo.

    write_report([Path("results/sweep_smollm2-135m.jsonl")], Path("report"))   # `hemorrhage report`
    write_stored_report(Path("results"), Path("figures"))                      # `hemorrhage figures`

The page is `index.html`, plain HTML with its style inline: no script, no server, no network
(nothing is fetched from another host; the browser test in tests/test_report.py checks that
every image loads).  `write_report` runs every experiment (validate/experiments.py) on each
sweep again, so the verdicts, tables and figures are those of the sweep given, and writes the
PNGs and CSVs beside the page (the folder is what one sends).  `write_stored_report` renders
the verdicts `hemorrhage figures` just wrote and links the PNGs already in figures/, so the
committed results/ holds no second copy of them.

Sections: the models and their base note (every number is relative to that base), per study
each experiment's claim, verdict, summary and evidence with its figure and table, the
predictor's table where a `hemorrhage predict --json` output or bench/bench_predict_*.json is
given, the notation, and the commands that reproduce each number.
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hemorrhage.validate.experiments import EXPERIMENTS, run_all

#: the seeds' notation (SEEDS.md), as the experiments use it
GLOSSARY = (
    ("h", "the residual stream (hidden state) after a layer; the last one feeds the unembedding"),
    ("z = W·norm(h)", "the logits; z + Δz those of the compressed model (dz = Δz)"),
    ("p = softmax(z/T)", "the base's next-token distribution; q = softmax((z + Δz)/T) the compressed one; T = 1"),
    ("cos(h), cos(z), cos(p)", "cosine of base and compressed h, z, p: the damage hierarchy h → z → p"),
    ("KL(p‖q)", "mean over held-out tokens of the Kullback–Leibler divergence of q from p (nats)"),
    ("½Var_p(Δz)", "Theorem 3 (arXiv 2603.24652): KL(p‖q) ≈ Var_{i∼p}(Δz_i)/2T² for small Δz (var_p_dz)"),
    ("KL_S", "the KL over the answer set S only (p renormalised on S): what multiple choice reads"),
    ("m, σ", "top-1/top-2 logit margin of a greedy step; σ² = Var(Δz₁ − Δz₂)"),
    ("P_flip = Φ(−m/σ)", "probability a greedy step picks another token; S(t) = Π(1 − P_flip,s) survival"),
    ("first divergence", "the generated step at which base and compressed greedy texts first differ"),
    ("cliff", "the bits or sparsity where KL crosses 1 nat (and the hinge of log KL, exp 4)"),
)
WORD = {True: "HOLDS", False: "DOES NOT HOLD", None: "NOT TESTED"}
CSS = """body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;margin-top:2em}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.2em .5em;font-size:.9em;vertical-align:top}th{background:#f3f3f3}
img{max-width:100%;border:1px solid #ddd}code,pre{background:#f6f6f6;font-size:.85em}pre{padding:.5em;overflow-x:auto;
white-space:pre-wrap}.holds{color:#1a7f37;font-weight:bold}.fails{color:#b3261e;font-weight:bold}
.untested{color:#777;font-weight:bold}details{margin:.3em 0}"""


@dataclass
class Study:
    """One sweep (or several read together: stem `models`) with its experiments' verdicts.

    stem: name of the study; sweeps: the sweep files (as given); rows: their rows;
    verdicts: experiment name -> verdict record (validate/exp_common.py's format);
    images: experiment name -> the figure's src in the page (a file name or relative path)."""

    stem: str
    sweeps: list[str]
    rows: list[dict]
    verdicts: dict[str, dict]
    images: dict[str, str] = field(default_factory=dict)
    tables: dict[str, str] = field(default_factory=dict)


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _num(x) -> str:
    if isinstance(x, bool) or x is None:
        return "null" if x is None else str(x).lower()
    if isinstance(x, float):
        return "NaN" if math.isnan(x) else ("∞" if x > 0 else "−∞") if math.isinf(x) else f"{x:.4g}"
    return str(x)


def grid_spec(rows) -> str:
    """The --grid string of `hemorrhage sweep` that lists the rows' settings in order;
    consecutive settings that differ only in their last key share one entry."""
    entries: list[tuple[str, list[tuple[str, object]], list]] = []
    for r in rows:
        g = r.get("grid") or {"method": r.get("method"), "settings": r.get("settings") or {}}
        items = list(g["settings"].items())
        head, last = (items[:-1], items[-1]) if items else ([], None)
        if (
            entries
            and last
            and entries[-1][0] == g["method"]
            and entries[-1][1] == head
            and entries[-1][2]
            and entries[-1][2][0][0] == last[0]
        ):
            entries[-1][2].append(last)
        else:
            entries.append((g["method"], head, [last] if last else []))
    out = []
    for method, head, lasts in entries:
        keys = [f"{k}={v}" for k, v in head]
        if lasts:
            keys.append(f"{lasts[0][0]}=" + ",".join(str(v) for _, v in lasts))
        out.append(method + (":" + ",".join(keys) if keys else ""))
    return ";".join(out)


def sweep_command(rows, path: str) -> str:
    """The `hemorrhage sweep` command that measures these rows again (model, grid, the
    measurement and calibration the rows record)."""
    first = rows[0]
    sw = first.get("sweep") or {}
    cfg, cal = sw.get("config") or first.get("config") or {}, sw.get("calib") or {}
    flags = [f"--model {first.get('model', '?')}", f"--grid '{grid_spec(rows)}'"]
    names = {
        "windows": "--windows",
        "seqlen": "--seqlen",
        "source": "--source",
        "mc_items": "--mc-items",
        "mc_seed": "--mc-seed",
        "prompts": "--prompts",
        "prompt_len": "--prompt-len",
        "new_tokens": "--new-tokens",
        "gen_seed": "--gen-seed",
        "strata_bins": "--strata-bins",
    }
    flags += [f"{flag} {cfg[k]}" for k, flag in names.items() if k in cfg]
    for k, flag in (("mc_tasks", "--mc-tasks"), ("strategies", "--strategies")):
        if cfg.get(k):
            flags.append(f"{flag} {','.join(cfg[k])}")
    if cfg.get("per_layer"):
        flags.append("--per-layer")
    if cfg.get("steps") is False:
        flags.append("--no-steps")
    names = {"calib_samples": "--calib-samples", "calib_seqlen": "--calib-seqlen", "seed": "--seed"}
    flags += [f"{flag} {cal[k]}" for k, flag in names.items() if k in cal]
    return "hemorrhage sweep " + " ".join(flags) + f" --out {path}"


def _evidence(ev, depth: int = 0) -> str:
    """Scalars as a table; nested records (one per setting, per model) folded under <details>."""
    if not isinstance(ev, dict) or not ev:
        return f"<code>{_e(_num(ev) if not isinstance(ev, (list, dict)) else json.dumps(ev, default=str))}</code>"
    scalars = [(k, v) for k, v in ev.items() if not isinstance(v, (dict, list))]
    nested = [(k, v) for k, v in ev.items() if isinstance(v, (dict, list))]
    out = ""
    if scalars:
        out += "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(_num(v))}</td></tr>" for k, v in scalars) + "</table>"
    for k, v in nested:
        body = (
            _evidence(v, depth + 1)
            if isinstance(v, dict) and depth < 2
            else f"<pre>{_e(json.dumps(v, indent=1, sort_keys=True, allow_nan=True, default=str))}</pre>"
        )
        out += f"<details><summary>{_e(k)}</summary>{body}</details>"
    return out


def predictor_html(pred: dict, source: str) -> str:
    """The predictor's points (predicted KL and its band beside the measured KL where a
    bench file has it) and its cliffs, from `hemorrhage predict --json` or bench_predict_*.json."""
    inner = pred.get("predicted", pred)
    measured = {
        (m.get("method"), json.dumps(m.get("settings"), sort_keys=True)): m
        for m in (pred.get("measured") or {}).get("points", [])
    }
    rows = []
    for p in inner.get("points", []):
        m = measured.get((p.get("method"), json.dumps(p.get("settings"), sort_keys=True)), {})
        lo, hi = (p.get("kl_interval") or [None, None])[:2]
        rows.append(
            [
                p.get("method"),
                json.dumps(p.get("settings"), sort_keys=True),
                p.get("kl"),
                lo,
                hi,
                p.get("kl_linear"),
                p.get("kl_dephased"),
                m.get("kl"),
            ]
        )
    head = ["method", "settings", "KL predicted", "5 %", "95 %", "linear", "dephased", "KL measured"]
    out = [f"<h3>{_e(inner.get('model', pred.get('model', '?')))} — <code>{_e(source)}</code></h3>", _table(head, rows)]
    cl = pred.get("cliffs") or inner.get("cliffs") or []
    out.append(
        _table(
            ["family", "axis", "predicted cliff", "model band", "measured cliff"],
            [
                [c.get("family"), c.get("axis"), c.get("cliff"), json.dumps(c.get("model_interval")), c.get("measured")]
                for c in cl
            ],
        )
    )
    return "\n".join(out)


def _table(head, rows) -> str:
    return (
        "<table><tr>"
        + "".join(f"<th>{_e(h)}</th>" for h in head)
        + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{_e(_num(c))}</td>" for c in r) + "</tr>" for r in rows)
        + "</table>"
    )


def render(studies: list[Study], predictors: list[tuple[str, dict]], command: str) -> str:
    """The whole page (deterministic: no time, no absolute path of this machine)."""
    models: dict[str, str] = {}
    for s in studies:
        for r in s.rows:
            models.setdefault(
                str(r.get("model")),
                str(r.get("base_note") or (r.get("record") or {}).get("base_note") or "no base note recorded"),
            )
    title = "Compression damage: " + ", ".join(models)
    # stored verdicts may predate an experiment added since: shown as "not run"
    names = [n for n in EXPERIMENTS if any(n in s.verdicts for s in studies)]
    b = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>",
        f"<style>{CSS}</style></head><body><h1>{_e(title)}</h1>",
        "<p>Each claim of the seeds is tested on measured sweeps: a verdict, its evidence, its figure and the "
        "command that reproduces it.  Written by <code>" + _e(command) + "</code>.</p>",
        "<h2 id='bases'>Models and their bases</h2>",
        _table(["model", "base note (every number is damage relative to this base)"], list(models.items())),
        "<h2 id='verdicts'>Verdicts</h2>",
        _table(
            ["experiment"] + [s.stem for s in studies],
            [[n] + [WORD[s.verdicts[n]["holds"]] if n in s.verdicts else "not run" for s in studies] for n in names],
        ),
    ]
    for s in studies:
        b.append(f"<h2 id='{_e(s.stem)}'>Study {_e(s.stem)}: {len(s.rows)} settings</h2>")
        b.append("<p>Sweeps: " + ", ".join(f"<code>{_e(p)}</code>" for p in s.sweeps) + "</p>")
        for n in (n for n in names if n in s.verdicts):
            v = s.verdicts[n]
            cls = {True: "holds", False: "fails", None: "untested"}[v["holds"]]
            b += [
                f"<h3 id='{_e(s.stem)}-{n}'>{_e(n)}</h3>",
                f"<p><b>Claim:</b> {_e(v.get('claim', ''))}</p>",
                f"<p><span class='{cls}'>{WORD[v['holds']]}</span> — "
                f"{_e(str(v.get('summary', '')).removeprefix(WORD[v['holds']] + ': '))}</p>",
            ]
            if n in s.images:
                b.append(f"<p><img src='{_e(s.images[n])}' alt='{_e(n)} figure of {_e(s.stem)}'></p>")
            if n in s.tables:
                b.append(f"<p>Table: <a href='{_e(s.tables[n])}'>{_e(s.tables[n])}</a></p>")
            b.append(
                "<details><summary>evidence and rules</summary>"
                + _evidence(v.get("evidence") or {})
                + _evidence({"rules": v.get("rules") or {}})
                + "</details>"
            )
            sw = " ".join(f"--sweep {p}" for p in s.sweeps)
            b.append(f"<p>Reproduce: <code>hemorrhage experiment {n} {_e(sw)}</code></p>")
    if predictors:
        b.append("<h2 id='predictor'>Predicted before compressing (linear response)</h2>")
        b.append(
            "<p>KL(p‖q) predicted from the base alone (sim/predict/): the centre of the linear and dephased "
            "closures and its 5–95 % band, beside the KL measured after compressing.</p>"
        )
        b += [predictor_html(p, src) for src, p in predictors]
    b.append("<h2 id='notation'>Notation</h2>")
    b.append(_table(["symbol", "meaning"], GLOSSARY))
    b.append("<h2 id='reproduce'>Reproduce every number</h2><pre>")
    seen = set()
    for s in studies:
        for p in s.sweeps:
            if p not in seen:
                seen.add(p)
                b.append(_e(sweep_command([r for r in s.rows if r.get("_sweep") == p] or s.rows, p)))
    b.append(_e(command) + "</pre></body></html>\n")
    return "\n".join(b)


def read_sweeps(paths) -> list[tuple[str, list[dict]]]:
    """(path as given, rows) per sweep file; UserError for a file that is not a sweep."""
    from hemorrhage.errors import UserError
    from hemorrhage.validate.sweep import read_rows

    out = []
    for p in paths:
        if not Path(p).is_file():
            raise UserError(f"--sweep {p}: no such file")
        rows = read_rows(Path(p), repair=False)
        if not rows or not all(isinstance(r, dict) and "kl" in r for r in rows):
            raise UserError(f"--sweep {p}: not a sweep file (no rows with kl)")
        out.append((str(p), [{**r, "_sweep": str(p)} for r in rows]))
    return out


def read_predictors(paths) -> list[tuple[str, dict]]:
    from hemorrhage.errors import UserError

    out = []
    for p in paths:
        try:
            d = json.loads(Path(p).read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"--predict {p}: not a readable JSON file ({e.__class__.__name__})") from None
        if not isinstance(d, dict) or not isinstance(d.get("predicted", d).get("points"), list):
            raise UserError(f"--predict {p}: not a `hemorrhage predict --json` output (no points)")
        out.append((str(p), d))
    return out


def _studies(sweeps) -> list[tuple[str, list[str], list[dict]]]:
    plan = [(Path(p).stem, [p], rows) for p, rows in sweeps]
    if len({str(r.get("model")) for _, rows in sweeps for r in rows}) > 1:
        plan.append(("models", [p for p, _ in sweeps], [r for _, rows in sweeps for r in rows]))
    return plan


def write_report(sweeps, out, *, predict=(), overwrite: bool = False, command: str = "hemorrhage report") -> Path:
    """Run every experiment on each sweep (and on all together where they hold several
    models), then write out/index.html with the figures and tables beside it (sim.outputs
    owned_dir: a folder of the user's is refused unless `overwrite`)."""
    from hemorrhage.sim.outputs import check_output_dir, owned_dir

    check_output_dir(out, overwrite=overwrite)
    got = read_sweeps(sweeps)
    found = list(
        dict.fromkeys(
            Path(p).parent / "bench" / f"bench_predict_{r.get('model')}.json" for p, rows in got for r in rows
        )
    )
    predictors = read_predictors(list(predict) + [f for f in found if f.is_file() and str(f) not in predict])
    with (
        owned_dir(Path(out), command=command, overwrite=overwrite) as tmp,
        tempfile.TemporaryDirectory(prefix="hemorrhage-report.") as scratch,
    ):
        studies = []
        for stem, paths, rows in _studies(got):
            verdicts = run_all(rows, scratch, scratch, stem, log=lambda m: None)
            st = Study(stem, paths, rows, verdicts)
            for n, v in verdicts.items():
                for key, dest in (("figure", st.images), ("table", st.tables)):
                    if v.get(key) and Path(v[key]).is_file():
                        shutil.copyfile(v[key], tmp / Path(v[key]).name)
                        dest[n] = Path(v[key]).name
                        v[key] = Path(v[key]).name  # the page shows no scratch path
            studies.append(st)
        (tmp / "index.html").write_text(render(studies, predictors, command), encoding="utf-8")
    return Path(out) / "index.html"


def write_stored_report(results, figures, out=None, log=print) -> Path | None:
    """The page for the verdicts `hemorrhage figures` stored (results/verdicts_<stem>.json),
    linking the figures already under `figures` by relative path; written to
    results/report/ (ours: rewritten each time).  None where no sweep is stored."""
    from hemorrhage.sim.outputs import owned_dir

    results, figures = Path(results), Path(figures)
    out = Path(out) if out else results / "report"
    got = []
    for sweep in sorted(results.glob("*.jsonl")):
        try:
            got += read_sweeps([sweep])
        except Exception as e:  # noqa: BLE001  (regenerate skips the same files and says why)
            log(f"report: skipped {sweep}: {e}")
    studies = []
    for stem, paths, rows in _studies(got):
        vfile = results / f"verdicts_{stem}.json"
        if not vfile.is_file():
            continue
        verdicts = json.loads(vfile.read_text())
        st = Study(stem, paths, rows, verdicts)
        for n, v in verdicts.items():
            for key, dest, folder in (("figure", st.images, figures), ("table", st.tables, results)):
                path = folder / Path(v.get(key) or "").name  # where this run put it, whatever its cwd was
                if v.get(key) and path.is_file():
                    dest[n] = Path(os.path.relpath(path.resolve(), out.resolve())).as_posix()
        studies.append(st)
    if not studies:
        return None
    predictors = read_predictors(sorted((results / "bench").glob("bench_predict_*.json")))
    command = f"hemorrhage figures --results {results} --figures {figures}"
    with owned_dir(out, command=command) as tmp:
        (tmp / "index.html").write_text(render(studies, predictors, command), encoding="utf-8")
    log(str(out / "index.html"))
    return out / "index.html"
