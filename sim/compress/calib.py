"""Calibration: run real tokens through the model block by block, as SparseGPT/GPTQ do.

    runner = Sequential(model, tokens)
    for i, block in runner.blocks():
        for group in input_groups(block):           # linears that share one input
            st = runner.stats(block, group)          # Σ xxᵀ, Σ|x|, count of that input
            ... replace group's linears (block now partly compressed) ...
        runner.advance(block)                        # h ← block(h): the next block's input

Block i is calibrated on the output of the *already compressed* blocks 0..i−1.

Mixtures of experts (sim/models/moe.py): each expert's (gate, up) and (down) are groups of
their own (`mlp.experts.e`), and each sees only the tokens routed to it, unweighted: the
forward hands an expert its input zeroed off its tokens, so Σ x xᵀ, Σ|x| are sums over the
routed tokens and `count` is their number.  Unweighted because the routing weight scales the
expert's *output*, not its inputs: the layer-wise objective ‖(W − Ŵ)X‖² of a projection is
over the inputs it actually reads (as GPTQ/AWQ toolkits hook each expert).  An expert no
calibration token reaches gets isotropic statistics (H ∝ I, mean|x| = 1), which turns every
method into its calibration-free form: Wanda ranks by |W| (magnitude), SparseGPT prunes by
w² without updates, GPTQ rounds without error feedback (RTN), AWQ finds s = 1 (RTN); those
experts are listed in the compression record (`uncalibrated_experts`).

The block forward is one jitted function (cached across blocks of the same structure);
linear inputs are captured by wrapping the linears of a copy of the block inside the
trace, and only the statistics leave the jit (XLA drops the rest of the block).

H = 2·XᵀX/n is the layer-wise Hessian of ‖WX − ŴX‖² (GPTQ's convention).

Data parallel (sim.shard): inside `shard.data_parallel(mesh)` (or with `mesh=`) each chunk
of calibration samples is split over the mesh's "data" axis (chunks are sized to a multiple
of it; a ragged last chunk is replicated), and so is every block activation h computed from
it.  Σxxᵀ and Σ|x| are then sums over a sharded axis: jit makes them per-device partial sums
plus one all-reduce.  Without a mesh (or a 1-device one) nothing changes.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hemorrhage.sim.jit import jit
from hemorrhage.errors import UserError

# linears that read the same input, in forward order: (branch, attributes)
GROUPS = (("attn", ("q", "k", "v", "qkv")), ("attn", ("o",)), ("mlp", ("gate", "up", "fc")), ("mlp", ("down", "proj")))


# expert paths a calibrated method had no routed token for (collected per `compress` call)
_UNCALIBRATED: contextvars.ContextVar[set | None] = contextvars.ContextVar("uncalibrated", default=None)


@contextlib.contextmanager
def collect_uncalibrated():
    """Collects the expert paths (`layers.i.mlp.experts.e`) calibrated with no routed token."""
    seen: set[str] = set()
    token = _UNCALIBRATED.set(seen)
    try:
        yield seen
    finally:
        _UNCALIBRATED.reset(token)


def resolve(block, dotted: str):
    """'mlp.experts.3' -> that submodule of `block`."""
    obj = block
    for name in dotted.split("."):
        obj = obj[int(name)] if name.isdigit() else getattr(obj, name)
    return obj


@dataclass(frozen=True)
class Group:
    """Linears of one block that read the same input (`part`: a dotted path in the block;
    `routed`: an expert's, whose input is zero off the tokens routed to it)."""

    part: str
    attrs: tuple[str, ...]
    routed: bool = False

    def parent(self, block):
        return resolve(block, self.part)

    @property
    def key(self) -> str:  # the linear whose input is recorded
        return f"{self.part}.{self.attrs[0]}"


def _is_live(layer) -> bool:
    return isinstance(layer, nnx.Module) and hasattr(layer, "weight") and not getattr(layer, "dropped", False)


def input_groups(block) -> list[Group]:
    out = []
    for part, attrs in GROUPS:
        sub = getattr(block, part)
        if getattr(sub, "dropped", False):
            continue
        have = tuple(a for a in attrs if _is_live(getattr(sub, a, None)))
        if have:
            out.append(Group(part, have))
    mlp = block.mlp
    if getattr(mlp, "experts", None) is not None and not getattr(mlp, "dropped", False):
        if getattr(mlp, "router_compressible", False) and _is_live(mlp.router):
            out.append(Group("mlp", ("router",)))  # reads every token, like the experts before routing
        for e, expert in enumerate(mlp.experts):
            for attrs in (("gate", "up"), ("down",)):
                have = tuple(a for a in attrs if _is_live(getattr(expert, a, None)))
                if have:
                    out.append(Group(f"mlp.experts.{e}", have, routed=True))
    return out


@dataclass
class Stats:
    """Second moments of one linear input x [n_tokens, d]."""

    xtx: jax.Array  # Σ x xᵀ  [d d]
    abs_sum: jax.Array  # Σ |x|  [d]
    count: int

    def hessian(self):
        """H = 2 XᵀX / n."""
        return _scale(self.xtx, jnp.float32(2.0 / max(self.count, 1)))

    def col_norm(self):
        """‖X_j‖₂ over all calibration tokens (Wanda's activation norm)."""
        return _col_norm(self.xtx)

    def abs_mean(self):
        return _scale(self.abs_sum, jnp.float32(1.0 / max(self.count, 1)))


@jax.jit
def _scale(x, c):
    return x * c


@jax.jit
def _col_norm(xtx):
    return jnp.sqrt(jnp.maximum(jnp.diag(xtx), 0.0))


def _total(parts):
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return out


class _Recorder:
    """Stands in for a linear inside the trace: keeps its input, then calls it."""

    def __init__(self, inner, sink, key):
        self.inner, self.sink, self.key = inner, sink, key

    def __call__(self, x):
        self.sink[self.key] = x
        return self.inner(x)


def _cos_sum(a, b):
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)  # cosines in fp32 whatever the model's dtype
    num = jnp.sum(a * b, axis=-1)
    den = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
    return jnp.sum(num / jnp.maximum(den, 1e-12))


