r"""Generation step by step: teacher-forced and free-running damage, and decoding strategies.

Notation (seed 002's temporal compounding; theory/compounding.py).  K prompts, N new
tokens; the base's greedy continuation y_0..y_{N−1} is the *base path*.  At step t:

    z_t, z'_t    base and compressed logits after prompt + y_<t (teacher-forced: the
                 compressed model reads the BASE's prefix)
    a_t = y_t    the base's token;  b_t the base's best other token
    m_t          margin z_t[a_t] − z_t[b_t] (> 0 unless the base's greedy path and its
                 full forward disagree at a near-tie)
    d_t          Δz_t[a_t] − Δz_t[b_t], Δz_t = z'_t − z_t: the noise on the margin
    flip_t       argmax z'_t ≠ a_t: the compressed model would leave the path here
    kl_t         KL(p_t ‖ q_t) teacher-forced;  kl_free_t the same with q_t computed on
                 the compressed model's OWN prefix (free-running: each model reads its own
                 output; the two contexts coincide until the first divergence)

Until the first flip the free-running compressed model reads exactly the base path, so its
first divergence IS the first teacher-forced flip (`tf_first_flip`; the identity checks the
KV-cache decoder against the full forward).  Per-step means over prompts (`steps` in a
row) give the hierarchy per step: cos_h, cos_z, cos_p, kl, var_p, top1 at every step.

Decoding strategies (exp 8): `greedy`, `tempT` (sampling at temperature T, e.g. temp0.7),
`toppP` (nucleus sampling at T = 1, e.g. topp0.9), `beamW` (beam search of width W,
e.g. beam4; fixed length, EOS not special, as greedy).  Sampling uses the same seed for
base and compressed model, hence the same Gumbel noise at every step (jax.random.
categorical is Gumbel-max): a shared-randomness coupling, so agreement measures the
models, not the dice.
"""

from __future__ import annotations

import re
from functools import partial

import jax.numpy as jnp
import numpy as np

from hemorrhage.sim.jit import jit
from hemorrhage.errors import UserError
from hemorrhage.validate.arrays import mean

STRATEGY_RE = re.compile(r"^(greedy|temp(\d+(\.\d+)?)|topp(0?\.\d+|1(\.0+)?)|beam(\d+))$")
PER_PROMPT = ("margin", "dpair", "flip", "kl", "kl_free")  # kept per prompt and step (exp 3)
PER_STEP = ("cos_h", "cos_z", "cos_p", "kl", "kl_pred", "var_p", "top1", "kl_free")  # means over prompts


def parse_strategy(name: str) -> dict:
    """'greedy' | 'tempT' | 'toppP' | 'beamW' -> generation settings (UserError otherwise)."""
    m = STRATEGY_RE.match(name.strip())
    if not m:
        raise UserError(
            f"unknown decoding strategy {name!r}; use greedy, tempT (e.g. temp0.7), "
            f"toppP (e.g. topp0.9) or beamW (e.g. beam4)"
        )
    if m.group(2):
        t = float(m.group(2))
        if t <= 0:
            raise UserError(f"{name}: the temperature must be > 0 (greedy is 'greedy')")
        return {"kind": "sample", "temperature": t, "top_p": 1.0}
    if m.group(4):
        p = float(m.group(4))
        if not 0 < p <= 1:
            raise UserError(f"{name}: top-p must be in (0, 1]")
        return {"kind": "sample", "temperature": 1.0, "top_p": p}
    if m.group(6):
        w = int(m.group(6))
        if w < 1:
            raise UserError(f"{name}: the beam width must be >= 1")
        return {"kind": "beam", "beams": w}
    return {"kind": "greedy"}


def decode(model, prompts, n: int, strategy: str = "greedy", seed: int = 0) -> np.ndarray:
    """[K N] continuation of each prompt under `strategy` (module docstring)."""
    return decode_checked(model, prompts, n, strategy, seed)[0]


