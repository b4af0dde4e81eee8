"""The uniform weight quantizer every quantization method shares, and the grid check.

Per group of g consecutive inputs of one output row (g = the whole row: per channel):

    asymmetric   scale = (max − min)/(2^b − 1),  zero = min,   code = round((w − zero)/scale) ∈ [0, 2^b − 1]
                 w_hat = code·scale + zero
    symmetric    scale = max|w|/(2^(b−1) − 1),   code − c₀ = round(w/scale) ∈ [−c₀, c₀],  c₀ = 2^(b−1) − 1
                 w_hat = (code − c₀)·scale            (no zero point stored)

Both grids have step `scale`, cover the group's range, so |w − w_hat| ≤ scale/2, and
re-quantizing w_hat gives w_hat back (idempotent).  The asymmetric zero point is a float
(the value of code 0, like GGUF's Q4_1 `m`), not an integer: the grid spans exactly
[min, max].  A constant group gets scale 1 (asymmetric: exact; symmetric 0: exact).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from hemorrhage.errors import UserError


def check_bits(bits, symmetric: bool = False) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= int(bits) <= 16:
        raise UserError(f"bits must be an integer in 1..16, got {bits!r}")
    if symmetric and int(bits) < 2:
        raise UserError("symmetric quantization needs bits >= 2 (1 bit has no zero-centred grid); use --asymmetric")
    return int(bits)


def check_group_size(group_size) -> int | None:
    if group_size is None:
        return None
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or int(group_size) < 1:
        raise UserError(f"group size must be a positive integer (or omitted for per-channel), got {group_size!r}")
    return int(group_size)


def check_divides(model, group_size: int | None, what: str = "group size") -> None:
    """Every linear's input dimension must be a multiple of the group size."""
    from hemorrhage.sim.compress.registry import linears

    if group_size is None:
        return
    from hemorrhage.sim.compress.storage import linear_shape

    dims = sorted({linear_shape(layer)[1] for _, _, _, layer in linears(model)})
    bad = [d for d in dims if d % group_size]
    if bad:
        common = sorted(set.intersection(*[{k for k in range(1, d + 1) if d % k == 0} for d in dims]))
        hint = ", ".join(str(k) for k in common if k >= 8) or "none >= 8"
        raise UserError(
            f"{what} {group_size} does not divide the input dimension {bad[0]} "
            f"(input dimensions: {', '.join(map(str, dims))}; sizes that divide all: {hint})"
        )


def levels(bits: int, symmetric: bool) -> int:
    """Highest code."""
    return 2**bits - 2 if symmetric else 2**bits - 1


def qparams(w, bits: int, symmetric: bool):
    """w [..., g] -> scale [...], zero [...] (zero None when symmetric)."""
    if symmetric:
        c0 = 2 ** (bits - 1) - 1
        amax = jnp.max(jnp.abs(w), axis=-1)
        return jnp.where(amax > 0, amax / c0, 1.0), None
    lo, hi = jnp.min(w, axis=-1), jnp.max(w, axis=-1)
    return jnp.where(hi > lo, (hi - lo) / (2**bits - 1), 1.0), lo


def encode(w, scale, zero, bits: int):
    """Codes (int32) of w on the grid (scale, zero); same leading shape as scale."""
    if zero is None:
        c0 = 2 ** (bits - 1) - 1
        return jnp.clip(jnp.round(w / scale), -c0, c0).astype(jnp.int32) + c0
    return jnp.clip(jnp.round((w - zero) / scale), 0, 2**bits - 1).astype(jnp.int32)


def dequant(codes, scale, zero, bits: int):
    """The grid values of `codes`; with encode, `bits` may be a traced number (the predictor's)."""
    if zero is None:
        return (codes.astype(jnp.float32) - (2 ** (bits - 1) - 1)) * scale
    return codes.astype(jnp.float32) * scale + zero


