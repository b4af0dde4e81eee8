"""Tutorial 5 — does retrieval survive where generation collapses?

A marimo notebook (a plain Python file); three ways to read it:

    python tutorials/does_retrieval_survive_where_generation_collapses.py --quick --out /tmp/tut5
    marimo edit tutorials/does_retrieval_survive_where_generation_collapses.py   # sliders
    marimo export ipynb --include-outputs tutorials/does_retrieval_survive_where_generation_collapses.py -o tut5.ipynb

As a script (offline, a few minutes on a CPU; --quick: two settings, 40 documents) it prunes
SmolLM2-135M at a few sparsities and measures, on the same compressed model, two things the
seeds contrast: retrieval (the model's last hidden state h_L as a document embedding; held-out
Wikipedia passages retrieved from their own first sentence) and free-running generation.  The
seeds' success case says retrieval survives where generation has collapsed; the experiment
(validate/exp_retrieval.py) says whether it does on this model.  Figure: figures/retrieval_*.png
under --out.  In `marimo edit` the study waits for its button; the knob below is the same as in
the other tutorials.

Notation (SEEDS.md): h_L the last hidden state (mean-pooled over a passage's tokens: the
embedding e), e' the compressed model's; recall@1 the share of queries whose own passage ranks
first by cosine; prefix agreement the share of generated tokens before the first divergence.
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
    _ap = argparse.ArgumentParser(description="does retrieval survive where generation collapses?")
    _ap.add_argument("--quick", action="store_true", help="2 settings, 40 documents (a smoke run)")
    _ap.add_argument("--out", default="tutorial_out/retrieval", help="folder for the sweep, tables and figures")
    _ap.add_argument("--model", default="smollm2-135m")
    args = _ap.parse_args([a for k, v in mo.cli_args().items() for a in (f"--{k}", str(v)) if a])
    interactive = mo.running_in_notebook()
    return args, interactive


@app.cell
def _(mo):
    mo.md(r"""
    # Does retrieval survive where generation collapses?

    **The claim.** The representation-hierarchy paper (arXiv 2603.24652) and LLM-KICK separate what
    a compressed model keeps from what it loses: tasks read from the hidden state $h$ (embedding,
    retrieval) sit at the top of the hierarchy $h \to z \to p$ and should survive a compression that
    already breaks generation, which reads $p$ step after step.

    **Why it might.** Theorem 1: a relative change $\rho = \|\Delta h\| / \|h\|$ of the representation
    bounds its cosine, $1-\cos(h, h+\Delta h) \le \rho^2/2$ to second order; retrieval only needs each
    passage's embedding $e$ to stay nearer its own query than to the other passages, a margin in
    cosine.  Generation needs the greedy token to survive *every* step (tutorial 2): a per-step flip
    rate $\pi$ leaves $(1-\pi)^t$ of the texts intact.

    **What you should see.** Two curves over sparsity: recall@1 relative to the base's, and the
    prefix agreement of the generations.  If the claim holds, recall stays within 5 % of the base's
    at settings where the prefix agreement is already below ½.  On SmolLM2 used as an embedder it
    does not (results/summary/2_success_cases.md): its embedding cosine falls as fast as generation
    breaks, and $1-\cos(e, e')$ tracks the recall loss (Theorem 1's reading holds).  Judge on your run.
    """)
    return


@app.cell
def _():
    # Theorem 1 on one vector: a relative change ρ = 0.3 in a random direction
    import jax
    import jax.numpy as jnp

    from hemorrhage.theory import one_minus_cos

    _h = jax.random.normal(jax.random.key(0), (576,))
    _dh = jax.random.normal(jax.random.key(1), (576,))
    _dh = 0.3 * jnp.linalg.norm(_h) * _dh / jnp.linalg.norm(_dh)
    _gap = float(one_minus_cos(_h, _h + _dh))
    print(f"[theory] rho = 0.3: 1 - cos(h, h + dh) = {_gap:.4f} (<= rho^2/2 = 0.045)")
    return


@app.cell
def _(mo):
    mo.md(r"""
    ## The study: prune at a few sparsities, retrieve and generate with each

    Per setting `hemorrhage sweep --retrieval N` measures, on the same compressed model, recall@1 of
    $N$ held-out passages (mean-pooled and last-token $h_L$: two embedders), the embedding cosine
    $\cos(e, e')$, and the prefix agreement of greedy generations.  The experiment applies its rule
    (a setting where generation collapsed, prefix agreement $< \tfrac12$, counts for the claim when
    recall@1 $\ge 0.95\,\times$ the base's) and correlates $1-\cos(e,e')$ with the relative recall loss.
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
    from hemorrhage.validate.exp_retrieval import retrieval
    from hemorrhage.validate.measure import MeasureConfig
    from hemorrhage.validate.sweep import parse_grid, read_rows, run_sweep

    out = Path(args.out)
    loaded = load(args.model, quiet=True)
    if args.quick:
        _grid = "magnitude:sparsity=0.1,0.5"
        _config = MeasureConfig(
            windows=1, seqlen=32, mc_items=0, prompts=2, prompt_len=8, new_tokens=8, per_layer=False,
            steps=False, strata_bins=0, retrieval=40,
        )  # fmt: skip
    else:
        _grid = "magnitude:sparsity=0.1,0.3,0.5,0.7;wanda:sparsity=0.5;rtn:bits=4,3"
        _config = MeasureConfig(
            windows=2, mc_items=0, prompts=8, new_tokens=32, per_layer=False, steps=False, strata_bins=0,
            retrieval=200,
        )  # fmt: skip
    _sweep = out / "sweep_retrieval.jsonl"
    run_sweep(loaded, parse_grid(_grid), _config, _sweep, progress=False)
    rows = read_rows(_sweep)
    for _r in rows:
        _label = _r["grid"]["method"] + " " + ",".join(f"{k}={v}" for k, v in _r["grid"]["settings"].items())
        print(
            f"  {_label}: recall@1 {_r['retrieval_recall_at_1']:.3f} (base {_r['retrieval_recall_at_1_base']:.3f}), "
            f"cos(e, e') {_r['embedding_cos']:.3f}, generation prefix agreement {_r['gen_prefix_agreement']:.3f}"
        )
    verdict = retrieval(rows, out / "results", out / "figures", "tutorial")
    print(verdict["summary"])
    print(f"figure: {verdict['figure']}")
    mo.vstack([mo.md(verdict["summary"]), mo.image(verdict["figure"])])
    return


@app.cell
def _(mo):
    mo.md(r"""
    **What to look for.** Right panel: where the prefix agreement has dropped below ½, is recall@1
    still near the base's (a ratio near 1)?  A mild sparsity may keep both; the claim is about the
    settings in between, where the generations already part and the embedding should not yet move.
    Left panel: if $1-\cos(e,e')$ and the recall loss rise together, the embedding is damaged as a whole, which
    is what Theorem 1 predicts for a representation that is itself perturbed, and retrieval is no
    refuge.  With `--quick` there are only 40 passages: recall moves in steps of 0.025.
    """)
    return


@app.cell
def _(mo):
    mo.md(r"""
    ## Turn the knob

    Pick a method and its strength: the model is compressed once more and measured on one held-out
    window (64 tokens), four cloze questions and one greedy generation.  At the chosen layer's
    logit lens you see $1-\cos(h)$ (what retrieval reads) against $1-\cos(p)$ and $KL(p\|q)$ (what
    generation reads), the MC answers and the two generations.  **Latency** on SmolLM2-135M, 2-core
    CPU: the base side once, about half a minute; then about 10 s per new sparsity and 40–45 s per
    new bit width, which compiles anew (measured: `tutorials/README.md`); a setting seen before is instant.

    Try: magnitude 0.5, layer 30 — how large is $1-\cos(h)$ next to $1-\cos(p)$?
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
