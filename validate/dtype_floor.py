"""The dtype's own floor: how far the base run in bf16/fp16 already is from the base in fp32.

Running a model in a narrower dtype is itself a perturbation, so a compression damage below
it is below the resolution of the measurement.  On the measured windows:

    kl              mean over scored positions of KL(p_fp32 ‖ p_dtype),  p = softmax(z) in fp32
    top1_agreement  share of positions where argmax z_fp32 = argmax z_dtype
    nonfinite       where the dtype run first stops being finite (fp16 overflows at 65504):
                    {"site": "weights", "tensor": path} for a weight that overflowed when it
                    was cast, {"site": "h", "layer": l} for the first residual h_l (h_0 the
                    embedding) holding inf/NaN, {"site": "logits"}; null when all is finite

In float32 the floor is zero by construction (the same weights, the same program), so it is
not computed: every value is null with that reason.  A value that cannot be computed (the
logits are not finite) is null with its reason, never a perfect score.

Memory: the fp32 side is `reference_logits`, the fp32 base's logits at the scored positions
[B, T−1, vocab], computed one window at a time and held on the host, so `hemorrhage measure`
can take them BEFORE it loads the model in the narrower dtype and drop the fp32 copy: the two
copies of the weights never coexist (peak ≈ the fp32 weights, 2× the bf16 ones, not 3×).
Both sides go through the vocabulary one window at a time: [B, T, vocab] is never held twice.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from hemorrhage.validate.computable import mark

FLOOR_KEYS = ("kl", "top1_agreement")


def first_nonfinite(model, tokens) -> dict | None:
    """Where `model`'s forward on `tokens` first holds inf/NaN (module docstring), or None."""
    for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if not bool(jnp.all(jnp.isfinite(v.get_value()))):
            return {"site": "weights", "tensor": ".".join(map(str, path))}
    tr = model.trace(jnp.asarray(tokens))
    finite_h = np.asarray(jnp.all(jnp.isfinite(tr.h), axis=(1, 2, 3)))
    if not finite_h.all():
        return {"site": "h", "layer": int(np.argmin(finite_h))}
    if not bool(jnp.all(jnp.isfinite(tr.logits))):
        return {"site": "logits"}
    return None


@jax.jit
def compare_positions(z_ref, z):
    """Per position: KL(p_ref ‖ p), argmax agreement, both logit rows finite (fp32)."""
    lp_ref, lp = jax.nn.log_softmax(z_ref, axis=-1), jax.nn.log_softmax(z, axis=-1)
    kl = jnp.sum(jnp.exp(lp_ref) * (lp_ref - lp), axis=-1)
    top1 = jnp.argmax(z_ref, axis=-1) == jnp.argmax(z, axis=-1)
    finite = jnp.all(jnp.isfinite(z_ref), axis=-1) & jnp.all(jnp.isfinite(z), axis=-1)
    return kl, top1, finite


def _window_logits(model, tokens) -> "np.ndarray":
    """fp32 logits at the scored positions [B, T−1, vocab], one window per forward (host numpy)."""
    from hemorrhage.sim.models import forward

    return np.stack(
        [np.asarray(forward(model, jnp.asarray(tokens[b : b + 1]))[0, :-1], np.float32) for b in range(tokens.shape[0])]
    )


def reference_logits(model, tokens) -> np.ndarray:
    """The fp32 side of the floor: `model` (the base in fp32) at the scored positions of
    `tokens` [B T]; [B, T−1, vocab] float32 on the host."""
    return _window_logits(model, np.asarray(tokens))


def dtype_floor(model, dtype: str, tokens, reference=None, z_ref: np.ndarray | None = None) -> dict:
    """The floor of `model` (held in `dtype`) against the same base in fp32 on `tokens` [B T]
    (scored positions: all but each window's last, as measure scores them); the fp32 side is
    `z_ref` (reference_logits, taken earlier) or computed here from the fp32 model `reference`."""
    out: dict = {"dtype": dtype, "kl": None, "top1_agreement": None, "nonfinite": None}
    if dtype == "float32":
        return mark(out, FLOOR_KEYS, "the model runs in float32: its floor against float32 is zero by construction")
    tokens = np.asarray(tokens)
    kl, top1, finite = [], [], []
    for b in range(tokens.shape[0]):  # one window's logits at a time on each side
        zr = z_ref[b] if z_ref is not None else _window_logits(reference, tokens[b : b + 1])[0]
        z = _window_logits(model, tokens[b : b + 1])[0]
        for acc, a in zip((kl, top1, finite), compare_positions(jnp.asarray(zr), jnp.asarray(z))):
            acc.append(np.asarray(a).reshape(-1))
    kl, top1, finite = (np.concatenate(a) for a in (kl, top1, finite))
    toks = jnp.asarray(tokens)
    if not finite.all() or not all(
        bool(jnp.all(jnp.isfinite(v.get_value()))) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
    ):
        out["nonfinite"] = first_nonfinite(model, toks)  # the full trace only when something is not finite
    if not finite.all():
        where = out["nonfinite"] or {"site": "logits"}
        return mark(
            out,
            FLOOR_KEYS,
            f"logits not finite in {dtype} at {int((~finite).sum())} of {finite.size} "
            f"scored positions (first non-finite: {where})",
        )
    out.update(kl=float(np.mean(kl, dtype=np.float64)), top1_agreement=float(np.mean(top1)))
    return out
