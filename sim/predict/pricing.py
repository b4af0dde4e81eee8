r"""Pricing a family of grid points from a few JVPs of the base (sim.predict's package docstring
states the models).

    price_quant(ctx, methods)   RTN / GPTQ: K random probes at the reference (highest) bit
                                width; every bit width by the step law Δz(b) = c(b)·Δz(b₀)
    price_prune(ctx, methods)   magnitude / Wanda / SparseGPT: the exact ΔW at a few anchor
                                sparsities; the rest of the grid by the pruned energy E(s)

Pruning anchors.  The masks of one score are nested in s, and the pruned weight energy
E(s) = Σ_{w pruned at s} w² (exact, from the weights: the pruning noise model of
theory.noise) orders the grid.  At an anchor s_a the response is exact: one JVP of the plan's
own ΔW(s_a).  Between anchors the second-order KL K₂ = ½·E_t Var_p(Δz) is a power law in the
energy, K₂ ∝ E^γ, log–log interpolated with γ read off the neighbouring anchors (beyond the
last anchor, its last segment's; γ = 1 with one anchor: error energy in, Fisher energy out);
each grid point then takes the nearest anchor's Δz scaled to it, Δz(s) = c·Δz(s_a) with
c² = K₂(s)/K₂(s_a), and exact KL, top-1 agreement and first divergence follow from the scaled
Δz as they do for quantization.  So a family costs `prune_anchors` JVPs, not one per level.

The anchors are put where the answer is decided, a secant search for the cliff: the mildest
level first, then the grid level where the current interpolation first reaches the KL
threshold (the strongest level if none does), until the crossing lies between neighbouring
anchors or `prune_anchors` is spent (as many as the levels: every level exact).  Regime: the
forward of W + ΔW(s_a) runs at each anchor; at the other levels the nonlinearity is the
nearest anchor's times c (the remainder of a linear response is second order,
Δz_true − Δz_lin ∝ c², so r ∝ c), marked `estimated`.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from hemorrhage.sim.predict.context import Context
from hemorrhage.sim.predict.logit_space import METRIC_NAMES, pair_response
from hemorrhage.sim.predict.summary import blend
from hemorrhage.sim.predict.tangents import (
    levels_flat,
    levels_rows,
    noise_probe,
    pruned_through,
    quant_noise_std,
    rtn_kappa,
    step_ratio,
)


def gen_keep(per_tok: dict, s: int, w: float) -> float:
    """(K₂ dephased / K₂ linear)^(w/2) at point s over its tokens (and probes): the share of the
    response's Fisher size that the point estimate keeps (predict.blend's w), applied to Δz
    along the generation paths (no Taylor pass runs there; 1 without dephasing)."""
    half_var_p, kd = float(np.mean(per_tok["half_var_p"][s])), float(np.mean(per_tok["half_var_p_dephased"][s]))
    return (kd / half_var_p) ** (w / 2) if half_var_p > 0 and math.isfinite(kd / half_var_p) else 1.0


def _tokens_and_gen(ctx, dh, scales):
    he, hg = ctx.flat(dh)
    he2 = ctx.second(dh)
    met = ctx.metrics([he], np.zeros(len(scales), np.int32), scales, dh2s=None if he2 is None else [he2])
    d = None if hg is None else np.asarray(pair_response(ctx.model, ctx.h_gen, hg, ctx.pair), np.float64)
    return met, d


def price_quant(ctx: Context, methods: list) -> dict:
    """RTN / GPTQ at every bit width of `methods` (same other settings) from K probes."""
    lr, cfg, m0 = ctx.lr, ctx.cfg, methods[0]
    b0, gs, sym = max(m.bits for m in methods), m0.group_size, m0.symmetric
    kappa = (
        rtn_kappa(lr.weights, sorted({m.bits for m in methods} | {b0}), gs, sym)
        if m0.name == "rtn"
        else {m.bits: 1.0 for m in methods} | {b0: 1.0}
    )
    scales = [step_ratio(m.bits, b0, sym) * math.sqrt(kappa[m.bits] / kappa[b0]) for m in methods]
    mets, ds, regimes = [], [], []
    if m0.name == "gptq":
        ctx.prefactor(m0)
    for k in range(cfg.probes):
        key = jax.random.fold_in(jax.random.key(cfg.seed), k)  # common random numbers across families

        dws = []
        for i, (path, w) in enumerate(zip(lr.paths, lr.weights)):
            x = noise_probe(quant_noise_std(w, jnp.float32(b0), gs, sym), jax.random.fold_in(key, i))
            dws.append(ctx.obs(path, m0, x) if m0.name == "gptq" else x)
        ctx.say(f"  probe {k}: tangent built")
        dh = lr.respond(dws)
        ctx.say(f"  probe {k}: JVP")
        met, d = _tokens_and_gen(ctx, dh, scales)
        ctx.say(f"  probe {k}: logit metrics")
        mets.append(met)
        ds.append(d)
        if k == 0 and ctx.regime_tokens is not None:
            regimes = [ctx.regime(dws, s, dh["eval"]) for s in scales]
            ctx.say("  regime forwards")
        del dws
    per_tok = {name: np.stack([m[name] for m in mets], 1) for name in METRIC_NAMES}  # [S K N]
    gens = [
        None
        if ds[0] is None
        else ctx.first_divergence(
            np.stack([s * gen_keep(per_tok, i, cfg.dephased_weight) * d for d in ds]),
            regimes[i]["nonlinearity"] if regimes else 0.0,
            True,
        )
        for i, s in enumerate(scales)
    ]
    return {
        "per_token": per_tok,
        "regime": regimes,
        "gen": gens,
        "notes": {"ref_bits": b0, "scale": scales, "kappa": [kappa[m.bits] for m in methods]},
    }


def prune_levels(ctx: Context, methods: list) -> list[np.ndarray]:
    """Per linear, the (int8) index of the grid level at which each weight is first pruned."""
    from hemorrhage.sim.compress import obs
    from hemorrhage.sim.compress.pruning import nm_mask, parse_pattern

    m0 = methods[0]
    nm = parse_pattern(m0.pattern)
    if m0.name == "sparsegpt":
        ctx.prefactor(m0)
    scores = []
    for path, w in zip(ctx.lr.paths, ctx.lr.weights):
        if m0.name == "magnitude":
            score = jnp.abs(w)
        elif m0.name == "wanda":
            score = jnp.abs(w) * ctx.stats[path].col_norm()[None, :]
        else:
            score = jnp.square(w / ctx.obs_diag(path, m0)[None, :])
        scores.append(np.where(np.asarray(nm_mask(score, *nm)), 1, 0).astype(np.int8) if nm else score)
    if nm:
        return scores

    def one(score):
        s = np.asarray(score)
        if m0.name == "magnitude":
            return levels_flat(s, [int(round(m.sparsity * s.size)) for m in methods]).reshape(s.shape)
        if m0.name == "wanda":
            k = np.stack([obs.cumulative_counts(s.shape[1], s.shape[0], m.sparsity) for m in methods])
            return levels_rows(s, k)
        # SparseGPT: per block of bs columns, all rows together (on the original weights)
        bs = obs.block_size(s.shape[1])
        kb = np.stack([obs.cumulative_counts(s.shape[0] * bs, s.shape[1] // bs, m.sparsity) for m in methods])
        lev = np.empty(s.shape, np.int8)
        for b in range(s.shape[1] // bs):
            blk = s[:, b * bs : (b + 1) * bs]
            lev[:, b * bs : (b + 1) * bs] = levels_flat(blk.T, np.maximum.accumulate(kb[:, b])).reshape(bs, -1).T
        return lev

    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:  # numpy's selection releases the GIL
        return list(pool.map(one, scores))


@partial(jax.jit, static_argnames=("n",))
def _level_energy(w, lev, n: int):
    """Σ w² of the weights first pruned at each level 0..n−1 (level n: never pruned)."""
    return jnp.bincount(lev.ravel().astype(jnp.int32), jnp.square(w).ravel(), length=n + 1)[:n]


def pruned_energy(weights: list, levs: list, n: int) -> np.ndarray:
    """E(s_j) = Σ over the linears of Σ w² pruned at levels ≤ j: [n] (float64)."""
    per = sum(np.asarray(_level_energy(w, lev, n), np.float64) for w, lev in zip(weights, levs))
    return np.cumsum(per)


def interpolate_half_var_p(energy: np.ndarray, anchors: dict[int, float]) -> np.ndarray:
    """K₂ at every level from K₂ at the anchors: log–log linear in the energy between anchors,
    the last segment's exponent beyond them (clipped to [0.5, 4]), exponent 1 with one anchor."""
    a = sorted(anchors)
    le = np.log(np.maximum(energy, 1e-300))
    lk = np.log(np.maximum([anchors[i] for i in a], 1e-300))
    la = le[a]
    gamma = 1.0 if len(a) == 1 else float(np.clip((lk[-1] - lk[-2]) / max(la[-1] - la[-2], 1e-12), 0.5, 4.0))
    gamma0 = 1.0 if len(a) == 1 else float(np.clip((lk[1] - lk[0]) / max(la[1] - la[0], 1e-12), 0.5, 4.0))
    out = np.interp(le, la, lk)
    out = np.where(le > la[-1], lk[-1] + gamma * (le - la[-1]), out)
    out = np.where(le < la[0], lk[0] + gamma0 * (le - la[0]), out)
    return np.exp(out)


