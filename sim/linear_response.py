r"""Linear response of a model's logits to a change ΔW of its block linear weights (JVPs).

    lr = Linearization(model, {"eval": windows [B T], "gen": paths [P T']})
    dws = [dw(path, w) for path, w in zip(lr.paths, lr.weights)]   # ΔW per linear, [out in]
    dh = lr.respond(dws)                    # {"eval": Δh_L [B T d], "gen": [P T' d]}
    Linearization(model, sets, taylor=True).respond(dws)["eval2"]   # h_L'' along W + tΔW [B T d]

f(W) = h_L(W), the residual after the last block, is linearised once (`jax.linearize`:
the primal runs once, each tangent then runs only the tangent program, ≈ 2 forwards of
the blocks).  The final norm and the head are not compressed (`compress.linears` skips
them), so Δz_lin = J_unembed(h_L)·Δh_L is applied afterwards, exactly and in chunks of
tokens (`logit_metrics`, `pair_response`): the vocabulary never enters a JVP.

The tangent is zero outside the linears that `sim.compress.linears` visits (the ones a
compression method touches); `trace_perturbed` runs the model with W + s·ΔW for the
nonlinearity check (Δz_true vs Δz_lin).  Below: the ΔW of each method (tangents) and the
pricing of a family of grid points is in sim.pricing (`price_quant`, `price_prune`);
sim.predict states the models and assembles the result.
"""

from __future__ import annotations

import math
import os
from functools import partial

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
from hemorrhage.theory import (
    dephasing_factor,
    dephasing_rate,
    expected_first_divergence,
    flip_probability,
    kl_exact,
    prob_no_divergence,
    var_p,
)
from jax.experimental import jet

from hemorrhage.errors import UserError


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


# ------------------------------------------------------------------ logit space -------

def _chunks(x, chunk):
    n = x.shape[0]
    pad = (-n) % chunk
    return jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape(-1, chunk, *x.shape[1:]), n


@nnx.jit
def base_logits(model, h):
    """z = W·norm(h) of the base at h [N d]: [N vocab] (computed once, shared by every point)."""
    return model.unembed(h)


def _log_p(z):
    """(log p, p) of p = softmax(z) over the last axis."""
    lp = jax.nn.log_softmax(z, -1)
    return lp, jnp.exp(lp)


def _centred(dz, p):
    """Δz − E_p Δz per token: KL, argmax and every Var_p / Cov_p are blind to a shift common
    to all logits, and centring makes ⟨u, v⟩_p a plain p-weighted sum."""
    return dz - jnp.sum(p * dz, -1, keepdims=True)


@partial(nnx.jit, static_argnames=("chunk",))
def logit_metrics(model, h, z, dhs, which, scales, rates, chunk: int = 64):
    """Per token, for every point i with Δz_i = s_i·J_unembed(h)·Δh_{which_i}: KL(p‖q) exact,
    its second order ½Var_p(Δz_i), whether the argmax survives, and the same three for the
    dephased change √R(s_i²x)·Δz_i (`*_dephased`), x = rates[which_i] the token's dephasing
    rate at scale 1 (theory.dephasing; x(c) = c²x).  h [N d], z [N vocab] the base logits at
    h, dhs [A N d] (A responses), which [S] int, scales [S], rates [A N].  Each response is
    taken through the head once per chunk of tokens; the points only rescale it.  Returns
    dict of [S N]."""
    w = head_weight(model)
    hc, n = _chunks(h, chunk)
    zc, _ = _chunks(z, chunk)
    dc, _ = _chunks(jnp.moveaxis(dhs, 0, 1), chunk)  # [C chunk A d]
    rc, _ = _chunks(jnp.moveaxis(rates, 0, 1), chunk)  # [C chunk A]

    def one(args):
        hb, zb, db, rb = args
        dhn = jax.vmap(lambda d: jax.jvp(model.norm, (hb,), (d,))[1], in_axes=1)(db)  # [A chunk d]
        lp, p = _log_p(zb)
        dz = _centred(jnp.einsum("acd,vd->acv", dhn, w), p)  # [A chunk vocab]
        top = jnp.argmax(zb, -1)
        k2 = 0.5 * jnp.sum(p * dz * dz, -1)  # [A chunk] ½Var_p(Δz), Theorem 3

        def at(args):
            a, s = args
            r = dephasing_factor(s * s * rb[:, a])

            def ray(c):
                # KL(p‖softmax(z + cΔz)) = log E_p e^{cΔz} − c·E_p Δz (theory.kl_cgf), E_p Δz = 0 here:
                # one reduction over the vocabulary per point, no cancellation against log Z
                y = lp + c[:, None] * dz[a]
                return jax.nn.logsumexp(y, -1), (jnp.argmax(y, -1) == top).astype(jnp.float32)

            kl, t1 = ray(jnp.full_like(r, s))
            kd, td = ray(s * jnp.sqrt(r))
            return kl, s * s * k2[a], t1, kd, r * s * s * k2[a], td

        return jax.lax.map(at, (which, scales))

    out = jax.lax.map(one, (hc, zc, dc, rc))  # each [C S chunk]
    f = lambda a: jnp.moveaxis(a, 1, 0).reshape(scales.shape[0], -1)[:, :n]  # noqa: E731
    return dict(zip(METRIC_NAMES, map(f, out)))


