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
random (the rounding residual): one probe ((σ⊙ε)/diag U)·U per tensor, as sim.pricing.
"""

from __future__ import annotations

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
from hemorrhage.sim import linear_response as lrm
from hemorrhage.sim.plan_sensitivity import tensor_error
from hemorrhage.sim.predict_summary import blend
from hemorrhage.sim.pricing import gen_keep
from hemorrhage.sim.tangents import obs_shape, quant_noise_std


def held_out(loaded, cfg) -> dict:
    """The predictor's token sets: cfg.windows held-out windows ("eval") and, with prompts,
    the base's greedy continuations ("gen") after them (sim.predict's own)."""
    from hemorrhage.sim.predict import held_out_sets

    return held_out_sets(loaded, cfg)[0]


def plan_context(loaded, cfg, stats=None) -> lrm.Context:
    """The base linearised on the held-out sets, its margins and regime trace (sim.predict's
    set-up); cfg a sim.predict.PredictConfig."""
    sets = held_out(loaded, cfg)
    lr = lrm.Linearization(loaded.model, sets, taylor=cfg.dephasing)
    ctx = lrm.Context(lr, cfg, stats)
    ctx.h_eval = lr.h["eval"][:, :-1].reshape(-1, lr.h["eval"].shape[-1])
    if "gen" in sets:
        hg = lr.h["gen"][:, cfg.prompt_len - 1:]
        ctx.h_gen = hg.reshape(-1, hg.shape[-1])
        ctx.margin, ctx.pair = lrm.base_margins(loaded.model, ctx.h_gen)
    if cfg.regime_tokens:
        ctx.regime_tokens = jnp.asarray(sets["eval"][:1, :cfg.regime_tokens])
        _, gate_pos, entropy = lr.trace_perturbed(lr.weights, 0.0, ctx.regime_tokens)
        ctx.base_trace = SimpleNamespace(gate_pos=gate_pos, attn_entropy=entropy)
    return ctx


@jax.jit
def _gptq_probe(sigma, u, key):
    eps = jax.random.uniform(key, sigma.shape, jnp.float32, -np.sqrt(3.0), np.sqrt(3.0))
    return obs_shape(sigma * eps, u)


def plan_dws(ctx, method: str, levels: list, *, factors=None, group_size=None, symmetric=False,
             seed: int = 0) -> list:
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
            dw = tensor_error(method, lv, w, norm=norm, u=None if factors is None else factors.get(path),
                              group_size=group_size, symmetric=symmetric)
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
    mean = {k: float(np.mean(met[k], dtype=np.float64)) for k in lrm.METRIC_NAMES}
    out = {"kl": float(blend(mean["kl"], mean["kl_dephased"], w)), "kl_linear": mean["kl"],
           "kl_dephased": mean["kl_dephased"], "kl_second_order": mean["kl2"],
           "top1_agreement": (1 - w) * mean["top1"] + w * mean["top1_dephased"],
           "first_divergence_mean": None, "gen_identical": None, "regime": reg}
    if hg is not None:
        d = np.asarray(lrm.pair_response(ctx.model, ctx.h_gen, hg, ctx.pair), np.float64)
        keep = gen_keep({k: met[k] for k in lrm.METRIC_NAMES}, 0, w)
        r = reg["nonlinearity"] if reg is not None else 0.0
        out.update(ctx.first_divergence(keep * d[None], r, False))
    return out
