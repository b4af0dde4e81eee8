"""Phase 1 of a measurement: everything about the base that no compressed model changes.

Computed once per (model, MeasureConfig) in a process (`base_cache` memoises) and, for a
sweep, saved beside its output as an .npz and reused by a rerun: the two-phase scheme of
llama.cpp's KL-divergence mode.  The file is written atomically and only reused when it
was made for the same model (name, folder, weight files) and the same config.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hemorrhage.errors import UserError

CACHE_FORMAT = 4  # 3: windows and MC questions start with BOS where the tokenizer does (sim.data.adds_bos);
# 4: gen_finite, whether the base's generation logits were finite (validate.steps.decode_checked)


@dataclass
class BaseCache:
    """The base's side of every metric in validate/measure.py."""

    config: object  # validate.measure.MeasureConfig
    meta: dict  # model, path, fingerprint of the weights
    tokens: np.ndarray  # [B T] the measured windows
    hs: np.ndarray  # [L+1 N d] base residuals at the scored positions (only h_L unless per_layer)
    nll: np.ndarray  # [N]
    mc: dict = field(default_factory=dict)  # arrays, see validate.mc.mc_inputs
    prompts: np.ndarray | None = None  # [K P]
    gens: dict = field(default_factory=dict)  # strategy -> [K N] base continuations
    path_h: np.ndarray | None = None  # [K N d] base h_L along its greedy path (validate.steps)
    sparsity: dict = field(default_factory=dict)  # hoyer, gate_off per scored token [N]
    gen_finite: dict = field(default_factory=dict)  # strategy -> [K N] bool: logits of each base token finite

    @property
    def targets(self) -> np.ndarray:
        return self.tokens[:, 1:].reshape(-1)

    @property
    def gen(self) -> np.ndarray | None:
        """The base's greedy continuations [K N]."""
        return self.gens.get("greedy")

    # -- disk (the sweep's phase 1 output) --
    def save(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {
            "tokens": self.tokens,
            "hs": self.hs,
            "nll": self.nll,
            "meta": np.asarray(json.dumps({"meta": self.meta, "config": self.config.as_dict()}, sort_keys=True)),
        }
        arrays.update({f"mc_{k}": v for k, v in self.mc.items()})
        arrays.update({f"gen_{k}": v for k, v in self.gens.items()})
        arrays.update({f"sp_{k}": v for k, v in self.sparsity.items()})
        arrays.update({f"gfin_{k}": v for k, v in self.gen_finite.items()})
        if self.prompts is not None:
            arrays["prompts"] = self.prompts
        if self.path_h is not None:
            arrays["path_h"] = self.path_h
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)  # a killed run leaves the old file or none, never half of one
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: Path, loaded, config) -> "BaseCache | None":
        """The cache at `path` if it was made for this model and config, else None."""
        try:
            with np.load(path, allow_pickle=False) as z:
                head = json.loads(str(z["meta"]))
                if head["meta"] != model_fingerprint(loaded) or head["config"] != config.as_dict():
                    return None
                pick = lambda pre: {k[len(pre) :]: z[k] for k in z.files if k.startswith(pre)}  # noqa: E731
                return cls(
                    config,
                    head["meta"],
                    z["tokens"],
                    z["hs"],
                    z["nll"],
                    pick("mc_"),
                    z["prompts"] if "prompts" in z.files else None,
                    pick("gen_"),
                    z["path_h"] if "path_h" in z.files else None,
                    pick("sp_"),
                    pick("gfin_"),
                )
        except (OSError, ValueError, KeyError, json.JSONDecodeError, EOFError):
            return None


def model_fingerprint(loaded) -> dict:
    """What identifies the base: its name, folder, weight files (name, size, mtime) and config."""
    path = Path(loaded.path)
    files = []
    for f in sorted(path.glob("*")):
        if f.suffix in (".safetensors", ".bin", ".json") and f.is_file():
            st = f.stat()
            files.append([f.name, st.st_size, st.st_mtime_ns])
    digest = hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]
    out = {"model": str(loaded.name), "path": str(path.resolve()), "files": digest, "format": CACHE_FORMAT}
    dtype = getattr(loaded, "dtype", "float32")
    if dtype != "float32":  # the same weights run in bf16/fp16 are another base (fp32 caches stay valid)
        out["dtype"] = dtype
    return out


