"""Tutorial 4 — can we predict the cliff before compressing?

A marimo notebook (a plain Python file); three ways to read it:

    python tutorials/can_we_predict_the_cliff_before_compressing.py --quick --out /tmp/tut4
    marimo edit tutorials/can_we_predict_the_cliff_before_compressing.py   # sliders
    marimo export ipynb --include-outputs tutorials/can_we_predict_the_cliff_before_compressing.py -o tut4.ipynb

As a script (offline, a few minutes on a CPU; --quick: three bit widths, two measured) it
predicts KL(p‖q) of round-to-nearest quantization at every bit width and of magnitude pruning
at every sparsity from the BASE model alone (linear response: JVPs of the base, and its
dephased closure; sim/predict/), then compresses a few of the settings for real and measures
them with the project's own measurement.  Figure: figures/predict_the_cliff.png under --out.
In `marimo edit` the study waits for its button, and sliders redo one small measurement at once.

Notation (SEEDS.md): W the weights, ΔW the compression error, h the last residual, Δz the
logit perturbation, p / q base / compressed next-token distributions, KL ≈ ½Var_p(Δz).
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
    _ap = argparse.ArgumentParser(description="can we predict the cliff before compressing?")
    _ap.add_argument("--quick", action="store_true", help="3 bit widths, no pruning, few tokens (a smoke run)")
    _ap.add_argument("--out", default="tutorial_out/predict", help="folder for the sweep, tables and figures")
    _ap.add_argument("--model", default="smollm2-135m")
    args = _ap.parse_args([a for k, v in mo.cli_args().items() for a in (f"--{k}", str(v)) if a])
    interactive = mo.running_in_notebook()
    return args, interactive


@app.cell
def _(mo):
    mo.md(r"""
    # Can we predict the cliff before compressing?

    **What you should see.** The KL predicted from the BASE model alone runs through the measured
    crosses while the KL is small and stays close up to the cliff; near it the linear and the
    dephased curves part, and the measured crosses fall between them.  Predicting a grid costs a few
    Jacobian-vector products; measuring it costs a compression and an evaluation per setting.

    **Why.** Compression changes the weights by $\Delta W$.  To first order the logits move by
    $\Delta z \approx J\,\Delta W$ ($J=\partial z/\partial W$: one `jax.jvp` per $\Delta W$), and the softmax
    turns that into $KL \approx \tfrac12\mathrm{Var}_p(\Delta z)$ (Theorem 3; sim/predict/ uses the exact KL
    of $\mathrm{softmax}(z+\Delta z)$ against $p$).  Quantization: $\Delta W$ is rounding noise of variance
    $\Delta^2/12$ and $\Delta$ halves with every extra bit, so ONE probe prices every bit width,
    $\Delta z(b) = c(b)\,\Delta z(b_0)$.  Pruning: $\Delta W = -W\odot$ mask, masks nested in the sparsity,
    so a few anchors price the grid.  Near the cliff the first order overshoots: along
    $W+t\Delta W$ the logit velocity keeps its size but TURNS, so the pieces partly cancel; one
    Taylor-mode pass gives the turning rate (theory/dephasing.py).  The prediction quotes the centre
    of the two closures; the cliff is where it crosses 1 nat.
    """)
    return


@app.cell
def _(interactive, mo):
    run_study = mo.ui.run_button(label="predict, then measure a few (minutes on a CPU)")
    run_study if interactive else None
    return (run_study,)


@app.cell
def _(Path, args, interactive, mo, run_study):
    mo.stop(interactive and not run_study.value, mo.md("*The study waits for its button; the knob below does not.*"))
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd
    import seaborn as sns

    from hemorrhage.sim import load
    from hemorrhage.sim.predict import PredictConfig, predict
    from hemorrhage.validate.predict_check import measure_grid
    from hemorrhage.validate.plots import save
    from hemorrhage.validate.sweep import parse_grid

    out = Path(args.out)
    loaded = load(args.model, quiet=True)
    if args.quick:
        _grid = parse_grid("rtn:bits=3,4,8")
        _measured_too = parse_grid("rtn:bits=4,8")
        _cfg = PredictConfig(
            windows=1, seqlen=48, prompts=0, regime_tokens=0, probes=1, bootstrap=50, calib_samples=2, calib_seqlen=32
        )
    else:
        _grid = parse_grid("rtn:bits=2,3,4,5,6,7,8;magnitude:sparsity=0.1,0.2,0.3,0.4,0.5,0.6,0.7")
        _measured_too = parse_grid("rtn:bits=3,4,6;magnitude:sparsity=0.2,0.4")
        _cfg = PredictConfig()

    # 1. predict from the base alone
    _pred = predict(loaded, _grid, _cfg)
    print(f"[predict] {len(_grid)} settings predicted in {_pred['timings']['seconds']:.1f} s from the base alone")
    for _c in _pred["cliffs"]:
        _where = "beyond the grid" if _c["cliff"] is None else f"{_c['cliff']:.3g}"
        print(f"  cliff of {_c['family']}: KL crosses 1 nat at {_c['axis']} {_where}")

    # 2. check a few for real: measure_grid compresses each setting and runs validate.measure on
    # the SAME held-out tokens, so predicted and measured KL differ only by the response's error
    _meas = measure_grid(loaded, _measured_too, _cfg, mc_items=0 if args.quick else 24)
    _measured = {(m["method"], str(m["settings"])): m for m in _meas["points"]}
    _rows = []
    for (_method, _settings), _p in zip(_grid, _pred["points"]):
        _m = _measured.get((_method, str(_settings)))
        _rows.append(
            {
                "method": _method,
                "axis": "bits" if "bits" in _settings else "sparsity",
                "level": _p["level"],
                "kl_predicted": _p["kl"],
                "kl_lo": _p["kl_interval"][0],
                "kl_hi": _p["kl_interval"][1],
                "kl_linear": _p.get("kl_linear", np.nan),
                "kl_dephased": _p.get("kl_dephased", np.nan),
                "kl_measured": np.nan if _m is None else _m["kl"],
            }
        )
    table = pd.DataFrame(_rows)
    (out / "results").mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "results" / "predict_the_cliff.csv", index=False)
    for _r in table.dropna(subset=["kl_measured"]).itertuples():
        print(
            f"  {_r.method} {_r.axis}={_r.level}: predicted KL {_r.kl_predicted:.4g}, measured {_r.kl_measured:.4g} "
            f"(ratio {_r.kl_predicted / _r.kl_measured:.2f})"
        )

    sns.set_theme(style="whitegrid", context="notebook")
    _axes_used = list(dict.fromkeys(table.axis))
    _fig, _axs = plt.subplots(
        1, len(_axes_used), figsize=(6.5 * len(_axes_used), 4.8), layout="constrained", squeeze=False
    )
    for _ax, _axis in zip(_axs[0], _axes_used):
        _d = table[table.axis == _axis].sort_values("level")
        _ax.plot(_d.level, _d.kl_predicted, "o-", label="predicted from the base (centre of the closures)")
        _ax.fill_between(_d.level, _d.kl_lo, _d.kl_hi, alpha=0.2, label="5–95 % (tokens, probes)")
        _ax.plot(_d.level, _d.kl_linear, "--", lw=1, color="grey", label="linear response (coherent)")
        _ax.plot(_d.level, _d.kl_dephased, ":", lw=1.5, color="grey", label="dephased (turning velocity)")
        _ax.plot(_d.level, _d.kl_measured, "X", ms=11, color="k", label="compressed and measured")
        _ax.axhline(1.0, color="red", ls=":", label="the cliff: 1 nat")
        _ax.set_yscale("log")
        if _axis == "bits":
            _ax.invert_xaxis()
        _ax.set_xlabel({"bits": "bits per weight (RTN, per channel)", "sparsity": "sparsity (magnitude)"}[_axis])
        _ax.set_ylabel("KL(p ‖ q) per token")
        _ax.legend(fontsize=8)
    _fig.suptitle(f"{loaded.name}: the damage predicted before compressing vs measured after", fontsize=11)
    figure = save(_fig, out / "figures" / "predict_the_cliff.png")
    print(f"figure: {figure}")
    # What to look for: the measured crosses fall between the linear and the dephased curves near
    # the cliff (the linear response alone overshoots once the nonlinear part of Δz is as big as the
    # linear one, ≈ 1 nat: see each point's `regime` in `hemorrhage predict --json`).
    mo.image(figure)
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

    Try: rtn 6 → 3 bits and watch ½Var_p(Δz) against KL: the prediction's premise holds while the points stay on the diagonal.
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