def nearest_anchor(energy, anchors) -> list[int]:
    """For every level, the anchor nearest to it in log energy."""
    le = np.log(np.maximum(energy, 1e-300))
    return [min(anchors, key=lambda a: abs(le[s] - le[a])) for s in range(len(energy))]


def next_anchor(energy, anchors: dict[int, tuple[float, float]], threshold: float) -> int | None:
    """The level to linearise next (secant search for the KL crossing), None when bracketed.
    anchors: level → (mean exact KL, K₂)."""
    half_var_p = interpolate_half_var_p(energy, {a: v[1] for a, v in anchors.items()})
    near = nearest_anchor(energy, anchors)
    kl = np.array([anchors[a][0] * half_var_p[s] / max(anchors[a][1], 1e-300) for s, a in enumerate(near)])
    over = np.flatnonzero(kl >= threshold)
    if not len(over):
        s = len(energy) - 1
        return None if s in anchors else s
    s = int(over[0])
    if s not in anchors:
        return s
    return None if s == 0 or s - 1 in anchors else s - 1


def price_prune(ctx: Context, methods: list) -> dict:
    """Magnitude / Wanda / SparseGPT at every sparsity of `methods` from a few anchor JVPs
    (module docstring); an N:M pattern is one level, priced exactly."""
    lr, cfg, m0 = ctx.lr, ctx.cfg, methods[0]
    levs = [jnp.asarray(v) for v in prune_levels(ctx, methods)]
    S = len(methods)
    energy = pruned_energy(lr.weights, levs, S)
    ctx.say("  mask levels, pruned energy")
    obs_ = m0.name == "sparsegpt"
    exact: dict[int, dict] = {}

    def linearise(a):
        dw = [
            ctx.obs(p, m0, x) if obs_ else x
            for p, x in ((p, pruned_through(w, lev, a)) for p, w, lev in zip(lr.paths, lr.weights, levs))
        ]
        dh = lr.respond(dw)
        he, hg = ctx.flat(dh)
        he2 = ctx.second(dh)
        met = ctx.metrics([he], [0], [1.0], dh2s=None if he2 is None else [he2])
        rate = None if he2 is None else met["rate"][0]
        reg = ctx.regime(dw, 1.0, dh["eval"]) if ctx.regime_tokens is not None else None
        # the search aims at the point estimate's crossing (predict.blend of the two closures)
        kl = float(blend(np.mean(met["kl"]), np.mean(met["kl_dephased"]), cfg.dephased_weight))
        exact[a] = {
            "he": he,
            "hg": hg,
            "rate": rate,
            "kl": kl,
            "half_var_p": float(np.mean(met["half_var_p"])),
            "regime": reg,
        }
        ctx.say(f"  anchor {getattr(methods[a], 'sparsity', None)}: JVP, metrics, regime")

    for a in range(S) if cfg.prune_anchors >= S else [0]:  # as many anchors as levels: every level exact
        linearise(a)
    while len(exact) < max(1, cfg.prune_anchors):
        a = next_anchor(energy, {k: (v["kl"], v["half_var_p"]) for k, v in exact.items()}, cfg.kl_threshold)
        if a is None:
            break
        linearise(a)
    half_var_p = interpolate_half_var_p(energy, {a: v["half_var_p"] for a, v in exact.items()})
    near = nearest_anchor(energy, exact)
    scale = [
        math.sqrt(half_var_p[s] / exact[a]["half_var_p"]) if exact[a]["half_var_p"] > 0 else 1.0
        for s, a in enumerate(near)
    ]
    order = sorted(exact)
    pad = [jnp.zeros_like(exact[order[0]]["he"])] * (max(cfg.prune_anchors, len(order)) - len(order))
    rates = (
        None
        if exact[order[0]]["rate"] is None
        else [exact[a]["rate"] for a in order] + [jnp.zeros_like(exact[order[0]]["rate"])] * len(pad)
    )
    met = ctx.metrics([exact[a]["he"] for a in order] + pad, [order.index(a) for a in near], scale, rates)
    per_tok = {name: met[name] for name in METRIC_NAMES}  # [S N]
    gens, regimes = [None] * S, [None] * S
    for a in order:
        v = exact[a]
        d = None if v["hg"] is None else np.asarray(pair_response(ctx.model, ctx.h_gen, v["hg"], ctx.pair), np.float64)
        for s in (s for s in range(S) if near[s] == a):
            reg = v["regime"]
            if reg is not None and s != a:
                r = reg["nonlinearity"] * scale[s]
                reg = {
                    "nonlinearity": r,
                    "linear_regime_ok": bool(r <= cfg.nonlinearity_max),
                    "estimated": True,
                    "anchor": methods[a].sparsity,
                }
            regimes[s] = reg
            r = reg["nonlinearity"] if reg is not None else 0.0
            keep = gen_keep(per_tok, s, cfg.dephased_weight)
            gens[s] = None if d is None else ctx.first_divergence(scale[s] * keep * d[None], r, False)
    per_tok = {k: v[:, None, :] for k, v in per_tok.items()}  # [S 1 N]
    notes = {
        "anchors": sorted(getattr(methods[a], "sparsity", None) for a in exact),
        "energy": [float(e) for e in energy],
        "scale": scale,
    }
    return {
        "per_token": per_tok,
        "regime": regimes if ctx.regime_tokens is not None else [],
        "gen": gens,
        "notes": notes,
    }