def scored_trace(model, tokens, all_layers: bool) -> tuple[np.ndarray, dict]:
    """Residuals at the scored positions (all but each window's last): [L+1 or 1, N, d], and
    the per-token activation sparsity there (validate.strata.token_sparsity)."""
    from hemorrhage.sim.shard import on_active_mesh
    from hemorrhage.validate.strata import token_sparsity

    tr = model.trace(on_active_mesh(tokens))
    h = tr.h[:, :, :-1, :]
    h = h.reshape(h.shape[0], -1, h.shape[-1])
    return np.asarray(h if all_layers else h[-1:]), token_sparsity(tr)


def prompts_for(loaded, config) -> np.ndarray | None:
    """The generation prompts: the first `prompt_len` tokens of the held-out windows that
    FOLLOW the measured ones."""
    from hemorrhage.sim.windows import eval_windows

    if config.prompts == 0:
        return None
    w = eval_windows(
        loaded.tokenizer,
        config.source,
        seqlen=config.prompt_len,
        stride=config.seqlen,
        max_windows=config.windows + config.prompts,
    )
    p = w[config.windows :]
    if len(p) == 0:
        raise UserError(
            f"the held-out {config.source} text has no room for prompts after "
            f"{config.windows} windows of {config.seqlen} tokens"
        )
    return p


def compute_base(loaded, config) -> BaseCache:
    """Phase 1: one trace, the NLL, the MC scores, the base's continuations and path."""
    import jax.numpy as jnp

    from hemorrhage.sim.windows import eval_windows
    from hemorrhage.validate import measure_jit as mj
    from hemorrhage.validate.mc import choice_scores, mc_inputs
    from hemorrhage.validate.steps import decode_checked, path_hidden

    max_pos = int(getattr(loaded.cfg, "max_positions", 1 << 30))
    if config.seqlen > max_pos or (config.prompts and config.prompt_len + config.new_tokens > max_pos):
        raise UserError(f"the model has {max_pos} positions: lower --seqlen / --prompt-len + --new-tokens")
    tokens = eval_windows(
        loaded.tokenizer, config.source, seqlen=config.seqlen, stride=config.seqlen, max_windows=config.windows
    )
    model = loaded.model
    hs, sparsity = scored_trace(model, tokens, config.per_layer)
    nll = np.asarray(
        mj.nll(
            model, jnp.asarray(hs[-1]), jnp.asarray(tokens[:, 1:].reshape(-1)), chunk=mj.chunk_size(hs.shape[1], 128)
        )
    )
    mc = mc_inputs(loaded, config)
    if mc:
        mc["scores"], mc["ans_logp"] = choice_scores(model, mc)
    prompts = prompts_for(loaded, config)
    gens, gen_finite, path_h = {}, {}, None
    if prompts is not None:
        for s in config.strategies:
            gens[s], gen_finite[s] = decode_checked(model, prompts, config.new_tokens, s, config.gen_seed)
        if config.steps:
            path_h = path_hidden(model, prompts, gens["greedy"])
    return BaseCache(
        config, model_fingerprint(loaded), tokens, hs, nll, mc, prompts, gens, path_h, sparsity, gen_finite
    )


_MEMO: dict = {}


def base_cache(loaded, config, path: Path | None = None, *, log=None) -> BaseCache:
    """The base phase, memoised per (model object, config) in this process and, with `path`,
    on disk (loaded when it matches the model and config, else recomputed and rewritten)."""
    key = (id(loaded.model), config)
    hit = _MEMO.get(key)
    if hit is not None and hit[0] is loaded.model:
        if path is not None and not Path(path).exists():
            hit[1].save(path)
        return hit[1]
    base = BaseCache.load(path, loaded, config) if path is not None and Path(path).exists() else None
    if base is not None:
        log and log(f"base phase: reused {path}")
    else:
        log and log("base phase: computing base logits, MC scores and generations")
        base = compute_base(loaded, config)
        if path is not None:
            base.save(path)
            log and log(f"base phase: saved {path}")
    while len(_MEMO) >= 2:
        _MEMO.pop(next(iter(_MEMO)))
    _MEMO[key] = (loaded.model, base)
    return base