METRIC_NAMES = ("kl", "kl2", "top1", "kl_dephased", "kl2_dephased", "top1_dephased")


@partial(nnx.jit, static_argnames=("chunk",))
def dephasing_rates(model, h, z, dh1, dh2, chunk: int = 64):
    """Per token x = ‖b⊥‖²_p/‖a‖²_p (theory.dephasing_rate) of the logit velocity a = z' and
    its derivative b = z'' along W + tΔW, from h_L's (dh1, dh2) = (h', h'') at h [N d], z [N
    vocab] the base logits there: the head's own second order enters through the final norm
    (Taylor mode, `jet`).  [N]."""
    w = head_weight(model)
    hc, n = _chunks(h, chunk)
    zc, _ = _chunks(z, chunk)
    c1, _ = _chunks(dh1, chunk)
    c2, _ = _chunks(dh2, chunk)

    def one(args):
        hb, zb, d1, d2 = args
        _, (n1, n2) = jet.jet(model.norm, (hb,), ((d1, d2),))
        _, p = _log_p(zb)
        a, b = _centred(n1 @ w.T, p), _centred(n2 @ w.T, p)
        return dephasing_rate(jnp.sum(p * a * a, -1), jnp.sum(p * b * b, -1), jnp.sum(p * a * b, -1))

    return jax.lax.map(one, (hc, zc, c1, c2)).reshape(-1)[:n]


@partial(nnx.jit, static_argnames=("k",))
def base_margins(model, h, k: int = 8):
    """Margins m_j = z_top1 − z_j to the next k−1 tokens [N k−1] and the top-k ids [N k]
    of the base logits at h [N d] (m[:, 0] is theory.top2_margin's m)."""
    vals, idx = jax.lax.top_k(model.unembed(h), k)
    return vals[:, :1] - vals[:, 1:], idx


def head_weight(model):
    """The head's W [vocab d] of z = W·norm(h) (tied: the embedding)."""
    return model.embed.w[...] if model.lm_head is None else model.lm_head.weight()


@nnx.jit
def pair_response(model, h, dh, idx):
    """Δz_top1 − Δz_j (first order) at h [N d] for the competitors j of idx [N k]: [N k−1].
    Only the k head rows are touched: Δz_j = W_j·J_norm(h)Δh."""
    _, dhn = jax.jvp(model.norm, (h,), (dh,))
    sel = jnp.einsum("nd,nkd->nk", dhn, head_weight(model)[idx])
    return sel[:, :1] - sel[:, 1:]


@nnx.jit
def nonlinearity_terms(model, h, dh, z_true):
    """Σ_t Var_p(Δz_true − Δz_lin), Σ_t Var_p(Δz_lin) and mean exact KL of both, over
    tokens h [N d] (p the base distribution; Var_p is blind to shifts common to all logits)."""
    z, dz = jax.jvp(model.unembed, (h,), (dh,))
    dz_true = z_true - z
    return (jnp.sum(var_p(z, dz_true - dz)), jnp.sum(var_p(z, dz)),
            jnp.mean(kl_exact(z, dz_true)), jnp.mean(kl_exact(z, dz)))


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

    def metrics(self, dhs: list, which, scales, rates: list | None = None) -> dict[str, np.ndarray]:
        """logit_metrics on the scored tokens for responses dhs [N d] each, points (which,
        scales); rates [N] per response (`dephase`; None: no dephasing, R = 1)."""
        rates = [jnp.zeros(self.h_eval.shape[0], jnp.float32)] * len(dhs) if rates is None else rates
        met = logit_metrics(self.model, self.h_eval, self.z(), jnp.stack(dhs), jnp.asarray(which, jnp.int32),
                            jnp.asarray(scales, jnp.float32), jnp.stack(rates))
        return {k: np.asarray(v) for k, v in met.items()}

    def dephase(self, dh: dict):
        """The dephasing rate x per scored token of a response `respond` gave (None without its
        second order: a Linearization without `taylor`, i.e. dephasing switched off)."""
        if "eval2" not in dh:
            return None
        flat = lambda a: a[:, :-1].reshape(-1, a.shape[-1])  # noqa: E731
        return dephasing_rates(self.model, self.h_eval, self.z(), flat(dh["eval"]), flat(dh["eval2"]))

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
                "kl_prediction_ok": bool(ratio >= self.cfg.kl_check_min),
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
