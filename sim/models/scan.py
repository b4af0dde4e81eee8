"""The blocks as one `lax.scan` over parameters stacked along a leading layer axis.

    h_{l+1}, c_{l+1} = block(θ_l, kind_l)(h_l, pos, c_l),   l = 0..L−1,   θ = stack(θ_0..θ_{L−1})

XLA then traces and compiles one block instead of L (as MaxText's `scan_layers` and
levanter's `Stacked` do), so compile time no longer grows with depth.  The numbers are the
unrolled loop's: the body runs the same module code on layer l's own parameters.

When the scan applies (`plan`): every block has the same module tree, the same parameter
shapes and dtypes and the same static attributes — except the attention's per-layer kind,
which is carried as data, scanned alongside θ:

    window_l     sliding window, or 2³¹−1 on global layers (the mask q − k < window is then
                 always true: the same mask as no window)
    rope_idx_l   which of the distinct RoPE schedules layer l uses; their cos/sin tables are
                 computed once, outside the scan, exactly as the unrolled layers compute them
    rope_on_l    False on NoPE layers, whose q, k pass unrotated (jnp.where: exact)

(Gemma 2/3's sliding/global pattern and θ per layer, SmolLM3's NoPE layers.)  A kind that
is the same on every layer stays a Python value, so a uniform model runs exactly the
unrolled code.  Blocks that differ in structure or shape (one layer packed and one dense,
dropped branches, MoE with dense layers) do not scan: `CausalLM` runs them unrolled.

Storage: parameters stay stored per layer (every path `layers.3.attn.q.w`, the loader, the
exporter, sim/compress and the predictor unchanged) and are stacked inside each jitted call.
That stack is a copy of the block weights per call, made once per jitted call: decode in
sim/generate is one jit whose `lax.scan` over tokens closes over the stack, so the copy is
made per generation, not per token (measured: bench/README.md, "Scanned blocks").
That copy is why the scan is opt-in (`CausalLM.scan_layers`, default False) until the
parameters are stored stacked.

Taylor mode: `jax.experimental.jet` has no rule for `scan`; the predictor's second-order
pass (sim/predict/linearization) goes through the blocks, so `_scan_jet_rule` below supplies one:
the jet of a scan is the scan of the jet of its body, the carry holding the carry's series.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.extend as jex
import jax.numpy as jnp
from flax import nnx
from jax.experimental import jet
from jaxtyping import Array, Bool, Float, Int

NO_WINDOW = 2**31 - 1
KIND_ATTRS = ("window", "rope")  # an Attention's per-layer attributes, carried as data


@dataclass
class TableRope:
    """One layer's RoPE in the scan: its row of the distinct schedules' tables, which are
    computed outside the scan exactly as the unrolled layers compute them (with a constant
    position vector XLA folds them at compile time; inside the scan it would not, and the
    runtime cos/sin differ in the last bits)."""

    cos: Float[Array, "T r"]
    sin: Float[Array, "T r"]
    on: Bool[Array, ""]  # False: a NoPE layer (q, k unrotated)

    def tables(self, pos: Int[Array, " T"]):
        return self.cos, self.sin


def _signature(block: nnx.Module) -> tuple:
    """What must agree between blocks for one traced body to serve them all: every node's path
    and type, every parameter's shape and dtype, every static attribute but the kinds."""
    sig = []
    for path, node in nnx.iter_graph(block):
        if path and (path[-1] == "_pytree__state" or (path[-1] in KIND_ATTRS and len(path) >= 2)):
            continue  # a module's trace bookkeeping, or a kind (carried as data)
        if isinstance(node, nnx.Variable):
            v = node.get_value()
            sig.append((path, type(node), getattr(v, "shape", None), str(getattr(v, "dtype", type(v)))))
        elif isinstance(node, (nnx.Module, nnx.Pytree)) or hasattr(node, "shape"):
            sig.append((path, type(node), getattr(node, "shape", None)))
        else:
            sig.append((path, node))
    return tuple(sig)


def _same(a, b) -> bool:
    try:
        return bool(a == b)
    except Exception:  # an attribute whose == is no bool (an array): treat the blocks as different
        return False


def _window_kinds(attns) -> Int[Array, " L"] | None:
    ws = [a.window for a in attns]
    if all(w == ws[0] for w in ws):
        return None
    return jnp.asarray([NO_WINDOW if w is None else w for w in ws], jnp.int32)