def decode_checked(model, prompts, n: int, strategy: str = "greedy", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """([K N] continuation, [K N] bool: were the logits each token came from finite).  A beam
    search knows only its final score: a non-finite score marks the whole row."""
    from hemorrhage.sim.generate import beam_search, generate_checked
    from hemorrhage.sim.shard import on_active_mesh

    s = parse_strategy(strategy)
    prompts = on_active_mesh(prompts)
    if s["kind"] == "beam":
        out, score = beam_search(model, prompts, n, beams=s["beams"])
        fin = np.broadcast_to(np.isfinite(np.asarray(score))[:, None], out.shape)
    else:
        kw = {} if s["kind"] == "greedy" else {"temperature": s["temperature"], "top_p": s["top_p"], "seed": seed}
        out, fin = generate_checked(model, prompts, n, **kw)
    return np.asarray(out, np.int32), np.array(fin, bool)


GEN_KEYS = ("first_divergence", "first_divergence_mean", "gen_prefix_agreement", "gen_token_agreement", "gen_identical")


def gen_metrics(
    gen_b: np.ndarray, gen_c: np.ndarray, ok_b: np.ndarray | None = None, ok_c: np.ndarray | None = None
) -> dict:
    """First divergence and agreement of two [K N] continuations of the same prompts.

    ok_b, ok_c [K N]: whether each token came from finite logits.  A compressed token that did
    not is no prediction, so it differs from the base's (the two diverge there); where the
    BASE's logits were not finite there is no reference and every metric is null + reason
    (validate.computable), even though both sides then emit token 0 and look identical."""
    from hemorrhage.validate.computable import count_reason, mark

    K, N = gen_b.shape
    diff = gen_b != gen_c
    if ok_c is not None:
        diff = diff | ~ok_c
    first = np.where(diff.any(-1), diff.argmax(-1), N)
    out = {
        "first_divergence": [int(x) for x in first],
        "first_divergence_mean": mean(first),
        "gen_prefix_agreement": mean(first) / N,
        "gen_token_agreement": mean(~diff),
        "gen_identical": mean(first == N),
        "new_tokens": int(N),
        "prompts": int(K),
    }
    if ok_b is not None and not ok_b.all():
        bad_c = 0 if ok_c is None else int((~ok_c.all(-1)).sum())
        mark(out, GEN_KEYS, count_reason("generation logits", int((~ok_b.all(-1)).sum()), bad_c, K, "prompts"))
    return out


# ------------------------------------------------------------------ teacher forcing -----


@jit
def _last_hidden(model, tokens):
    """h_L [B T d] (the head is never applied, so XLA drops it)."""
    return model(tokens, collect_h=True)[2][-1]


def path_hidden(model, prompts: np.ndarray, gen: np.ndarray) -> np.ndarray:
    """h_L [K N d] at the positions that predict gen[:, t] when `model` reads prompt + gen[:, :t]."""
    from hemorrhage.sim.shard import on_active_mesh

    P = prompts.shape[1]
    seq = np.concatenate([prompts, gen[:, :-1]], axis=1)
    return np.asarray(_last_hidden(model, on_active_mesh(seq)))[:, P - 1 :]


@partial(jit, static_argnames=("chunk",))
def _step_rows(base, comp, hb, hc, hf, a, chunk: int):
    """Per row (prompt, step) of [n d] hidden states: module docstring's quantities."""
    from hemorrhage.theory.softmax import kl_exact
    from hemorrhage.validate.measure_jit import chunked
    from hemorrhage.validate.metrics import compare_hidden, compare_logits

    def one(xb, xc, xf, at):
        zb, zc = base.unembed(xb), comp.unembed(xc)
        out = {**compare_hidden(xb, xc), **compare_logits(zb, zc)}
        za = jnp.take_along_axis(zb, at[:, None], axis=-1)[:, 0]
        other = jnp.where(jnp.arange(zb.shape[-1])[None] == at[:, None], -jnp.inf, zb)
        bt = jnp.argmax(other, axis=-1)
        dz = zc - zb
        pick = lambda x, i: jnp.take_along_axis(x, i[:, None], axis=-1)[:, 0]  # noqa: E731
        # a compressed step with non-finite logits leaves the path (its argmax, 0, is no choice);
        # a base step with non-finite logits has no path to leave: NaN, not computable
        fin_b, fin_c = jnp.all(jnp.isfinite(zb), -1), jnp.all(jnp.isfinite(zc), -1)
        flip = jnp.where(fin_c, jnp.argmax(zc, axis=-1) != at, True).astype(jnp.float32)
        out.update(
            margin=za - pick(zb, bt),
            dpair=pick(dz, at) - pick(dz, bt),
            flip=jnp.where(fin_b, flip, jnp.nan),
            kl_free=kl_exact(zb, comp.unembed(xf) - zb),
        )
        return out

    return chunked(one, hb.shape[0], chunk, hb, hc, hf, a)


def step_metrics(base, comp, h_base: np.ndarray, prompts: np.ndarray, gen_b: np.ndarray, gen_c: np.ndarray) -> dict:
    """Per (prompt, step) arrays [K N] of every quantity in the module docstring."""
    K, N, d = h_base.shape
    h_tf = path_hidden(comp, prompts, gen_b)
    h_fr = path_hidden(comp, prompts, gen_c)
    flat = lambda x: jnp.asarray(x.reshape(K * N, -1))  # noqa: E731
    rows = _step_rows(
        base, comp, flat(h_base), flat(h_tf), flat(h_fr), jnp.asarray(gen_b.reshape(-1)), chunk=min(64, K * N)
    )
    return {k: np.asarray(v, np.float64).reshape(K, N) for k, v in rows.items()}


def steps_summary(per: dict, first_divergence) -> dict:
    """The row's `steps` section: per-step means, per-prompt arrays for exp 3, the identity check.

    Where the base's logits along its path are not finite (flip is NaN) the flips and the
    check are null + reason (validate.computable); the per-step arrays keep their NaN."""
    from hemorrhage.validate.arrays import rounded
    from hemorrhage.validate.computable import count_reason, mark

    flip = per["flip"] > 0.5
    K, N = flip.shape
    tf_first = np.where(flip.any(-1), flip.argmax(-1), N)
    out = {
        "mean": {k: rounded(np.mean(per[k], 0)) for k in PER_STEP if k in per},
        "per_prompt": {k: rounded(per[k], 4) for k in PER_PROMPT},  # 4 digits: a sweep file stays small
        "tf_first_flip": [int(x) for x in tf_first],
        "tf_agreement": mean(~flip),
    }
    if first_divergence is not None:
        out["tf_first_flip_matches_free_running"] = mean(tf_first == np.asarray(first_divergence))
    bad = np.isnan(per["flip"]).any(-1)
    if bad.any():
        mark(
            out,
            ("tf_first_flip", "tf_agreement", "tf_first_flip_matches_free_running"),
            count_reason("logits along the base's path", int(bad.sum()), 0, K, "prompts"),
        )
    return out
