"""One compressed model against its base: the numbers a sweep row is made of.

    base = base_cache(loaded, MeasureConfig())          # base-only work, once (memoised)
    comp, record = compress_from_args(loaded, "magnitude", sparsity=0.5)
    row = measure(loaded, comp, base, record)           # JSON-able dict

Every quantity compares the compressed model with ITS BASE (for the packaged models the
base is the dequantized GGUF, see `loaded.base_note`), on held-out data never used for
calibration.  T = 1 throughout.  Definitions:

Held-out text: `eval_windows(tokenizer, source, seqlen, stride=seqlen, windows)`, i.e. the
first `windows` NON-OVERLAPPING windows of `seqlen` tokens of the held-out split (default
4 × 128 of Wikipedia; a BOS first where the tokenizer starts texts with one, as Gemma's does:
`sim.data.adds_bos`).  In each window every token after the first is scored: the
prediction at position t (0 ≤ t ≤ seqlen−2) for token t+1, so N = windows·(seqlen−1)
scored positions ("tokens" below).

    ppl_base, ppl    exp(mean over the N tokens of −log p(token | its window prefix)), of the
                     base and of the compressed model (nll_base, nll: the mean NLL itself)
    kl               mean over the N positions of KL(p ‖ q) at the final layer, p base, q
                     compressed next-token distributions (full vocabulary)
    top1_agreement   share of the N positions where argmax p = argmax q
    distributions    over the same N positions, as llama.cpp's --kl-divergence prints them
                     (validate/token_stats.py: definitions, percentile rule): kl_stderr (s/√N),
                     kl_median, kl_p999 / p99 / p95 / p90 / p10 / p05 / p01 / p001 (99.9 % … 0.1 %,
                     linear interpolation), kl_max, kl_min; kl_reverse = mean KL(q ‖ p) with the
                     same kl_reverse_* set; top1_stderr (binomial, sqrt(t(1−t)/(N−1)));
                     delta_p_mean, delta_p_stderr, delta_p_* percentiles (also p75, p25), max, min:
                     Δp = q(target) − p(target); delta_p_rms = sqrt(mean Δp²) ± delta_p_rms_stderr;
                     ln_ppl_ratio = ln(ppl/ppl_base) ± ln_ppl_ratio_stderr (of the per-token NLL
                     difference); ppl_stderr, ppl_base_stderr = ppl·se(NLL).  Per-token values
                     in fp32, reductions in float64; null + reason where a token is NaN
    cos_h            mean cos(h_L, h_L + Δh_L), h_L the last residual (input of the final norm)
    cos_z, cos_p     mean cos of the logits z and of the probabilities p
    var_p_dz         mean Var_{i∼p}(Δz_i), Δz = z_compressed − z_base;  kl_pred = var_p_dz / 2
                     is Theorem 3's prediction of kl (arXiv 2603.24652); var_r_dz the same
                     with r = p²/‖p‖² (Theorem 2: 1 − cos_p ≈ var_r_dz / 2)
    per_layer        the same token means at every layer's logit lens, arrays of length L+1
                     (index l = h_l; index L equals the final-layer numbers):
                     validate.metrics.per_layer (cos_h, cos_z, cos_p, kl, kl_pred, var_p,
                     var_r, top1, one_minus_cos_h_pred, one_minus_cos_z_pred,
                     one_minus_cos_p_pred: Theorem 1 on h and z, Theorem 2 on p)
    strata           the same damage per quintile of the base's NLL of the target, with the
                     MLP activation sparsity of base and compressed model (validate/strata.py)

Multiple choice (`mc_items(task, mc_items, mc_seed)` for each task in mc_tasks; default the
Wikipedia `cloze` task, 24 items; `navigate`, `sports_understanding`, `mmlu` (answer letters
" A".." D") also work).  The question is tokenized alone (no special tokens; its last
`mc_max_question` tokens kept), each choice alone (its leading space included), and a
choice's score is the SUM of the log-probabilities of its tokens given the question and its
own earlier tokens.  The question is run once and its KV cache reused for every choice.

    mc_acc_base, mc_acc   share of items whose argmax-score choice is the correct one
    mc_agreement          share of items where the compressed argmax equals the base argmax
                          (an item whose compressed scores are NaN/inf counts as disagreeing)
    mc_kl_choices         mean over items of KL(π_base ‖ π_comp), π = softmax of the choice
                          scores: p renormalised over the answer subspace.  For one-token
                          choices (MMLU letters) this is exactly the seed's "renormalise p over
                          the answer tokens"; for multi-token choices it is the same over whole
                          continuations.
    mc_kl_full            mean over items of the full-vocabulary KL(p ‖ q) of the next-token
                          distribution at the answer position (the question's last token)
    mc_by_task            the same, per task

Generation: K = `prompts` prompts, the first `prompt_len` (16) tokens of the held-out windows
that FOLLOW the measured ones (starts windows·seqlen, (windows+1)·seqlen, …); base and
compressed each generate `new_tokens` (32) tokens greedily from them with a KV cache (EOS is
not special: raw token ids are compared).

    first_divergence      per prompt, the first step d ∈ [0, N) where the two continuations
                          differ, N = new_tokens if they never do
    first_divergence_mean mean of that over prompts (N = no divergence anywhere)
    gen_prefix_agreement  first_divergence_mean / N: the share of the continuation that is
                          identical before the first differing token
    gen_token_agreement   share of the K·N positions with the same token (after a divergence
                          the compressed model runs on its own context, so this mostly counts
                          re-convergence)
    gen_identical         share of prompts whose whole continuation is identical
    steps                 step by step along the base's greedy path (validate/steps.py):
                          teacher-forced cos_h/z/p, KL, Var_p, top-1 per step (means over
                          prompts), and per prompt and step the base margin m_t, the noise on
                          it d_t, the flip, teacher-forced and free-running KL (exp 3)
    strategies            the generation metrics above for each decoding strategy in
                          `strategies` (greedy, tempT, toppP, beamW; validate/steps.py), base
                          and compressed sampling with the same seed (shared randomness)

Collapse: NaN/inf are results, never errors.  `collapsed` is true when the compressed
model's scored logits, NLL or MC scores are not all finite (`nonfinite_tokens` counts the
positions) and `notes` says which numbers are affected and why.  A metric that could not be
computed is null, never a perfect score, with its reason in the same object's
`not_computable` (validate/computable.py): a scalar mean that came out NaN; every comparison
with a BASE whose logits are not finite (argmax of NaN is token 0 on both sides, which would
read as top-1 agreement 1 and identical continuations).  Where only the compressed model's
logits are not finite, top-1, MC and generation agreement count those positions as
disagreeing (it made no valid prediction there).  inf stays inf where it is the value (a KL
with q = 0 where p > 0; ppl of a mean NLL > 709; the JSON is written with allow_nan, so
Infinity and the NaN inside per-layer / per-step arrays appear literally).

Base-only quantities (the base's residuals on the windows, its NLL, MC scores and answer-
position log-probabilities, its generations and greedy path) live in a `BaseCache`
(validate/base_phase.py): computed once per (model, config) in a process (`base_cache`
memoises) and saved/loaded as an .npz by the sweep, the two-phase scheme of llama.cpp's
KL-divergence mode.  Everything is deterministic:
the same model, settings and config give bit-identical numbers (no timings in the output).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from hemorrhage.errors import UserError
from hemorrhage.validate.arrays import mean
from hemorrhage.validate.base_phase import BaseCache
from hemorrhage.validate.computable import KEY as NC
from hemorrhage.validate.computable import count_reason, null_nans
from hemorrhage.validate.token_stats import stat_keys, token_statistics

# per-layer metrics kept in sweep rows: all of them (exp 1 reads them from the sweep)
ROW_PER_LAYER = (
    "cos_h",
    "cos_z",
    "cos_p",
    "kl",
    "kl_pred",
    "var_p",
    "var_r",
    "top1",
    "one_minus_cos_h_pred",
    "one_minus_cos_z_pred",
    "one_minus_cos_p_pred",
)
# the final-layer token means: null + reason (validate.computable) where they come out NaN
TOKEN_KEYS = (
    "nll_base",
    "nll",
    "ppl_base",
    "ppl",
    "kl",
    "kl_pred",
    "var_p_dz",
    "var_r_dz",
    "top1_agreement",
    "cos_h",
    "cos_z",
    "cos_p",
)
# their distributions over the tokens, as llama.cpp prints them (validate/token_stats.py)
STAT_KEYS = stat_keys()


@dataclass(frozen=True)
class MeasureConfig:
    """How much is measured.  The defaults take a few minutes on a laptop CPU for a 135M model."""

    windows: int = 4
    seqlen: int = 128
    source: str = "wiki"
    mc_tasks: tuple[str, ...] = ("cloze",)
    mc_items: int = 24  # per task
    mc_seed: int = 0
    mc_max_question: int = 256  # question tokens kept (the last ones)
    prompts: int = 8
    prompt_len: int = 16
    new_tokens: int = 32
    per_layer: bool = True
    strategies: tuple[str, ...] = ("greedy",)  # decoding strategies compared (validate/steps.py)
    gen_seed: int = 0  # the sampling strategies' seed, the same for base and compressed
    steps: bool = True  # teacher-forced / free-running metrics per generation step
    strata_bins: int = 5  # quantiles of the base's NLL (validate/strata.py); 0 = none
    retrieval: int = 0  # documents of the retrieval benchmark (validate/retrieval.py); 0 = none

    def __post_init__(self):
        checks = [
            (self.windows >= 1, "--windows must be >= 1"),
            (self.seqlen >= 2, "--seqlen must be >= 2"),
            (self.mc_items >= 0, "--mc-items must be >= 0"),
            (self.mc_max_question >= 1, "mc_max_question must be >= 1"),
            (self.prompts >= 0, "--prompts must be >= 0"),
            (self.prompt_len >= 1, "--prompt-len must be >= 1"),
            (self.new_tokens >= 1, "--new-tokens must be >= 1"),
            (self.strata_bins >= 0, "--strata-bins must be >= 0"),
            (self.retrieval == 0 or self.retrieval >= 2, "--retrieval must be 0 (none) or >= 2 documents"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)
        from hemorrhage.sim.data import MC_NAMES, TEXT_SOURCES
        from hemorrhage.validate.steps import parse_strategy

        if self.source not in TEXT_SOURCES:
            raise UserError(f"--source must be one of {', '.join(TEXT_SOURCES)}, got {self.source!r}")
        bad = [t for t in self.mc_tasks if t not in MC_NAMES]
        if bad:
            raise UserError(f"unknown multiple-choice task {bad[0]!r}; known: {', '.join(MC_NAMES)}")
        if len(set(self.mc_tasks)) != len(self.mc_tasks):
            raise UserError("--mc-tasks lists a task twice")
        strategies = tuple(s.strip() for s in self.strategies)
        for s in strategies:
            parse_strategy(s)
        if len(set(strategies)) != len(strategies):
            raise UserError("--strategies lists a strategy twice")
        if "greedy" not in strategies:  # the first divergence and the per-step metrics follow greedy
            strategies = ("greedy",) + strategies
        object.__setattr__(self, "strategies", strategies)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["mc_tasks"] = list(self.mc_tasks)
        d["strategies"] = list(self.strategies)
        d["stride"] = self.seqlen
        d["scored_tokens"] = self.windows * (self.seqlen - 1)
        if not self.retrieval:  # configs (and sweep files) from before retrieval existed stay the same
            d.pop("retrieval")
        return d


def measure(loaded, comp_model, base: BaseCache, record: dict | None = None) -> dict:
    """Phase 2: every metric of `comp_model` against the base held in `base` (module docstring)."""
    import jax.numpy as jnp

    from hemorrhage.validate import measure_jit as mj
    from hemorrhage.validate.base_phase import scored_trace

    config = base.config
    targets = jnp.asarray(base.targets)
    hs_c, sparsity_c = scored_trace(comp_model, base.tokens, config.per_layer)
    hb, hc = jnp.asarray(base.hs[-1]), jnp.asarray(hs_c[-1])
    chunk = mj.chunk_size(hb.shape[0], 128)
    nll_c = np.asarray(mj.nll(comp_model, hc, targets, chunk=chunk), np.float64)
    tok = {k: np.asarray(v, np.float64) for k, v in mj.final(loaded.model, comp_model, hb, hc, chunk=chunk).items()}
    nll_b = base.nll.astype(np.float64)

    out: dict = {"model": str(loaded.name), "base_note": getattr(loaded, "base_note", "")}
    if record is not None:
        from hemorrhage.sim.timings import without_timings

        out["method"] = record.get("method")
        out["settings"] = record.get("settings")
        out["record"] = without_timings(record)  # wall-clock numbers would break determinism
    out["config"] = config.as_dict()
    out.update(nll_base=mean(nll_b), nll=mean(nll_c))
    with np.errstate(over="ignore", invalid="ignore"):
        out.update(ppl_base=float(np.exp(out["nll_base"])), ppl=float(np.exp(out["nll"])))
    out.update(
        kl=mean(tok["kl"]),
        kl_pred=mean(tok["var_p"]) / 2,
        var_p_dz=mean(tok["var_p"]),
        var_r_dz=mean(tok["var_r"]),
        top1_agreement=mean(tok["top1"]),
        cos_h=mean(tok["cos_h"]),
        cos_z=mean(tok["cos_z"]),
        cos_p=mean(tok["cos_p"]),
    )
    # llama.cpp's distribution statistics, from the same per-token arrays (no other forward)
    out.update(token_statistics(tok["kl"], tok["kl_reverse"], tok["top1"], nll_b, nll_c))
    bad_tok = ~(np.isfinite(nll_c) & np.isfinite(tok["kl"]) & np.isfinite(tok["cos_z"]))
    out["nonfinite_tokens"] = int(bad_tok.sum())
    why = count_reason(
        "logits", int((tok["finite_b"] < 0.5).sum()), int((tok["finite_c"] < 0.5).sum()), len(nll_c), "scored positions"
    )
    if len(nll_c) < 2:
        null_nans(out, [k for k in STAT_KEYS if k.endswith("_stderr")], "one scored position: no standard error")
    null_nans(out, TOKEN_KEYS + STAT_KEYS, why)
    nc = out.pop(NC, {})

    if base.mc:
        from hemorrhage.validate.mc import choice_scores, mc_metrics

        s_c, ans_c = choice_scores(comp_model, base.mc)
        out.update(mc_metrics(base.mc, config.mc_tasks, s_c, ans_c))
        nc.update(out.pop(NC, {}))
    if base.prompts is not None:
        out.update(_generation(loaded.model, comp_model, base))
        nc.update(out.pop(NC, {}))
    if config.strata_bins:
        from hemorrhage.validate.strata import strata

        out["strata"] = strata(
            {
                "nll_base": nll_b,
                "nll_comp": nll_c,
                "kl": tok["kl"],
                "kl_pred": tok["kl_pred"],
                "top1": tok["top1"],
                "hoyer_base": base.sparsity["hoyer"],
                "hoyer_comp": sparsity_c["hoyer"],
                "gate_off_base": base.sparsity["gate_off"],
                "gate_off_comp": sparsity_c["gate_off"],
            },
            config.strata_bins,
        )
        if not np.isfinite(nll_b).all():  # the bins are quantiles of the base's NLL
            nc["strata"] = f"binned by the base's NLL, which is not finite everywhere ({why})"
    if config.per_layer:
        from hemorrhage.validate.metrics import per_layer

        from hemorrhage.sim.compress.expand import layer_map

        # a deeper (expanded) model: its h after block j against the base residual record['h_map'][j] names
        _, h_map = layer_map(record, base.hs.shape[0] - 1, hs_c.shape[0] - 1)
        hs_b = base.hs if h_map == list(range(1, base.hs.shape[0])) else base.hs[[0] + h_map]
        pl = per_layer(
            loaded.model, comp_model, jnp.asarray(hs_b), jnp.asarray(hs_c), chunk=mj.chunk_size(hb.shape[0], 256)
        )
        out["per_layer"] = {k: [float(x) for x in np.asarray(v)] for k, v in sorted(pl.items())}
        if hs_b is not base.hs:
            out["per_layer_base_h"] = [0] + h_map  # which base h_l each entry is compared with (expand)
        if any(math.isnan(x) for v in out["per_layer"].values() for x in v):
            nc["per_layer"] = f"NaN where a layer's lens could not be compared ({why})"
    if config.retrieval:
        out.update(retrieval_metrics(loaded, comp_model, config))
        nc.update(out.pop(NC, {}))
    out[NC] = nc
    out["notes"] = _notes(out, len(nll_c))
    out["collapsed"] = bool(out["nonfinite_tokens"] or out.get("mc_nonfinite_items", 0))
    return out


def retrieval_metrics(loaded, comp_model, config: MeasureConfig) -> dict:
    from hemorrhage.validate.retrieval import RetrievalConfig, measure_retrieval

    return measure_retrieval(loaded, comp_model, RetrievalConfig(n_documents=config.retrieval))


def _generation(base_model, comp_model, base: BaseCache) -> dict:
    """Greedy generation metrics at the top level, every strategy under `strategies`, and the
    step-by-step section along the base's greedy path."""
    from hemorrhage.validate.steps import decode_checked, gen_metrics, step_metrics, steps_summary

    config = base.config
    gens, ok = {}, {}
    for s in config.strategies:
        gens[s], ok[s] = decode_checked(comp_model, base.prompts, config.new_tokens, s, config.gen_seed)
    out = gen_metrics(base.gens["greedy"], gens["greedy"], base.gen_finite.get("greedy"), ok["greedy"])
    if len(config.strategies) > 1:
        out["strategies"] = {s: gen_metrics(base.gens[s], g, base.gen_finite.get(s), ok[s]) for s, g in gens.items()}
    if config.steps and base.path_h is not None:
        per = step_metrics(base_model, comp_model, base.path_h, base.prompts, base.gens["greedy"], gens["greedy"])
        out["steps"] = steps_summary(per, out["first_divergence"])
    return out