@partial(jax.jit, static_argnames=("bits", "group_size", "symmetric"))
def rtn(w, *, bits: int, group_size: int | None, symmetric: bool):
    """Round-to-nearest of W [out in] -> (codes [out in], scale [out G], zero [out G] | None)."""
    out, d = w.shape
    g = group_size or d
    wg = w.reshape(out, d // g, g)
    scale, zero = qparams(wg, bits, symmetric)
    codes = encode(wg, scale[..., None], None if zero is None else zero[..., None], bits)
    return codes.reshape(out, d), scale, zero


def rtn_dequant(w, bits: int, group_size: int | None = None, symmetric: bool = False):
    """Fake-quantized W (the decoded grid values), for tests and comparisons."""
    from hemorrhage.sim.compress.storage import decode

    codes, scale, zero = rtn(jnp.asarray(w, jnp.float32), bits=bits, group_size=group_size, symmetric=symmetric)
    return decode(codes, scale, zero, bits, group_size or w.shape[1])


# ------------------------------------------------------------------ grid check
@partial(jax.jit, static_argnames=("bits", "group_size", "symmetric"))
def _grid_stats(w, rows, *, bits, group_size, symmetric):
    w = w[rows]
    out, d = w.shape
    g = group_size or d
    codes, scale, zero = rtn(w, bits=bits, group_size=group_size, symmetric=symmetric)
    wg = w.reshape(out, d // g, g)
    wh = dequant(codes.reshape(wg.shape), scale[..., None], None if zero is None else zero[..., None], bits)
    err = jnp.sum(jnp.abs(wh - wg))
    step = jnp.sum(scale) * g
    srt = jnp.sort(wg, axis=-1)
    distinct = 1 + jnp.sum(jnp.diff(srt, axis=-1) != 0, axis=-1)
    return err, step, jnp.sum(distinct <= 2**bits)


def grid_check(model, bits: int, group_size: int | None, symmetric: bool, *, rows: int = 64) -> dict:
    """Does the requested grid coincide with a grid the weights already lie on?

    The packaged checkpoints were GGUF-quantized (SmolLM2: Q4_1, 4-bit asymmetric in
    blocks of 32; Gemma: mixed Q4_K/Q6_K): re-quantizing them onto the same grid is
    artificially lossless.  On up to `rows` rows of every linear, the mean RTN error in
    steps is compared with what weights lying on no grid give (uniform rounding error,
    step/4, except the group's extremes, which are exact: 0.25·(1 − 2/g) asymmetric,
    0.25·(1 − 1/g) symmetric).  ratio < 0.1: `coincides`; ratio < 0.85: `partial` (part
    of the groups already sit on such a grid).  Both come with a warning.  The share of
    groups that hold no more distinct values than the grid has levels is reported too
    (for groups larger than 2^bits), for information only."""
    from hemorrhage.sim.compress.registry import linears

    err_num = err_den = 0.0
    few = total = 0
    expect_num = 0.0
    for _, _, _, layer in linears(model):
        w = layer.weight()
        take = np.linspace(0, w.shape[0] - 1, min(rows, w.shape[0])).astype(np.int32)
        e, st, f = _grid_stats(w, jnp.asarray(take), bits=bits, group_size=group_size, symmetric=symmetric)
        g = group_size or w.shape[1]
        exact = 1 if symmetric else 2
        err_num, err_den = err_num + float(e), err_den + float(st)
        expect_num += 0.25 * max(1 - exact / g, 0.0) * float(st)
        if g > 2**bits:
            few, total = few + int(f), total + take.size * (w.shape[1] // g)
    err = err_num / err_den if err_den else 0.0
    expected = expect_num / err_den if err_den else 0.25
    ratio = err / expected if expected > 0 else 1.0
    share = few / total if total else None
    coincides = bool(ratio < 0.1)
    partial = bool(not coincides and ratio < 0.85)
    res = {
        "error_per_step": err,
        "expected_off_grid": expected,
        "ratio": ratio,
        "groups_within_levels": share,
        "coincides": coincides,
        "partial": partial,
    }
    layout = f"groups of {group_size}" if group_size else "per channel"
    numbers = f"RTN error {err:.3f} steps vs {expected:.3f} for weights on no grid"
    if coincides:
        res["warning"] = (
            f"the base weights already lie on this {bits}-bit grid ({layout}; {numbers}): this "
            "quantization is close to lossless because the base is already GGUF-quantized; "
            "choose other bits or group size"
        )
    elif partial:
        res["warning"] = (
            f"part of the base weights already lie on a {bits}-bit grid ({layout}; {numbers}): "
            "the base is already GGUF-quantized, so this quantization looks milder than it "
            "would on full-precision weights"
        )
    return res
