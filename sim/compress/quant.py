"""Quantization methods (weights; W8A8 also activations).

    rtn     round-to-nearest on the grid of quantizer.py, per channel (group_size None)
            or per group of `group_size` inputs, symmetric or asymmetric, 1–16 bits.
    gptq    GPTQ (obs.py): columns rounded one by one, the error spread over the
            columns not yet rounded with H⁻¹; `act_order` processes columns by
            decreasing H_jj (groups then use grids fitted on the original weights,
            "static groups"); without it a group's grid is fitted when the group starts.
            Calibrated block by block, and within a block in forward order
            (q,k,v → o → gate,up → down: "true sequential").
    awq     activation-aware scaling: per input channel s_j = mean|x_j|^α (normalised by
            √(max·min)), α searched on a grid in [0, 1] to minimise ‖(Q(W·s)/s − W)X‖²;
            stored as the codes of W·s plus s (W_eff = Q(W·s)/s), no folding into norms.
    w8a8    int8 weights (symmetric, per channel) and int8 activations (symmetric, per
            token, dynamic), int32 accumulation (storage.ActQuantLinear).

Quantized layers are `PackedLinear` (codes bit-packed in uint8 + fp32 scales/zeros).
Each method also checks whether the base weights already lie on the requested grid
(the packaged models are GGUF-quantized) and warns (record["warnings"]).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from hemorrhage.errors import UserError
from hemorrhage.sim.compress import obs
from hemorrhage.sim.compress.calib import Sequential, input_groups
from hemorrhage.sim.compress.quantizer import check_bits, check_divides, check_group_size, grid_check, qparams, rtn
from hemorrhage.sim.compress.registry import linears, register
from hemorrhage.sim.compress.storage import ActQuantLinear, PackedLinear, bias_param, linear_shape, decode


def _check_bool(name, v):
    if not isinstance(v, (bool, np.bool_)):
        raise UserError(f"{name} must be true or false, got {v!r}")


class _Quant:
    """Shared validation and record of the weight-quantization methods."""

    def _validate(self):
        check_bits(self.bits, getattr(self, "symmetric", False))
        object.__setattr__(self, "bits", int(self.bits))
        object.__setattr__(self, "group_size", check_group_size(self.group_size))
        _check_bool("symmetric", getattr(self, "symmetric", False))

    def check(self, model):
        check_divides(model, self.group_size)

    def _grid(self, model) -> dict:
        g = grid_check(model, self.bits, self.group_size, self.symmetric)
        return {"grid_check": g, "warnings": [g["warning"]] if "warning" in g else []}

    def _record(self, model, extra=None) -> dict:
        n = sum(int(np.prod(linear_shape(layer))) for _, _, _, layer in linears(model))
        rec = {"bits": self.bits, "group_size": self.group_size, "symmetric": self.symmetric, "n_weights": n}
        rec.update(extra or {})
        return rec


def _packed(layer, codes, scale, zero, bits, group_size, in_scale=None):
    return PackedLinear(codes, scale, zero, bits=bits, group_size=group_size, bias=bias_param(layer), in_scale=in_scale)


# ------------------------------------------------------------------ RTN
@register
@dataclass(frozen=True)
class RTN(_Quant):
    name = "rtn"
    needs_calibration = False
    bits: int = 4
    group_size: int | None = None
    symmetric: bool = False

    def __post_init__(self):
        self._validate()

    def apply(self, model, calib_tokens=None, tensor_bits=None) -> dict:
        """tensor_bits {path: bits}: a per-tensor plan (sim.plan); the others at self.bits."""
        grid = self._grid(model)
        for path, parent, attr, layer in list(linears(model)):
            bits = int((tensor_bits or {}).get(path, self.bits))
            codes, scale, zero = rtn(layer.weight(), bits=bits, group_size=self.group_size, symmetric=self.symmetric)
            setattr(parent, attr, _packed(layer, codes, scale, zero, bits, self.group_size))
        return self._record(model, grid)


# ------------------------------------------------------------------ GPTQ
@partial(jax.jit, static_argnums=(1,))
def _order(h, act_order: bool):
    d = h.shape[0]
    perm = jnp.argsort(-jnp.diag(h), stable=True) if act_order else jnp.arange(d)
    return perm, h[perm][:, perm]


@jax.jit
def _unpermute(x, perm):
    return x[jnp.argsort(perm)]


@partial(jax.jit, static_argnames=("bits", "group_size", "symmetric", "act_order"))
def _gptq_group(ws, u, perm, dead, *, bits, group_size, symmetric, act_order):
    """GPTQ of the stacked rows of `ws` (one H); per member (codes, scale [out G], zero | None)."""
    w = jnp.concatenate(ws)
    out, d = w.shape
    g = group_size or d
    inv = jnp.argsort(perm)
    w = jnp.where(dead[None, :], 0.0, w)
    static = act_order or group_size is None
    if static:  # grids fitted on the original weights, one per column, in processing order
        scale, zero = qparams(w.reshape(out, d // g, g), bits, symmetric)
        scol = jnp.repeat(scale, g, axis=1)[:, perm]
        zcol = None if symmetric else jnp.repeat(zero, g, axis=1)[:, perm]
        bs = obs.block_size(d)
    else:
        scol = zcol = None
        bs = obs.block_size(d, g)
    codes, sc, zc = obs.gptq(w[:, perm], u, scol, zcol, bs=bs, g=g, bits=bits, symmetric=symmetric, static=static)
    codes = codes[:, inv]
    if not static:
        scale, zero = sc, zc
    out_, r0 = [], 0
    for wi in ws:
        r1 = r0 + wi.shape[0]
        out_.append((codes[r0:r1], scale[r0:r1], None if zero is None else zero[r0:r1]))
        r0 = r1
    return tuple(out_)


def _stages(groups) -> list[list]:
    """True-sequential stages: one group each, except that the same projections of all experts
    of a mixture of experts form one stage (an expert's inputs do not depend on another
    expert's weights, so quantizing them together changes nothing and saves a pass)."""
    stages: list[list] = []
    for g in groups:
        if g.routed and stages and stages[-1][0].routed and stages[-1][0].attrs == g.attrs:
            stages[-1].append(g)
        else:
            stages.append([g])
    return stages


@register
@dataclass(frozen=True)
class GPTQ(_Quant):
    name = "gptq"
    needs_calibration = True
    bits: int = 4
    group_size: int | None = None
    symmetric: bool = False
    act_order: bool = False
    damp: float = 0.01
    true_sequential: bool = True

    def __post_init__(self):
        self._validate()
        _check_bool("act_order", self.act_order)
        _check_bool("true_sequential", self.true_sequential)
        if isinstance(self.damp, bool) or not isinstance(self.damp, (int, float)) or not 0 <= self.damp < 10:
            raise UserError(f"damp must be a number in [0, 10), got {self.damp!r}")

    def quantize_layer(self, w, h, factored=None):
        """(codes, scale [out G], zero [out G] | None, λ used) for W [out in] and H [in in].
        `factored` = (perm, U, dead, λ) reuses a factorization of H."""
        perm, u, dead, lam = factored or self.factor(h)
        (res,) = _gptq_group(
            (jnp.asarray(w, jnp.float32),),
            u,
            perm,
            dead,
            bits=self.bits,
            group_size=self.group_size,
            symmetric=self.symmetric,
            act_order=self.act_order,
        )
        return (*res, lam)

    def factor(self, h):
        """(column order, U for that order, dead inputs in the original order, λ)."""
        perm, hp = _order(jnp.asarray(h, jnp.float32), self.act_order)
        u, dead, lam = obs.factor(hp, self.damp)
        return perm, u, _unpermute(dead, perm), lam

    def quantize_group(self, ws, h):
        """The linears that read one input share H: rows are independent given H, so they are
        solved as one stacked matrix (one kernel, one factorization).  [(codes, scale, zero)], λ."""
        perm, u, dead, lam = self.factor(h)
        ws = tuple(jnp.asarray(w, jnp.float32) for w in ws)  # the OBS updates in fp32 whatever the model's dtype
        res = _gptq_group(
            ws,
            u,
            perm,
            dead,
            bits=self.bits,
            group_size=self.group_size,
            symmetric=self.symmetric,
            act_order=self.act_order,
        )
        return res, lam

    def apply(self, model, calib_tokens, tensor_bits=None) -> dict:
        """tensor_bits {path: bits}: a per-tensor plan (sim.plan); the others at self.bits.
        Linears of one input group at different bits are solved one by one (same H)."""
        grid = self._grid(model)
        runner = Sequential(model, calib_tokens)
        lams = []
        for i, block in runner.blocks():
            groups = input_groups(block)
            stages = _stages(groups) if self.true_sequential else [groups]
            for stage in stages:
                stats = runner.stats(block, stage)
                for g in stage:
                    parent = g.parent(block)
                    bits = [int((tensor_bits or {}).get(f"layers.{i}.{g.part}.{a}", self.bits)) for a in g.attrs]
                    for b in sorted(set(bits)):
                        attrs = [a for a, ab in zip(g.attrs, bits) if ab == b]
                        layers = [getattr(parent, a) for a in attrs]
                        me = self if b == self.bits else replace(self, bits=b)
                        res, lam = me.quantize_group([layer.weight() for layer in layers], stats[g.key].hessian())
                        lams.append(lam)
                        for attr, layer, (codes, scale, zero) in zip(attrs, layers, res):
                            setattr(parent, attr, _packed(layer, codes, scale, zero, b, self.group_size))
            runner.advance(block)
        return self._record(model, {**grid, "damp_used_max": float(max(lams)) if lams else None})


# ------------------------------------------------------------------ AWQ
@partial(jax.jit, static_argnames=("bits", "group_size", "symmetric", "n_grid"))
def _awq_search(w, x_mean, xtx, *, bits, group_size, symmetric, n_grid):
    """Errors ‖(Q(W·s)/s − W)X‖² for α = 0, 1/n, …, (n−1)/n (α = 0: plain RTN)."""
    out, d = w.shape
    g = group_size or d

    def one(alpha):
        s = _awq_scale(x_mean, alpha)
        codes, scale, zero = rtn(w * s[None, :], bits=bits, group_size=group_size, symmetric=symmetric)
        wq = decode(codes, scale, zero, bits, g) / s[None, :]
        dw = wq - w
        return jnp.sum((dw @ xtx) * dw)

    alphas = jnp.arange(n_grid, dtype=jnp.float32) / n_grid
    return alphas, jax.lax.map(one, alphas)


def _awq_scale(x_mean, alpha):
    s = jnp.maximum(x_mean, 1e-4) ** alpha
    return s / jnp.sqrt(jnp.max(s) * jnp.min(s))


@partial(jax.jit, static_argnames=("bits", "group_size", "symmetric", "n_grid"))
def _awq_layer(w, abs_sum, xtx, count, *, bits, group_size, symmetric, n_grid):
    x_mean = abs_sum / count
    alphas, errs = _awq_search(
        w, x_mean, xtx / count, bits=bits, group_size=group_size, symmetric=symmetric, n_grid=n_grid
    )
    alpha = alphas[jnp.argmin(errs)]
    s = _awq_scale(x_mean, alpha)
    codes, scale, zero = rtn(w * s[None, :], bits=bits, group_size=group_size, symmetric=symmetric)
    return codes, scale, zero, s, alpha


@register
@dataclass(frozen=True)
class AWQ(_Quant):
    name = "awq"
    needs_calibration = True
    bits: int = 4
    group_size: int | None = None
    symmetric: bool = False
    n_grid: int = 20

    def __post_init__(self):
        self._validate()
        if isinstance(self.n_grid, bool) or not isinstance(self.n_grid, int) or not 1 <= self.n_grid <= 100:
            raise UserError(f"awq n_grid must be an integer in 1..100, got {self.n_grid!r}")

    def quantize_layer(self, w, stats):
        """(codes, scale, zero, s, α) for W and the statistics of its input."""
        codes, scale, zero, s, alpha = _awq_layer(
            jnp.asarray(w, jnp.float32),
            stats.abs_sum,
            stats.xtx,
            jnp.float32(max(stats.count, 1)),
            bits=self.bits,
            group_size=self.group_size,
            symmetric=self.symmetric,
            n_grid=self.n_grid,
        )
        return codes, scale, zero, s, float(alpha)

    def apply(self, model, calib_tokens) -> dict:
        grid = self._grid(model)
        runner = Sequential(model, calib_tokens)
        alphas = {}
        for i, block in runner.blocks():
            groups = input_groups(block)
            stats = runner.stats(block, groups)
            for g in groups:
                parent = g.parent(block)
                for attr in g.attrs:
                    layer = getattr(parent, attr)
                    codes, scale, zero, s, alpha = self.quantize_layer(layer.weight(), stats[g.key])
                    setattr(parent, attr, _packed(layer, codes, scale, zero, self.bits, self.group_size, in_scale=s))
                    alphas[f"layers.{i}.{g.part}.{attr}"] = alpha
            runner.advance(block)
        return self._record(model, {**grid, "alpha": alphas})


# ------------------------------------------------------------------ W8A8
@register
@dataclass(frozen=True)
class W8A8(_Quant):
    name = "w8a8"
    needs_calibration = False
    bits = 8
    group_size = None
    symmetric = True

    def apply(self, model, calib_tokens=None) -> dict:
        grid = self._grid(model)
        for _, parent, attr, layer in list(linears(model)):
            codes, scale, zero = rtn(layer.weight(), bits=8, group_size=None, symmetric=True)
            setattr(parent, attr, ActQuantLinear(_packed(layer, codes, scale, None, 8, None)))
        rec = self._record(model, grid)
        rec["activations"] = "int8, symmetric, per token, dynamic (scale = max|x|/127); int32 accumulation"
        rec["export_note"] = (
            "the Hugging Face export holds the int8 weights dequantized; transformers does not "
            "quantize activations, so its logits differ from hemorrhage's W8A8 forward"
        )
        return rec
