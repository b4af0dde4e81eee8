r"""What every family of grid points shares: the base linearised on the held-out sets, the
calibration statistics and their OBS factors, the base's scored residuals, generation-path
margins and the regime check's trace (`Context`); `base_context` sets it up.

The regime check (`Context.regime`): one forward of W + s·ΔW on the regime tokens gives
Δz_true; nonlinearity r = √(Σ_t Var_p(Δz_true − Δz_lin) / Σ_t Var_p(Δz_lin)), and per block the
gate flip share and attention-entropy shift, the evidence of Computation Collapse
(sim.models.base's thresholds, which validate.diagnose's rule uses too).  The first divergence
along the base's greedy paths (`Context.first_divergence`) is theory.compounding's.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np

from hemorrhage.sim.compress.blas import single_thread_blas
from hemorrhage.sim.models.base import ENTROPY_SHIFT_MAX, GATE_FLIP_MAX
from hemorrhage.sim.predict.linearization import Linearization
from hemorrhage.sim.predict.logit_space import base_logits, base_margins, logit_metrics, nonlinearity_terms
from hemorrhage.sim.predict.tangents import obs_factor, obs_shape, obs_shape_permuted
from hemorrhage.theory import expected_first_divergence, flip_probability, prob_no_divergence


class Context:
    """What every family shares: the linearisation, config, calibration statistics, the
    base's scored residuals, generation-path margins and regime-check trace."""

    def __init__(self, lr: Linearization, cfg, stats=None):
        self.lr, self.cfg, self.stats, self.model = lr, cfg, stats, lr.model
        self.h_eval = self.h_gen = self.margin = self.pair = self.z_eval = None
        self.regime_tokens = self.base_trace = None
        self._factors: dict = {}
        self.say = lambda msg: None

    def _factor_key(self, path: str, method) -> tuple:
        """Linears that read the same input share its statistics, hence one factor."""
        return id(self.stats[path]), float(method.damp), bool(getattr(method, "act_order", False))

    def factor(self, path: str, method):
        """(perm, inverse perm, U) of `path`'s input Hessian (obs_factor; cached per input)."""
        key = self._factor_key(path, method)
        act = key[2]
        if key not in self._factors:
            perm, u = obs_factor(self.stats[path].hessian(), method.damp, act)
            self._factors[key] = (perm, jnp.argsort(perm), u) if act else (None, None, u)
        return self._factors[key]

    def prefactor(self, method) -> None:
        """Every linear's factor at once, on threads (LAPACK releases the GIL; each call on one
        BLAS thread, so the cores are shared by the factorisations, not oversubscribed)."""
        todo = {}
        for path in self.lr.paths:
            key = self._factor_key(path, method)
            if key not in self._factors:
                todo.setdefault(key, path)
        if not todo:
            return
        with single_thread_blas(), ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
            list(pool.map(lambda p: self.factor(p, method), list(todo.values())))

    def obs(self, path, method, x):
        perm, inv, u = self.factor(path, method)
        return obs_shape(x, u) if perm is None else obs_shape_permuted(x, u, perm, inv)

    def obs_diag(self, path, method):
        """diag U in the original column order."""
        perm, inv, u = self.factor(path, method)
        return jnp.diag(u) if perm is None else jnp.diag(u)[inv]

    def z(self):
        """The base logits on the scored tokens [N vocab] (computed once)."""
        if self.z_eval is None:
            self.z_eval = base_logits(self.model, self.h_eval)
        return self.z_eval

    def metrics(
        self, dhs: list, which, scales, rates: list | None = None, dh2s: list | None = None
    ) -> dict[str, np.ndarray]:
        """logit_metrics on the scored tokens for responses dhs [N d] each, points (which,
        scales); the dephasing rates [N] per response given (rates), or computed from the second
        orders dh2s [N d] (`second`) and returned as "rate" [A N]; neither: no dephasing, R = 1."""
        stack = lambda xs: None if xs is None else jnp.stack(xs)  # noqa: E731
        met = logit_metrics(
            self.model,
            self.h_eval,
            self.z(),
            jnp.stack(dhs),
            jnp.asarray(which, jnp.int32),
            jnp.asarray(scales, jnp.float32),
            stack(rates),
            stack(dh2s),
        )
        return {k: np.asarray(v) for k, v in met.items()}

    def second(self, dh: dict):
        """h_L'' on the scored tokens [N d] of a response `respond` gave (None without it: a
        Linearization without `taylor`, i.e. dephasing switched off)."""
        return None if "eval2" not in dh else dh["eval2"][:, :-1].reshape(-1, dh["eval2"].shape[-1])

    def flat(self, dh: dict):
        e = dh["eval"][:, :-1]
        g = dh["gen"][:, self.cfg.prompt_len - 1 :] if "gen" in dh else None
        return e.reshape(-1, e.shape[-1]), (None if g is None else g.reshape(-1, g.shape[-1]))

    def regime(self, dws, scale: float, dh_eval) -> dict:
        """One forward of W + scale·ΔW on the regime tokens: nonlinearity and collapse evidence."""
        R = self.regime_tokens.shape[1]
        logits, gate_pos, entropy = self.lr.trace_perturbed(dws, scale, self.regime_tokens)
        num, den, kl_t, kl_l = nonlinearity_terms(
            self.model, self.lr.h["eval"][0, :R], scale * dh_eval[0, :R], logits[0]
        )
        r = float(jnp.sqrt(num / jnp.maximum(den, 1e-30)))
        r = r if math.isfinite(r) else float("inf")
        b = self.base_trace
        n = len(self.model.layers)
        gate = np.asarray(gate_pos != b.gate_pos).mean(axis=(1, 2, 3)) if b.gate_pos is not None else np.zeros(n)
        shift = np.asarray(entropy).mean(axis=(1, 2)) - np.asarray(b.attn_entropy).mean(axis=(1, 2))
        early = slice(0, max(1, n // 2))
        kl_t, kl_l = float(kl_t), float(kl_l)
        ratio = kl_t / kl_l if kl_l > 0 else 1.0
        return {
            "nonlinearity": r,
            "linear_regime_ok": bool(r <= self.cfg.nonlinearity_max),
            "kl_forward": kl_t,
            "kl_linear": kl_l,
            "kl_forward_over_linear": ratio,
            "kl_prediction_ok": bool(self.cfg.kl_check_min <= ratio <= 1 / self.cfg.kl_check_min),
            "gate_flip_early_max": float(gate[early].max()),
            "entropy_shift_early_max": float(shift[early].max()),
            "collapse_signature": bool(gate[early].max() > GATE_FLIP_MAX or shift[early].max() > ENTROPY_SHIFT_MAX),
        }

    def first_divergence(self, d: np.ndarray, r: float, random: bool) -> dict:
        """d [K, P·n, k−1]: first-order Δz_top1 − Δz_j along the base's greedy paths.  Each
        competitor j flips the step with theory's Φ(−m_j/σ_j); they are taken as
        independent: P_flip = 1 − Π_j(1 − Φ_j) (= the top-2 formula when the third is far)."""
        m = np.asarray(self.margin, np.float64)
        r = min(r, 1e3)
        if random:
            pj = flip_probability(m, np.sqrt(np.mean(d**2, 0) * (1 + r * r)) + 1e-12)
        else:
            pj = flip_probability(m + d[0], np.maximum(r * np.abs(d[0]), 1e-6))
        pf = 1 - jnp.prod(1 - jnp.asarray(pj), axis=-1)
        pf = pf.reshape(-1, self.cfg.new_tokens)
        return {
            "first_divergence_mean": float(jnp.mean(expected_first_divergence(pf) - 1)),
            "gen_identical": float(jnp.mean(prob_no_divergence(pf))),
        }


def base_context(model, sets: dict, cfg, stats=None, say=None) -> Context:
    """The base linearised on the token sets `held_out_sets` gave ("eval", and "gen" with
    prompts), its scored residuals, generation-path margins and regime trace; cfg a
    PredictConfig."""
    lr = Linearization(model, sets, taylor=cfg.dephasing)
    ctx = Context(lr, cfg, stats)
    if say is not None:
        ctx.say = say
    ctx.h_eval = lr.h["eval"][:, :-1].reshape(-1, lr.h["eval"].shape[-1])
    if "gen" in sets:
        hg = lr.h["gen"][:, cfg.prompt_len - 1 :]
        ctx.h_gen = hg.reshape(-1, hg.shape[-1])
        ctx.margin, ctx.pair = base_margins(model, ctx.h_gen)
    ctx.say("base margins, regime trace")
    if cfg.regime_tokens:
        ctx.regime_tokens = jnp.asarray(sets["eval"][:1, : cfg.regime_tokens])
        # the base through the regime forward's own program (W + 0·W): one compile, not two
        _, gate_pos, entropy = lr.trace_perturbed(lr.weights, 0.0, ctx.regime_tokens)
        ctx.base_trace = SimpleNamespace(gate_pos=gate_pos, attn_entropy=entropy)
    return ctx
