"""Rotary position embeddings: the frequency schedules of the supported checkpoints.

A head vector's first `rotary_dim` = 2·len(inv_freq) entries are rotated (rotate-half,
the two halves pair up, as Hugging Face does); the rest pass unchanged (partial rotary,
Phi-3 / GPT-NeoX style `partial_rotary_factor`):

    θ_i   = inv_freq_i · pos,   i < rotary_dim / 2
    x'    = [x_rot·cos θ + rotate_half(x_rot)·sin θ,  x_pass] · (cos, sin scaled by `attention_factor`)

The schedules (what `rope_from_hf` reads, each as transformers 5 computes it, in fp32):

    default   inv_freq_i = θ₀^(−2i/d)
    linear    inv_freq_i / factor                       (positions stretched by `factor`)
    llama3    long wavelengths (λ > L/low_freq_factor) divided by `factor`, short ones
              (λ < L/high_freq_factor) kept, a linear blend between (L = original context)
    yarn      NTK-by-parts: a ramp over dims between the β_fast and β_slow correction
              dims blends θ₀^(−2i/d) and θ₀^(−2i/d)/factor; cos, sin × (0.1·ln factor + 1)
    longrope  inv_freq_i = θ₀^(−2i/d) / short_factor_i, or / long_factor_i once the
              sequence (max position + 1) passes the original context; cos, sin ×
              √(1 + ln factor / ln L)  (Phi-3's LongRoPE, "su" in older configs)

Dynamic NTK (`dynamic`) changes its frequencies with the sequence length and caches
them across calls; it is refused, with any other unknown schedule or RoPE parameter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from hemorrhage.errors import UserError

# schedule -> the keys of its parameter dict it reads (besides rope_type/type, rope_theta,
# partial_rotary_factor); any other key in the dict is refused, never ignored.
ROPE_KEYS = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "yarn": (
        "factor",
        "attention_factor",
        "beta_fast",
        "beta_slow",
        "mscale",
        "mscale_all_dim",
        "original_max_position_embeddings",
        "truncate",
    ),
    "longrope": ("short_factor", "long_factor", "factor", "attention_factor", "original_max_position_embeddings"),
}
_ALWAYS = ("rope_type", "type", "rope_theta", "partial_rotary_factor")


@dataclass(frozen=True)
class Rope:
    """One RoPE schedule, resolved to numbers: inv_freq [rotary_dim/2] (and LongRoPE's long
    set, used when the sequence passes `original_max`), and the cos/sin scale."""

    kind: str
    inv_freq: tuple[float, ...]
    attention_factor: float = 1.0
    long_inv_freq: tuple[float, ...] | None = None
    original_max: int = 0

    @property
    def rotary_dim(self) -> int:
        return 2 * len(self.inv_freq)

    def tables(self, pos: Int[Array, " T"]):
        """cos, sin [T rotary_dim] at positions `pos`."""
        inv = jnp.asarray(self.inv_freq, jnp.float32)
        if self.long_inv_freq is not None:
            # as transformers: one set for the whole call, chosen by its last position
            long = jnp.asarray(self.long_inv_freq, jnp.float32)
            inv = jnp.where(jnp.max(pos) + 1 > self.original_max, long, inv)
        freqs = pos.astype(jnp.float32)[:, None] * inv[None, :]
        emb = jnp.concatenate([freqs, freqs], axis=-1)
        cos, sin = jnp.cos(emb), jnp.sin(emb)
        if self.attention_factor != 1.0:
            cos, sin = cos * self.attention_factor, sin * self.attention_factor
        return cos, sin


def apply_rope(x: Float[Array, "B T H D"], cos, sin) -> Float[Array, "B T H D"]:
    """Rotate the first cos.shape[-1] dims of each head (rotate-half); pass the rest."""
    r = cos.shape[-1]
    cos, sin = cos.astype(x.dtype), sin.astype(x.dtype)  # tables in fp32, applied in x's dtype (as HF)
    xr, xp = x[..., :r], x[..., r:]
    half = r // 2
    rot = jnp.concatenate([-xr[..., half:], xr[..., :half]], axis=-1)
    y = xr * cos[None, :, None, :] + rot * sin[None, :, None, :]
    return y if r == x.shape[-1] else jnp.concatenate([y, xp], axis=-1)


# ------------------------------------------------------------------ HF parameters
def _f32(x) -> np.ndarray:
    return np.asarray(x, np.float32)


def _base_inv_freq(theta: float, dim: int) -> np.ndarray:
    return _f32(1.0) / (_f32(theta) ** (np.arange(0, dim, 2).astype(np.float32) / _f32(dim)))


def plain_rope(theta: float, dim: int, scale: float = 1.0) -> Rope:
    """θ₀^(−2i/dim) over `dim` rotary dims, positions divided by `scale` (linear scaling)."""
    if dim < 2 or dim % 2:
        raise UserError(f"config: {dim} rotary dims (must be even and >= 2)")
    inv = _base_inv_freq(theta, dim)
    return Rope("default" if scale == 1.0 else "linear", tuple(map(float, inv / _f32(scale))))


def _need(params: dict, key: str, where: str):
    if params.get(key) is None:
        raise UserError(f"config.json: {where} of rope_type {params.get('rope_type')!r} lacks {key!r}")
    return params[key]


def _number(where: str, key: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise UserError(f"config.json: {where}.{key} must be a positive finite number, got {v!r}")
    return float(v)


def rope_from_hf(
    params: dict,
    head_dim: int,
    max_positions: int,
    *,
    where: str = "rope_parameters",
    original_max: int | None = None,
    partial_rotary: bool = False,
) -> Rope:
    """The Rope of one transformers `rope_parameters` dict (rope_theta already filled in).

    `original_max`: a top-level original_max_position_embeddings (Phi-3 keeps it there,
    and transformers gives it priority over the dict's).  `partial_rotary`: whether the
    family's attention rotates only part of a head; elsewhere a partial_rotary_factor ≠ 1
    is refused (transformers would rotate the whole head with fewer frequencies)."""
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "su":  # LongRoPE's name in early Phi-3 configs
        kind = "longrope"
    if kind not in ROPE_KEYS:
        raise UserError(
            f"config.json: unsupported RoPE scaling {where}.rope_type={kind!r} (supported: {', '.join(ROPE_KEYS)})"
        )
    extra = sorted(set(params) - set(ROPE_KEYS[kind]) - set(_ALWAYS))
    if extra:
        raise UserError(
            f"config.json: {where}.{extra[0]} is not implemented for rope_type {kind!r} (refused rather than ignored)"
        )
    theta = _number(where, "rope_theta", params.get("rope_theta", 10000.0))
    partial = _number(where, "partial_rotary_factor", params.get("partial_rotary_factor") or 1.0)
    if partial != 1.0 and not partial_rotary:
        raise UserError(
            f"config.json: {where}.partial_rotary_factor={partial} is not implemented for this family (only 1 is)"
        )
    dim = int(head_dim * partial)
    if dim < 2 or dim > head_dim or dim % 2:
        raise UserError(f"config.json: partial_rotary_factor={partial} gives {dim} rotary dims of {head_dim}")
    inv = _base_inv_freq(theta, dim)
    omax = original_max or params.get("original_max_position_embeddings") or max_positions
    omax = int(_number(where, "original_max_position_embeddings", omax))
    if kind == "default":
        return Rope(kind, tuple(map(float, inv)))
    if kind == "linear":
        return Rope(kind, tuple(map(float, inv / _f32(_number(where, "factor", _need(params, "factor", where))))))
    if kind == "llama3":
        return Rope(kind, tuple(map(float, _llama3(inv, params, omax, where))))
    if kind == "yarn":
        return _yarn(theta, dim, params, omax, max_positions, where)
    return _longrope(theta, dim, params, omax, max_positions, where)


def _llama3(inv: np.ndarray, params: dict, omax: int, where: str) -> np.ndarray:
    factor = _number(where, "factor", _need(params, "factor", where))
    low = _number(where, "low_freq_factor", _need(params, "low_freq_factor", where))
    high = _number(where, "high_freq_factor", _need(params, "high_freq_factor", where))
    if high == low:
        raise UserError(f"config.json: {where} has high_freq_factor == low_freq_factor (division by zero)")
    low_wl, high_wl = omax / low, omax / high
    wl = _f32(2 * math.pi) / inv
    scaled = np.where(wl > low_wl, inv / _f32(factor), inv)
    smooth = (_f32(omax) / wl - _f32(low)) / _f32(high - low)
    blended = (1 - smooth) * scaled / _f32(factor) + smooth * scaled
    medium = ~(wl < high_wl) & ~(wl > low_wl)
    return _f32(np.where(medium, blended, scaled))


def _yarn_mscale(scale: float, m: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0


def _yarn(theta: float, dim: int, params: dict, omax: int, max_positions: int, where: str) -> Rope:
    factor = params.get("factor")
    factor = max_positions / omax if factor is None else _number(where, "factor", factor)
    att, mscale, mall = params.get("attention_factor"), params.get("mscale"), params.get("mscale_all_dim")
    if att is None:
        att = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mall) if mscale and mall else _yarn_mscale(factor)
    beta_fast, beta_slow = params.get("beta_fast") or 32, params.get("beta_slow") or 1

    def corr_dim(rot):
        return dim * math.log(omax / (rot * 2 * math.pi)) / (2 * math.log(theta))

    lo, hi = corr_dim(beta_fast), corr_dim(beta_slow)
    if params.get("truncate", True):
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, dim - 1)
    if lo == hi:
        hi += 0.001
    pos_freqs = _f32(theta) ** (np.arange(0, dim, 2).astype(np.float32) / _f32(dim))
    extra, inter = _f32(1.0) / pos_freqs, _f32(1.0) / (_f32(factor) * pos_freqs)
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - _f32(lo)) / _f32(hi - lo), 0, 1)
    keep = _f32(1) - ramp
    inv = inter * (1 - keep) + extra * keep
    return Rope("yarn", tuple(map(float, _f32(inv))), attention_factor=float(att))


def _longrope(theta: float, dim: int, params: dict, omax: int, max_positions: int, where: str) -> Rope:
    short, long = _need(params, "short_factor", where), _need(params, "long_factor", where)
    for name, v in (("short_factor", short), ("long_factor", long)):
        if not isinstance(v, list) or len(v) != dim // 2:
            raise UserError(f"config.json: {where}.{name} must be a list of {dim // 2} numbers")
        for x in v:
            _number(where, name, x)
    factor = params.get("factor")
    factor = max_positions / omax if factor is None else _number(where, "factor", factor)
    att = params.get("attention_factor")
    if att is None:
        att = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(omax))
    shape = np.arange(0, dim, 2).astype(np.float32) / _f32(dim)
    base = _f32(theta) ** shape

    def inv(ext):
        return tuple(map(float, _f32(1.0) / (_f32(ext) * base)))

    return Rope("longrope", inv(short), attention_factor=float(att), long_inv_freq=inv(long), original_max=omax)
