r"""Predict the damage of a compression plan before compressing: linear response + theory/.

    res = predict(loaded, [("rtn", {"bits": 4}), ("magnitude", {"sparsity": 0.5})], PredictConfig())
    res["points"][i]["kl"], ...["top1_agreement"], ...["first_divergence_mean"]; res["cliffs"]

Inputs: the base weights, a calibration batch of real text (Hessians H = 2XᵀX/n for
GPTQ/SparseGPT, column norms ‖X_j‖ for Wanda: `compress.calib.layer_hessians`, the same
16 × 128 windows the compressor uses by default) and JVPs of the base (`linearization`).
The compressed model is never built (except for the optional regime check below, one
forward of W + ΔW on a few tokens per grid point).

Weight error ΔW per method (a *tangent* over the block linears):
  rtn    probes ΔW = σ⊙ε, ε iid U(−√3, √3) (unit variance), σ² = Δ²/12 with Δ the step of
         the weight's own group or row (theory.noise.quant_noise_var, endpoints exact).
         Δ ∝ 1/(2^b − 1) (symmetric: 1/(2^{b−1} − 1)), so Δz_lin(b) = c(b)·Δz_lin(b₀): one
         probe set prices every bit width.  The uniform model misses the low-bit shape of
         the error (few levels, weights bunched near the middle), so c(b) also carries
         √κ(b), κ(b) = Σ(actual RTN error)² / Σ Δ²/12 over 64 rows of every linear — a
         weights-only number, ≈ 1 at ≥ 4 bits off any grid.
  gptq   sequential OBS (obs.py): with H⁻¹ = UᵀU (U upper), GPTQ's final error is exactly
         ΔW = −E·U with E_iq = r_iq/U_qq, r the rounding residual of the updated weight.
         Modelling r as iid uniform (σ from the original weights' grid; κ = 1: the error
         feedback dithers the weights) gives the probe ΔW = ((σ⊙ε)/diag U)·U and
         E‖ΔW x‖²_calib = ½Σ_iq σ²_iq / U_qq² = ½Σ σ²_iq·H_qq(1 − R²_q), R²_q the share of
         input q's variance explained by the inputs after it; RTN's is ½Σ σ²_iq H_qq.
         The JVP runs on held-out tokens, so out-of-sample error comes for free.
  prune  ΔW(s) = −W⊙(1 − M_s), exact.  Masks of one score are nested in s (scores:
         magnitude |W| per layer, Wanda |W|·‖X_j‖ per row, SparseGPT (W/U_jj)² per block of
         columns), so the pruned energy E(s) = Σ_{pruned} w² orders the grid.  The exact ΔW
         is linearised at a few anchor sparsities (`prune_anchors`, placed by a secant search
         for the KL crossing); the levels between take the nearest anchor's Δz scaled by the
         power law K₂ ∝ E^γ read off the anchors (pricing).  SparseGPT (approximate): its
         mask from the original weights and the OBS shape ((−W⊙P)/diag U)·U, i.e. the
         compensation for weights that were not updated first.  Wanda's norms come from the
         base (the compressor recomputes them on the partly pruned model).  N:M: one tangent.

Logits: Δz_lin = J_unembed(h_L)·J_W h_L·ΔW.  Per grid point and token: KL(p‖q) exact with
q = softmax(z + Δz_lin) (theory.kl_exact), ½Var_p(Δz_lin) (Theorem 3, a Hutchinson estimate
of tr(F·JΣJᵀ) over the probes), top-1 agreement = share of (token, probe) whose argmax
survives.  Interval: 5–95 % of a bootstrap over tokens and probes (sampling only).

First divergence (theory.compounding): the base generates `new_tokens` greedily from the
prompts of `validate.measure` (held-out windows after the scored ones); along that path
the teacher-forced JVP gives, for the top-1 token and each of its next 7 competitors j,
the margin m_j and d_j = Δz_top1 − Δz_j.  Random probes: Φ_j = Φ(−m_j/σ_j), σ_j² =
mean_probes(d_j²)(1 + r²); a deterministic ΔW (pruning): Φ_j = Φ(−(m_j + d_j)/(r|d_j|)), r the
point's nonlinearity (the linear prediction's own uncertainty); P_flip,t = 1 − Π_j(1 − Φ_j)
(competitors independent; the top-2 formula when the third token is far).  Until the first
flip both models read the same prefix, so survival S(t) = Π_{s≤t}(1 − P_flip,s) is the
free-running result: first_divergence_mean = E[min(τ, H+1)] − 1 = Σ_t S(t) (0-based like
`hemorrhage measure`), gen_identical = S(H), mc_vs_gen_gap = top1_agreement − gen_identical
(one decision vs a chain of them; a proxy: the multiple-choice subspace is not scored).

Regime: for each grid point one forward of W + ΔW (probe 0, or the pruning ΔW) on the
first `regime_tokens` tokens gives Δz_true; nonlinearity r = √(Σ_t Var_p(Δz_true − Δz_lin)
/ Σ_t Var_p(Δz_lin)) (the Fisher metric: what KL sees), linear_regime_ok = r ≤ 0.3 (the
strictly linear regime).  kl_forward_over_linear = KL(W+ΔW)/KL_lin on the same tokens and
kl_prediction_ok = kl_check_min ≤ that ratio ≤ 1/kl_check_min: the check of the prediction itself,
two-sided (the linear response can overshoot, and undershoot where a response grows).  The same
forward gives the gate flip share and attention-entropy shift per block, the evidence
`validate.diagnose` uses for Computation Collapse; collapse_signature = a first-half block
with gate flips or an entropy shift past sim.models.base's GATE_FLIP_MAX / ENTROPY_SHIFT_MAX
(diagnose's thresholds).  In Signal Degradation an error travels linearly; collapse needs
components to switch (gates flip, attention spreads), which is where the linear response
breaks.  kl_check_min is a calibrated heuristic, read off bench/bench_predict.py's runs; what
r, the ratio and the collapse signature did on the bench's models is in bench/README.md
("The regime check on the bench's models").

Cliff (`cliff_crossing`, shared with validate/): the compression level where the mean KL
first crosses 1 nat coming from mild compression, log KL interpolated linearly in bits or
sparsity between grid points; None with a status when the grid never crosses.  Its
`interval` is sampling only (the bootstrap); `model_interval` adds the model error.

Point estimate (`estimate`, `blend`): between two closures of the path W + tΔW, along which
the logit velocity g(t) = J(W + tΔW)·ΔW turns as components switch, so the exact change ∫₀¹g
is shorter than the linear response g(0).  'linear' keeps g coherent (g(t) = g(0)); 'dephased'
lets it decorrelate at its initial turning rate (theory.dephasing): one Taylor-mode pass per
JVP (`jet`, on the scored tokens; it yields the first order too, so they are not linearised
twice) gives b = g'(0) and per token x = ‖b⊥‖²_p/‖Δz_lin‖²_p (x ∝ c² over a grid), and the
dephased change is √R(x)·Δz_lin, scored exactly (KL, argmax).  The default 'centre' quotes the
middle of the band on a log scale, KL = √(KL_lin·KL_deph) (top-1: the mean of both; along the
generation paths d_j scaled by (K₂ dephased / K₂ linear)^¼), and `model_interval` spans the
two closures' cliffs.  Chosen on measurements, not derived (bench/README.md has how each
closure and the centre did per model and family).  `kl_forward_corrected` (KL_lin × each level's kl_forward_over_linear on the regime
tokens) is kept beside it.

The package reads in one direction: tangents (ΔW per method), logit_space (the head applied
to Δh_L), summary (means, intervals, cliffs) and config sit at the bottom; linearization (the
JVPs) and context (what every family shares) build on them; pricing prices a family of grid
points; predictor assembles the result.  Import from here: these are the public names.
"""