@partial(jax.jit, static_argnums=(0, 4, 5, 6))
def _run_block(graphdef, state, h, pos, record: tuple[str, ...], want_out: bool, want_cos: bool):
    block = nnx.merge(graphdef, state)
    sink, branch = {}, {}
    for key in record:
        part, attr = key.rsplit(".", 1)
        sub = resolve(block, part)
        setattr(sub, attr, _Recorder(getattr(sub, attr), sink, key))

    def perturb(site, layer, x):
        branch[site] = x
        return x

    out, _ = block(h, pos, None, perturb=perturb if want_cos else None)
    stats = {}
    for key, x in sink.items():
        x2 = x.reshape(-1, x.shape[-1]).astype(jnp.float32)  # Hessians in fp32 whatever the model's dtype
        # rows that are not all zero: an expert's routed tokens (its input is zeroed elsewhere)
        stats[key] = (
            jnp.einsum("ni,nj->ij", x2, x2, precision="highest"),
            jnp.sum(jnp.abs(x2), axis=0),
            jnp.sum(jnp.any(x2 != 0, axis=-1)),
        )
    cos = None
    if want_cos:
        mid = h + branch["attn"]
        cos = {"attn": _cos_sum(h, mid), "mlp": _cos_sum(mid, out), "block": _cos_sum(h, out)}
    return (out if want_out else None), stats, cos


@jit
def _embed(model, tokens, pos):
    return model.embed_tokens(tokens, pos)


