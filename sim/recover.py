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

from hemorrhage.errors import UserError
from hemorrhage.sim.compress.quantizer import dequant, encode
from hemorrhage.sim.compress.storage import ActQuantLinear, MaskedLinear, NMSparseLinear, PackedLinear, _shape
from hemorrhage.sim.models.layers import Linear

LOSSES = ("kl", "text")
BIN_MARGIN = 0.49  # a latent seeded from the base stays this many grid steps from its code


class Latent(nnx.Param):
    """The fp32 latent weight of a pruned / dense layer (weight units), fully fine-tuned."""


class GridLatent(nnx.Param):
    """The latent of a quantized layer in units of its grid step: W = U ⊙ step."""


class Lora(nnx.Param):
    """LoRA factors A [r in], B [out r] of a pruned / dense layer (weight units)."""


class GridLora(nnx.Param):
    """LoRA factors of a quantized layer (grid-step units)."""


WEIGHT_UNITS = nnx.Any(Latent, Lora)  # trained with `lr`
GRID_UNITS = nnx.Any(GridLatent, GridLora)  # trained with `ste_lr`
TRAINED = nnx.Any(Latent, Lora, GridLatent, GridLora)


class Fixed(nnx.Variable):
    """What recovery must not change: masks, grids, the frozen latent under LoRA."""


