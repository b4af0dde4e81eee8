"""Tutorial 3 — where is the 3-bit cliff?

A marimo notebook (a plain Python file); three ways to read it:

    python tutorials/where_is_the_3_bit_cliff.py --quick --out /tmp/tut3
    marimo edit tutorials/where_is_the_3_bit_cliff.py   # sliders
    marimo export ipynb --include-outputs tutorials/where_is_the_3_bit_cliff.py -o tut3.ipynb

As a script (offline, a few minutes on a CPU; --quick: two bit widths, tiny measurement) it
quantizes SmolLM2-135M round-to-nearest at several bit widths, measures KL(p‖q) against the
base on held-out text, and locates the cliff two ways (experiment 4, validate/exp_thresholds.py):
where KL crosses 1 nat, and where a hinge fit of log KL says "linear turned exponential".
Figure: figures/where_is_the_3_bit_cliff.png under --out.  In `marimo edit` the study waits for
its button, and sliders redo one small measurement at once.

Notation (SEEDS.md): b bits, Δ the quantizer step, p / q base / compressed next-token
distributions, Δz the logit perturbation.
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium")


@app.cell
def _():
    import argparse
    import os
    from pathlib import Path

    import marimo as mo

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the Hugging Face hub is never needed
    return Path, argparse, mo


@app.cell
def _(argparse, mo):
    # The script's flags; in a notebook pass them after `--`: marimo edit THIS.py -- --quick
    _ap = argparse.ArgumentParser(description="where is the 3-bit cliff?")
    _ap.add_argument("--quick", action="store_true", help="2 bit widths, few tokens (a smoke run)")
    _ap.add_argument("--out", default="tutorial_out/cliff", help="folder for the sweep, tables and figures")
    _ap.add_argument("--model", default="smollm2-135m")
    args = _ap.parse_args([a for k, v in mo.cli_args().items() for a in (f"--{k}", str(v)) if a])
    interactive = mo.running_in_notebook()
    return args, interactive


@app.cell
def _(mo):
    mo.md(r"""
    # Where is the 3-bit cliff?

    **What you should see.** At many bits the measured $KL(p\|q)$ follows a straight line on a log
    scale, falling $4\times$ per extra bit; at few bits it bends upward away from that line and
    passes 1 nat.  Where it crosses 1 nat (and where a hinge fit of $\log KL$ bends) is the cliff.

    **Why.** A uniform quantizer with $b$ bits over a range $R$ has step $\Delta = R/(2^b-1)$ and
    rounding noise of variance $\Delta^2/12$.  One bit fewer doubles $\Delta$: the noise variance grows
    $4\times$.  While the noise is small, $\Delta z$ is linear in the weight noise and Theorem 3 gives
    $KL \approx \tfrac12\mathrm{Var}_p(\Delta z)$, so $KL(b)\propto 4^{-b}$: $\log KL$ is a straight line in
    $b$ with slope $-\ln 4$ per bit.  The cliff is where that stops: the second-order expansion breaks,
    argmaxes flip, errors compound through the layers.  Seed 004 (Model Hemorrhage) puts it at
    3 bits for LLaMA-2-7B.
    """)
    return


@app.cell
def _():
    # noise variance Δ²/12 per extra bit: × 1/4, so log KL falls by ln 4 per bit
    import numpy as np

    from hemorrhage.theory import noise_var_per_bit_ratio

    ratio = noise_var_per_bit_ratio()
    print(f"[theory] noise variance per extra bit × {ratio}: log KL slope {np.log(ratio):.3f} per bit")
    return np, ratio


@app.cell
def _(mo):
    mo.md(r"""
    ## The study: round-to-nearest at several bit widths, KL against the base

    Caveat: the packaged base is itself a dequantized 4-bit GGUF (Q4_1); re-quantizing at $\ge 4$
    bits can fall near its grid and look unusually gentle.  `fit_family` (experiment 4,
    validate/exp_thresholds.py) gives the 1-nat crossing ($\log KL$ interpolated between grid points)
    and the hinge $\log KL = a + b\,s + c\max(0, s-s_0)$ ($s=-$bits), each with a bootstrap 95 % CI;
    the hinge needs $\ge 4$ bit widths, so `--quick` shows the crossing only.
    """)
    return


@app.cell
def _(interactive, mo):
    run_study = mo.ui.run_button(label="run the sweep (minutes on a CPU)")
    run_study if interactive else None
    return (run_study,)


@app.cell
def _(Path, args, interactive, mo, np, ratio, run_study):
    mo.stop(interactive and not run_study.value, mo.md("*The sweep waits for its button; the knob below does not.*"))
    import matplotlib.pyplot as plt
    import seaborn as sns

    from hemorrhage.sim import load
    from hemorrhage.validate.exp_thresholds import KL_CLIFF, fit_family, thresholds
    from hemorrhage.validate.measure import MeasureConfig
    from hemorrhage.validate.plots import save
    from hemorrhage.validate.sweep import parse_grid, read_rows, run_sweep

    out = Path(args.out)
    loaded = load(args.model, quiet=True)
    if args.quick:
        _grid = "rtn:bits=8,3"
        _config = MeasureConfig(windows=2, seqlen=32, mc_items=0, prompts=0, per_layer=False)
    else:
        _grid = "rtn:bits=8,6,5,4,3,2"
        _config = MeasureConfig(windows=4, seqlen=128, mc_items=0, prompts=0, per_layer=False)
    _sweep = out / "sweep_cliff.jsonl"
    run_sweep(loaded, parse_grid(_grid), _config, _sweep, progress=False)
    rows = read_rows(_sweep)

    bits = np.asarray([r["grid"]["settings"]["bits"] for r in rows], float)
    kl = np.asarray([r["kl"] for r in rows], float)
    fam = fit_family(bits, kl, "bits")
    print("  KL per bit width: " + ", ".join(f"{b:g} bits: {k:.3g}" for b, k in sorted(zip(bits, kl))))
    print(f"  1-nat crossing: {fam['crossing']} ({fam['crossing_status']}), CI {fam['crossing_ci']}")
    print(f"  hinge: {fam['hinge']}, CI {fam['hinge_ci']}")
    verdict = thresholds(rows, results=out / "results", figures=out / "figures", stem=_sweep.stem)
    print(verdict["summary"])

    sns.set_theme(style="whitegrid", context="notebook")
    _fig, _ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    _order = np.argsort(-bits)
    _ok = np.isfinite(kl) & (kl > 0)
    _ax.plot(bits[_ok], kl[_ok], "o-", label="measured KL(p ‖ q)")
    if _ok.any():  # the small-noise law anchored at the mildest setting: KL ∝ 4^(−b)
        _b0, _k0 = bits[_order][0], kl[_order][0]
        _xs = np.linspace(bits.min(), bits.max(), 100)
        _ax.plot(_xs, _k0 * (1 / ratio) ** (_b0 - _xs), ":", color="grey", label="small-noise law KL ∝ 4^(−b)")
    _ax.axhline(KL_CLIFF, color="k", ls="--", lw=1, label="KL = 1 nat")
    if fam["crossing"] is not None and fam["crossing_status"] == "inside":
        _ax.axvline(fam["crossing"], color="C3", lw=1.2, label=f"1-nat crossing {fam['crossing']:.2f} bits")
    if fam["hinge"] is not None:
        _ax.axvline(fam["hinge"], color="C2", ls="-.", lw=1.2, label=f"hinge {fam['hinge']:.2f} bits")
        if fam["hinge_ci"][0] is not None:
            _ax.axvspan(*fam["hinge_ci"], color="C2", alpha=0.12, lw=0)
    _ax.axvspan(2.5, 3.5, color="red", alpha=0.07, lw=0, label="seed 004: the cliff at 3 bits")
    _ax.set_yscale("log")
    _ax.invert_xaxis()
    _ax.set_xlabel("bits per weight (RTN, per channel; fewer → stronger)")
    _ax.set_ylabel("KL(p ‖ q) per token, held-out text")
    _ax.set_title(f"{loaded.name}: where is the 3-bit cliff?", fontsize=11)
    _ax.legend(fontsize=8)
    figure = save(_fig, out / "figures" / "where_is_the_3_bit_cliff.png")
    print(f"figure: {figure}")
    # What to look for: at many bits the points follow the dotted 4^(−b) line; the cliff is
    # where they bend upward away from it, and where the KL passes 1 nat.
    mo.vstack([mo.md(verdict["summary"]), mo.image(figure)])
    return


@app.cell
def _(mo):
    mo.md(r"""
    ## Turn the knob

    Pick a method and its strength: the model is compressed once more and measured on one held-out
    window (64 tokens), four cloze questions and one greedy generation.  At the chosen layer's
    logit lens you see the hierarchy $1-\cos(h) < 1-\cos(z) < 1-\cos(p)$ grow, $KL(p\|q)$ beside its
    prediction $\tfrac12\mathrm{Var}_p(\Delta z)$ (Theorem 3), the MC answers (they keep the base's
    choice) and the two generations (they part early).  **Latency** on SmolLM2-135M, 2-core CPU:
    the base side once, about half a minute; then about 10 s per new sparsity and 40–45 s per new
    bit width, which compiles anew (measured: `tutorials/README.md`); a setting seen before is instant.

    Try: rtn from 8 down to 2 bits — KL grows about 4× per bit until the last steps, where it jumps.
    """)
    return


@app.cell
def _(interactive, mo):
    mo.stop(not interactive)  # a script runs the study above only: the knob is for people
    from hemorrhage.validate import explore

    method = explore.method_dropdown(mo, "rtn")
    return explore, method


@app.cell
def _(explore, method, mo):
    level = explore.level_slider(mo, method.value)
    mo.hstack([method, level])
    return (level,)


@app.cell
def _(args, explore, interactive, mo):
    mo.stop(not interactive)
    from hemorrhage.sim import load as _load

    explorer = explore.Explorer(_load(args.model, quiet=True))  # the base side, once: every slider reuses it
    layer = explore.layer_slider(mo, explorer)
    return explorer, layer


@app.cell
def _(explore, explorer, layer, level, method, mo):
    explore.knob_view(mo, explorer, method.value, level.value, layer)
    return


if __name__ == "__main__":
    app.run()
