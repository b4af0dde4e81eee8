"""Structured pruning that shrinks the shapes: attention heads (`heads`) and MLP channels (`channels`).

Importance (both methods, on the calibration tokens run through the dense model, one pass):
the Frobenius norm of the unit's contribution to its branch output over the N calibration tokens,

    heads     s_g = sqrt( Σ_t ‖W_o[:, g] x_t[g]‖² ) = sqrt( tr(W_o,g · (XᵀX)_gg · W_o,gᵀ) )
              g: the columns of one KV group (a KV head and its H/K query heads), x_t the
              input of o_proj (the concatenated head outputs), XᵀX its Gram matrix: exact,
              cross terms between the group's heads included
    channels  s_j = ‖W_down[:, j]‖₂ · ‖a_j‖₂                     (Wanda's |W|·‖X‖, per channel)
              a_j the channel's hidden activation (the input of down_proj) over the tokens:
              for a rank-one contribution W_down[:, j] a_jᵀ this product *is* its Frobenius
              norm, so it is exact too, not a bound

A unit with the smallest score contributes least to the residual stream on the calibration
text (LLM-Pruner / FLAP rank by related magnitudes); removal deletes its weights: q/k/v rows
and o columns of the group's heads (qkv rows for GPT-2's fused projection), gate/up (fc)
rows and down (proj) columns of the channel, biases with them.  The layer then runs with
the smaller shapes (layers.Attention reads its head counts H, K from per-layer fields, set
here; the MLP becomes `NarrowMLP`).  GQA: whole KV groups go, so every kept KV head keeps
its H/K query heads and the layer stays GQA-consistent; in MHA a group is one head.  Removing
a head inside a group would leave groups of unequal size, which the attention (and
transformers' config) cannot express, so there is no head-level option under GQA.

Removing unit u equals zeroing its output in the dense model: o's columns of the group's
heads (down's column j) set to 0 give the same logits (tests/test_compress_structured.py).

Per-layer counts (`schedule`), `share` the removed share of the units:
    uniform   round(share·U) units of each layer's U (equal in every layer: HF-exportable)
    global    the round(share·ΣU) lowest-scoring units over all layers (scores compared
              across layers: each is a norm of what the unit adds to the residual stream),
              at least one unit kept per layer
    owl       OWL's per-layer shares (pruning.OWL: outlier ratios of the dense model's Wanda
              scores, densities spread by ≤ 2λ around 1 − share), then round(s_l·U) per layer,
              at least one kept
The record reports `param_share_removed`: removed weights of the blocks' linears / all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hemorrhage.errors import UserError
from hemorrhage.sim.compress.calib import Sequential, input_groups
from hemorrhage.sim.compress.registry import register
from hemorrhage.sim.compress.storage import Codes, bias_param, linear_shape, all_linears
from hemorrhage.sim.compress.thin import SlicedLinear
from hemorrhage.sim.compress.unit_counts import (
    NOUN,
    SCHEDULES,
    check_share,
    check_total,
    global_counts,
    owl_counts,
    uniform_counts,
)
from hemorrhage.sim.models.layers import MLP, Attention, GatedMLP, activation, hoyer


class NarrowMLP(nnx.Module):
    """A gated (gate/up/down) or plain (fc/proj) MLP with only its `kept` channels.

    Under `trace` it sows what the dense model with those channels zeroed would: the gate
    sign and the hidden activation scattered back to the full width, removed channels as
    0 (a zeroed gate row gives g = 0, not positive, and act(0)·up = 0), as ZeroMLP does for
    a dropped MLP; so diagnose compares it with its base channel by channel."""

    def __init__(self, mlp, kept, d_ff_full: int):
        self.gated = hasattr(mlp, "gate")
        for name in ("gate", "up", "down") if self.gated else ("fc", "proj"):
            setattr(self, name, getattr(mlp, name))
        self.act = mlp.act
        self.kept = Codes(jnp.asarray(kept, jnp.int32))
        self.d_ff_full = int(d_ff_full)

    def __call__(self, x, *, trace: bool = False):
        g = self.gate(x) if self.gated else self.fc(x)
        a = activation(self.act)(g) * self.up(x) if self.gated else activation(self.act)(g)
        if trace:
            idx = self.kept[...]
            full = jnp.zeros(a.shape[:-1] + (self.d_ff_full,), a.dtype).at[..., idx].set(a)
            if self.gated:
                self.sow(nnx.Intermediate, "gate_pos", jnp.zeros(full.shape, bool).at[..., idx].set(g > 0))
            self.sow(nnx.Intermediate, "mlp_hoyer", hoyer(full))
        return self.down(a) if self.gated else self.proj(a)


# ------------------------------------------------------------------ what can be pruned
def _live(part) -> bool:
    return not getattr(part, "dropped", False)


def _attn_units(attn) -> int:
    return int(attn.K)


def _check_attention(i: int, attn) -> None:
    if type(attn) is not Attention:  # NeoX interleaves q/k/v per head in one fused tensor, BERT is bidirectional
        raise UserError(
            f"heads: layer {i}'s attention ({type(attn).__name__}) is not supported; "
            "supported: the Llama/Qwen/Gemma/GPT-2 attention"
        )
    if attn.qk_norm_over == "proj":
        raise UserError(
            "heads: this model normalises q/k over the whole projection (OLMo 2), which couples "
            "the heads (removing one rescales the others); not supported"
        )


def _check_mlp(i: int, mlp) -> None:
    if type(mlp) not in (GatedMLP, MLP):
        raise UserError(
            f"channels: layer {i}'s MLP ({type(mlp).__name__}) is not supported; "
            "supported: dense gated (gate/up/down) and plain (fc/proj) MLPs"
        )


def _units(model, part: str) -> list[int | None]:
    """Per layer, the units that can be removed (None: a dropped branch, left alone)."""
    out = []
    for i, block in enumerate(model.layers):
        sub = getattr(block, part)
        if not _live(sub):
            out.append(None)
        elif part == "attn":
            _check_attention(i, sub)
            out.append(_attn_units(sub))
        else:
            _check_mlp(i, sub)
            out.append(linear_shape(sub.gate if hasattr(sub, "gate") else sub.fc)[0])
    return out


# ------------------------------------------------------------------ scores
@partial(jax.jit, static_argnums=(2,))
def _group_norms(w_o, xtx, width: int):
    """sqrt(tr(W_g XᵀX_gg W_gᵀ)) per block of `width` columns (a KV group's heads)."""
    d, n = w_o.shape
    k = n // width
    w = w_o.astype(jnp.float32).reshape(d, k, width)
    x = xtx.reshape(k, width, k, width)
    xg = jnp.stack([x[g, :, g, :] for g in range(k)])  # [k w w]
    q = jnp.einsum("dkw,kwv,dkv->k", w, xg, w, precision="highest")
    return jnp.sqrt(jnp.maximum(q, 0.0))


@jax.jit
def _channel_norms(w_down, col_norm):
    return jnp.linalg.norm(w_down.astype(jnp.float32), axis=0) * col_norm


def unit_scores(model, calib_tokens, part: str) -> list[np.ndarray | None]:
    """Per layer, the importance of each unit (module docstring), None for a dropped branch."""
    key = "attn.o" if part == "attn" else None
    runner = Sequential(model, calib_tokens)
    out = []
    for i, block in runner.blocks():
        sub = getattr(block, part)
        if not _live(sub):
            out.append(None)
            runner.advance(block)
            continue
        groups = [
            g for g in input_groups(block) if g.key == key or (part == "mlp" and g.key in ("mlp.down", "mlp.proj"))
        ]
        st = runner.stats(block, groups)[groups[0].key]
        if part == "attn":
            width = sub.D * (sub.H // sub.K)
            out.append(np.asarray(_group_norms(sub.o.weight(), st.xtx, width), np.float64))
        else:
            down = sub.down if hasattr(sub, "down") else sub.proj
            out.append(np.asarray(_channel_norms(down.weight(), st.col_norm()), np.float64))
        runner.advance(block)
    return out


# ------------------------------------------------------------------ removal
def _rows(layer, idx):
    return SlicedLinear(
        layer.weight()[idx], _sliced_bias(layer, idx), full_shape=_full(layer), dtype=layer.weight().dtype
    )


def _cols(layer, idx):
    return SlicedLinear(layer.weight()[:, idx], bias_param(layer), full_shape=_full(layer), dtype=layer.weight().dtype)


def _full(layer):
    return getattr(layer, "full_shape", None) or linear_shape(layer)


def _sliced_bias(layer, idx):
    b = getattr(layer, "b", None)
    return None if b is None else nnx.Param(jnp.asarray(b[...])[idx])


def remove_groups(attn, keep: np.ndarray) -> None:
    """Keep the KV groups `keep` (sorted) of `attn`: q/k/v rows, o columns, H and K."""
    H, K, D = attn.H, attn.K, attn.D
    G = H // K
    q_idx = np.concatenate([np.arange(g * G * D, (g + 1) * G * D) for g in keep])
    kv_idx = np.concatenate([np.arange(g * D, (g + 1) * D) for g in keep])
    if hasattr(attn, "qkv"):
        attn.qkv = _rows(attn.qkv, np.concatenate([q_idx, H * D + kv_idx, (H + K) * D + kv_idx]))
    else:
        attn.q, attn.k, attn.v = _rows(attn.q, q_idx), _rows(attn.k, kv_idx), _rows(attn.v, kv_idx)
    attn.o = _cols(attn.o, q_idx)
    attn.H, attn.K = len(keep) * G, len(keep)


def remove_channels(block, keep: np.ndarray) -> None:
    mlp = block.mlp
    full = getattr(mlp, "d_ff_full", None) or linear_shape(mlp.gate if hasattr(mlp, "gate") else mlp.fc)[0]
    prev = np.asarray(mlp.kept[...]) if isinstance(mlp, NarrowMLP) else np.arange(full)
    if hasattr(mlp, "gate"):
        mlp.gate, mlp.up, mlp.down = _rows(mlp.gate, keep), _rows(mlp.up, keep), _cols(mlp.down, keep)
    else:
        mlp.fc, mlp.proj = _rows(mlp.fc, keep), _cols(mlp.proj, keep)
    block.mlp = NarrowMLP(mlp, prev[keep], full)


def param_count(model) -> int:
    return int(
        sum(np.prod(linear_shape(layer)) for _, layer in all_linears(model) if not getattr(layer, "dropped", False))
    )


# ------------------------------------------------------------------ the methods
class _Structured:
    needs_calibration = True
    # `hemorrhage predict` prices families of tangents that share one shape per level (noise
    # probes, nested pruning masks); a removal's ΔW = −W on the removed o/down columns is exact
    # but not wired into those families.  bench/bench_structured.py measures its linear response.
    predict_refusal = (
        "its weight change (−W on the removed o_proj/down_proj columns) is exact, but the "
        "predictor's families do not take it yet; bench/bench_structured.py measures the "
        "linear response of a removal against the compressed model"
    )

    def __post_init__(self):
        object.__setattr__(self, "share", check_share(self.share))
        if self.schedule not in SCHEDULES:
            raise UserError(f"{self.name} schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")

    @property
    def export_refusal(self) -> str | None:
        """Why the HF export cannot hold this model, or None (sim/compress/export.py re-checks the shapes)."""
        if self.schedule == "uniform" or self.share == 0:
            return None
        return (
            f"{self.name} with schedule={self.schedule} leaves layers of different widths; a transformers "
            "config has one head count and one MLP width for all layers: use schedule=uniform to export"
        )

    def check(self, model):
        units = _units(model, self.part)
        if self.schedule == "uniform":
            uniform_counts(units, self.share, self.name)
        else:
            check_total(units, self.share, self.name)

    def _hf_fields(self, model, units, counts) -> dict:
        """{'hf_config': fields of config.json that change} (export.py writes them), or
        {'export_refusal': why transformers' config cannot describe the result}."""
        kept = {u - n for u, n in zip(units, counts) if u is not None}
        if not any(counts):
            return {}
        if len(kept) > 1 or any(u is None for u in units):
            return {
                "export_refusal": self.export_refusal
                or f"{self.name}: layers keep different widths ("
                f"{min(kept)} to {max(kept)} {NOUN[self.name]}); a transformers config has one for all layers"
            }
        (k,) = kept
        cfg = model.cfg
        if self.part == "mlp":
            key = {"gpt2": "n_inner", "opt": "ffn_dim"}.get(cfg.model_type, "intermediate_size")
            return {"hf_config": {key: int(k)}}
        if cfg.model_type in ("gpt2", "opt", "gpt_neox"):
            return {
                "export_refusal": f"heads: {cfg.model_type}'s config derives the head width from "
                "hidden_size / heads, so fewer heads of the same width cannot be written"
            }
        G = cfg.n_heads // cfg.n_kv_heads
        return {
            "hf_config": {
                "num_attention_heads": int(k * G),
                "num_key_value_heads": int(k),
                "head_dim": int(cfg.head_dim),
            }
        }

    def apply(self, model, calib_tokens) -> dict:
        units = _units(model, self.part)
        before = param_count(model)
        scores = unit_scores(model, calib_tokens, self.part)
        rec: dict = {}
        if self.schedule == "uniform":
            counts = uniform_counts(units, self.share, self.name)
        elif self.schedule == "global":
            counts = global_counts(scores, units, self.share, self.name)
        else:
            counts, rec["schedule_share"] = owl_counts(model, calib_tokens, units, self.share, self.name)
        removed = []
        for i, (block, sc, n) in enumerate(zip(model.layers, scores, counts)):
            if sc is None:
                removed.append([])
                continue
            order = np.argsort(sc, kind="stable")
            gone, keep = np.sort(order[:n]), np.sort(order[n:])
            removed.append([int(g) for g in gone])
            if n:
                if self.part == "attn":
                    remove_groups(block.attn, keep)
                else:
                    remove_channels(block, keep)
        after = param_count(model)
        live = [(u, n) for u, n in zip(units, counts) if u is not None]
        rec.update(
            {
                "param_share_removed": 1.0 - after / before if before else 0.0,
                "unit_share_removed": sum(n for _, n in live) / max(sum(u for u, _ in live), 1),
                "units": NOUN[self.name],
                "layer_units_kept": [None if u is None else u - n for u, n in zip(units, counts)],
            }
        )
        rec.update(self._hf_fields(model, units, counts))
        if self.part == "attn":  # a few groups per layer; an MLP's channel lists would bloat every sweep row
            rec["removed"] = removed
            rec["scores"] = [None if s is None else [float(x) for x in s] for s in scores]
        return rec


@register
@dataclass(frozen=True)
class Heads(_Structured):
    """Remove the share of KV groups (GQA) / heads (MHA) with the smallest output norm."""

    name = "heads"
    part = "attn"
    share: float = 0.25
    schedule: str = "uniform"


@register
@dataclass(frozen=True)
class Channels(_Structured):
    """Remove the share of MLP intermediate channels with the smallest ‖W_down[:, j]‖·‖a_j‖."""

    name = "channels"
    part = "mlp"
    share: float = 0.25
    schedule: str = "uniform"