class RecoveringLinear(nnx.Module):
    """A compressed layer made trainable with its constraints held (module docstring).

    Forward = the stored layer's forward (same effective weight at step 0)."""

    def __init__(self, layer, *, lora_rank: int = 0, lora_alpha: float | None = None, ref=None,
                 rngs: nnx.Rngs):
        """ref: the base model's dense weight of this layer [out in], or None.  A quantized
        latent starts at the base weight moved into its code's bin (QAT from the original
        weights; the forward is unchanged), so codes flip first where the base weight lies
        near a bin edge, not all at once when every latent leaves its bin centre."""
        self.kind = _kind(layer)
        packed = layer.inner if self.kind == "act8" else layer
        self.b = getattr(layer, "b", None)
        keep, self.nm = None, None
        if self.kind in ("packed", "act8"):
            w0 = packed.dequantized()
            self.bits, self.group_size = packed.bits, packed.group_size
            self.scale = Fixed(packed.scale[...])
            self.zero = None if packed.zero is None else Fixed(packed.zero[...])
            self.in_scale = None if packed.in_scale is None else Fixed(packed.in_scale[...])
        else:
            self.bits = self.group_size = self.scale = self.zero = self.in_scale = None
            if self.kind == "masked":
                w0, keep = layer.w[...], layer.keep()
            elif self.kind == "nm":
                w0 = layer.weight()
                onehot = jax.nn.one_hot(layer.idx[...].astype(jnp.int32), layer.m, dtype=jnp.int32)
                keep = onehot.sum(axis=2).reshape(w0.shape) > 0
                self.nm = (layer.n, layer.m)
            else:
                w0 = layer.w[...]
        self.d_out, self.d_in = (int(s) for s in w0.shape)
        self.keep = None if keep is None else Fixed(jnp.asarray(keep, bool))
        self.rank = int(lora_rank)
        self.grid = self.scale is not None
        u0 = jnp.asarray(w0, jnp.float32)
        if self.grid:  # train in grid steps: one step size moves every bit width alike
            u0 = u0 / self._step()
            if ref is not None:
                u_ref = jnp.asarray(ref, jnp.float32)
                if self.in_scale is not None:
                    u_ref = u_ref * self.in_scale[...][None, :]
                u0 = jnp.clip(u_ref / self._step(), u0 - BIN_MARGIN, u0 + BIN_MARGIN)
        if self.rank:
            kind = GridLora if self.grid else Lora
            self.w0 = Fixed(u0)
            self.lora_a = kind(jax.random.normal(rngs.params(), (self.rank, self.d_in), jnp.float32)
                               / np.sqrt(self.d_in))
            self.lora_b = kind(jnp.zeros((self.d_out, self.rank), jnp.float32))
            self.lora_scale = float(lora_alpha if lora_alpha is not None else self.rank) / self.rank
        else:
            self.w = (GridLatent if self.grid else Latent)(u0)

    # ---------------------------------------------------------------- the weight
    def _step(self):
        """The grid step of every weight, [out in] (the group's scale)."""
        return jnp.repeat(self.scale[...], self.group_size, axis=1)

    def latent(self):
        """The latent weight W (weight units) that the grid / mask project."""
        u = self.w0[...] + self.lora_scale * (self.lora_b[...] @ self.lora_a[...]) if self.rank else self.w[...]
        return u * self._step() if self.grid else u

    def _grouped(self, w):
        return w.reshape(self.d_out, self.d_in // self.group_size, self.group_size)

    def codes(self, w=None):
        """Codes of the latent on the layer's fixed grid, int32 [out in]."""
        w = self.latent() if w is None else w
        zero = None if self.zero is None else self.zero[...][..., None]
        return encode(self._grouped(w), self.scale[...][..., None], zero, self.bits).reshape(w.shape)

    def project(self, w):
        """Q(w): the nearest grid value of every latent weight (grid fixed)."""
        zero = None if self.zero is None else self.zero[...][..., None]
        q = dequant(self.codes(w).reshape(self._grouped(w).shape), self.scale[...][..., None], zero, self.bits)
        return q.reshape(w.shape)

    def weight(self):
        w = self.latent()
        if self.scale is not None:  # straight-through: Q(w) forward, identity backward
            w = w + jax.lax.stop_gradient(self.project(w) - w)
        if self.keep is not None:
            w = jnp.where(self.keep[...], w, 0.0)
        if self.in_scale is not None:
            w = w / self.in_scale[...][None, :]
        return w

    def __call__(self, x):
        if self.kind == "act8":  # W8A8's per-token int8 activations, straight-through
            amax = jnp.max(jnp.abs(x), axis=-1, keepdims=True)
            sx = jnp.where(amax > 0, amax / 127.0, 1.0)
            x = x + jax.lax.stop_gradient(jnp.clip(jnp.round(x / sx), -127, 127) * sx - x)
        y = x @ self.weight().T
        return y if self.b is None else y + self.b[...]

    # ---------------------------------------------------------------- back to storage
    def export(self):
        """The layer in its original storage type, holding the trained values."""
        b = None if self.b is None else nnx.Param(jnp.asarray(self.b[...]))
        w = self.latent()
        if self.kind in ("packed", "act8"):
            zero = None if self.zero is None else self.zero[...]
            in_scale = None if self.in_scale is None else self.in_scale[...]
            p = PackedLinear(self.codes(w), self.scale[...], zero, bits=self.bits, group_size=self.group_size,
                             bias=b, in_scale=in_scale)
            return ActQuantLinear(p) if self.kind == "act8" else p
        if self.kind == "masked":
            return MaskedLinear(w, self.keep[...], bias=b)
        if self.kind == "nm":
            return NMSparseLinear(w, self.keep[...], *self.nm, bias=b)
        out = nnx.eval_shape(lambda: Linear(self.d_in, self.d_out, bias=b is not None, rngs=nnx.Rngs(0)))
        out.w = nnx.Param(jnp.asarray(w, jnp.float32))
        out.b = b
        return out


def _kind(layer) -> str:
    if isinstance(layer, ActQuantLinear):
        return "act8"
    if isinstance(layer, PackedLinear):
        return "packed"
    if isinstance(layer, MaskedLinear):
        return "masked"
    if isinstance(layer, NMSparseLinear):
        return "nm"
    if isinstance(layer, Linear):
        return "dense"
    raise UserError(f"recover: no way to train a {type(layer).__name__} layer with its constraints held")


def trainable(comp, *, base=None, lora_rank: int = 0, lora_alpha: float | None = None, seed: int = 0):
    """A copy of `comp` whose block linears are RecoveringLinear (dropped ones left alone).
    `base`: the uncompressed model, whose weights seed the quantized latents (see ref)."""
    from hemorrhage.sim.compress.registry import linears

    refs = {} if base is None else {p: layer for p, _, _, layer in linears(base)}
    if isinstance(lora_rank, bool) or not isinstance(lora_rank, (int, np.integer)) or lora_rank < 0:
        raise UserError(f"--lora-rank must be a non-negative integer, got {lora_rank!r}")
    model = nnx.clone(comp)
    rngs = nnx.Rngs(seed)
    n = 0
    for path, parent, attr, layer in list(linears(model)):
        ref = refs.get(path)
        ref = ref.weight() if ref is not None and tuple(ref.weight().shape) == _shape(layer) else None
        setattr(parent, attr, RecoveringLinear(layer, lora_rank=int(lora_rank), lora_alpha=lora_alpha, ref=ref,
                                               rngs=rngs))
        n += 1
    if not n:
        raise UserError("recover: the compressed model has no linear layer left to train")
    return model


def exported(model):
    """A copy of a trainable model with every RecoveringLinear back in its storage type."""
    out = nnx.clone(model)
    for i, block in enumerate(out.layers):
        for part in ("attn", "mlp"):
            sub = getattr(block, part)
            for attr in ("q", "k", "v", "qkv", "o", "gate", "up", "down", "fc", "proj"):
                layer = getattr(sub, attr, None)
                if isinstance(layer, RecoveringLinear):
                    setattr(sub, attr, layer.export())
    return out


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

    @nnx.jit
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
@nnx.jit
def _window_metrics(model, tokens, z_base):
    """Token sums over one batch of windows (positions 0..T-2, as validate/measure.py)."""
    from hemorrhage.validate.metrics import compare_logits

    z = model(tokens)[0][:, :-1]
    zb = z_base[:, :-1]
    V = z.shape[-1]
    m = compare_logits(zb.reshape(-1, V), z.reshape(-1, V))
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


def make_probe(loaded, *, windows: int = 4, seqlen: int = 128, prompts: int = 8, prompt_len: int = 16,
               new_tokens: int = 32, source: str = "wiki") -> Probe:
    """Held-out windows of `source` and, after them, `prompts` prompts of `prompt_len` tokens."""
    from hemorrhage.sim.data import eval_windows

    if windows < 1 or seqlen < 2 or prompts < 0 or prompt_len < 1 or new_tokens < 1:
        raise UserError("recover: need windows ≥ 1, seqlen ≥ 2, prompts ≥ 0, prompt_len ≥ 1, new_tokens ≥ 1")
    allw = eval_windows(loaded.tokenizer, source, seqlen=max(seqlen, prompt_len), stride=max(seqlen, prompt_len),
                        max_windows=windows + prompts)
    rest = allw[windows:] if len(allw) >= windows + prompts else allw  # a short split: reuse windows
    p = np.asarray(rest[:prompts, :prompt_len]) if prompts else None
    return probe_from_tokens(loaded.model, allw[:windows, :seqlen], p, new_tokens)


def probe_from_tokens(base, tokens, prompts=None, new_tokens: int = 32) -> Probe:
    """The base's side of the measurement on given windows [n T] and prompts [K P]."""
    from hemorrhage.sim.generate import generate
    from hemorrhage.sim.models import forward

    tokens = np.asarray(tokens, np.int32)
    chunk = 2
    z_base = [forward(base, jnp.asarray(tokens[i:i + chunk])) for i in range(0, len(tokens), chunk)]
    gen = None
    if prompts is not None:
        prompts = np.asarray(prompts, np.int32)
        gen = np.asarray(generate(base, jnp.asarray(prompts), new_tokens))
    return Probe(tokens=tokens, z_base=z_base, prompts=prompts, gen_base=gen, chunk=chunk)


def measure(model, probe: Probe) -> dict:
    from hemorrhage.sim.generate import generate

    sums: dict[str, float] = {}
    for j, i in enumerate(range(0, len(probe.tokens), probe.chunk)):
        part = _window_metrics(model, jnp.asarray(probe.tokens[i:i + probe.chunk]), probe.z_base[j])
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
            masks_exact &= bool(np.array_equal(np.asarray(old.idx[...]), np.asarray(layer.idx[...]))
                                and np.all(w_new[~kept.reshape(w_old.shape)] == 0))
        inner_o = old.inner if isinstance(old, ActQuantLinear) else old
        inner_n = layer.inner if isinstance(layer, ActQuantLinear) else layer
        if isinstance(inner_n, PackedLinear):
            same = np.array_equal(np.asarray(inner_o.scale[...]), np.asarray(inner_n.scale[...]))
            if inner_o.zero is not None:
                same &= np.array_equal(np.asarray(inner_o.zero[...]), np.asarray(inner_n.zero[...]))
            grids_fixed &= bool(same and inner_o.bits == inner_n.bits and inner_o.group_size == inner_n.group_size)
            c_o, c_n = np.asarray(inner_o.codes()), np.asarray(inner_n.codes())
            on_grid &= bool(c_n.min() >= 0 and c_n.max() <= 2 ** inner_n.bits - 1)
            codes_changed += int((c_o != c_n).sum())
            n_codes += c_o.size
    return {"masks_exact": bool(masks_exact), "grids_fixed": bool(grids_fixed), "codes_in_range": bool(on_grid),
            "weights_changed": moved / total if total else 0.0,
            "codes_changed": codes_changed / n_codes if n_codes else None}


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
        out = {"settings": self.settings, "constraints": self.constraints,
               "before": self.before, "after": self.after, "history": self.history}
        for k in ("kl", "top1", "var_p", "kl_pred", "ppl", "gen_prefix_agreement", "gen_token_agreement"):
            if k in self.before:
                out[f"{k}_before"], out[f"{k}_after"] = self.before[k], self.after[k]
        return out


def recover(loaded, comp, *, steps: int = 50, lr: float = 1e-4, ste_lr: float = 0.005, ste_opt: str = "adam",
            batch: int = 4,
            seqlen: int = 128,
            pool: int = 64, loss: str = "kl", lora_rank: int = 0, lora_alpha: float | None = None,
            seed: int = 0, source: str = "wiki", probe: Probe | None = None, eval_every: int | None = None,
            tokens=None, log=None) -> Recovery:
    """Fine-tune `comp` towards `loaded.model` (or the text) with masks and grids fixed.

    Training windows: `pool` windows of seqlen+1 tokens of the train split
    (`calibration_tokens`, seed), or the given `tokens` [n, T+1]; each step takes `batch`
    of them, drawn without replacement by the seed."""
    from hemorrhage.sim.data import calibration_tokens

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
        log(f"step 0: kl {before['kl']:.4g}  top1 {before['top1']:.3f}  var_p {before['var_p']:.4g}  "
            f"({n_train / 1e6:.1f} M trainable, {'LoRA r=' + str(lora_rank) if lora_rank else 'full latent'})")
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
    settings = {"steps": int(steps), "lr": float(lr), "ste_lr": float(ste_lr), "batch": int(batch),
                "seqlen": int(seqlen), "pool": int(pool),
                "loss": loss, "lora_rank": int(lora_rank), "seed": int(seed), "source": source,
                "trainable_params": n_train, "probe_windows": int(probe.tokens.shape[0]),
                "probe_seqlen": int(probe.tokens.shape[1]),
                "prompts": 0 if probe.prompts is None else int(probe.prompts.shape[0]),
                "new_tokens": 0 if probe.gen_base is None else int(probe.gen_base.shape[1])}
    return Recovery(model=out, trained=model, before=before, after=after, history=history,
                    constraints=constraint_report(comp, out), settings=settings)