class Sequential:
    """Calibration activations flowing through the model one block at a time."""

    def __init__(self, model, tokens, *, chunk_tokens: int = 4096, keep_history: bool = False, mesh=None):
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[0] < 1 or tokens.shape[1] < 1:
            raise UserError(f"calibration tokens must be [samples, seqlen], got shape {tokens.shape}")
        if not np.issubdtype(tokens.dtype, np.integer):  # floats would be truncated to other ids
            raise UserError(f"calibration tokens must be integer token ids, got dtype {tokens.dtype}")
        if tokens.min() < 0 or tokens.max() >= model.cfg.vocab_size:
            raise UserError(f"calibration token ids must lie in [0, {model.cfg.vocab_size})")
        from hemorrhage.sim import shard

        self.model = model
        mesh = shard.active_mesh() if mesh is None else mesh
        self.mesh = mesh if shard.axis_size(mesh, "data") > 1 else None
        n, T = tokens.shape
        self.pos = jnp.arange(T, dtype=jnp.int32)
        per = max(1, chunk_tokens // T)
        if self.mesh is not None:  # whole samples per device: a multiple of the data axis
            d = shard.axis_size(self.mesh, "data")
            per = max(d, per - per % d)
        self.h = [
            _embed(model, shard.place_rows(np.asarray(tokens[i : i + per], np.int32), self.mesh), self.pos)
            for i in range(0, n, per)
        ]
        self.n_tokens = n * T
        self.history = [self.h] if keep_history else None

    def blocks(self):
        return enumerate(self.model.layers)

    def _run(self, block, record=(), want_out=False, want_cos=False):
        graphdef, state = nnx.split(block)
        return [_run_block(graphdef, state, h, self.pos, tuple(record), want_out, want_cos) for h in self.h]

    def stats(self, block, groups) -> dict[str, Stats]:
        """Statistics of each group's input, with the block as it is now."""
        groups = [groups] if isinstance(groups, Group) else list(groups)
        keys = tuple(g.key for g in groups)
        res = self._run(block, keys)
        out = {}
        for g in groups:
            k = g.key
            xtx, abs_sum = _total([r[1][k][0] for r in res]), _total([r[1][k][1] for r in res])
            n = int(sum(int(r[1][k][2]) for r in res)) if g.routed else self.n_tokens
            if n == 0:  # an expert no calibration token reached: isotropic statistics (module docstring)
                xtx, abs_sum = jnp.eye(xtx.shape[0], dtype=xtx.dtype), jnp.ones_like(abs_sum)
                seen = _UNCALIBRATED.get()
                if seen is not None:
                    seen.add(f"layers.{self._index(block)}.{g.part}")
            out[k] = Stats(xtx, abs_sum, n)
        return out

    def _index(self, block) -> int:
        return next(i for i, b in enumerate(self.model.layers) if b is block)

    def advance(self, block, want_cos: bool = False) -> dict | None:
        """h ← block(h).  With want_cos: mean over tokens of cos(input, output) of the
        attention sub-layer (h, h + attn), the MLP sub-layer and the whole block."""
        res = self._run(block, (), True, want_cos)
        self.h = [r[0] for r in res]
        if self.history is not None:
            self.history.append(self.h)
        if not want_cos:
            return None
        return {k: float(sum(r[2][k] for r in res)) / self.n_tokens for k in ("attn", "mlp", "block")}


def layer_hessians(model, tokens) -> dict[str, Stats]:
    """Input statistics of every linear of `model` (path -> Stats), from its own forward."""
    runner = Sequential(model, tokens)
    out = {}
    for i, block in runner.blocks():
        groups = input_groups(block)
        st = runner.stats(block, groups)
        for g in groups:
            for a in g.attrs:
                out[f"layers.{i}.{g.part}.{a}"] = st[g.key]
        runner.advance(block)
    return out


@jax.jit
def _quad(dw, h):
    return jnp.sum((dw @ h) * dw)


def reconstruction_errors(reference, compressed, tokens=None, *, stats=None) -> dict[str, float]:
    """Per linear, ‖(W − Ŵ)X‖² / ‖WX‖² with X the inputs of that linear in `reference`
    (the same X for every method, so the numbers compare across methods).  Pass
    `stats=layer_hessians(reference, tokens)` to reuse them across calls."""
    from hemorrhage.sim.compress.storage import all_linears

    stats = layer_hessians(reference, tokens) if stats is None else stats
    ref = dict(all_linears(reference))
    out = {}
    for path, layer in all_linears(compressed):
        if path not in stats:
            continue
        w, wh = ref[path].weight(), layer.weight()
        xtx = stats[path].xtx
        out[path] = float(_quad(w - wh, xtx) / jnp.maximum(_quad(w, xtx), 1e-30))
    return out
