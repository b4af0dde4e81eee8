"""Tutorial 1 — why does a pruned model still answer multiple choice?

A marimo notebook (a plain Python file); three ways to read it:

    python tutorials/why_does_a_pruned_model_still_answer_multiple_choice.py --quick --out /tmp/tut1
    marimo edit tutorials/why_does_a_pruned_model_still_answer_multiple_choice.py   # sliders
    marimo export ipynb --include-outputs tutorials/why_does_a_pruned_model_still_answer_multiple_choice.py -o t1.ipynb

As a script (offline, a few minutes on a CPU; --quick: two settings, tiny measurement) it
prunes SmolLM2-135M by weight magnitude at a few sparsities, measures every pruned model
against its base (multiple choice AND free generation, on held-out text), and draws
figures/mc_vs_generation_*.png under --out.  In `marimo edit` the same study waits for its
button, and sliders (method, sparsity or bits, layer) redo one small measurement at once.

Notation (SEEDS.md, theory/__init__.py):
    h  the last hidden state, z = W·norm(h) the logits, p = softmax(z/T) the next-token
    distribution of the BASE model; the compressed model gives z + Δz and q = softmax((z+Δz)/T).
    T = 1 throughout.
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
    _ap = argparse.ArgumentParser(description="why does a pruned model still answer multiple choice?")
    _ap.add_argument("--quick", action="store_true", help="2 settings, few tokens (a smoke run)")
    _ap.add_argument("--out", default="tutorial_out/mc", help="folder for the sweep, tables and figures")
    _ap.add_argument("--model", default="smollm2-135m")
    args = _ap.parse_args([a for k, v in mo.cli_args().items() for a in (f"--{k}", str(v)) if a])
    interactive = mo.running_in_notebook()
    return args, interactive


@app.cell
def _(mo):
    mo.md(r"""
    # Why does a pruned model still answer multiple choice?

    **What you should see.** As the sparsity grows, the multiple-choice answers stay the same as
    the base's long after the generated text has changed: MC agreement near 1 while the first
    divergence of greedy generation falls to a few tokens.  And the KL *over the answer choices*
    $KL_S$ stays far below the KL over the full vocabulary at the same position.

    **Why.** Theorem 3 (arXiv 2603.24652): for a small logit perturbation $\Delta z$,
    $KL(p\,\|\,q) \approx \tfrac{1}{2T^2}\mathrm{Var}_{i\sim p}(\Delta z_i)$.  A multiple-choice
    scorer reads $p$ only on the answer set $S$ and renormalises, $p_S = p|_S$, so
    $KL_S \approx \tfrac12\mathrm{Var}_{p_S}(\Delta z_S)$: a shift of $\Delta z$ common to the choices
    cancels, and for noise of size $s$, $E[\mathrm{Var}_w(\Delta z)] = s^2(1-\sum_i w_i^2)$: a confident
    answer ($p_S$ nearly one-hot) barely moves while a diffuse full $p$ pays $\approx s^2/2$.  The score
    only needs $\arg\max_S$ to survive: ONE event with a wide margin.  Generation needs every step's
    argmax over the whole vocabulary to survive, and the first flip changes everything after it.
    """)
    return


@app.cell
def _():
    # E[KL_S] vs E[KL] for logit noise of size s (theory.subspace), on a made-up logit vector
    # with a confident answer among 4 letters inside a 1000-token vocabulary:
    #     E[Var_w(Δz)] = s²(1 − Σ w²),  w = p_S  or  p
    import jax.numpy as jnp
    import numpy as np

    from hemorrhage.theory.subspace import mask_from_indices, subset_vs_full_expected_kl

    _rng = np.random.default_rng(0)
    _z = jnp.asarray(_rng.normal(0, 2, 1000))
    _z = _z.at[:4].set(jnp.asarray([9.0, 5.0, 4.5, 4.0]))  # tokens 0..3 are the letters, 0 is right
    for _s in (0.3, 1.0):
        _kl_s, _kl_full = subset_vs_full_expected_kl(_z, mask_from_indices(1000, jnp.arange(4)), _s)
        print(
            f"[theory] logit noise s={_s}: expected KL on the answer letters {float(_kl_s):.4f} "
            f"vs on the full vocabulary {float(_kl_full):.4f}"
        )
    return


@app.cell
def _(mo):
    mo.md(r"""
    ## The study: a sweep of magnitude pruning, measured against the base

    The base is SmolLM2-135M as packaged on PyPI (a dequantized 4-bit GGUF: every number is damage
    RELATIVE to that base).  What is measured (validate/measure.py defines every field):
    `kl`, `top1_agreement` (next-token damage on held-out Wikipedia, full vocabulary),
    `mc_agreement` (cloze questions answered as the base does), `mc_kl_choices` $=KL_S$ and
    `mc_kl_full` $=KL$ at the answer position, `first_divergence_mean` (greedy generation: the
    step where the texts first differ).  Experiment 2 checks the seed's claim: MC agreement
    stays high where generation has collapsed, and $KL_S \ll KL$.
    """)
    return


@app.cell
def _(interactive, mo):
    run_study = mo.ui.run_button(label="run the sweep (minutes on a CPU)")
    run_study if interactive else None
    return (run_study,)


@app.cell
def _(Path, args, interactive, mo, run_study):
    mo.stop(interactive and not run_study.value, mo.md("*The sweep waits for its button; the knob below does not.*"))
    from hemorrhage.sim import load
    from hemorrhage.validate.exp_mc import mc_vs_generation
    from hemorrhage.validate.measure import MeasureConfig
    from hemorrhage.validate.sweep import parse_grid, read_rows, run_sweep

    out = Path(args.out)
    loaded = load(args.model, quiet=True)
    if args.quick:
        _grid = "magnitude:sparsity=0.1,0.6"
        _config = MeasureConfig(
            windows=2, seqlen=32, mc_items=4, prompts=2, prompt_len=8, new_tokens=8, per_layer=False
        )
        _calib = {"calib_samples": 2, "calib_seqlen": 32}
    else:
        _grid = "magnitude:sparsity=0.1,0.2,0.3,0.4,0.5,0.6"
        _config = MeasureConfig(windows=4, seqlen=128, mc_items=24, prompts=8, new_tokens=32, per_layer=False)
        _calib = {"calib_samples": 16, "calib_seqlen": 128}
    # run_sweep compresses each setting from the base and measures it; rows go to a JSON
    # Lines file (rerun and finished settings are skipped).
    _sweep = out / "sweep_mc.jsonl"
    run_sweep(loaded, parse_grid(_grid), _config, _sweep, calib=_calib, progress=False)
    rows = read_rows(_sweep)
    verdict = mc_vs_generation(rows, results=out / "results", figures=out / "figures", stem=_sweep.stem)
    for _r in rows:
        print(
            f"  sparsity {_r['grid']['settings'].get('sparsity')}: MC agreement {_r.get('mc_agreement'):.2f}, "
            f"KL_S {_r.get('mc_kl_choices'):.3g} vs KL {_r.get('mc_kl_full'):.3g} at the answer; "
            f"generation first differs at step {_r.get('first_divergence_mean'):.1f} of {_r.get('new_tokens')}"
        )
    print(verdict["summary"])
    print(f"figure: {verdict['figure']}")
    # What to look for in the figure: on the left, the MC curve stays near 1 while the
    # generation curves fall as the full KL grows; on the right, every point lies well below
    # the diagonal (KL_S ≪ KL).  With --quick there are too few questions (4) to trust.
    mo.vstack([mo.md(verdict["summary"]), mo.image(verdict["figure"])])
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
    """)
    return


@app.cell
def _(interactive, mo):
    mo.stop(not interactive)  # a script runs the study above only: the knob is for people
    from hemorrhage.validate import explore

    method = explore.method_dropdown(mo, "magnitude")
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