from hemorrhage.sim.predict.config import ESTIMATES, FULL_GRID, PREDICTABLE, PRUNE, QUANT, PredictConfig
from hemorrhage.sim.predict.context import Context, base_context
from hemorrhage.sim.predict.linearization import Linearization, block_linear_paths
from hemorrhage.sim.predict.logit_space import (
    METRIC_NAMES,
    base_logits,
    base_margins,
    dephasing_rates,
    head_weight,
    logit_metrics,
    nonlinearity_terms,
    pair_response,
)
from hemorrhage.sim.predict.predictor import held_out_sets, plan_families, predict
from hemorrhage.sim.predict.pricing import (
    gen_keep,
    interpolate_half_var_p,
    next_anchor,
    price_prune,
    price_quant,
    prune_levels,
)
from hemorrhage.sim.predict.summary import blend, cliff_crossing, summarise
from hemorrhage.sim.predict.tangents import (
    kappa_terms,
    levels_flat,
    levels_rows,
    noise_probe,
    obs_factor,
    obs_shape,
    pruned_at,
    pruned_through,
    quant_noise_std,
    rtn_kappa,
    step_ratio,
)

__all__ = [
    "ESTIMATES",
    "FULL_GRID",
    "METRIC_NAMES",
    "PREDICTABLE",
    "PRUNE",
    "QUANT",
    "Context",
    "Linearization",
    "PredictConfig",
    "base_context",
    "base_logits",
    "base_margins",
    "blend",
    "block_linear_paths",
    "cliff_crossing",
    "dephasing_rates",
    "gen_keep",
    "head_weight",
    "held_out_sets",
    "interpolate_half_var_p",
    "kappa_terms",
    "levels_flat",
    "levels_rows",
    "logit_metrics",
    "next_anchor",
    "noise_probe",
    "nonlinearity_terms",
    "obs_factor",
    "obs_shape",
    "pair_response",
    "plan_families",
    "predict",
    "price_prune",
    "price_quant",
    "pruned_at",
    "pruned_through",
    "prune_levels",
    "quant_noise_std",
    "rtn_kappa",
    "step_ratio",
    "summarise",
]
