"""Tutorial 3 — where is the 3-bit cliff?

Run it (offline, a few minutes on a CPU; --quick: two bit widths, tiny measurement):

    python tutorials/where_is_the_3_bit_cliff.py --quick --out /tmp/tut3

It quantizes SmolLM2-135M round-to-nearest at several bit widths, measures KL(p‖q) against
the base on held-out text, and locates the cliff two ways (experiment 4,
validate/exp_thresholds.py): where KL crosses 1 nat, and where a hinge fit of log KL says
"linear turned exponential".  Figure: figures/where_is_the_3_bit_cliff.png under --out.

Notation (SEEDS.md): b bits, Δ the quantizer step, p / q base / compressed next-token
distributions, Δz the logit perturbation.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 bit widths, few tokens (a smoke run)")
    ap.add_argument("--out", default="tutorial_out/cliff", help="folder for the sweep, tables and figures")
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args(argv)
    out = Path(args.out)

    # ---------------------------------------------------------------- 1. the theory
    # A uniform quantizer with b bits over a range R has step Δ = R/(2^b − 1) and rounding
    # noise of variance Δ²/12.  One bit fewer doubles Δ: the noise variance grows 4×
    # (theory.noise.noise_var_per_bit_ratio() = 1/4 per extra bit).  While the noise is
    # small, Δz is linear in the weight noise and Theorem 3 gives KL ≈ Var_p(Δz)/2, so
    #       KL(b) ∝ 4^(−b):   log KL falls on a STRAIGHT line in b, slope −ln 4 per bit.
    # The cliff is where the measured KL leaves that line upward: the noise is no longer
    # small (the 2nd-order expansion breaks, argmax flips, errors compound through layers).
    # Seed 004 (Model Hemorrhage) puts it at 3 bits for LLaMA-2-7B.
    import numpy as np

    from hemorrhage.theory import noise_var_per_bit_ratio

    ratio = noise_var_per_bit_ratio()
    print(f"[theory] noise variance per extra bit × {ratio}: log KL slope {np.log(ratio):.3f} per bit")

    # ---------------------------------------------------------------- 2. measure
    # Caveat: the packaged base is itself a dequantized 4-bit GGUF (Q4_1).  Re-quantizing
    # at ≥ 4 bits can fall near its grid and look unusually gentle.
    from hemorrhage.sim import load
    from hemorrhage.validate.measure import MeasureConfig
    from hemorrhage.validate.sweep import parse_grid, read_rows, run_sweep

    loaded = load(args.model, quiet=True)
    if args.quick:
        grid = "rtn:bits=8,3"
        config = MeasureConfig(windows=2, seqlen=32, mc_items=0, prompts=0, per_layer=False)
    else:
        grid = "rtn:bits=8,6,5,4,3,2"
        config = MeasureConfig(windows=4, seqlen=128, mc_items=0, prompts=0, per_layer=False)
    sweep = out / "sweep_cliff.jsonl"
    run_sweep(loaded, parse_grid(grid), config, sweep, progress=False)
    rows = read_rows(sweep)

    # ---------------------------------------------------------------- 3. find the cliff
    # fit_family: the 1-nat crossing (log KL interpolated between grid points) and the hinge
    # log KL = a + b·s + c·max(0, s − s₀) (s = −bits), each with a bootstrap-over-grid-points
    # 95 % CI.  The hinge needs ≥ 4 bit widths, so --quick shows the crossing only.
    import matplotlib.pyplot as plt
    import seaborn as sns

    from hemorrhage.validate.exp_thresholds import KL_CLIFF, fit_family, thresholds
    from hemorrhage.validate.plots import save

    bits = np.asarray([r["grid"]["settings"]["bits"] for r in rows], float)
    kl = np.asarray([r["kl"] for r in rows], float)
    fam = fit_family(bits, kl, "bits")
    print(f"  KL per bit width: " + ", ".join(f"{b:g} bits: {k:.3g}" for b, k in sorted(zip(bits, kl))))
    print(f"  1-nat crossing: {fam['crossing']} ({fam['crossing_status']}), CI {fam['crossing_ci']}")
    print(f"  hinge: {fam['hinge']}, CI {fam['hinge_ci']}")
    v = thresholds(rows, results=out / "results", figures=out / "figures", stem=sweep.stem)
    print(v["summary"])

    sns.set_theme(style="whitegrid", context="notebook")
    fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    order = np.argsort(-bits)
    ok = np.isfinite(kl) & (kl > 0)
    ax.plot(bits[ok], kl[ok], "o-", label="measured KL(p ‖ q)")
    if ok.any():  # the small-noise law anchored at the mildest setting: KL ∝ 4^(−b)
        b0 = bits[order][0]
        k0 = kl[order][0]
        xs = np.linspace(bits.min(), bits.max(), 100)
        ax.plot(xs, k0 * (1 / ratio) ** (b0 - xs), ":",
                color="grey", label="small-noise law KL ∝ 4^(−b)")
    ax.axhline(KL_CLIFF, color="k", ls="--", lw=1, label="KL = 1 nat")
    if fam["crossing"] is not None and fam["crossing_status"] == "inside":
        ax.axvline(fam["crossing"], color="C3", lw=1.2, label=f"1-nat crossing {fam['crossing']:.2f} bits")
    if fam["hinge"] is not None:
        ax.axvline(fam["hinge"], color="C2", ls="-.", lw=1.2, label=f"hinge {fam['hinge']:.2f} bits")
        if fam["hinge_ci"][0] is not None:
            ax.axvspan(*fam["hinge_ci"], color="C2", alpha=0.12, lw=0)
    ax.axvspan(2.5, 3.5, color="red", alpha=0.07, lw=0, label="seed 004: the cliff at 3 bits")
    ax.set_yscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("bits per weight (RTN, per channel; fewer → stronger)")
    ax.set_ylabel("KL(p ‖ q) per token, held-out text")
    ax.set_title(f"{loaded.name}: where is the 3-bit cliff?", fontsize=11)
    ax.legend(fontsize=8)
    path = save(fig, out / "figures" / "where_is_the_3_bit_cliff.png")
    print(f"figure: {path}")
    # What to look for: at many bits the points follow the dotted 4^(−b) line; the cliff is
    # where they bend upward away from it, and where the KL passes 1 nat.
    return 0


if __name__ == "__main__":
    sys.exit(main())
