"""Layer dropping: remove whole blocks, or only their attention or MLP branch.

    part   block | attn | mlp
    rank   cos       LLM-Drop: mean over calibration tokens of cos(input, output) of the
                     part (input h, output h + branch(h)); drop the n most similar
           shortgpt  ShortGPT block influence BI = 1 − E[cos(x_l, x_{l+1})]; drop the n
                     lowest.  For the same part this is the same ranking as `cos`
                     (BI = 1 − cos); both are kept because users know both names.
           angular   Gromov et al.: d = E[arccos(cos)]/π between the part's input and
                     output; for part=block the n *consecutive* blocks l..l+n−1 with the
                     smallest d(h_l, h_{l+n}) are dropped.
           list      the user's `layers` (0-based), no calibration.

A dropped branch is replaced for real by ZeroAttention / ZeroMLP (below) (zeros of the
right shape, the KV cache passed through): the model class and the layer indices do
not change, and the HF export zeroes that branch's weights (and biases), which makes
transformers compute the same zero branch.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hemorrhage.errors import UserError
from hemorrhage.sim.compress.calib import Sequential
from hemorrhage.sim.compress.registry import register
from hemorrhage.sim.compress.storage import linear_shape

PARTS = ("block", "attn", "mlp")
RANKS = ("cos", "shortgpt", "angular", "list")


class ZeroLinear(nnx.Module):
    """A projection removed with its branch: stores nothing, weight() is zeros.
    A bias, if the original had one, is kept as zeros so the HF export stays complete."""

    dropped = True

    def __init__(self, layer):
        self.d_out, self.d_in = linear_shape(layer)
        self.b = None if getattr(layer, "b", None) is None else nnx.Param(jnp.zeros((self.d_out,), jnp.float32))

    def weight(self):
        return jnp.zeros((self.d_out, self.d_in), jnp.float32)

    def __call__(self, x):
        return jnp.zeros(x.shape[:-1] + (self.d_out,), x.dtype)

    def storage(self) -> dict:
        return {"values": 0, "meta": 0}

    def nbytes(self) -> int:
        return 0


_PROJ = ("q", "k", "v", "qkv", "o", "gate", "up", "down", "fc", "proj")


class ZeroAttention(nnx.Module):
    """A dropped attention branch: (zeros [B T d], the cache unchanged).

    Keeps ZeroLinear stand-ins for its projections and the original q/k norms (tiny)
    so `export_state` finds every tensor name; those zero weights make transformers
    compute the same zero branch.  Under `trace`, sows an all-zero attention entropy
    so per-layer traces keep one row per layer (the record lists dropped layers)."""

    dropped = True

    def __init__(self, attn):
        self.H, self.K, self.D = attn.H, attn.K, attn.D
        for name in _PROJ:
            layer = getattr(attn, name, None)
            if layer is not None:
                setattr(self, name, ZeroLinear(layer))
        self.qk_norm = getattr(attn, "qk_norm", False)
        if self.qk_norm:
            self.q_norm, self.k_norm = attn.q_norm, attn.k_norm

    def __call__(self, x, pos, cache=None, *, trace=False):
        if trace:
            B, T = x.shape[:2]
            self.sow(nnx.Intermediate, "attn_entropy", jnp.zeros((B, self.K, self.H // self.K, T), jnp.float32))
            if trace == "attn_probs":  # no attention rows exist: NaN, so their statistics read "not computable"
                self.sow(nnx.Intermediate, "attn_probs", jnp.full((B, self.H, T, T), jnp.nan, jnp.float32))
        return jnp.zeros_like(x), cache

    def empty_cache(self, batch: int, length: int):
        z = jnp.zeros((batch, length, self.K, self.D), jnp.float32)
        return (z, z)


class ZeroMLP(nnx.Module):
    """A dropped MLP branch: zeros [B T d].  A gated MLP sows an all-False gate sign under trace."""

    dropped = True

    def __init__(self, mlp):
        for name in _PROJ:
            layer = getattr(mlp, name, None)
            if layer is not None:
                setattr(self, name, ZeroLinear(layer))
        if getattr(mlp, "experts", None) is not None:  # a mixture of experts: every expert zeroed, router kept
            self.router = mlp.router
            self.experts = nnx.List([ZeroMLP(e) for e in mlp.experts])
        self.act = mlp.act
        self.gated = hasattr(mlp, "gate") and getattr(mlp, "sows_gate", True)
        self.d_ff = linear_shape(mlp.gate)[0] if self.gated else None

    def __call__(self, x, *, trace: bool = False):
        if trace and self.gated:
            self.sow(nnx.Intermediate, "gate_pos", jnp.zeros(x.shape[:-1] + (self.d_ff,), bool))
        if trace:  # its hidden activation is all zeros: fully sparse (layers.hoyer)
            self.sow(nnx.Intermediate, "mlp_hoyer", jnp.ones(x.shape[:-1], jnp.float32))
        return jnp.zeros_like(x)


@jax.jit
def _angular_mean(a, b):
    num = jnp.sum(a * b, axis=-1)
    den = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
    c = jnp.clip(num / jnp.maximum(den, 1e-12), -1.0, 1.0)
    return jnp.sum(jnp.arccos(c) / jnp.pi), c.size


def parse_layers(layers) -> tuple[int, ...] | None:
    """'3,5,7-9' or a sequence of ints -> (3, 5, 7, 8, 9)."""
    if layers is None:
        return None
    if isinstance(layers, str):
        out = []
        for part in layers.replace(" ", "").split(","):
            if not part:
                continue
            try:
                if "-" in part[1:]:
                    a, b = part.split("-", 1) if not part.startswith("-") else (None, None)
                    out.extend(range(int(a), int(b) + 1))
                else:
                    out.append(int(part))
            except (TypeError, ValueError):
                raise UserError(f"layers must look like 3,5,7-9, got {layers!r}") from None
        layers = out
    try:
        vals = tuple(int(x) for x in layers)
    except (TypeError, ValueError):
        raise UserError(f"layers must be integers, got {layers!r}") from None
    if len(set(vals)) != len(vals):
        raise UserError(f"layers lists a layer twice: {layers!r}")
    return vals


@register
@dataclass(frozen=True)
class Drop:
    name = "drop"
    part: str = "block"
    n_drop: int | None = None
    rank: str | None = None
    layers: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.part not in PARTS:
            raise UserError(f"drop part must be one of {', '.join(PARTS)}, got {self.part!r}")
        layers = parse_layers(self.layers)
        object.__setattr__(self, "layers", layers)
        rank = self.rank or ("list" if layers else "cos")
        if rank not in RANKS:
            raise UserError(f"drop rank must be one of {', '.join(RANKS)}, got {rank!r}")
        object.__setattr__(self, "rank", rank)
        n = self.n_drop  # checked before either branch reads it as a count
        if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or int(n) < 1):
            raise UserError(f"n_drop must be a positive integer, got {n!r}")
        if rank == "list":
            if not layers:
                raise UserError("drop with rank=list needs --layers (e.g. --layers 3,5)")
            if self.n_drop is not None and int(self.n_drop) != len(layers):
                raise UserError(f"--n-drop {self.n_drop} disagrees with the {len(layers)} --layers given")
            object.__setattr__(self, "n_drop", len(layers))
        else:
            if layers:
                raise UserError(f"--layers is for rank=list; rank={rank} chooses the layers itself")
            object.__setattr__(self, "n_drop", 1 if n is None else int(n))

    @property
    def needs_calibration(self) -> bool:
        return self.rank != "list"

    def check(self, model):
        L = len(model.layers)
        if self.rank == "list":
            bad = [i for i in self.layers if not 0 <= i < L]
            if bad:
                raise UserError(f"layer index {bad[0]} out of range: the model has {L} layers (0..{L - 1})")
        elif self.n_drop > L:
            raise UserError(f"n_drop={self.n_drop} exceeds the model's {L} layers")

    def scores(self, model, calib_tokens) -> list[float]:
        """Per layer (per start layer for angular blocks): the ranking score; drop the smallest."""
        angular_blocks = self.rank == "angular" and self.part == "block"
        runner = Sequential(model, calib_tokens, keep_history=angular_blocks)
        cos = []
        for i, block in runner.blocks():
            c = runner.advance(block, want_cos=True)
            cos.append(c[self.part])
        if self.rank == "cos":
            return [-c for c in cos]  # most similar first
        if self.rank == "shortgpt":
            return [1.0 - c for c in cos]  # block influence, lowest first
        if not angular_blocks:  # angular distance of one sub-layer: arccos of its cosine
            return [float(np.arccos(np.clip(c, -1, 1)) / np.pi) for c in cos]
        hist, n = runner.history, self.n_drop
        out = []
        for start in range(len(hist) - n):
            tot = cnt = 0.0
            for a, b in zip(hist[start], hist[start + n]):
                s, k = _angular_mean(a, b)
                tot, cnt = tot + float(s), cnt + int(k)
            out.append(tot / cnt)
        return out

    def choose(self, scores: list[float]) -> list[int]:
        if self.rank == "angular" and self.part == "block":
            start = int(np.argmin(scores))
            return list(range(start, start + self.n_drop))
        order = np.argsort(np.asarray(scores), kind="stable")
        return sorted(int(i) for i in order[: self.n_drop])

    def apply(self, model, calib_tokens=None) -> dict:
        if self.rank == "list":
            chosen, scores = sorted(self.layers), None
        else:
            scores = self.scores(model, calib_tokens)
            chosen = self.choose(scores)
        for i in chosen:
            block = model.layers[i]
            if self.part in ("block", "attn") and not getattr(block.attn, "dropped", False):
                block.attn = ZeroAttention(block.attn)
            if self.part in ("block", "mlp") and not getattr(block.mlp, "dropped", False):
                block.mlp = ZeroMLP(block.mlp)
        rec = {
            "dropped": chosen,
            "part": self.part,
            "rank": self.rank,
            "dropped_share_of_layers": len(chosen) / len(model.layers),
        }
        if scores is not None:
            rec["scores"] = [float(s) for s in scores]
        return rec
