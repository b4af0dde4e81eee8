"""Recovery: can training undo the damage of compression?

    rec = recover(loaded, comp, steps=50)              # KL distillation from the base
    rec.model, rec.before, rec.after, rec.history      # the retrained compressed model, numbers

The compressed model's layers are trained with optax (Adam, global-norm clip 1; `lr` for
weights in weight units) while what the compression decided stays fixed:

    masks      pruned weights stay exactly zero: the effective weight is keep ⊙ W, so a
               pruned entry gets no gradient, and the mask is applied again on export
    grids      quantized weights keep their grid (scale, zero point, bits, groups, AWQ's
               input scale): a latent fp32 weight W is trained through the straight-
               through estimator, W_eff = W + stop_gradient(Q(W) − W) = Q(W) forward,
               identity backward; on export the codes are re-encoded from W onto the same
               grid, so the stored layer is again b-bit codes (`PackedLinear`).  The
               latent is kept in units of its grid step (W = U·step) and trained with its
               own rate `ste_lr` (grid steps per update): a code moves only when U
               crosses half a step, whatever the bit width, so one rate serves 2 and 8 bits
    dropped    removed branches (layer dropping) stay removed: nothing there to train
    the rest   embeddings, norms, scales, zero points and biases are frozen

Objective (`loss`):  "kl"  KL(p_base ‖ q_comp) per position, the base's own next-token
distribution as the teacher (distillation);  "text"  next-token cross-entropy on the
text itself.  Training windows come from the *train* split (`calibration_tokens`, seed),
re-measurement from the *held-out* split (`eval_windows`), never the same text.

LoRA (`lora_rank` r > 0): instead of the full latent, a low-rank update is trained,
W = W₀ + (α/r)·B·A with B = 0 at the start (Hu et al. 2021), and then goes through the
same projection (mask, grid): a parameter-cheap way to move the latent, still on the grid.

Measured before, during (`eval_every`) and after, against the base on held-out text
(the same definitions as validate/measure.py, T = 1): `kl`, `top1` (argmax agreement),
`var_p` (Var_{i∼p}(Δz_i), Theorem 3: kl ≈ var_p/2), `cos_p`, `nll` of the text, and
greedy generation from held-out prompts: `gen_prefix_agreement` (share of the
continuation identical to the base's before the first differing token) and
`gen_token_agreement` (share of identical positions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from hemorrhage.sim.jit import jit
from hemorrhage.errors import UserError
from hemorrhage.sim.compress.storage import ActQuantLinear, MaskedLinear, NMSparseLinear, PackedLinear
from hemorrhage.sim.recover_layers import GRID_UNITS, TRAINED, WEIGHT_UNITS, exported, trainable

LOSSES = ("kl", "text")


# ---------------------------------------------------------------- training
def _optimizer(model, lr: float, wrt, kind: str = "adam"):
    if not jax.tree.leaves(nnx.state(model, wrt)):
        return None
    if kind == "adam":
        tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr))
    else:  # momentum SGD, each tensor's step normalised to an RMS of lr
        tx = optax.chain(optax.trace(decay=0.9), _rms_normalise(), optax.scale(-lr))
    return nnx.Optimizer(model, tx, wrt=wrt)


def _rms_normalise():
    def f(updates, params=None):
        return jax.tree.map(lambda u: u / (jnp.sqrt(jnp.mean(jnp.square(u))) + 1e-30), updates)

    return optax.stateless(f)


@lru_cache(maxsize=None)
def _step_fn(loss: str):
    """One jitted optimizer step (cached per objective, so runs on models of the same
    structure reuse the compiled step).  opt_w trains weight-unit latents, opt_g grid-unit
    ones; either may be None."""

    @jit
    def step(base, model, opt_w, opt_g, tokens):
        inp = tokens[:, :-1]
        teacher = jax.lax.stop_gradient(jax.nn.log_softmax(base(inp)[0])) if loss == "kl" else None

        def loss_fn(m):
            logq = jax.nn.log_softmax(m(inp)[0])
            if loss == "kl":
                return jnp.mean(jnp.sum(jnp.exp(teacher) * (teacher - logq), -1))
            return -jnp.mean(jnp.take_along_axis(logq, tokens[:, 1:, None], axis=-1))

        value, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, TRAINED))(model)
        if opt_w is not None:
            opt_w.update(model, nnx.filter_state(grads, WEIGHT_UNITS))
        if opt_g is not None:
            opt_g.update(model, nnx.filter_state(grads, GRID_UNITS))
        return value, optax.tree.norm(grads)

    return step


# ---------------------------------------------------------------- measurement
@jit
def _window_metrics(model, tokens, z_base):
    """Token sums over one batch of windows (positions 0..T-2, as validate/measure.py)."""
    from hemorrhage.theory import cosine_pq, kl_exact, top1_agreement, var_p

    z = model(tokens)[0][:, :-1]
    zb = z_base[:, :-1]
    V = z.shape[-1]
    # validate.metrics.compare_logits' numbers, from the same theory functions
    zf, zbf = z.reshape(-1, V), zb.reshape(-1, V)
    dz = zf - zbf
    vp = var_p(zbf, dz)
    m = {
        "kl": kl_exact(zbf, dz),
        "top1": top1_agreement(zbf, zf),
        "var_p": vp,
        "kl_pred": vp / 2.0,
        "cos_p": cosine_pq(zbf, dz),
    }
    logq = jax.nn.log_softmax(z)
    nll = -jnp.take_along_axis(logq, tokens[:, 1:, None], axis=-1)[..., 0]
    out = {k: jnp.sum(m[k]) for k in ("kl", "top1", "var_p", "kl_pred", "cos_p")}
    out["nll"] = jnp.sum(nll)
    return out


@dataclass
class Probe:
    """The held-out material and the base's side of every comparison, computed once."""

    tokens: np.ndarray  # [n T] held-out windows
    z_base: list  # base logits per chunk of windows
    prompts: np.ndarray | None  # [K P] held-out prompts
    gen_base: np.ndarray | None  # [K N] base greedy continuations
    chunk: int = 2


