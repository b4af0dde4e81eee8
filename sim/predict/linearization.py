r"""Linear response of a model's logits to a change ΔW of its block linear weights (JVPs).

    lr = Linearization(model, {"eval": windows [B T], "gen": paths [P T']})
    dws = [dw(path, w) for path, w in zip(lr.paths, lr.weights)]   # ΔW per linear, [out in]
    dh = lr.respond(dws)                    # {"eval": Δh_L [B T d], "gen": [P T' d]}
    Linearization(model, sets, taylor=True).respond(dws)["eval2"]   # h_L'' along W + tΔW [B T d]

f(W) = h_L(W), the residual after the last block, is linearised once (`jax.linearize`:
the primal runs once, each tangent then runs only the tangent program, ≈ 2 forwards of
the blocks).  The final norm and the head are not compressed (`compress.linears` skips
them), so Δz_lin = J_unembed(h_L)·Δh_L is applied afterwards, exactly and in chunks of
tokens (logit_space: `logit_metrics`, `pair_response`): the vocabulary never enters a JVP.

The tangent is zero outside the linears that `sim.compress.linears` visits (the ones a
compression method touches); `trace_perturbed` runs the model with W + s·ΔW for the
nonlinearity check (Δz_true vs Δz_lin).  The ΔW of each method is in tangents, what every
family shares (this linearisation, margins, regime check) in context, the pricing of a family
of grid points in pricing (`price_quant`, `price_prune`); predictor assembles the result.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
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
    return ".".join(parts[: parts.index("w")])


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
            _, (h1, h2) = jet.jet(
                fn, tuple(leaves), tuple((d, jnp.zeros_like(d)) for d in jax.tree_util.tree_leaves(dws))
            )
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
        return self._trace_perturbed(
            self.lin, jax.tree_util.tree_unflatten(self._treedef, list(dws)), jnp.float32(scale), self.rest, tokens
        )

    def perturbed(self, dws: list, scale: float = 1.0):
        """The base model with W + scale·ΔW in the block linears (a new module)."""
        new = [w + scale * d for w, d in zip(self.weights, dws)]
        return nnx.merge(self.graphdef, jax.tree_util.tree_unflatten(self._treedef, new), self.rest)
