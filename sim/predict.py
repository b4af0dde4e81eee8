r"""Predict the damage of a compression plan before compressing: linear response + theory/.

    res = predict(loaded, [("rtn", {"bits": 4}), ("magnitude", {"sparsity": 0.5})], PredictConfig())
    res["points"][i]["kl"], ...["top1_agreement"], ...["first_divergence_mean"]; res["cliffs"]

Inputs: the base weights, a calibration batch of real text (Hessians H = 2XᵀX/n for
GPTQ/SparseGPT, column norms ‖X_j‖ for Wanda: `compress.calib.layer_hessians`, the same
16 × 128 windows the compressor uses by default) and JVPs of the base (`linear_response`).
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
         power law K₂ ∝ E^γ read off the anchors (sim.pricing).  SparseGPT (approximate): its
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
kl_prediction_ok = 0.45 ≤ that ratio ≤ 1/0.45: the check of the prediction itself (two-sided: the
upper edge flags three more of the bench's misses, where the linear response undershoots — the
control's 90 % magnitude and Wanda, forward ×2.3–2.6, Gemma's magnitude 2:4, ×2.2 — and no point
that was within ×1.5).  The same forward
gives the gate flip share and attention-entropy shift per block, the evidence
`validate.diagnose` uses for Computation Collapse; collapse_signature = a first-half block
with gate flips > 25 % or entropy shift > 0.15 (diagnose's thresholds, imported).
In Signal Degradation an error travels linearly; collapse needs components to switch (gates
flip, attention spreads), which is where the linear response breaks.  Observed on SmolLM2
(bench/bench_predict.py, full grid): r grows ≈ ×2 per bit removed and crosses 0.3 about two
bits (or 0.1 sparsity) before the cliff, yet the linear KL stays within ×1.5 of the measured
one up to r ≈ 0.9, which every method reaches at its cliff (r ≈ 0.9 ⇔ KL ≈ 1 nat: the
nonlinear part of Δz is as large as the linear part); past it the forward/linear KL ratio
falls below 0.45 exactly where the linear KL overshoots the measured one by more than ×1.5
(2-bit quantization, Wanda/SparseGPT ≥ 0.5–0.6, 2:4 with calibration), and early gate flips
pass diagnose's 25 % (collapse_signature) from 3 bits / 50–80 % sparsity on.  The 0.45 was
read off that run; treat it as a calibrated heuristic.  On Gemma 3 270M (its windows start
with BOS, as its tokenizer starts texts: sim.data.adds_bos) the same holds up to the cliff;
Wanda and SparseGPT overshoot from 0.5 sparsity on and the check flags it there.  Fed without
its BOS, Gemma turns the first text token into its attention sink and the linear response
overshoots from KL ≈ 0.2 (×1.5–6, r ≈ 1): the regime check flags the predictions it cannot
make (bench/README.md).

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
two closures' cliffs.  Chosen on measurements (bench/README.md), not derived: on SmolLM2 the
measured KL lies between the closures; on Gemma 3 Wanda and SparseGPT follow the dephased one
and magnitude pruning the linear one or above (its response grows rather than turns); the
centre's cliffs are within target for 12 of 12 families of both models, the dephased 11, the
linear 10.  `kl_forward_corrected` (KL_lin × each level's kl_forward_over_linear on the regime
tokens) is kept beside it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import numpy as np

from hemorrhage.errors import UserError
from hemorrhage.sim.predict_summary import blend, cliff_crossing, summarise  # noqa: F401  (public here)

QUANT, PRUNE = ("rtn", "gptq"), ("magnitude", "wanda", "sparsegpt")
PREDICTABLE = QUANT + PRUNE
_BITS, _SPARSITY = "2,3,4,5,6,7,8", "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"
FULL_GRID = (f"rtn:bits={_BITS};rtn:bits={_BITS},group_size=64;gptq:bits={_BITS};magnitude:sparsity={_SPARSITY};"
             f"wanda:sparsity={_SPARSITY};sparsegpt:sparsity={_SPARSITY};"
             "magnitude:pattern=2:4;wanda:pattern=2:4;sparsegpt:pattern=2:4")
SQRT3 = math.sqrt(3.0)
# the point estimate's weight of the dephased closure (`blend`): the linear response keeps the
# logit velocity coherent, the dephased closure lets it decorrelate at its initial turning rate
ESTIMATES = {"linear": 0.0, "centre": 0.5, "dephased": 1.0}


@dataclass(frozen=True)
class PredictConfig:
    windows: int = 2  # held-out windows (validate.measure's first ones) for KL / top-1
    seqlen: int = 128
    source: str = "wiki"
    prompts: int = 4  # generation prompts for the first divergence (0: none)
    prompt_len: int = 16
    new_tokens: int = 32
    probes: int = 2  # noise probes per quantization family
    prune_anchors: int = 3  # exact JVPs per pruning family (sim.pricing); the grid's size: every level exact
    seed: int = 0
    calib_samples: int = 16  # calibration batch (as compress_from_args' default)
    calib_seqlen: int = 128
    calib_seed: int = 0
    regime_tokens: int = 32  # tokens of the nonlinearity check (0: skip it)
    kl_threshold: float = 1.0  # the cliff: KL crosses this many nats
    nonlinearity_max: float = 0.3  # linear_regime_ok: r ≤ this
    kl_check_min: float = 0.45  # kl_prediction_ok: KL(W+ΔW)/KL_lin on the regime tokens in [this, 1/this]
    bootstrap: int = 200
    estimate: str = "centre"  # the point estimate: 'centre' of the two closures, 'dephased' or 'linear' (`blend`)

    def __post_init__(self):
        for name in ("windows", "probes", "prune_anchors", "calib_samples", "bootstrap", "new_tokens", "prompt_len"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1")
        if self.seqlen < 2 or self.calib_seqlen < 2:
            raise UserError("--seqlen and --calib-seqlen must be >= 2")
        if self.prompts < 0 or self.regime_tokens < 0:
            raise UserError("--prompts and --regime-tokens must be >= 0")
        object.__setattr__(self, "regime_tokens", min(int(self.regime_tokens), self.seqlen - 1))  # one window
        if not self.kl_threshold > 0 or not self.nonlinearity_max > 0:
            raise UserError("--kl-threshold and the nonlinearity threshold must be > 0")
        if self.estimate not in ESTIMATES:
            raise UserError(f"--estimate must be one of {', '.join(ESTIMATES)}; got {self.estimate!r}")

    @property
    def dephased_weight(self) -> float:
        """w of `blend`: the weight of the dephased closure in the point estimate."""
        return ESTIMATES[self.estimate]

    @property
    def dephasing(self) -> bool:
        """Whether the Taylor-mode pass (the dephased closure) runs at all."""
        return self.estimate != "linear"


# ------------------------------------------------------------------ plans --------------

def _family_key(method: str, settings: dict) -> tuple:
    level = "bits" if method in QUANT else ("sparsity" if settings.get("pattern") is None else None)
    rest = tuple(sorted((k, v) for k, v in settings.items() if k != level))
    return method, level, rest


def plan_families(model, grid: list[tuple[str, dict]]) -> list[dict]:
    """Group grid points into families priced by one set of JVPs: same method and settings
    but the level (bits, or sparsity of an unstructured mask)."""
    from hemorrhage.sim.compress import make_method
    from hemorrhage.sim.compress.registry import CALIB_SETTINGS

    fams: dict[tuple, dict] = {}
    for i, (method, settings) in enumerate(grid):
        if method not in PREDICTABLE:
            raise UserError(f"predict covers {', '.join(PREDICTABLE)}; got {method!r}")
        if any(k in CALIB_SETTINGS for k in settings):
            raise UserError("predict: set calibration with --calib-samples/--calib-seqlen/--seed, not in the grid")
        m = make_method(method, **settings)
        if hasattr(m, "check"):
            m.check(model)
        key = _family_key(method, asdict(m))
        fam = fams.setdefault(key, {"method": method, "axis": key[1], "fixed": dict(key[2]), "points": []})
        fam["points"].append((i, m))
    for fam in fams.values():
        lv = fam["axis"]
        fam["points"].sort(key=lambda p: -getattr(p[1], lv) if lv == "bits" else (getattr(p[1], lv) if lv else 0))
    return list(fams.values())


# ------------------------------------------------------------------ the prediction -----

def held_out_sets(loaded, cfg: PredictConfig):
    """({"eval": held-out windows, "gen": prompts + the base's greedy continuations}, prompts, gen)."""
    from hemorrhage.sim.data import eval_windows
    from hemorrhage.sim.generate import generate

    ev = eval_windows(loaded.tokenizer, cfg.source, seqlen=cfg.seqlen, stride=cfg.seqlen, max_windows=cfg.windows)
    sets, prompts, gen = {"eval": ev}, None, None
    if cfg.prompts:
        w = eval_windows(loaded.tokenizer, cfg.source, seqlen=cfg.prompt_len, stride=cfg.seqlen,
                         max_windows=cfg.windows + cfg.prompts)
        prompts = w[cfg.windows:]
        if len(prompts) == 0:
            raise UserError("the held-out text has no room for prompts after the scored windows")
        gen = np.asarray(generate(loaded.model, prompts, cfg.new_tokens), np.int32)
        sets["gen"] = np.concatenate([prompts, gen[:, :-1]], axis=1)
    return sets, prompts, gen


def predict(loaded, grid: list[tuple[str, dict]], cfg: PredictConfig = PredictConfig(), *, log=None) -> dict:
    """Predicted kl, top1_agreement, first_divergence_mean, regime per grid point; cliffs
    per family (module docstring)."""
    import jax.numpy as jnp

    from hemorrhage.sim import linear_response as lrm
    from hemorrhage.sim import pricing

    t0 = time.perf_counter()
    say = (lambda m: log(f"{time.perf_counter() - t0:7.1f} s  {m}")) if log else (lambda m: None)
    model = loaded.model
    fams = plan_families(model, grid)
    say("base generation")
    sets, prompts, gen = held_out_sets(loaded, cfg)
    stats = None
    if any(f["method"] in ("gptq", "wanda", "sparsegpt") for f in fams):
        from hemorrhage.sim.compress.calib import layer_hessians
        from hemorrhage.sim.data import calibration_tokens

        say("calibration statistics")
        stats = layer_hessians(model, calibration_tokens(loaded.tokenizer, "wiki", cfg.calib_samples,
                                                         cfg.calib_seqlen, cfg.calib_seed))
    say("linearising the base")
    lr = lrm.Linearization(model, sets, taylor=cfg.dephasing)
    ctx = lrm.Context(lr, cfg, stats)
    ctx.say = say
    ctx.h_eval = lr.h["eval"][:, :-1].reshape(-1, lr.h["eval"].shape[-1])
    if "gen" in sets:
        hg = lr.h["gen"][:, cfg.prompt_len - 1:]
        ctx.h_gen = hg.reshape(-1, hg.shape[-1])
        ctx.margin, ctx.pair = lrm.base_margins(model, ctx.h_gen)
    say("base margins, regime trace")
    if cfg.regime_tokens:
        ctx.regime_tokens = jnp.asarray(sets["eval"][:1, :cfg.regime_tokens])
        # the base through the regime forward's own program (W + 0·W): one compile, not two
        _, gate_pos, entropy = lr.trace_perturbed(lr.weights, 0.0, ctx.regime_tokens)
        ctx.base_trace = SimpleNamespace(gate_pos=gate_pos, attn_entropy=entropy)
    points: list = [None] * len(grid)
    cliffs = []
    for fam in fams:
        say(f"{fam['method']} {fam['fixed']} × {len(fam['points'])} level(s)")
        methods = [m for _, m in fam["points"]]
        res = (pricing.price_quant if fam["method"] in QUANT else pricing.price_prune)(ctx, methods)
        summ = summarise(res, fam, cfg)
        for (i, _), pt in zip(fam["points"], summ["points"]):
            points[i] = {"method": grid[i][0], "settings": grid[i][1], **pt}
        if summ["cliff"] is not None:
            cliffs.append(summ["cliff"])
    from hemorrhage.sim.data import adds_bos

    out = {"model": str(getattr(loaded, "name", "")), "config": asdict(cfg), "bos": adds_bos(loaded.tokenizer),
           "points": points, "cliffs": cliffs,
           "timings": {"seconds": round(time.perf_counter() - t0, 2)}}  # sim.timings: --json drops it
    if len(points) == 1:
        out.update({k: points[0][k] for k in ("kl", "top1_agreement", "first_divergence_mean") if k in points[0]})
    return out
