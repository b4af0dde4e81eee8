"""Experiment 6: can training undo the damage?  Recovery of degradation vs collapse.

Seed 001 (arXiv 2604.19884) claims Signal Degradation is recoverable and Computation
Collapse is not without structural repair; seed 002 (arXiv 2603.24652) says generation
after pruning needs post-training to recalibrate the softmax: KL ≈ ½Var_p(Δz), and the
greedy path survives only while the logit noise is small against the top-1 margins.  So
if training brings generation back, Var_p(Δz) must fall with it.

For each model and each compression setting: label it with Experiment 5's rule
(validate/diagnose.py: signal_degradation / computation_collapse), then fine-tune the
compressed model with masks and grids fixed (sim/recover.py: KL distillation from the
base on train-split windows, straight-through estimator for quantized weights) and, every
`eval_every` steps, measure on held-out Wikipedia: KL(p‖q), top-1 agreement,
Var_p(Δz) and greedy-generation agreement with the base.

    df = run_recovery(["smollm2-135m", "control"], steps=24)   # tidy table, one row per step
    python -m hemorrhage.validate.recovery --models smollm2-135m control --steps 24

Writes results/recovery/recovery.csv and figures/recovery.png.  Derived columns:
    kl_recovered    1 − KL_t / KL_0: the share of the KL training removed
    top1_recovered  (top1_t − top1_0) / (1 − top1_0): the share of lost agreement regained
    var_p_ratio     Var_p(Δz)_t / Var_p(Δz)_0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

# (method, settings): a mild and a severe setting of each family; Experiment 5's rule says
# which is degradation and which collapse, per model.
SETTINGS = (
    ("rtn", {"bits": 4}),
    ("rtn", {"bits": 2, "group_size": 64}),
    ("magnitude", {"sparsity": 0.3}),
    ("magnitude", {"sparsity": 0.7}),
)
METRICS = ("kl", "top1", "var_p", "kl_pred", "ppl", "gen_prefix_agreement", "gen_token_agreement")


def label(method: str, settings: dict) -> str:
    s = ", ".join(f"{k}={v}" for k, v in settings.items())
    return f"{method} {s}"


def run_recovery(
    models=("smollm2-135m", "control"),
    settings=SETTINGS,
    *,
    steps: int = 24,
    eval_every: int = 8,
    lr: float = 1e-4,
    ste_lr: float = 0.005,
    batch: int = 2,
    train_seqlen: int = 64,
    pool: int = 64,
    windows: int = 2,
    seqlen: int = 64,
    prompts: int = 4,
    new_tokens: int = 16,
    seed: int = 0,
    table: Path | None = None,
    log=None,
):
    """The tidy table (pandas), one row per model × setting × measured step.

    table: a CSV written after every setting and read back first, so a killed run resumes
    where it stopped (rows of the same model, setting, steps and rates are reused)."""
    import pandas as pd

    from hemorrhage.sim import load
    from hemorrhage.sim.compress import compress_from_args
    from hemorrhage.sim.recover import make_probe, recover
    from hemorrhage.validate.diagnose import diagnose

    rows = []
    if table is not None and Path(table).is_file():
        old = pd.read_csv(table)
        rows = [
            r
            for r in old.to_dict("records")
            if int(old[(old.model == r["model"]) & (old.setting == r["setting"])].step.max()) == steps
            and r.get("lr") == lr
            and r.get("ste_lr") == ste_lr
        ]
    done = {(r["model"], r["setting"]) for r in rows}
    for name in models:
        todo = [(m, st) for m, st in settings if (name, label(m, st)) not in done]
        if not todo:
            continue
        loaded = load(name, quiet=True)
        probe = make_probe(loaded, windows=windows, seqlen=seqlen, prompts=prompts, new_tokens=new_tokens)
        for method, st in todo:
            t0 = time.perf_counter()
            comp, record = compress_from_args(loaded, method, seed=seed, **st)
            verdict = diagnose(loaded.model, comp, probe.tokens[:1])["verdict"]
            rec = recover(
                loaded,
                comp,
                steps=steps,
                lr=lr,
                ste_lr=ste_lr,
                batch=batch,
                seqlen=train_seqlen,
                pool=pool,
                seed=seed,
                probe=probe,
                eval_every=eval_every,
            )
            history, constraints, after = rec.history, rec.constraints, rec.after
            del rec, comp  # two 135M-parameter copies and their latents: free them before the next run
            _free_memory()
            h0 = history[0]
            for h in history:
                row = {
                    "model": name,
                    "method": method,
                    "setting": label(method, st),
                    "verdict": verdict,
                    "lr": lr,
                    "ste_lr": ste_lr,
                    "step": h["step"],
                    "loss": h.get("loss"),
                    **{k: h.get(k) for k in METRICS},
                }
                row["kl_recovered"] = 1.0 - h["kl"] / h0["kl"] if h0["kl"] > 0 else np.nan
                lost = 1.0 - h0["top1"]
                row["top1_recovered"] = (h["top1"] - h0["top1"]) / lost if lost > 0 else np.nan
                row["var_p_ratio"] = h["var_p"] / h0["var_p"] if h0["var_p"] > 0 else np.nan
                row.update({f"constraint_{k}": v for k, v in constraints.items()})
                row["base_note"] = loaded.base_note
                rows.append(row)
            if table is not None:
                from hemorrhage.sim.outputs import atomic_write_text

                atomic_write_text(Path(table), pd.DataFrame(rows).to_csv(index=False))
            if log:
                log(
                    f"{name} {label(method, st)} [{verdict}]: KL {h0['kl']:.4g} -> {after['kl']:.4g}, "
                    f"top-1 {h0['top1']:.3f} -> {after['top1']:.3f}, Var_p {h0['var_p']:.4g} -> "
                    f"{after['var_p']:.4g}, gen {h0.get('gen_prefix_agreement', np.nan):.3f} -> "
                    f"{after.get('gen_prefix_agreement', np.nan):.3f}  ({time.perf_counter() - t0:.0f} s)"
                )
        del loaded, probe
        _free_memory()
    return pd.DataFrame(rows)


def _free_memory() -> None:
    """Each setting compiles its own programs for a 30-layer model (new layer types): drop
    them, or a sweep of settings grows by gigabytes."""
    import gc

    import jax

    from hemorrhage.sim import recover as R

    R._step_fn.cache_clear()
    jax.clear_caches()
    gc.collect()


def summary(df) -> list[dict]:
    """Per model × setting: before → after, and whether Var_p fell wherever generation came back."""
    out = []
    for (model, setting), g in df.groupby(["model", "setting"], sort=False):
        g = g.sort_values("step")
        a, b = g.iloc[0], g.iloc[-1]
        d_gen = b.gen_prefix_agreement - a.gen_prefix_agreement
        out.append(
            {
                "model": model,
                "setting": setting,
                "verdict": a.verdict,
                "steps": int(b.step),
                "kl_before": a.kl,
                "kl_after": b.kl,
                "top1_before": a.top1,
                "top1_after": b.top1,
                "var_p_before": a.var_p,
                "var_p_after": b.var_p,
                "gen_before": a.gen_prefix_agreement,
                "gen_after": b.gen_prefix_agreement,
                "kl_recovered": b.kl_recovered,
                "top1_recovered": b.top1_recovered,
                # the theory's necessary condition: generation comes back only if Var_p(Δz) falls
                "gen_up_needs_var_down": bool(d_gen <= 0 or b.var_p < a.var_p),
                "kl_per_step": (a.kl - b.kl) / max(int(b.step), 1),
            }
        )
    return out


def recovery_figure(df, path: Path, title: str) -> Path:
    """One row per model; KL, top-1 agreement, generation agreement and Var_p(Δz) against the
    training step; colour = compression setting, marker = Experiment 5's verdict."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from hemorrhage.validate.plots import save

    sns.set_theme(style="whitegrid", context="notebook")
    d = df.copy()
    d["verdict"] = d["verdict"].str.replace("_", " ")
    models = list(dict.fromkeys(d["model"]))
    settings = list(dict.fromkeys(d["setting"]))
    palette = dict(zip(settings, sns.color_palette("tab10", len(settings))))
    markers = {"intact": "o", "signal degradation": "X", "computation collapse": "s"}
    panels = [
        ("kl", "KL(p ‖ q)  (log)", True),
        ("top1", "top-1 agreement with the base", False),
        ("gen_prefix_agreement", "greedy generation: share identical\nbefore the first divergence", False),
        ("var_p", "Var_p(Δz)  (log; KL ≈ ½Var_p)", True),
    ]
    fig, axes = plt.subplots(len(models), len(panels), figsize=(19, 4.2 * len(models)), squeeze=False)
    for r, model in enumerate(models):
        for c, (col, ylabel, log) in enumerate(panels):
            ax = axes[r, c]
            ok = d[(d.model == model) & np.isfinite(d[col].astype(float))]
            if log:
                ok = ok[ok[col] > 0]
            sns.lineplot(
                ok,
                x="step",
                y=col,
                hue="setting",
                style="verdict",
                markers=markers,
                dashes=False,
                palette=palette,
                hue_order=settings,
                markersize=8,
                ax=ax,
                legend=False,
            )
            if log:
                ax.set_yscale("log")
            ax.set_ylabel(ylabel)
            ax.set_xlabel("training step (masks and grids fixed)")
            ax.set_title(model, fontsize=10)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=palette[x], lw=2, label=x) for x in settings]
    handles += [
        Line2D([], [], color="0.3", marker=markers.get(v, "o"), lw=0, markersize=8, label=v)
        for v in dict.fromkeys(d["verdict"])
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return save(fig, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hemorrhage.validate.recovery", description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["smollm2-135m", "control"])
    p.add_argument("--settings", nargs="+", type=int, help="indices into SETTINGS (default all)")
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--eval-every", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4, help="pruned weights (weight units)")
    p.add_argument("--ste-lr", type=float, default=0.005, help="quantized latents (grid steps per update)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--train-seqlen", type=int, default=64)
    p.add_argument("--windows", type=int, default=2)
    p.add_argument("--seqlen", type=int, default=64)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--results", default="results/recovery")
    p.add_argument("--fresh", action="store_true", help="ignore rows of an earlier (killed) run in the table")
    p.add_argument("--figures", default="figures")
    args = p.parse_args(argv)
    settings = SETTINGS if args.settings is None else tuple(SETTINGS[i] for i in args.settings)
    log = lambda msg: print(f"[recovery] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    df = run_recovery(
        args.models,
        settings,
        steps=args.steps,
        eval_every=args.eval_every,
        lr=args.lr,
        ste_lr=args.ste_lr,
        batch=args.batch,
        train_seqlen=args.train_seqlen,
        windows=args.windows,
        seqlen=args.seqlen,
        prompts=args.prompts,
        new_tokens=args.new_tokens,
        table=None if args.fresh else out / "recovery.csv",
        log=log,
    )
    df = df[df.model.isin(args.models) & df.setting.isin([label(m, st) for m, st in settings])]
    from hemorrhage.sim.outputs import atomic_write_text

    atomic_write_text(out / "recovery.csv", df.to_csv(index=False))
    summ = summary(df)
    atomic_write_text(out / "recovery_summary.json", json.dumps(summ, indent=2, default=float))
    n_tok = args.windows * (args.seqlen - 1)
    title = (
        f"Recovery by KL distillation ({args.steps} steps, {args.batch}×{args.train_seqlen} train "
        f"tokens/step), measured on {n_tok} held-out Wikipedia tokens and {args.prompts} prompts.  "
        "SmolLM2's base is a dequantized GGUF; the control's is clean fp32"
    )
    atomic_write_text(out / "figure.json", json.dumps({"title": title}))  # `hemorrhage figures` redraws with it
    fig = recovery_figure(df, Path(args.figures) / "recovery.png", title)
    for s in summ:
        print(
            f"{s['model']:>14} {s['setting']:<30} {s['verdict']:<22} KL {s['kl_before']:.4g} -> {s['kl_after']:.4g} "
            f"({s['kl_recovered']:+.0%})  top-1 {s['top1_before']:.3f} -> {s['top1_after']:.3f}  "
            f"Var_p {s['var_p_before']:.4g} -> {s['var_p_after']:.4g}  gen {s['gen_before']:.2f} -> "
            f"{s['gen_after']:.2f}"
        )
    print(f"table: {out / 'recovery.csv'}\nfigure: {fig}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
