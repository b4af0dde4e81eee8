r"""Linear response of a model's logits to a change ΔW of its block linear weights (JVPs).

    lr = Linearization(model, {"eval": windows [B T], "gen": paths [P T']})
    dws = [dw(path, w) for path, w in zip(lr.paths, lr.weights)]   # ΔW per linear, [out in]
    dh = lr.respond(dws)                    # {"eval": Δh_L [B T d], "gen": [P T' d]}
    Linearization(model, sets, taylor=True).respond(dws)["eval2"]   # h_L'' along W + tΔW [B T d]

f(W) = h_L(W), the residual after the last block, is linearised once (`jax.linearize`:
the primal runs once, each tangent then runs only the tangent program, ≈ 2 forwards of
the blocks).  The final norm and the head are not compressed (`compress.linears` skips
them), so Δz_lin = J_unembed(h_L)·Δh_L is applied afterwards, exactly and in chunks of
tokens (sim.logit_space: `logit_metrics`, `pair_response`): the vocabulary never enters a JVP.

The tangent is zero outside the linears that `sim.compress.linears` visits (the ones a
compression method touches); `trace_perturbed` runs the model with W + s·ΔW for the
nonlinearity check (Δz_true vs Δz_lin).  Below: the ΔW of each method (tangents) and the
pricing of a family of grid points is in sim.pricing (`price_quant`, `price_prune`);
sim.predict states the models and assembles the result.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from hemorrhage.sim.tangents import (  # noqa: F401  (the tangents live there; these names are public here)
    _band,
    _kappa_terms,
    _obs_perm,
    _probe,
    _upto,
    levels_flat,
    levels_rows,
    obs_factor,
    obs_shape,
    quant_noise_std,
    rtn_kappa,
    step_ratio,
)
from hemorrhage.theory import expected_first_divergence, flip_probability, prob_no_divergence
from jax.experimental import jet

from hemorrhage.errors import UserError
from hemorrhage.sim.logit_space import (  # noqa: F401  (public here too: the predictor's logit side)
    METRIC_NAMES,
    base_logits,
    base_margins,
    dephasing_rates,
    head_weight,
    logit_metrics,
    nonlinearity_terms,
    pair_response,
)


def block_linear_paths(model) -> list[str]:
    """'layers.i.part.attr' of every linear a compression method touches; they must be
    plain (uncompressed) Linear layers with their weight in `.w`."""
    from hemorrhage.sim.compress.registry import linears
    from hemorrhage.sim.models.layers import Linear

    out = []
    for path, _, _, layer in linears(model):
        if type(layer) is not Linear:
            raise UserError(f"predict needs the uncompressed base model; {path} is a {type(layer).__name__}")
        out.append(path)
    return out


@jax.jit
def _apply(fn, tangent):
    """The linearised function (a Partial: its residuals are arguments, not constants baked
    into the executable) applied to one tangent."""
    return fn(tangent)


def _key(path) -> str:
    """'layers.3.mlp.down' from a pytree key path ending in the Param '.w' (and its value)."""
    parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
    return ".".join(parts[:parts.index("w")])


class Linearization:
    """The base model linearised in its block linear weights on fixed token sets."""

    def __init__(self, model, token_sets: dict[str, np.ndarray], taylor: bool = False):
        wanted = {p + ".w" for p in block_linear_paths(model)}

        def is_lin(path, _):
            return ".".join(map(str, path)) in wanted

        self.model = model
        self.graphdef, self.lin, self.rest = nnx.split(model, is_lin, ...)
        kp, self._treedef = jax.tree_util.tree_flatten_with_path(self.lin)
        self.paths = [_key(p) for p, _ in kp]
        self.weights = [v for _, v in kp]
        self.names = tuple(token_sets)
        # taylor: the eval tokens' response comes from the Taylor-mode pass, which yields the
        # first order with the second (respond's "eval2"), so they are not linearised twice
        self.taylor = bool(taylor) and "eval" in self.names
        self._lin_names = tuple(n for n in self.names if not (self.taylor and n == "eval"))
        toks = {n: jnp.asarray(token_sets[n], jnp.int32) for n in self.names}
        gd = self.graphdef

        @jax.jit
        def h_last(lin, rest, toks):
            m = nnx.merge(gd, lin, rest)
            return tuple(m(t, collect_h=True)[2][-1] for t in toks)

        lin_toks = tuple(toks[n] for n in self._lin_names)
        self.h = {}
        if lin_toks:
            h, self._fn = jax.linearize(lambda lin: h_last(lin, self.rest, lin_toks), self.lin)
            self.h = dict(zip(self._lin_names, h))
        if self.taylor:
            self.h["eval"] = h_last(self.lin, self.rest, (toks["eval"],))[0]
        self.h = {n: self.h[n] for n in self.names}

        @jax.jit
        def trace_perturbed(lin, dws, scale, rest, tokens):
            new = jax.tree.map(lambda w, d: w + scale * d, lin, dws)
            tr = nnx.merge(gd, new, rest).trace(tokens)
            return tr.logits, tr.gate_pos, tr.attn_entropy

        self._trace_perturbed = trace_perturbed
        eval_toks = toks.get("eval")

        @jax.jit
        def second_order(lin, rest, dws):
            # Taylor mode along W + tΔW: (h_L', h_L'') in one pass (theory.dephasing's a and b)
            leaves, td = jax.tree_util.tree_flatten(lin)
            fn = lambda *ls: h_last(jax.tree_util.tree_unflatten(td, list(ls)), rest, (eval_toks,))[0]  # noqa: E731
            _, (h1, h2) = jet.jet(fn, tuple(leaves), tuple((d, jnp.zeros_like(d)) for d in jax.tree_util.tree_leaves(dws)))
            return h1, h2

        self._second_order = second_order

    def respond(self, dws: list) -> dict[str, jax.Array]:
        """First-order Δh_L per token set for the weight change dws (list in path order); with
        `taylor`, also "eval2": the second directional derivative h_L'' on the eval tokens."""
        tangent = jax.tree_util.tree_unflatten(self._treedef, list(dws))
        out = dict(zip(self._lin_names, _apply(self._fn, tangent))) if self._lin_names else {}
        if self.taylor:
            out["eval"], out["eval2"] = self._second_order(self.lin, self.rest, tangent)
        return out

    def trace_perturbed(self, dws: list, scale: float, tokens):
        """(logits, gate_pos, attn_entropy) of the model with W + scale·ΔW on `tokens` (one jit)."""
        return self._trace_perturbed(self.lin, jax.tree_util.tree_unflatten(self._treedef, list(dws)),
                                     jnp.float32(scale), self.rest, tokens)

    def perturbed(self, dws: list, scale: float = 1.0):
        """The base model with W + scale·ΔW in the block linears (a new module)."""
        new = [w + scale * d for w, d in zip(self.weights, dws)]
        return nnx.merge(self.graphdef, jax.tree_util.tree_unflatten(self._treedef, new), self.rest)


# ------------------------------------------------------------------ pricing a family --

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
        from concurrent.futures import ThreadPoolExecutor

        from hemorrhage.sim.tangents import _one_blas_thread

        todo = {}
        for path in self.lr.paths:
            key = self._factor_key(path, method)
            if key not in self._factors:
                todo.setdefault(key, path)
        if not todo:
            return
        with _one_blas_thread(), ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
            list(pool.map(lambda p: self.factor(p, method), list(todo.values())))

    def obs(self, path, method, x):
        perm, inv, u = self.factor(path, method)
        return obs_shape(x, u) if perm is None else _obs_perm(x, u, perm, inv)

    def obs_diag(self, path, method):
        """diag U in the original column order."""
        perm, inv, u = self.factor(path, method)
        return jnp.diag(u) if perm is None else jnp.diag(u)[inv]

    def z(self):
        """The base logits on the scored tokens [N vocab] (computed once)."""
        if self.z_eval is None:
            self.z_eval = base_logits(self.model, self.h_eval)
        return self.z_eval

    def metrics(self, dhs: list, which, scales, rates: list | None = None, dh2s: list | None = None
                ) -> dict[str, np.ndarray]:
        """logit_metrics on the scored tokens for responses dhs [N d] each, points (which,
        scales); the dephasing rates [N] per response given (rates), or computed from the second
        orders dh2s [N d] (`second`) and returned as "rate" [A N]; neither: no dephasing, R = 1."""
        stack = lambda xs: None if xs is None else jnp.stack(xs)  # noqa: E731
        met = logit_metrics(self.model, self.h_eval, self.z(), jnp.stack(dhs), jnp.asarray(which, jnp.int32),
                            jnp.asarray(scales, jnp.float32), stack(rates), stack(dh2s))
        return {k: np.asarray(v) for k, v in met.items()}

    def second(self, dh: dict):
        """h_L'' on the scored tokens [N d] of a response `respond` gave (None without it: a
        Linearization without `taylor`, i.e. dephasing switched off)."""
        return None if "eval2" not in dh else dh["eval2"][:, :-1].reshape(-1, dh["eval2"].shape[-1])

    def flat(self, dh: dict):
        e = dh["eval"][:, :-1]
        g = dh["gen"][:, self.cfg.prompt_len - 1:] if "gen" in dh else None
        return e.reshape(-1, e.shape[-1]), (None if g is None else g.reshape(-1, g.shape[-1]))

    def regime(self, dws, scale: float, dh_eval) -> dict:
        """One forward of W + scale·ΔW on the regime tokens: nonlinearity and collapse evidence."""
        from hemorrhage.validate.diagnose import ENTROPY_SHIFT_MAX, GATE_FLIP_MAX

        R = self.regime_tokens.shape[1]
        logits, gate_pos, entropy = self.lr.trace_perturbed(dws, scale, self.regime_tokens)
        num, den, kl_t, kl_l = nonlinearity_terms(self.model, self.lr.h["eval"][0, :R], scale * dh_eval[0, :R],
                                                  logits[0])
        r = float(jnp.sqrt(num / jnp.maximum(den, 1e-30)))
        r = r if math.isfinite(r) else float("inf")
        b = self.base_trace
        n = len(self.model.layers)
        gate = (np.asarray(gate_pos != b.gate_pos).mean(axis=(1, 2, 3)) if b.gate_pos is not None
                else np.zeros(n))
        shift = np.asarray(entropy).mean(axis=(1, 2)) - np.asarray(b.attn_entropy).mean(axis=(1, 2))
        early = slice(0, max(1, n // 2))
        kl_t, kl_l = float(kl_t), float(kl_l)
        ratio = kl_t / kl_l if kl_l > 0 else 1.0
        return {"nonlinearity": r, "linear_regime_ok": bool(r <= self.cfg.nonlinearity_max),
                "kl_forward": kl_t, "kl_linear": kl_l, "kl_forward_over_linear": ratio,
                "kl_prediction_ok": bool(self.cfg.kl_check_min <= ratio <= 1 / self.cfg.kl_check_min),
                "gate_flip_early_max": float(gate[early].max()), "entropy_shift_early_max": float(shift[early].max()),
                "collapse_signature": bool(gate[early].max() > GATE_FLIP_MAX or shift[early].max() > ENTROPY_SHIFT_MAX)}

    def first_divergence(self, d: np.ndarray, r: float, random: bool) -> dict:
        """d [K, P·n, k−1]: first-order Δz_top1 − Δz_j along the base's greedy paths.  Each
        competitor j flips the step with theory's Φ(−m_j/σ_j); they are taken as
        independent: P_flip = 1 − Π_j(1 − Φ_j) (= the top-2 formula when the third is far)."""
        m = np.asarray(self.margin, np.float64)
        r = min(r, 1e3)
        if random:
            pj = flip_probability(m, np.sqrt(np.mean(d ** 2, 0) * (1 + r * r)) + 1e-12)
        else:
            pj = flip_probability(m + d[0], np.maximum(r * np.abs(d[0]), 1e-6))
        pf = 1 - jnp.prod(1 - jnp.asarray(pj), axis=-1)
        pf = pf.reshape(-1, self.cfg.new_tokens)
        return {"first_divergence_mean": float(jnp.mean(expected_first_divergence(pf) - 1)),
                "gen_identical": float(jnp.mean(prob_no_divergence(pf)))}
