"""The clean fp32 control: a small Llama trained from scratch here, on the packaged real text.

Every packaged real checkpoint is a 4–5-bit GGUF, so its fp32 "base" already carries
quantization noise.  The control's base never saw a quantizer: it is trained in fp32 with
optax on the *train* splits of the packaged Wikipedia excerpt and Shakespeare (the
held-out splits are never seen), with the same nnx Llama code the real models run, and
saved as a standard Hugging Face folder (config.json + model.safetensors + tokenizer), so
`--model control` and transformers both load it.

    spec = ControlSpec()                         # the default control (≈4 M parameters)
    report = train_control(spec, seed=0, out_dir=path)
    path = control_dir()                         # the cached control, trained on first use

Recipe (deterministic from the seed: same seed, spec and machine -> the same weights):
    tokenizer   byte-level BPE (`tokenizers`), `vocab_size` tokens, trained on both train
                splits; one special token <|endoftext|> (bos = eos = pad), never inserted
                into the text, so windows look like `eval_windows` (no BOS)
    data        every step: `batch` windows of seqlen+1 tokens at offsets drawn by
                np.random.default_rng(seed), a `wiki_share` of them from Wikipedia, the
                rest from Shakespeare; loss = next-token cross-entropy on all positions
    model       Llama (RMSNorm, RoPE, GQA, SwiGLU, tied embeddings), init N(0, 0.02²),
                the residual-branch outputs (o, down) scaled by 1/√(2L)
    optimizer   AdamW (β = 0.9, 0.95; weight decay on matrices), global-norm clip 1; learning
                rate warmup–stable–decay: linear warmup, constant, linear decay to lr/10 over
                the last `cooldown` share of the steps (`lr_at`)
    report      held-out perplexity on Wikipedia and Shakespeare (the project's
                `eval_windows`), next to a unigram model on the same scored tokens
                (add-one smoothed counts of the train tokens), and sample generations

`minutes` (a wall-clock budget): while the rate is still constant, the step count is
re-fitted every step to the time left (median step time); the decay then starts where
the fitted count puts it.  Because the rate before the decay does not depend on the
count, the result is exactly the model a fixed `steps=<count>` run gives: the count is
recorded in hemorrhage.json (`reproduce`).  On an idle 2-core CPU the default 1200 steps
fit 15 minutes; a busy one gets fewer, and says so.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from hemorrhage.errors import UserError
from hemorrhage.sim.control_data import (  # the recipe's data half
    batch_starts,
    encode,
    heldout_report,
    make_batch,
    samples,
    train_texts,
    train_tokenizer,
)

from hemorrhage.sim.control_recipe import (  # the recipe's model and optimizer half
    QUICK,
    ControlSpec,
    decay_start,
    hf_config,
    init_model,
    lr_at,
    optimizer,
    set_lr,
    train_step,
)

CONTROL = "control"


def _say(quiet: bool, msg: str) -> None:
    if not quiet:
        print(f"[hemorrhage] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- training
def train_control(
    spec: ControlSpec,
    *,
    seed: int = 0,
    out_dir: str | Path,
    minutes: float | None = None,
    quiet: bool = False,
    evaluate: bool = True,
) -> dict:
    """Train the control and write it (atomically) to out_dir; returns the report.

    evaluate=False skips the held-out report and the samples (they are then None / [])."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from safetensors.numpy import save_file

    from hemorrhage.sim.outputs import atomic_dir
    from hemorrhage.sim.models import ModelConfig, export_state
    from hemorrhage.sim.timings import without_timings

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")
    if minutes is not None and not minutes > 0:
        raise UserError(f"--minutes must be > 0, got {minutes}")
    t_start = time.perf_counter()
    texts = train_texts(spec)
    _say(
        quiet,
        f"control: fitting a {spec.vocab_size}-token byte-level BPE on the train splits "
        f"({sum(map(len, texts.values())) / 1e6:.1f} M characters)",
    )
    tokenizer = train_tokenizer(texts, spec.vocab_size)
    streams = {src: encode(tokenizer, t) for src, t in texts.items()}
    for src, ids in streams.items():
        if len(ids) < spec.seqlen + 1:
            raise UserError(f"control: the {src} train text has {len(ids)} tokens, fewer than seqlen+1")
    hf = hf_config(spec, tokenizer)
    cfg = ModelConfig.from_hf(hf)
    model = init_model(cfg, seed)
    n_params = int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))
    step_fn = train_step()
    width = spec.seqlen + 1
    lengths = {k: len(v) for k, v in streams.items()}

    steps = spec.steps
    t_setup = time.perf_counter() - t_start
    deadline = None if minutes is None else t_start + 60.0 * minutes - _reserve_seconds(spec)
    opt = optimizer(model, spec)
    rng = np.random.default_rng(seed)
    _say(
        quiet,
        f"control: training {n_params / 1e6:.2f} M parameters (d={spec.d_model}, {spec.n_layers} layers, "
        f"GQA {spec.n_heads}/{spec.n_kv_heads}, vocab {spec.vocab_size}) for {steps} steps of "
        f"{spec.batch}×{spec.seqlen} tokens, seed {seed}" + (f", within {minutes:g} minutes" if minutes else ""),
    )
    curve, times, curve_seconds = [], [], []
    t_train = time.perf_counter()
    i = 0
    while i < steps:
        if deadline is not None and len(times) >= 5 and i < decay_start(steps, spec):
            steps = _fit_steps(i, steps, spec, np.median(times[-20:]), deadline - time.perf_counter())
        set_lr(opt, lr_at(i, steps, spec))
        batch = jnp.asarray(make_batch(streams, batch_starts(rng, lengths, spec), width))
        t0 = time.perf_counter()
        loss, gnorm = step_fn(model, opt, batch)
        loss.block_until_ready()
        if i:  # the first step compiles
            times.append(time.perf_counter() - t0)
        i += 1
        if i == 1 or i % spec.log_every == 0 or i == steps:
            loss = float(loss)
            el = time.perf_counter() - t_train
            curve.append({"step": i, "loss": loss, "grad_norm": float(gnorm), "lr": lr_at(i - 1, steps, spec)})
            curve_seconds.append(round(el, 1))
            if not np.isfinite(loss):
                raise UserError(f"control: the training loss became {loss} at step {i}; lower --lr")
            _say(
                quiet,
                f"control: step {i}/{steps}  loss {loss:.3f}  "
                f"({i * spec.batch * spec.seqlen / max(el, 1e-9):.0f} tokens/s, {el:.0f} s)",
            )
    if steps < spec.steps:
        _say(
            quiet,
            f"control: the {minutes:g}-minute budget allowed {steps} of {spec.steps} steps on this CPU "
            f"(recorded; `--steps {steps} --minutes 0` reproduces this model, --minutes 0 runs all)",
        )
    train_seconds = time.perf_counter() - t_train

    held = heldout_report(model, tokenizer, streams, spec) if evaluate else None
    report = {
        "seed": int(seed),
        "spec": dataclasses.asdict(spec),
        "steps": int(steps),
        "n_params": n_params,
        "n_params_non_embedding": n_params - spec.vocab_size * spec.d_model,
        "tokens_seen": int(steps * spec.batch * spec.seqlen),
        "train_tokens": {k: int(v) for k, v in lengths.items()},
        "loss_curve": curve,
        "heldout": held,
        "samples": samples(model, tokenizer, spec.sample_prompts) if evaluate else [],
        "platform": f"{jax.default_backend()}, {jax.device_count()} device(s)",
    }
    # wall-clock numbers apart (sim.timings): not in hemorrhage.json, in --json only with --timings
    report["timings"] = {
        "train_seconds": round(train_seconds, 1),
        "setup_seconds": round(t_setup, 1),
        "loss_curve_seconds": curve_seconds,
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    base_note = (
        f"clean fp32, trained by hemorrhage train-control (seed {seed}, {steps} steps); its base never saw a quantizer"
    )
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf, indent=2))
        save_file(export_state(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(str(tmp))
        prov = {
            "name": CONTROL,
            "base_note": base_note,
            "trained_by": "hemorrhage train-control",
            "reproduce": _reproduce(spec, seed, steps),
            "data": "train splits of the packaged Wikipedia excerpt (gensim) and Shakespeare; held-out splits unseen",
            **without_timings(report),
        }
        (tmp / "hemorrhage.json").write_text(json.dumps(prov, indent=2))
    _say(quiet, f"control: saved to {out_dir} ({report['timings']['total_seconds']:.0f} s in all)")
    return {**report, "path": str(out_dir), "base_note": base_note}


def _reproduce(spec: ControlSpec, seed: int, steps: int) -> str:
    cmd = f"hemorrhage train-control --seed {seed} --steps {steps} --minutes 0"
    ref = QUICK if spec.replace(steps=QUICK.steps, lr=QUICK.lr) == QUICK else ControlSpec()
    if spec.replace(steps=ref.steps, lr=ref.lr) != ref:
        return f"train_control({spec!r}, seed={seed})"  # a custom spec: only the Python call says it all
    cmd += " --quick" if ref is QUICK else ""
    return cmd + (f" --lr {spec.lr:g}" if spec.lr != ref.lr else "")


def _reserve_seconds(spec: ControlSpec) -> float:
    """Time kept back from the budget for the held-out report, the samples and saving."""
    return 20.0 + 0.5 * spec.eval_windows


def _fit_steps(i: int, steps: int, spec: ControlSpec, per_step: float, left: float) -> int:
    """The step count that fits the time left, never above the spec's, and never one whose
    decay would have started before step i (the rates used so far stay those of the result)."""
    fit = min(spec.steps, i + max(1, int(left / per_step)))
    while decay_start(fit, spec) < i:
        fit += 1
    return fit


# ---------------------------------------------------------------- the cached control
def control_path(quick: bool = False) -> Path:
    from hemorrhage.sim.hub.fetch import cache_dir

    return cache_dir() / "models" / (CONTROL + ("-quick" if quick else ""))


def is_trained(path: Path) -> bool:
    return (path / "hemorrhage.json").is_file() and (path / "model.safetensors").is_file()


def control_dir(*, quiet: bool = False) -> Path:
    """The cached control folder; trained (default spec, seed 0) on first use."""
    from hemorrhage.sim.hub.fetch import build_once

    path = control_path()
    build_once("control", lambda: is_trained(path), lambda: _train_default_control(path, quiet=quiet))
    return path


def _train_default_control(path: Path, *, quiet: bool) -> None:
    print(
        f"[hemorrhage] no control model in {path} yet: training it now (hemorrhage train-control, "
        "seed 0; about 15 minutes on a 2-core CPU, once)",
        file=sys.stderr,
        flush=True,
    )
    train_control(ControlSpec(), seed=0, out_dir=path, minutes=15.0, quiet=quiet)
