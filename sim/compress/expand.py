"""Layer expansion (depth up-scaling): more blocks, not fewer bytes.

Two ways practitioners add depth to a trained model:

    span=a:b   SOLAR-style duplication (Kim et al. 2023, "SOLAR 10.7B: Scaling LLMs with
               Depth Up-Scaling"; mergekit's passthrough merge): blocks a..b−1 (half-open,
               as mergekit's layer_range) are copied and the copies inserted right after
               block b−1, so the stack reads 0..b−1, a..b−1, b..L−1 (L + b − a blocks).
    at=3,7     identity insertion (LLaMA Pro, Wu et al. 2024): before base block i (depth i,
               0..L) a copy of the neighbouring block i−1 (block 0 for i = 0) whose output
               projections o and down (GPT-2: proj) and their biases are zero, so both of its
               branches add exactly 0 and the residual stream passes unchanged:
                   h ← h + o(attn(norm h)) = h,   h ← h + down(mlp(norm h)) = h
               (pre-norm blocks; OLMo 2's post-norms give rmsnorm(0) = 0 too).  Post-LN
               blocks (OPT-350m) would normalise h itself: refused.

Layer mapping (for per-layer comparisons with the base, validate/diagnose.py, measure's
per-layer lens): expanded block j maps to the base block it is a copy of,
`record["layer_map"][j]`: an inserted identity block to the block before it (block 0 at
depth 0), a duplicated block to its original; attention rows, gates and branch outputs are
compared through it.  The residual after expanded block j is compared with the base's
residual h_{record["h_map"][j]}: h_{i+1} after a copy of block i, and for an identity block
inserted at depth d the residual it passes on unchanged, h_d (after the block before it; the
embedding output h_0 at depth 0), so that comparison is exact.

Unchanged tensors are shared with the base (a copied block holds the same arrays); only the
zeroed projections are new.  The config gains the layers: n_layers, and the per-layer
fields (layer_types: Gemma's sliding/global pattern, nope_layers, moe_layers) follow
the map, so every copy keeps its source's kind; the HF export writes num_hidden_layers
and layer_types (and SmolLM3's no_rope_layers) from it (record["hf_config"]).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
from flax import nnx

from hemorrhage.errors import UserError
from hemorrhage.sim.compress.registry import block_linears, register

_OUTPUT_PROJ = ("o", "down", "proj")  # the projections that write into the residual stream


def parse_span(span) -> tuple[int, int] | None:
    """'a:b' or (a, b) -> (a, b), half-open; UserError if it does not read as two integers."""
    if span is None:
        return None
    if isinstance(span, str):
        parts = span.replace(" ", "").split(":")
        if len(parts) != 2:
            raise UserError(f"span must look like a:b (blocks a..b-1), got {span!r}")
        try:
            a, b = int(parts[0]), int(parts[1])
        except ValueError:
            raise UserError(f"span must look like a:b with integers, got {span!r}") from None
    else:
        try:
            a, b = (int(x) for x in span)
        except (TypeError, ValueError):
            raise UserError(f"span must be two integers a:b, got {span!r}") from None
    if a < 0:
        raise UserError(f"span start must be >= 0, got {a}")
    if b <= a:
        raise UserError(f"span {a}:{b} is empty: it must hold blocks a..b-1 with b > a")
    return a, b


def parse_depths(at) -> tuple[int, ...] | None:
    """'3,7', '3+7' (one --grid value) or a sequence -> (3, 7): depths (0..L) where identity
    blocks are inserted."""
    if at is None:
        return None
    if isinstance(at, str):
        items = [p for p in at.replace(" ", "").replace("+", ",").split(",") if p]
    else:
        items = [at] if isinstance(at, (int, np.integer)) else list(at)
    try:
        vals = tuple(int(x) for x in items)
    except (TypeError, ValueError):
        raise UserError(f"at must be integers like 3,7, got {at!r}") from None
    if not vals:
        raise UserError("at lists no depth; give e.g. --at 3,7")
    if any(v < 0 for v in vals):
        raise UserError(f"at must be depths >= 0, got {at!r}")
    return tuple(sorted(vals))  # the same depth twice inserts two identity blocks there


def expansion_map(n_layers: int, span=None, at=None) -> list[tuple[int, bool]]:
    """Per expanded block: (index of the base block it copies, is it a zeroed identity block)."""
    if span is not None:
        a, b = span
        order = list(range(b)) + list(range(a, b)) + list(range(b, n_layers))
        return [(i, False) for i in order]
    out, pending = [], list(at)
    for depth in range(n_layers + 1):
        while pending and pending[0] == depth:
            out.append((max(depth - 1, 0), True))
            pending.pop(0)
        if depth < n_layers:
            out.append((depth, False))
    return out


def zero_outputs(block) -> int:
    """Zero the weights (and biases) of every output projection of `block`; returns how many."""
    n = 0
    for _, parent, attr, layer in block_linears(block, ""):
        if attr in _OUTPUT_PROJ:
            if not hasattr(layer, "w"):
                raise UserError(f"expand: block's {attr} projection is already compressed; expand the base model")
            layer.w = nnx.Param(jnp.zeros_like(layer.w[...]))
            if getattr(layer, "b", None) is not None:
                layer.b = nnx.Param(jnp.zeros_like(layer.b[...]))
            n += 1
    return n


def expanded_config(cfg, mapping: list[int]):
    """cfg with n_layers = len(mapping) and every per-layer field following the map."""
    per = {
        name: tuple(getattr(cfg, name)[i] for i in mapping)
        for name in ("layer_types", "nope_layers", "moe_layers")
        if getattr(cfg, name)
    }
    return cfg.replace(n_layers=len(mapping), **per)


def hf_config_update(cfg) -> dict:
    """The config.json fields an export of the expanded model overrides."""
    key = "n_layer" if cfg.family == "gpt2" else "num_hidden_layers"
    out = {key: cfg.n_layers}
    if cfg.family != "gpt2":
        out["layer_types"] = ["sliding_attention" if t == "sliding" else "full_attention" for t in cfg.layer_types]
    if cfg.nope_layers:  # SmolLM3: no_rope_layers[i] = 1 where layer i uses RoPE
        out["no_rope_layers"] = [int(not n) for n in cfg.nope_layers]
    return out


@register
@dataclass(frozen=True)
class Expand:
    name = "expand"
    needs_calibration = False
    span: tuple[int, int] | None = None
    at: tuple[int, ...] | None = None

    def __post_init__(self):
        span, at = parse_span(self.span), parse_depths(self.at)
        if (span is None) == (at is None):
            raise UserError("expand needs exactly one of --span a:b (duplicate blocks) or --at 3,7 (identity blocks)")
        object.__setattr__(self, "span", span)
        object.__setattr__(self, "at", at)

    def check(self, model):
        L = len(model.layers)
        if self.span is not None and self.span[1] > L:
            raise UserError(
                f"span {self.span[0]}:{self.span[1]} runs past the last layer: "
                f"the model has {L} layers (a span ends at most at {L})"
            )
        if self.at is not None and self.at[-1] > L:
            raise UserError(f"at={self.at[-1]} is past the last depth: the model has {L} layers (depths 0..{L})")
        cfg = model.cfg
        if self.at is not None and not getattr(cfg, "norm_before", True):
            raise UserError(
                "expand --at needs pre-norm blocks: a post-LN block (OPT-350m) normalises the "
                "residual itself, so no zeroed block passes it unchanged"
            )
        if cfg.moe_layers and len(set(cfg.moe_layers)) > 1:
            raise UserError(
                "expand: a model mixing MoE and dense layers cannot be exported with a new depth; not supported"
            )
        if any(getattr(getattr(b, part), "dropped", False) for b in model.layers for part in ("attn", "mlp")):
            raise UserError("expand: the model has dropped branches; expand the base model")

    def apply(self, model, calib_tokens=None) -> dict:
        from hemorrhage.sim.compress.storage import memory_report

        L = len(model.layers)
        base_bytes = memory_report(model)["fp32_bytes"]
        plan = expansion_map(L, self.span, self.at)
        blocks, zeroed, used, added = [], 0, set(), []
        for j, (src, identity) in enumerate(plan):
            block = model.layers[src]
            if identity or src in used:  # an added block: a copy (arrays shared; only zeroed ones are new)
                block = nnx.clone(block)
                added.append(j)
            if identity:
                zeroed += zero_outputs(block)
            else:
                used.add(src)
            blocks.append(block)
        model.layers = nnx.List(blocks)
        model.cfg = expanded_config(model.cfg, [p for p, _ in plan])
        mapping = [p for p, _ in plan]
        grown = memory_report(model)["fp32_bytes"]
        h_map, depth = [], 0
        for src, ident in plan:
            h_map.append(depth if ident else src + 1)
            depth = depth if ident else src + 1
        return {
            "layers_base": L,
            "layers_expanded": len(plan),
            "layer_map": mapping,
            "h_map": h_map,
            "added_layers": added,
            "identity_layers": [j for j, (_, ident) in enumerate(plan) if ident],
            "zeroed_projections": zeroed,
            "hf_config": hf_config_update(model.cfg),
            "params_ratio_vs_base": grown / base_bytes if base_bytes else float("nan"),
            "layer_map_rule": "expanded block j is compared with the base block it copies "
            "(an identity block: the block before it; block 0 at depth 0)",
        }


def layer_map(record: dict | None, n_base: int, n_comp: int) -> tuple[list[int], list[int]]:
    """(block map, residual map) from a compression record: compressed block j -> base block,
    and the base residual index (0..L) that the compressed h_{j+1} is compared with; the
    identity maps where the depth did not change.  UserError where the depths differ and the
    record has no map."""
    rec = record or {}
    if rec.get("layer_map") is None:
        if n_base != n_comp:
            raise UserError(
                f"the compressed model has {n_comp} layers and the base {n_base}, and its record holds no layer_map"
            )
        return list(range(n_base)), list(range(1, n_base + 1))
    mapping, h_map = [int(i) for i in rec["layer_map"]], [int(i) for i in rec["h_map"]]
    if (
        len(mapping) != n_comp
        or len(h_map) != n_comp
        or not all(0 <= i < n_base for i in mapping)
        or not all(0 <= i <= n_base for i in h_map)
    ):
        raise UserError("the record's layer_map does not fit the two models")
    return mapping, h_map
