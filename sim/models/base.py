"""The forward loop every family shares: embed → blocks → final norm → head.

    h_0        embedding output (after Gemma's √d scale, GPT-2's position embedding)
    h_l        residual stream after block l (l = 1..L); h_L feeds the head
    z_l        logit lens of h_l: the final norm and head applied to h_l
    p_l        softmax(z_l)

Sites where `perturb(site, l, x)` may add noise or put back another activation:
    ("h", l)     the residual h_l, l = 0..L
    ("attn", l)  the attention branch output of block l (0-based), before the residual add
    ("mlp", l)   the MLP branch output of block l
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

Perturb = Optional[Callable[[str, int, Array], Array]]


def _apply(perturb: Perturb, site: str, layer: int, x):
    return x if perturb is None else perturb(site, layer, x)


def branch(block: nnx.Module, perturb: Perturb, site: str, layer: int, trace: bool, x):
    """A block's attention or MLP branch output, on its way into the residual: sown
    (unperturbed) for `trace`, then handed to `perturb`."""
    if trace:
        block.sow(nnx.Intermediate, f"{site}_out", x)
    return _apply(perturb, site, layer, x)


@dataclass
class Trace:
    """What `CausalLM.trace` returns.  h[l] is h_l; logits = z_L."""

    h: Float[Array, "L1 B T d"]
    logits: Float[Array, "B T vocab"]
    attn_entropy: Float[Array, "L B T"] | None = None  # normalised, mean over heads
    gate_pos: Array | None = None  # [L B T d_ff] bool, sign of the gate pre-activation
    attn_out: Float[Array, "L B T d"] | None = None  # branch outputs added to the residual
    mlp_out: Float[Array, "L B T d"] | None = None
    mlp_hoyer: Float[Array, "L B T"] | None = None  # Hoyer sparsity of the MLP's hidden activation


class CausalLM(nnx.Module):
    """Base class: a family sets self.cfg, self.layers (nnx.List of blocks), self.norm,
    self.embed and optionally self.lm_head, and implements `embed_tokens`."""

    def embed_tokens(self, tokens: Int[Array, "B T"], pos: Int[Array, "T"]) -> Float[Array, "B T d"]:
        raise NotImplementedError

    def unembed(self, h: Float[Array, "... d"]) -> Float[Array, "... vocab"]:
        """z = W · norm(h): the head applied to any layer's h (the logit lens); then
        z / logits_scaling (Granite) and c·tanh(z/c) (Gemma 2's final soft-cap) where the
        config has them."""
        hn = self.norm(h)
        z = self.embed.attend(hn) if self.lm_head is None else self.lm_head(hn)
        div, cap = getattr(self.cfg, "logit_divisor", 1.0), getattr(self.cfg, "final_softcap", None)
        if div != 1.0:
            z = z / div
        z = z if cap is None else jnp.tanh(z / cap) * cap
        # logits leave the model in fp32 (exact from bf16/fp16), so every softmax, KL and
        # cosine downstream is computed in fp32 whatever the model's dtype
        return z.astype(jnp.float32)

    def __call__(self, tokens: Int[Array, "B T"], *, pos0=0, cache=None, perturb: Perturb = None,
                 trace: bool = False, collect_h: bool = False):
        """Returns (z [B T vocab], new cache or None, [h_0..h_L] if collect_h)."""
        T = tokens.shape[1]
        pos = jnp.asarray(pos0, jnp.int32) + jnp.arange(T, dtype=jnp.int32)
        h = _apply(perturb, "h", 0, self.embed_tokens(tokens, pos))
        hs = [h] if collect_h else None
        new_cache = []
        for i, block in enumerate(self.layers):
            h, c = block(h, pos, None if cache is None else cache[i], perturb=perturb, layer=i, trace=trace)
            h = _apply(perturb, "h", i + 1, h)
            new_cache.append(c)
            if collect_h:
                hs.append(h)
        z = self.unembed(h)
        return z, (None if cache is None else tuple(new_cache)), hs

    def empty_cache(self, batch: int, length: int):
        return tuple(b.attn.empty_cache(batch, length) for b in self.layers)

    def trace(self, tokens: Int[Array, "B T"], perturb: Perturb = None) -> Trace:
        """Every layer's residual h (logit lens via `unembed`), plus sown components."""
        return _trace(self, tokens, perturb)


@nnx.jit(static_argnums=(2,))
def _trace(model: CausalLM, tokens, perturb):
    def run(m, toks):
        z, _, hs = m(toks, perturb=perturb, trace=True, collect_h=True)
        return z, jnp.stack(hs).astype(jnp.float32)  # h leaves in fp32, like the logits

    (z, h), inter = nnx.capture(run, nnx.Intermediate)(model, tokens)
    flat = {".".join(map(str, k)): v for k, v in nnx.to_flat_state(inter)}

    def stack(name):
        keys = sorted((k for k in flat if k.endswith(name)), key=lambda k: int(k.split(".")[1]))
        if not keys:
            return None
        vals = [flat[k].get_value() for k in keys]  # sow keeps a tuple of calls
        return jnp.stack([v[0] if isinstance(v, tuple) else v for v in vals])

    ent = stack("attn_entropy")
    if ent is not None:  # [L B K G T] -> mean over heads [L B T]
        ent = ent.mean(axis=(2, 3))
    return Trace(h=h, logits=z, attn_entropy=ent, gate_pos=stack("gate_pos"),
                 attn_out=stack("attn_out"), mlp_out=stack("mlp_out"), mlp_hoyer=stack("mlp_hoyer"))


@nnx.jit(static_argnums=(2,))
def forward(model: CausalLM, tokens: Int[Array, "B T"], perturb: Perturb = None) -> Float[Array, "B T vocab"]:
    """Jitted full-sequence forward: the logits z_L."""
    return model(tokens, perturb=perturb)[0]


jax.tree_util.register_dataclass(
    Trace, data_fields=["h", "logits", "attn_entropy", "gate_pos", "attn_out", "mlp_out", "mlp_hoyer"], meta_fields=[]
)
