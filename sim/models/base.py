"""The forward loop every family shares: embed → blocks → final norm → head.

    h_0        embedding output (after Gemma's √d scale, GPT-2's position embedding)
    h_l        residual stream after block l (l = 1..L); h_L feeds the head
    z_l        logit lens of h_l: the final norm and head applied to h_l
    p_l        softmax(z_l)

Sites where `perturb(site, l, x)` may add noise or put back another activation:
    ("h", l)     the residual h_l, l = 0..L
    ("attn", l)  the attention branch output of block l (0-based), before the residual add
    ("mlp", l)   the MLP branch output of block l

With `scan_layers = True` and uniform blocks they run as one `lax.scan` (sim/models/scan.py) and
`l` reaches a perturb marked `traced_layers` as a traced int32; an unmarked perturb gets Python
ints (lax.switch per layer).  Otherwise (the default) the unrolled loop runs, with the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from hemorrhage.sim.jit import jit
from hemorrhage.sim.models import scan

Perturb = Optional[Callable[[str, int, Array], Array]]


def _apply(perturb: Perturb, site: str, layer: int, x):
    return x if perturb is None else perturb(site, layer, x)


def traced_layers(perturb):
    """Mark `perturb(site, layer, x)` as working with `layer` a traced int32 scalar inside the
    scanned blocks (compare it with jnp.where, index arrays with it).  An unmarked perturb
    still gets Python ints: the scan dispatches it per layer with lax.switch, which traces
    it L + 1 times per site (cheap for a small perturb; mark a costly one)."""
    perturb.traced_layer = True
    return perturb


def _per_layer(perturb: Perturb, L: int) -> Perturb:
    """A perturb the scan can call with a traced layer index: a `traced_layers` one as it is,
    any other through lax.switch over its L + 1 Python-int layers (each branch is the
    caller's code at a constant layer, so `if layer == 3:` and list indexing keep working)."""
    if perturb is None or getattr(perturb, "traced_layer", False):
        return perturb

    def by_layer(site, layer, x):
        return jax.lax.switch(layer, [partial(perturb, site, i) for i in range(L + 1)], x)

    return by_layer


def _sown(block: nnx.Module) -> dict:
    """Pop what the block sowed in this call: {name: value} (sow keeps a tuple of calls)."""
    flat = nnx.to_flat_state(nnx.pop(block, nnx.Intermediate))
    out = {}
    for path, var in flat:
        v = var.get_value()
        out[path[-1]] = v[0] if isinstance(v, tuple) else v
    return out


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


# A block's computation has collapsed (validate.diagnose's rule, the predictor's
# collapse_signature) when more than this share of its gates flip sign, or its mean normalised
# attention entropy rises by more than this, against the base on the same tokens.
GATE_FLIP_MAX, ENTROPY_SHIFT_MAX = 0.25, 0.15


class CausalLM(nnx.Module):
    """Base class: a family sets self.cfg, self.layers (nnx.List of blocks), self.norm,
    self.embed and optionally self.lm_head, and implements `embed_tokens`."""

    def embed_tokens(self, tokens: Int[Array, "B T"], pos: Int[Array, " T"]) -> Float[Array, "B T d"]:
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

    # True: uniform blocks run as one lax.scan (compile time independent of depth).  Off by
    # default: the per-layer weights are stacked inside each jitted call, a temporary copy of
    # every block weight, and the scanned prefill ran slower than the unrolled one (bench/README.md)
    scan_layers = False

    def __call__(
        self,
        tokens: Int[Array, "B T"],
        *,
        pos0=0,
        cache=None,
        perturb: Perturb = None,
        trace: bool = False,
        collect_h: bool = False,
        logits: bool = True,
    ):
        """Returns (z [B T vocab], new cache or None, [h_0..h_L] if collect_h); with
        logits=False the first is h_L [B T d] instead, for a caller that unembeds only the
        positions it reads (a [B T vocab] tensor over a 152k vocabulary is not free)."""
        z, new_cache, hs, _ = self.run(
            tokens, pos0=pos0, cache=cache, perturb=perturb, trace=trace, collect_h=collect_h, logits=logits
        )
        return z, new_cache, (None if hs is None else list(hs))

    def run(
        self,
        tokens: Int[Array, "B T"],
        *,
        pos0=0,
        cache=None,
        perturb: Perturb = None,
        trace: bool = False,
        collect_h: bool = False,
        logits: bool = True,
    ):
        """(z, new cache or None, h [L+1 B T d] if collect_h, {sown name: [L ...]} if trace);
        h_L in place of z with logits=False.

        The blocks run as one scan (sim/models/scan.py) where they are uniform and
        `scan_layers` is on; otherwise unrolled, one traced block per layer.  Both give the
        same numbers (to float rounding: XLA fuses the loop body on its own)."""
        T = tokens.shape[1]
        pos = jnp.asarray(pos0, jnp.int32) + jnp.arange(T, dtype=jnp.int32)
        h0 = _apply(perturb, "h", 0, self.embed_tokens(tokens, pos))
        how = scan.plan(self.layers) if self.scan_layers else scan.Plan(False, {})
        blocks = self._scanned if how.scan else self._unrolled
        h, new_cache, hs, sown = blocks(h0, pos, cache, perturb, trace, collect_h, how)
        hs = jnp.concatenate([h0[None], hs]) if collect_h else None
        return (self.unembed(h) if logits else h), new_cache, hs, sown

    def _unrolled(self, h, pos, cache, perturb, trace, collect_h, how):
        hs, new_cache, sown = [], [], {}
        for i, block in enumerate(self.layers):
            h, c = block(h, pos, None if cache is None else cache[i], perturb=perturb, layer=i, trace=trace)
            h = _apply(perturb, "h", i + 1, h)
            new_cache.append(c)
            hs.append(h)
            for name, v in (_sown(block) if trace else {}).items():
                sown.setdefault(name, []).append(v)
        return (
            h,
            None if cache is None else tuple(new_cache),
            jnp.stack(hs) if collect_h else None,
            {k: _stack(v) for k, v in sown.items()},
        )

    def _scanned(self, h, pos, cache, perturb, trace, collect_h, how: scan.Plan):
        gd, params = scan.stack_states(self.layers)
        L = len(self.layers)
        tables = scan.rope_tables(how.ropes, pos)
        xs = {"params": params, "layer": jnp.arange(L, dtype=jnp.int32), "kind": how.kinds}
        perturb = _per_layer(perturb, L)
        if cache is not None:
            xs["cache"] = jax.tree.map(lambda *cs: jnp.stack(cs), *cache)

        def body(h, x):
            block = nnx.merge(gd, x["params"])
            saved = scan.with_kind(block, x["kind"], tables)
            h, c = block(h, pos, x.get("cache"), perturb=perturb, layer=x["layer"], trace=trace)
            scan.restore(block, saved)
            h = _apply(perturb, "h", x["layer"] + 1, h)
            return h, (c, h if collect_h else None, _sown(block) if trace else {})

        h, (c, hs, sown) = jax.lax.scan(body, h, xs)
        new_cache = None if cache is None else tuple(jax.tree.map(lambda a: a[i], c) for i in range(L))
        return h, new_cache, hs, sown

    def empty_cache(self, batch: int, length: int):
        return tuple(b.attn.empty_cache(batch, length) for b in self.layers)

    def trace(self, tokens: Int[Array, "B T"], perturb: Perturb = None) -> Trace:
        """Every layer's residual h (logit lens via `unembed`), plus sown components."""
        return _trace(self, tokens, perturb)


@jit(static_argnums=(2,))
def _trace(model: CausalLM, tokens, perturb):
    z, _, h, sown = model.run(tokens, perturb=perturb, trace=True, collect_h=True)
    ent = sown.get("attn_entropy")
    if ent is not None:  # [L B K G T] -> mean over heads [L B T]; per layer where head counts differ
        ent = jnp.stack([e.mean(axis=(1, 2)) for e in ent]) if isinstance(ent, tuple) else ent.mean(axis=(2, 3))
    return Trace(
        h=h.astype(jnp.float32),
        logits=z,
        attn_entropy=ent,
        gate_pos=sown.get("gate_pos"),
        attn_out=sown.get("attn_out"),
        mlp_out=sown.get("mlp_out"),
        mlp_hoyer=sown.get("mlp_hoyer"),
    )


def _stack(per_layer: list):
    """One array [L ...] of what each layer sowed; a tuple where the layers' shapes differ
    (attention rows of layers with different head counts)."""
    if len({tuple(v.shape) for v in per_layer}) > 1:
        return tuple(per_layer)
    return jnp.stack(per_layer)


@jit
def attention_probs(model: CausalLM, tokens: Int[Array, "B T"]) -> tuple:
    """The traced forward that also returns every layer's attention probabilities: a tuple of
    [B H T T] (query rows, key columns; H may differ per layer), NaN for a dropped attention.
    Not part of `trace` or `forward`, which never materialise them."""
    from hemorrhage.sim.models.layers import ATTN_PROBS

    _, _, _, sown = model.run(tokens, trace=ATTN_PROBS)
    probs = sown["attn_probs"]
    return tuple(probs) if isinstance(probs, tuple) else tuple(probs[i] for i in range(probs.shape[0]))


@jit(static_argnums=(2,))
def forward(model: CausalLM, tokens: Int[Array, "B T"], perturb: Perturb = None) -> Float[Array, "B T vocab"]:
    """Jitted full-sequence forward: the logits z_L."""
    return model(tokens, perturb=perturb)[0]


jax.tree_util.register_dataclass(
    Trace, data_fields=["h", "logits", "attn_entropy", "gate_pos", "attn_out", "mlp_out", "mlp_hoyer"], meta_fields=[]
)
