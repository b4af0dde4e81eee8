"""The control's recipe: its spec, its Llama config, initialisation, learning-rate schedule and
optimizer (sim/train.py runs the training; sim/control_data.py holds the data half).  The
recipe itself is documented in sim/train.py's docstring.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from hemorrhage.errors import UserError
from hemorrhage.sim.control_data import SPECIAL


@dataclass(frozen=True)
class ControlSpec:
    vocab_size: int = 4096
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int = 4
    d_ff: int = 768
    seqlen: int = 128  # training window (tokens); positions beyond are extrapolation
    max_positions: int = 1024
    batch: int = 16
    steps: int = 1200
    lr: float = 3e-3
    warmup: int = 100
    cooldown: float = 0.2  # share of the steps spent decaying the rate to lr/10
    weight_decay: float = 0.1
    wiki_share: float = 0.5
    rope_theta: float = 10000.0
    max_chars: int | None = None  # use only the first max_chars characters of each train split
    eval_windows: int = 64  # held-out windows of `seqlen` tokens per source for the report
    log_every: int = 100
    sample_prompts: int = 2  # prompts continued in the report (greedy and sampled)

    def __post_init__(self):
        for name in (
            "vocab_size",
            "d_model",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "d_ff",
            "seqlen",
            "batch",
            "steps",
            "eval_windows",
            "log_every",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise UserError(f"control: {name} must be a positive integer, got {v!r}")
        if self.d_model % self.n_heads or self.n_heads % self.n_kv_heads:
            raise UserError("control: d_model must divide into n_heads heads, n_heads into n_kv_heads groups")
        if (self.d_model // self.n_heads) % 2:
            raise UserError("control: the head dimension must be even (RoPE)")
        if not self.lr > 0 or self.warmup < 0 or self.weight_decay < 0 or not 0 < self.cooldown <= 1:
            raise UserError("control: need lr > 0, warmup ≥ 0, weight_decay ≥ 0, 0 < cooldown ≤ 1")
        if not 0.0 <= self.wiki_share <= 1.0:
            raise UserError(f"control: wiki_share must be in [0, 1], got {self.wiki_share}")
        if self.vocab_size < 300:
            raise UserError("control: vocab_size must be ≥ 300 (256 bytes + merges + the special token)")

    def replace(self, **kw) -> "ControlSpec":
        return dataclasses.replace(self, **{k: v for k, v in kw.items() if v is not None})


# The quick mode the tests run: a tiny model, a tokenizer fitted on a text prefix, 40 steps.
QUICK = ControlSpec(
    vocab_size=512,
    d_model=64,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    d_ff=128,
    seqlen=64,
    max_positions=256,
    batch=8,
    steps=40,
    lr=1e-2,
    warmup=5,
    max_chars=200_000,
    eval_windows=8,
    log_every=10,
    sample_prompts=1,
)


def hf_config(spec: ControlSpec, tokenizer) -> dict:
    """A transformers LlamaConfig dict for the spec (what config.json holds)."""
    from transformers import LlamaConfig

    sid = tokenizer.convert_tokens_to_ids(SPECIAL)
    cfg = LlamaConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.d_model,
        intermediate_size=spec.d_ff,
        num_hidden_layers=spec.n_layers,
        num_attention_heads=spec.n_heads,
        num_key_value_heads=spec.n_kv_heads,
        head_dim=spec.d_model // spec.n_heads,
        hidden_act="silu",
        max_position_embeddings=spec.max_positions,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=sid,
        eos_token_id=sid,
        pad_token_id=sid,
        attention_bias=False,
        mlp_bias=False,
        initializer_range=0.02,
        rope_parameters={"rope_type": "default", "rope_theta": float(spec.rope_theta)},
    )
    hf = cfg.to_dict()
    for key in ("_name_or_path", "transformers_version"):
        hf.pop(key, None)
    hf["architectures"] = ["LlamaForCausalLM"]
    hf["dtype"] = "float32"
    return hf


def init_model(cfg, seed: int):
    import jax.numpy as jnp

    from hemorrhage.sim.models import build

    model = build(cfg, seed)
    scale = 1.0 / math.sqrt(2 * cfg.n_layers)
    for block in model.layers:
        for lin in (block.attn.o, block.mlp.down):
            lin.w.set_value(lin.w[...] * jnp.float32(scale))
    return model


def lr_at(t: int, steps: int, spec: ControlSpec) -> float:
    """Warmup–stable–decay: linear warmup over `warmup` steps, constant, then a linear decay
    to lr/10 over the last `cooldown` share of the steps.  Before the decay starts the rate
    does not depend on `steps`, which is what lets a time budget pick the step count late
    and still be reproduced exactly by a fixed count."""
    ramp = (t + 1) / spec.warmup if spec.warmup else 1.0
    start = decay_start(steps, spec)
    decay = 1.0 if t < start else 1.0 - 0.9 * (t - start + 1) / (steps - start)
    return spec.lr * min(ramp, 1.0, decay)


def decay_start(steps: int, spec: ControlSpec) -> int:
    return steps - max(1, int(round(spec.cooldown * steps)))


def optimizer(model, spec: ControlSpec):
    """AdamW whose learning rate is set from outside before every step (`set_lr`)."""
    import jax
    import optax
    from flax import nnx

    adamw = optax.inject_hyperparams(optax.adamw, static_args=("mask",))
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        adamw(
            learning_rate=spec.lr,
            b1=0.9,
            b2=0.95,
            weight_decay=spec.weight_decay,
            mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p),
        ),
    )
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


def set_lr(opt, lr: float) -> None:
    import jax.numpy as jnp

    opt.opt_state[1].hyperparams["learning_rate"].set_value(jnp.asarray(lr, jnp.float32))


def train_step():
    import optax
    from flax import nnx

    from hemorrhage.sim.jit import jit

    @jit
    def step(model, opt, batch):
        def loss_fn(m):
            z = m(batch[:, :-1])[0]
            return optax.softmax_cross_entropy_with_integer_labels(z, batch[:, 1:]).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss, optax.tree.norm(grads)

    return step