def make_probe(
    loaded,
    *,
    windows: int = 4,
    seqlen: int = 128,
    prompts: int = 8,
    prompt_len: int = 16,
    new_tokens: int = 32,
    source: str = "wiki",
) -> Probe:
    """Held-out windows of `source` and, after them, `prompts` prompts of `prompt_len` tokens."""
    from hemorrhage.sim.windows import eval_windows

    if windows < 1 or seqlen < 2 or prompts < 0 or prompt_len < 1 or new_tokens < 1:
        raise UserError("recover: need windows ≥ 1, seqlen ≥ 2, prompts ≥ 0, prompt_len ≥ 1, new_tokens ≥ 1")
    allw = eval_windows(
        loaded.tokenizer,
        source,
        seqlen=max(seqlen, prompt_len),
        stride=max(seqlen, prompt_len),
        max_windows=windows + prompts,
    )
    rest = allw[windows:] if len(allw) >= windows + prompts else allw  # a short split: reuse windows
    p = np.asarray(rest[:prompts, :prompt_len]) if prompts else None
    return probe_from_tokens(loaded.model, allw[:windows, :seqlen], p, new_tokens)


def probe_from_tokens(base, tokens, prompts=None, new_tokens: int = 32) -> Probe:
    """The base's side of the measurement on given windows [n T] and prompts [K P]."""
    from hemorrhage.sim.generate import generate
    from hemorrhage.sim.models import forward

    tokens = np.asarray(tokens, np.int32)
    chunk = 2
    z_base = [forward(base, jnp.asarray(tokens[i : i + chunk])) for i in range(0, len(tokens), chunk)]
    gen = None
    if prompts is not None:
        prompts = np.asarray(prompts, np.int32)
        gen = np.asarray(generate(base, jnp.asarray(prompts), new_tokens))
    return Probe(tokens=tokens, z_base=z_base, prompts=prompts, gen_base=gen, chunk=chunk)


def measure(model, probe: Probe) -> dict:
    from hemorrhage.sim.generate import generate

    sums: dict[str, float] = {}
    for j, i in enumerate(range(0, len(probe.tokens), probe.chunk)):
        part = _window_metrics(model, jnp.asarray(probe.tokens[i : i + probe.chunk]), probe.z_base[j])
        for k, v in part.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    n = probe.tokens.shape[0] * (probe.tokens.shape[1] - 1)
    out = {k: v / n for k, v in sums.items()}
    out["ppl"] = float(np.exp(out["nll"])) if np.isfinite(out["nll"]) else float("nan")
    if probe.prompts is not None:
        gen = np.asarray(generate(model, jnp.asarray(probe.prompts), probe.gen_base.shape[1]))
        diff = gen != probe.gen_base
        N = diff.shape[1]
        first = np.where(diff.any(-1), diff.argmax(-1), N)
        out["gen_prefix_agreement"] = float(first.mean() / N)
        out["gen_token_agreement"] = float((~diff).mean())
    return out