def _rope_kinds(attns) -> tuple[tuple, dict] | None | bool:
    """(the distinct schedules, {"rope_idx": [L] which one, "rope_on": [L]}); None: the same on
    every layer; False: not stackable (rotary widths differ)."""
    ropes = [a.rope for a in attns]
    if all(_same(r, ropes[0]) for r in ropes):
        return None
    distinct = []
    for r in ropes:
        if r is not None and not any(_same(r, d) for d in distinct):
            distinct.append(r)
    if any(d.rotary_dim != distinct[0].rotary_dim for d in distinct):
        return False
    idx = [0 if r is None else next(i for i, d in enumerate(distinct) if _same(r, d)) for r in ropes]
    return tuple(distinct), {
        "rope_idx": jnp.asarray(idx, jnp.int32),
        "rope_on": jnp.asarray([r is not None for r in ropes]),
    }


@dataclass
class Plan:
    """How the blocks run: `scan` or not; the per-layer kinds scanned alongside the
    parameters ({"window": [L], "rope_idx": [L], "rope_on": [L]}, each only where it varies);
    the distinct RoPE schedules rope_idx points into."""

    scan: bool
    kinds: dict
    ropes: tuple = ()


def plan(layers) -> Plan:
    """Whether the blocks can run as one scan, and the per-layer kinds to scan alongside."""
    layers = list(layers)
    if len(layers) < 2:
        return Plan(False, {})
    sig0 = _signature(layers[0])
    if not all(len(s) == len(sig0) and all(_same(x, y) for x, y in zip(s, sig0)) for s in map(_signature, layers[1:])):
        return Plan(False, {})
    attns = [getattr(b, "attn", None) for b in layers]
    if any(a is None or not all(hasattr(a, k) for k in KIND_ATTRS) for a in attns):
        return Plan(True, {})
    kinds, ropes = {}, ()
    window = _window_kinds(attns)
    if window is not None:
        kinds["window"] = window
    rope = _rope_kinds(attns)
    if rope is False:
        return Plan(False, {})
    if rope is not None:
        ropes, more = rope
        kinds.update(more)
    return Plan(True, kinds, ropes)


def rope_tables(ropes: tuple, pos: Int[Array, " T"]):
    """cos, sin [n T r] of the distinct schedules (None where every layer has the same)."""
    if not ropes:
        return None
    cs = [r.tables(pos) for r in ropes]
    return jnp.stack([c for c, _ in cs]), jnp.stack([s for _, s in cs])


def stack_states(layers):
    """(graphdef of one block, every block's state stacked along a new leading axis)."""
    layers = list(layers)
    states = [nnx.state(b) for b in layers]
    return nnx.graphdef(layers[0]), jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def with_kind(block: nnx.Module, kind: dict, tables):
    """Set this layer's slice of the kinds on the body's block (a fresh module of this trace);
    returns the attributes to put back before the block's graph is read again."""
    new = {}
    if "window" in kind:
        new["window"] = kind["window"]
    if "rope_idx" in kind:
        new["rope"] = TableRope(tables[0][kind["rope_idx"]], tables[1][kind["rope_idx"]], kind["rope_on"])
    if not new:
        return {}
    attn = block.attn
    saved = {k: getattr(attn, k) for k in new}
    for k, v in new.items():
        setattr(attn, k, v)
    return saved


def restore(block: nnx.Module, saved: dict) -> None:
    for k, v in saved.items():
        setattr(block.attn, k, v)


# --------------------------------------------------------------- Taylor mode
def _scan_jet_rule(primals_in, series_in, *, jaxpr, num_consts, num_carry, length, reverse, unroll, **params):
    """jet(scan(f)) = scan(jet(f)): the carry and the scanned inputs bring their series along."""
    n_c, n_k = num_consts, num_carry
    body = jex.core.jaxpr_as_fun(jaxpr)
    consts, consts_s = primals_in[:n_c], series_in[:n_c]

    def step(carry, xs):
        k_p, k_s = carry
        x_p, x_s = xs
        outs, outs_s = jet.jet(body, (*consts, *k_p, *x_p), (*consts_s, *k_s, *x_s), factorial_scaled=False)
        outs, outs_s = tuple(outs), tuple(map(tuple, outs_s))  # scan wants the carry's own pytree back
        return (outs[:n_k], outs_s[:n_k]), (outs[n_k:], outs_s[n_k:])

    init = (tuple(primals_in[n_c : n_c + n_k]), tuple(map(tuple, series_in[n_c : n_c + n_k])))
    xs = (tuple(primals_in[n_c + n_k :]), tuple(map(tuple, series_in[n_c + n_k :])))
    (k_p, k_s), (y_p, y_s) = jax.lax.scan(step, init, xs, length=length, reverse=reverse, unroll=unroll)
    return [*k_p, *y_p], [*map(list, k_s), *map(list, y_s)]


if jax.lax.scan_p not in jet.jet_rules:
    jet.jet_rules[jax.lax.scan_p] = _scan_jet_rule
