"""Autoregressive generation with a KV cache, jitted end to end (prefill + lax.scan).

    tokens, z = generate(model, prompt, max_new_tokens=20)            greedy
    generate(..., temperature=0.7)                                    sampling
    generate(..., temperature=1.0, top_p=0.9)                         nucleus

z [B N vocab] are the logits each step was chosen from (the model's own context:
free-running).  Teacher forcing is just `forward` on a fixed sequence.

    tokens, finite = generate_checked(model, prompt, 20)              finite [B N]: were the
                                                                      logits of each step finite?
A token chosen from non-finite logits is no prediction (argmax of NaN is token 0), so a
caller that compares continuations needs to know where that happened.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from hemorrhage.sim.jit import jit
from jaxtyping import Array, Float, Int

from hemorrhage.errors import UserError


def top_p_filter(z: Float[Array, "B V"], top_p: float) -> Float[Array, "B V"]:
    """Keep the smallest set of tokens whose probability mass reaches top_p."""
    order = jnp.argsort(-z, axis=-1)
    z_sorted = jnp.take_along_axis(z, order, axis=-1)
    p_sorted = jax.nn.softmax(z_sorted, axis=-1)
    before = jnp.cumsum(p_sorted, axis=-1) - p_sorted  # mass strictly above each token
    keep_sorted = before < top_p  # the first token is always kept
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(z.shape[0])[:, None], order].set(keep_sorted)
    return jnp.where(keep, z, -jnp.inf)


def choose(z: Float[Array, "B V"], key, temperature: float, top_p: float) -> Int[Array, " B"]:
    if temperature == 0.0:
        return jnp.argmax(z, axis=-1).astype(jnp.int32)
    zt = z / temperature
    if top_p < 1.0:
        zt = top_p_filter(zt, top_p)
    return jax.random.categorical(key, zt, axis=-1).astype(jnp.int32)


@partial(jit, static_argnames=("max_new_tokens", "temperature", "top_p", "perturb", "keep_logits"))
def _generate(model, prompt, key, *, max_new_tokens, temperature, top_p, perturb, keep_logits):
    B, T0 = prompt.shape
    cache = model.empty_cache(B, T0 + max_new_tokens)
    h, cache, _ = model(prompt, pos0=0, cache=cache, perturb=perturb, logits=False)
    z = model.unembed(h[:, -1:])  # only the last position's logits are read
    key, sub = jax.random.split(key)
    first = choose(z[:, -1], sub, temperature, top_p)
    finite = lambda zl: jnp.all(jnp.isfinite(zl), axis=-1)  # noqa: E731

    def step(carry, _):
        tok, cache, pos, key, z_prev = carry
        z, cache, _ = model(tok[:, None], pos0=pos, cache=cache, perturb=perturb)
        key, sub = jax.random.split(key)
        nxt = choose(z[:, -1], sub, temperature, top_p)
        out = (tok, z_prev if keep_logits else jnp.zeros((), z.dtype), finite(z_prev))
        return (nxt, cache, pos + 1, key, z[:, -1]), out

    carry = (first, cache, jnp.asarray(T0, jnp.int32), key, z[:, -1])
    _, (toks, zs, fin) = jax.lax.scan(step, carry, None, length=max_new_tokens)
    toks = jnp.swapaxes(toks, 0, 1)  # [B N]
    return toks, (jnp.swapaxes(zs, 0, 1) if keep_logits else None), jnp.swapaxes(fin, 0, 1)


def _checked_prompt(model, prompt, max_new_tokens: int):
    """The prompt as int32 [B T] (one row if 1-D), after the length checks every decoder needs."""
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be ≥ 1, got {max_new_tokens}")
    prompt = jnp.asarray(prompt, jnp.int32)
    if prompt.ndim == 1:
        prompt = prompt[None]
    if prompt.shape[1] + max_new_tokens > model.cfg.max_positions:
        raise UserError(
            f"prompt + new tokens ({prompt.shape[1] + max_new_tokens}) exceed the model's "
            f"{model.cfg.max_positions} positions"
        )
    return prompt


def generate(
    model,
    prompt: Int[Array, "B T"],
    max_new_tokens: int = 20,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    perturb=None,
    return_logits: bool = False,
):
    """New tokens [B N] (and the logits each was drawn from, [B N vocab], if asked).

    The scan computes one extra step beyond the last token it returns; that keeps
    the loop body uniform (XLA compiles it once)."""
    toks, zs, _ = _run(model, prompt, max_new_tokens, temperature, top_p, seed, perturb, return_logits)
    return (toks, zs) if return_logits else toks


def generate_checked(
    model,
    prompt: Int[Array, "B T"],
    max_new_tokens: int = 20,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
):
    """(new tokens [B N], finite [B N] bool): as `generate`, and whether the logits each token
    was chosen from were all finite (where not, the token is no prediction of the model)."""
    toks, _, fin = _run(model, prompt, max_new_tokens, temperature, top_p, seed, None, False)
    return toks, fin


def _run(model, prompt, max_new_tokens, temperature, top_p, seed, perturb, keep_logits):
    if temperature < 0:
        raise UserError(f"temperature must be ≥ 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise UserError(f"top_p must be in (0, 1], got {top_p}")
    prompt = _checked_prompt(model, prompt, max_new_tokens)
    return _generate(
        model,
        prompt,
        jax.random.key(seed),
        max_new_tokens=max_new_tokens,
        temperature=float(temperature),
        top_p=float(top_p),
        perturb=perturb,
        keep_logits=keep_logits,
    )


def truncate_at_eos(tokens, eos_id: int | None) -> list[int]:
    out = []
    for t in list(map(int, tokens)):
        if eos_id is not None and t == eos_id:
            break
        out.append(t)
    return out


# ------------------------------------------------------------------ beam search
@partial(jit, static_argnames=("max_new_tokens", "beams"))
def _beam(model, prompt, *, max_new_tokens, beams):
    """Beam search of width W with a KV cache; fixed length (EOS is not special, as greedy).

    Rows are (prompt b, beam w) flattened to b·W + w.  Every step scores W·V extensions
    per prompt by the summed log-probability, keeps the W best, and gathers the KV cache
    and the token history of their parent beams."""
    B, T0 = prompt.shape
    W, N = beams, max_new_tokens
    rows = jnp.repeat(prompt, W, axis=0)  # [B·W T0]
    cache = model.empty_cache(B * W, T0 + N)
    z, cache, _ = model(rows, pos0=0, cache=cache)
    # only beam 0 is live at the start: the W copies of a prompt must not fill the beam
    score0 = jnp.tile(jnp.where(jnp.arange(W) == 0, 0.0, -jnp.inf), B).astype(jnp.float32)

    def extend(score, z_last, hist, cache, t):
        V = z_last.shape[-1]
        total = score[:, None] + jax.nn.log_softmax(z_last, axis=-1)  # [B·W V]
        best, flat = jax.lax.top_k(total.reshape(B, W * V), W)  # [B W]
        parent = (flat // V).astype(jnp.int32) + (jnp.arange(B, dtype=jnp.int32) * W)[:, None]
        tok = (flat % V).astype(jnp.int32).reshape(-1)
        parent = parent.reshape(-1)
        hist = hist[parent].at[:, t].set(tok)
        cache = jax.tree_util.tree_map(lambda c: c[parent], cache)
        return best.reshape(-1), tok, hist, cache

    hist = jnp.zeros((B * W, N), jnp.int32)
    score, tok, hist, cache = extend(score0, z[:, -1], hist, cache, 0)

    def step(carry, t):
        score, tok, hist, cache = carry
        z, cache, _ = model(tok[:, None], pos0=T0 + t - 1, cache=cache)
        return extend(score, z[:, -1], hist, cache, t), None

    (score, _, hist, _), _ = jax.lax.scan(step, (score, tok, hist, cache), jnp.arange(1, N, dtype=jnp.int32))
    best = jnp.argmax(score.reshape(B, W), axis=-1)
    return hist.reshape(B, W, N)[jnp.arange(B), best], score.reshape(B, W)[jnp.arange(B), best]


def beam_search(model, prompt: Int[Array, "B T"], max_new_tokens: int = 20, *, beams: int = 4):
    """The highest-scoring continuation [B N] of a width-`beams` beam search, and its summed
    log-probability [B].  beams = 1 is greedy decoding."""
    if beams < 1:
        raise UserError(f"beams must be ≥ 1, got {beams}")
    prompt = _checked_prompt(model, prompt, max_new_tokens)
    return _beam(model, prompt, max_new_tokens=max_new_tokens, beams=beams)
