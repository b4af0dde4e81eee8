"""Tutorial 4 — can we predict the cliff before compressing?

Run it (offline, a few minutes on a CPU; --quick: three bit widths, two measured):

    python tutorials/can_we_predict_the_cliff_before_compressing.py --quick --out /tmp/tut4

It predicts KL(p‖q) of round-to-nearest quantization at every bit width and of magnitude
pruning at every sparsity from the BASE model alone (linear response: JVPs of the base,
and its dephased closure; sim/predict.py), then compresses a few of the settings for real
and measures them with the project's own measurement.  Figure: figures/predict_the_cliff.png under --out.

Notation (SEEDS.md): W the weights, ΔW the compression error, h the last residual, Δz the
logit perturbation, p / q base / compressed next-token distributions, KL ≈ ½Var_p(Δz).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 bit widths, no pruning, few tokens (a smoke run)")
    ap.add_argument("--out", default="tutorial_out/predict", help="folder for the tables and figures")
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args(argv)
    out = Path(args.out)

    # ---------------------------------------------------------------- 1. the idea
    # Compression changes the weights by ΔW.  To first order the logits move by
    #       Δz ≈ J·ΔW          (J = ∂z/∂W: one Jacobian-vector product, jax.jvp, per ΔW)
    # and the softmax turns that into KL ≈ ½Var_p(Δz) (Theorem 3; sim/predict.py uses the
    # exact KL of softmax(z + Δz) against p).  No compressed model is built.
    #   quantization: ΔW is rounding noise of variance Δ²/12 per weight, and Δ halves with
    #       every extra bit, so ONE random probe ΔW prices every bit width: Δz(b) = c(b)·Δz(b₀)
    #   pruning: ΔW = −W ⊙ (pruned mask); masks of one score are nested in the sparsity, so
    #       the exact ΔW at a few anchor sparsities (one JVP each) prices the whole grid.
    # Near the cliff the first order overshoots: along W + tΔW the logit velocity J(W + tΔW)·ΔW
    # keeps its size but TURNS (gates flip, attention winners change), so the pieces of the
    # change partly cancel.  One Taylor-mode pass (the second derivative along ΔW) gives the
    # turning rate, and theory.dephasing the share of the linear KL that survives.  The
    # prediction quotes the centre of the two closures (linear: no turning; dephased: turning
    # at its initial rate) and both as its model band.
    # The cliff is where the predicted KL crosses 1 nat.
    from hemorrhage.sim import load
    from hemorrhage.sim.predict import PredictConfig, predict
    from hemorrhage.sim.predict_measured import measure_grid
    from hemorrhage.validate.sweep import parse_grid

    loaded = load(args.model, quiet=True)
    if args.quick:
        grid = parse_grid("rtn:bits=3,4,8")
        measured_too = parse_grid("rtn:bits=4,8")
        cfg = PredictConfig(windows=1, seqlen=48, prompts=0, regime_tokens=0, probes=1, bootstrap=50,
                            calib_samples=2, calib_seqlen=32)
    else:
        grid = parse_grid("rtn:bits=2,3,4,5,6,7,8;magnitude:sparsity=0.1,0.2,0.3,0.4,0.5,0.6,0.7")
        measured_too = parse_grid("rtn:bits=3,4,6;magnitude:sparsity=0.2,0.4")
        cfg = PredictConfig()

    # ---------------------------------------------------------------- 2. predict
    pred = predict(loaded, grid, cfg)
    print(f"[predict] {len(grid)} settings predicted in {pred['timings']['seconds']:.1f} s from the base alone")
    for c in pred["cliffs"]:
        where = "beyond the grid" if c["cliff"] is None else f"{c['cliff']:.3g}"
        print(f"  cliff of {c['family']}: KL crosses 1 nat at {c['axis']} {where}")

    # ---------------------------------------------------------------- 3. check a few for real
    # measure_grid compresses each setting and runs validate.measure on the SAME held-out
    # tokens: predicted and measured KL differ only by the error of the linear response.
    meas = measure_grid(loaded, measured_too, cfg, mc_items=0 if args.quick else 24)
    measured = {(m["method"], str(m["settings"])): m for m in meas["points"]}

    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd
    import seaborn as sns

    from hemorrhage.validate.plots import save

    rows = []
    for (method, settings), p in zip(grid, pred["points"]):
        m = measured.get((method, str(settings)))
        rows.append({"method": method, "axis": "bits" if "bits" in settings else "sparsity", "level": p["level"],
                     "kl_predicted": p["kl"], "kl_lo": p["kl_interval"][0], "kl_hi": p["kl_interval"][1],
                     "kl_linear": p.get("kl_linear", np.nan), "kl_dephased": p.get("kl_dephased", np.nan),
                     "kl_measured": np.nan if m is None else m["kl"]})
    df = pd.DataFrame(rows)
    (out / "results").mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "results" / "predict_the_cliff.csv", index=False)
    for r in df.dropna(subset=["kl_measured"]).itertuples():
        print(f"  {r.method} {r.axis}={r.level}: predicted KL {r.kl_predicted:.4g}, measured {r.kl_measured:.4g} "
              f"(ratio {r.kl_predicted / r.kl_measured:.2f})")

    sns.set_theme(style="whitegrid", context="notebook")
    axes_used = list(dict.fromkeys(df.axis))
    fig, axs = plt.subplots(1, len(axes_used), figsize=(6.5 * len(axes_used), 4.8), layout="constrained", squeeze=False)
    for ax, axis in zip(axs[0], axes_used):
        d = df[df.axis == axis].sort_values("level")
        ax.plot(d.level, d.kl_predicted, "o-", label="predicted from the base (centre of the closures)")
        ax.fill_between(d.level, d.kl_lo, d.kl_hi, alpha=0.2, label="5–95 % (tokens, probes)")
        ax.plot(d.level, d.kl_linear, "--", lw=1, color="grey", label="linear response (coherent)")
        ax.plot(d.level, d.kl_dephased, ":", lw=1.5, color="grey", label="dephased (turning velocity)")
        ax.plot(d.level, d.kl_measured, "X", ms=11, color="k", label="compressed and measured")
        ax.axhline(1.0, color="red", ls=":", label="the cliff: 1 nat")
        ax.set_yscale("log")
        if axis == "bits":
            ax.invert_xaxis()
        ax.set_xlabel({"bits": "bits per weight (RTN, per channel)", "sparsity": "sparsity (magnitude)"}[axis])
        ax.set_ylabel("KL(p ‖ q) per token")
        ax.legend(fontsize=8)
    fig.suptitle(f"{loaded.name}: the damage predicted before compressing vs measured after", fontsize=11)
    path = save(fig, out / "figures" / "predict_the_cliff.png")
    print(f"figure: {path}")
    # What to look for: the predicted curve runs through the measured crosses while KL is
    # small and stays close up to the cliff; there the linear and the dephased curves part,
    # and the measured crosses fall between them (the linear response alone overshoots once
    # the nonlinear part of Δz is as big as the linear one, ≈ 1 nat: see each point's
    # `regime` in `hemorrhage predict --json`).  Predicting
    # the grid costs a few JVPs; measuring it costs a compression and an evaluation each.
    return 0


if __name__ == "__main__":
    sys.exit(main())
