r"""The whole plan's prediction: the predictor (sim.predict) on the plan's full ΔW at once.

    ctx = plan_context(loaded, cfg, stats)       # the base linearised on the held-out windows
    dws = plan_dws(ctx, method, settings, ...)   # ΔW per linear, each tensor at its own setting
    res = whole_plan(ctx, dws)                    # kl, kl_linear, kl_second_order, top1, first divergence

Every tensor's error enters one tangent, so the response carries the cross terms between
tensors that the per-tensor shares (sim.plan_sensitivity: ½Σ F_ii δw_i², tensor by tensor)
leave out, and the off-diagonal Fisher within a tensor.  The metrics are sim.predict's for a
deterministic ΔW (as its pruning anchors): Δz_lin = J_unembed·J_W h_L·ΔW on the scored tokens,
KL(p‖softmax(z + Δz_lin)) exact, ½Var_p(Δz_lin) (Theorem 3), the point estimate between the
linear and the dephased closure (predict.blend), top-1 the same blend, first divergence
along the base's greedy paths with the regime forward's nonlinearity r as the prediction's
own uncertainty (sim.predict's module docstring has each definition).  GPTQ's error is
random (the rounding residual): one probe ((σ⊙ε)/diag U)·U per tensor, as sim.predict.pricing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hemorrhage.sim.plan_sensitivity import tensor_error
from hemorrhage.sim.predict import (
    METRIC_NAMES,
    Context,
    base_context,
    blend,
    gen_keep,
    held_out_sets,
    obs_shape,
    pair_response,
    quant_noise_std,
)


def plan_context(loaded, cfg, stats=None) -> Context:
    """The base linearised on the predictor's held-out sets (cfg.windows windows, "eval", and with
    prompts the base's greedy continuations, "gen"), its margins and regime trace (sim.predict's
    set-up); cfg a sim.predict.PredictConfig."""
    return base_context(loaded.model, held_out_sets(loaded, cfg)[0], cfg, stats)


@jax.jit
def _gptq_probe(sigma, u, key):
    eps = jax.random.uniform(key, sigma.shape, jnp.float32, -np.sqrt(3.0), np.sqrt(3.0))
    return obs_shape(sigma * eps, u)


def plan_dws(ctx, method: str, levels: list, *, factors=None, group_size=None, symmetric=False, seed: int = 0) -> list:
    """ΔW per linear (ctx.lr.paths order), tensor t at levels[t]: the real error of RTN and
    of each pruning method's mask (SparseGPT with its OBS update), one random probe for GPTQ."""
    out = []
    key = jax.random.key(seed)
    for i, (path, w, lv) in enumerate(zip(ctx.lr.paths, ctx.lr.weights, levels)):
        w = jnp.asarray(w, jnp.float32)
        if method == "gptq":
            sigma = quant_noise_std(w, jnp.float32(lv), group_size, symmetric)
            dw = _gptq_probe(sigma, factors[path], jax.random.fold_in(key, i))
        else:
            norm = ctx.stats[path].col_norm() if method == "wanda" else None
            dw = tensor_error(
                method,
                lv,
                w,
                norm=norm,
                u=None if factors is None else factors.get(path),
                group_size=group_size,
                symmetric=symmetric,
            )
        out.append(dw.astype(ctx.lr.weights[i].dtype))
    return out


def whole_plan(ctx, dws: list) -> dict:
    """The predictor's numbers for the plan's full ΔW (module docstring)."""
    w = ctx.cfg.dephased_weight
    dh = ctx.lr.respond(dws)
    he, hg = ctx.flat(dh)
    he2 = ctx.second(dh)
    met = ctx.metrics([he], [0], [1.0], dh2s=None if he2 is None else [he2])
    reg = ctx.regime(dws, 1.0, dh["eval"]) if ctx.regime_tokens is not None else None
    mean = {k: float(np.mean(met[k], dtype=np.float64)) for k in METRIC_NAMES}
    out = {
        "kl": float(blend(mean["kl"], mean["kl_dephased"], w)),
        "kl_linear": mean["kl"],
        "kl_dephased": mean["kl_dephased"],
        "kl_second_order": mean["half_var_p"],
        "top1_agreement": (1 - w) * mean["top1"] + w * mean["top1_dephased"],
        "first_divergence_mean": None,
        "gen_identical": None,
        "regime": reg,
    }
    if hg is not None:
        d = np.asarray(pair_response(ctx.model, ctx.h_gen, hg, ctx.pair), np.float64)
        keep = gen_keep({k: met[k] for k in METRIC_NAMES}, 0, w)
        r = reg["nonlinearity"] if reg is not None else 0.0
        out.update(ctx.first_divergence(keep * d[None], r, False))
    return out