# ---------------------------------------------------------------- constraints
def constraint_report(comp, recovered) -> dict:
    """Did training keep every mask and grid?  Compares each layer before and after."""
    from hemorrhage.sim.compress.registry import linears

    before = {p: layer for p, _, _, layer in linears(comp)}
    masks_exact = grids_fixed = on_grid = True
    moved = total = codes_changed = n_codes = 0
    for path, _, _, layer in linears(recovered):
        old = before[path]
        if type(old) is not type(layer):
            raise AssertionError(f"{path}: {type(old).__name__} became {type(layer).__name__}")
        w_old, w_new = np.asarray(old.weight()), np.asarray(layer.weight())
        moved += int((w_old != w_new).sum())
        total += w_old.size
        if isinstance(layer, MaskedLinear):
            keep = np.asarray(old.keep())
            masks_exact &= bool(np.array_equal(keep, np.asarray(layer.keep())) and np.all(w_new[~keep] == 0))
        elif isinstance(layer, NMSparseLinear):
            kept = np.zeros(w_old.shape, bool).reshape(layer.d_out, layer.d_in // layer.m, layer.m)
            np.put_along_axis(kept, np.asarray(layer.idx[...]).astype(np.int64), True, axis=-1)
            masks_exact &= bool(
                np.array_equal(np.asarray(old.idx[...]), np.asarray(layer.idx[...]))
                and np.all(w_new[~kept.reshape(w_old.shape)] == 0)
            )
        inner_o = old.inner if isinstance(old, ActQuantLinear) else old
        inner_n = layer.inner if isinstance(layer, ActQuantLinear) else layer
        if isinstance(inner_n, PackedLinear):
            same = np.array_equal(np.asarray(inner_o.scale[...]), np.asarray(inner_n.scale[...]))
            if inner_o.zero is not None:
                same &= np.array_equal(np.asarray(inner_o.zero[...]), np.asarray(inner_n.zero[...]))
            grids_fixed &= bool(same and inner_o.bits == inner_n.bits and inner_o.group_size == inner_n.group_size)
            c_o, c_n = np.asarray(inner_o.codes()), np.asarray(inner_n.codes())
            on_grid &= bool(c_n.min() >= 0 and c_n.max() <= 2**inner_n.bits - 1)
            codes_changed += int((c_o != c_n).sum())
            n_codes += c_o.size
    return {
        "masks_exact": bool(masks_exact),
        "grids_fixed": bool(grids_fixed),
        "codes_in_range": bool(on_grid),
        "weights_changed": moved / total if total else 0.0,
        "codes_changed": codes_changed / n_codes if n_codes else None,
    }


# ---------------------------------------------------------------- the whole job
@dataclass
class Recovery:
    model: object  # the retrained compressed model, in its storage types
    trained: object  # the same during training: RecoveringLinear layers (latent weights)
    before: dict
    after: dict
    history: list = field(default_factory=list)  # [{step, loss, kl, top1, var_p, ...}]
    constraints: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def summary(self) -> dict:
        out = {
            "settings": self.settings,
            "constraints": self.constraints,
            "before": self.before,
            "after": self.after,
            "history": self.history,
        }
        for k in ("kl", "top1", "var_p", "kl_pred", "ppl", "gen_prefix_agreement", "gen_token_agreement"):
            if k in self.before:
                out[f"{k}_before"], out[f"{k}_after"] = self.before[k], self.after[k]
        return out


def recover(
    loaded,
    comp,
    *,
    steps: int = 50,
    lr: float = 1e-4,
    ste_lr: float = 0.005,
    ste_opt: str = "adam",
    batch: int = 4,
    seqlen: int = 128,
    pool: int = 64,
    loss: str = "kl",
    lora_rank: int = 0,
    lora_alpha: float | None = None,
    seed: int = 0,
    source: str = "wiki",
    probe: Probe | None = None,
    eval_every: int | None = None,
    tokens=None,
    log=None,
) -> Recovery:
    """Fine-tune `comp` towards `loaded.model` (or the text) with masks and grids fixed.

    Training windows: `pool` windows of seqlen+1 tokens of the train split
    (`calibration_tokens`, seed), or the given `tokens` [n, T+1]; each step takes `batch`
    of them, drawn without replacement by the seed."""
    from hemorrhage.sim.windows import calibration_tokens

    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise UserError(f"--steps must be a non-negative integer, got {steps!r}")
    for name, v in (("--lr", lr), ("--ste-lr", ste_lr)):
        if isinstance(v, bool) or not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
            raise UserError(f"{name} must be a positive number, got {v!r}")
    if loss not in LOSSES:
        raise UserError(f"--loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if batch < 1 or pool < 1 or seqlen < 2:
        raise UserError("recover: need batch ≥ 1, pool ≥ 1, seqlen ≥ 2")
    if eval_every is not None and eval_every < 1:
        raise UserError(f"--eval-every must be ≥ 1, got {eval_every}")
    probe = probe if probe is not None else make_probe(loaded)
    model = trainable(comp, base=loaded.model, lora_rank=lora_rank, lora_alpha=lora_alpha, seed=seed)
    n_train = int(sum(x.size for x in jax.tree.leaves(nnx.state(model, TRAINED))))
    opt_w, opt_g = _optimizer(model, lr, WEIGHT_UNITS), _optimizer(model, ste_lr, GRID_UNITS, ste_opt)
    # windows of seqlen+1 tokens: the last token is only a target
    if tokens is None:
        data = calibration_tokens(loaded.tokenizer, source, n_samples=pool, seqlen=seqlen + 1, seed=seed)
    else:
        data = np.asarray(tokens, np.int32)
        pool, seqlen = int(data.shape[0]), int(data.shape[1]) - 1
    order = np.random.default_rng(seed)
    step_fn = _step_fn(loss)

    before = measure(comp, probe)
    history = [{"step": 0, "loss": None, **before}]
    if log:
        log(
            f"step 0: kl {before['kl']:.4g}  top1 {before['top1']:.3f}  var_p {before['var_p']:.4g}  "
            f"({n_train / 1e6:.1f} M trainable, {'LoRA r=' + str(lora_rank) if lora_rank else 'full latent'})"
        )
    for i in range(int(steps)):
        rows = order.choice(pool, size=min(batch, pool), replace=False)
        value, gnorm = step_fn(loaded.model, model, opt_w, opt_g, jnp.asarray(data[np.sort(rows)]))
        value = float(value)
        if eval_every and ((i + 1) % eval_every == 0) and i + 1 < steps:
            m = measure(model, probe)
            history.append({"step": i + 1, "loss": value, "grad_norm": float(gnorm), **m})
            if log:
                log(f"step {i + 1}: loss {value:.4g}  kl {m['kl']:.4g}  top1 {m['top1']:.3f}  var_p {m['var_p']:.4g}")
        elif log and (i + 1) % 10 == 0:
            log(f"step {i + 1}: loss {value:.4g}")
    out = exported(model)
    after = measure(out, probe)
    history.append({"step": int(steps), "loss": value if steps else None, **after})
    if log:
        log(f"step {steps}: kl {after['kl']:.4g}  top1 {after['top1']:.3f}  var_p {after['var_p']:.4g}")
    settings = {
        "steps": int(steps),
        "lr": float(lr),
        "ste_lr": float(ste_lr),
        "batch": int(batch),
        "seqlen": int(seqlen),
        "pool": int(pool),
        "loss": loss,
        "lora_rank": int(lora_rank),
        "seed": int(seed),
        "source": source,
        "trainable_params": n_train,
        "probe_windows": int(probe.tokens.shape[0]),
        "probe_seqlen": int(probe.tokens.shape[1]),
        "prompts": 0 if probe.prompts is None else int(probe.prompts.shape[0]),
        "new_tokens": 0 if probe.gen_base is None else int(probe.gen_base.shape[1]),
    }
    return Recovery(
        model=out,
        trained=model,
        before=before,
        after=after,
        history=history,
        constraints=constraint_report(comp, out),
        settings=settings,
    )