def _notes(out: dict, n_scored: int) -> list[str]:
    notes = []
    if out["nonfinite_tokens"]:
        notes.append(
            f"the compressed model gives NaN/inf logits or NLL at {out['nonfinite_tokens']} of "
            f"{n_scored} scored positions: ppl, kl, cos_* and var_* are averaged over them as "
            f"computed (inf stays inf; NaN is null, see not_computable), and top-1 counts them as "
            f"disagreeing (a collapsed model; a result, not an error)"
        )
    if out.get("mc_nonfinite_items"):
        notes.append(
            f"{out['mc_nonfinite_items']} MC items have NaN/inf choice scores under the compressed "
            f"model: they count as disagreeing and wrong; mc_kl_* are not computable there"
        )
    if out["ppl"] is not None and not math.isfinite(out["ppl"]) and not out["nonfinite_tokens"]:
        notes.append("ppl overflows float64 (mean NLL > 709): inf")
    if out["ppl_base"] is None or not math.isfinite(out["ppl_base"]):
        notes.append("the BASE model is not finite on these windows: every comparison with it is not computable")
    return notes


def row_view(result: dict) -> dict:
    """A sweep row: the measure result with the per-layer arrays of ROW_PER_LAYER."""
    row = {k: v for k, v in result.items() if k != "per_layer"}
    if "per_layer" in result:
        from hemorrhage.validate.arrays import rounded

        row["per_layer"] = {k: rounded(result["per_layer"][k]) for k in ROW_PER_LAYER if k in result["per_layer"]}
    return row
