"""One compressed model against its base: the numbers a sweep row is made of.

    base = base_cache(loaded, MeasureConfig())          # base-only work, once (memoised)
    comp, record = compress_from_args(loaded, "magnitude", sparsity=0.5)
    row = measure(loaded, comp, base, record)           # JSON-able dict

Every quantity compares the compressed model with ITS BASE (for the packaged models the
base is the dequantized GGUF, see `loaded.base_note`), on held-out data never used for
calibration.  T = 1 throughout.  Definitions:

Held-out text: `eval_windows(tokenizer, source, seqlen, stride=seqlen, windows)`, i.e. the
first `windows` NON-OVERLAPPING windows of `seqlen` tokens of the held-out split (default
4 × 128 of Wikipedia, no BOS).  In each window every token after the first is scored: the
prediction at position t (0 ≤ t ≤ seqlen−2) for token t+1, so N = windows·(seqlen−1)
scored positions ("tokens" below).

    ppl_base, ppl    exp(mean over the N tokens of −log p(token | its window prefix)), of the
                     base and of the compressed model (nll_base, nll: the mean NLL itself)
    kl               mean over the N positions of KL(p ‖ q) at the final layer, p base, q
                     compressed next-token distributions (full vocabulary)
    top1_agreement   share of the N positions where argmax p = argmax q
    cos_h            mean cos(h_L, h_L + Δh_L), h_L the last residual (input of the final norm)
    cos_z, cos_p     mean cos of the logits z and of the probabilities p
    var_p_dz         mean Var_{i∼p}(Δz_i), Δz = z_compressed − z_base;  kl_pred = var_p_dz / 2
                     is Theorem 3's prediction of kl (arXiv 2603.24652); var_r_dz the same
                     with r = p²/‖p‖² (Theorem 2: 1 − cos_p ≈ var_r_dz / 2)
    per_layer        the same token means at every layer's logit lens, arrays of length L+1
                     (index l = h_l; index L equals the final-layer numbers):
                     validate.metrics.per_layer (cos_h, cos_z, cos_p, kl, kl_pred, var_p,
                     var_r, top1, one_minus_cos_h_pred, one_minus_cos_p_pred)

Multiple choice (`mc_items(task, mc_items, mc_seed)` for each task in mc_tasks; default the
Wikipedia `cloze` task, 24 items; `navigate`, `sports_understanding`, `mmlu` (answer letters
" A".." D") also work).  The question is tokenized alone (no special tokens; its last
`mc_max_question` tokens kept), each choice alone (its leading space included), and a
choice's score is the SUM of the log-probabilities of its tokens given the question and its
own earlier tokens.  The question is run once and its KV cache reused for every choice.

    mc_acc_base, mc_acc   share of items whose argmax-score choice is the correct one
    mc_agreement          share of items where the compressed argmax equals the base argmax
                          (an item whose compressed scores are NaN/inf counts as disagreeing)
    mc_kl_choices         mean over items of KL(π_base ‖ π_comp), π = softmax of the choice
                          scores: p renormalised over the answer subspace.  For one-token
                          choices (MMLU letters) this is exactly the seed's "renormalise p over
                          the answer tokens"; for multi-token choices it is the same over whole
                          continuations.
    mc_kl_full            mean over items of the full-vocabulary KL(p ‖ q) of the next-token
                          distribution at the answer position (the question's last token)
    mc_by_task            the same, per task

Generation: K = `prompts` prompts, the first `prompt_len` (16) tokens of the held-out windows
that FOLLOW the measured ones (starts windows·seqlen, (windows+1)·seqlen, …); base and
compressed each generate `new_tokens` (32) tokens greedily from them with a KV cache (EOS is
not special: raw token ids are compared).

    first_divergence      per prompt, the first step d ∈ [0, N) where the two continuations
                          differ, N = new_tokens if they never do
    first_divergence_mean mean of that over prompts (N = no divergence anywhere)
    gen_prefix_agreement  first_divergence_mean / N: the share of the continuation that is
                          identical before the first differing token
    gen_token_agreement   share of the K·N positions with the same token (after a divergence
                          the compressed model runs on its own context, so this mostly counts
                          re-convergence)
    gen_identical         share of prompts whose whole continuation is identical

Collapse: NaN/inf are results, never errors.  `collapsed` is true when the compressed
model's scored logits, NLL or MC scores are not all finite (`nonfinite_tokens` counts the
positions); the numbers keep their NaN/inf (the JSON is written with allow_nan, so NaN and
Infinity appear literally) and `notes` says which ones are affected and why.

Base-only quantities (the base's residuals on the windows, its NLL, MC scores and answer-
position log-probabilities, its generations) live in a `BaseCache`: computed once per
(model, config) in a process (`base_cache` memoises) and saved/loaded as an .npz by the
sweep, the two-phase scheme of llama.cpp's KL-divergence mode.  Everything is deterministic:
the same model, settings and config give bit-identical numbers (no timings in the output).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hemorrhage.errors import UserError

CACHE_FORMAT = 1
# per-layer metrics kept in sweep rows (the full set stays in `measure`'s output)
ROW_PER_LAYER = ("kl", "cos_h", "top1")


@dataclass(frozen=True)
class MeasureConfig:
    """How much is measured.  The defaults take a few minutes on a laptop CPU for a 135M model."""

    windows: int = 4
    seqlen: int = 128
    source: str = "wiki"
    mc_tasks: tuple[str, ...] = ("cloze",)
    mc_items: int = 24  # per task
    mc_seed: int = 0
    mc_max_question: int = 256  # question tokens kept (the last ones)
    prompts: int = 8
    prompt_len: int = 16
    new_tokens: int = 32
    per_layer: bool = True

    def __post_init__(self):
        checks = [(self.windows >= 1, "--windows must be >= 1"), (self.seqlen >= 2, "--seqlen must be >= 2"),
                  (self.mc_items >= 0, "--mc-items must be >= 0"),
                  (self.mc_max_question >= 1, "mc_max_question must be >= 1"),
                  (self.prompts >= 0, "--prompts must be >= 0"),
                  (self.prompt_len >= 1, "--prompt-len must be >= 1"),
                  (self.new_tokens >= 1, "--new-tokens must be >= 1")]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)
        from hemorrhage.sim.data import MC_NAMES, TEXT_SOURCES

        if self.source not in TEXT_SOURCES:
            raise UserError(f"--source must be one of {', '.join(TEXT_SOURCES)}, got {self.source!r}")
        bad = [t for t in self.mc_tasks if t not in MC_NAMES]
        if bad:
            raise UserError(f"unknown multiple-choice task {bad[0]!r}; known: {', '.join(MC_NAMES)}")
        if len(set(self.mc_tasks)) != len(self.mc_tasks):
            raise UserError("--mc-tasks lists a task twice")

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["mc_tasks"] = list(self.mc_tasks)
        d["stride"] = self.seqlen
        d["scored_tokens"] = self.windows * (self.seqlen - 1)
        return d


# ------------------------------------------------------------------ jitted pieces ------

def _chunked(fn, n: int, chunk: int, *arrays):
    """Apply fn to `chunk` rows at a time of arrays [n, ...] (lax.map, padded); dict of [n]."""
    import jax
    import jax.numpy as jnp

    pad = (-n) % chunk
    xs = tuple(jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)).reshape(-1, chunk, *a.shape[1:])
               for a in arrays)
    out = jax.lax.map(lambda x: fn(*x), xs)
    return {k: v.reshape(-1)[:n] for k, v in out.items()}


def _chunk(n: int, cap: int) -> int:
    """Rows per lax.map step: ≤ cap, and little padding (n = 62 -> 62, 508 -> 127)."""
    steps = -(-n // cap)
    return -(-n // steps)


def _nll_impl(model, h, targets, chunk: int = 128):
    import jax
    import jax.numpy as jnp

    def one(hc, tc):
        lp = jax.nn.log_softmax(model.unembed(hc))
        return {"nll": -jnp.take_along_axis(lp, tc[:, None], axis=-1)[:, 0]}

    return _chunked(one, h.shape[0], chunk, h, targets)["nll"]


def _final_impl(base, comp, hb, hc, chunk: int = 128):
    from hemorrhage.validate.metrics import compare_hidden, compare_logits

    def one(xb, xc):
        return {**compare_hidden(xb, xc), **compare_logits(base.unembed(xb), comp.unembed(xc))}

    return _chunked(one, hb.shape[0], chunk, hb, hc)


def _choices_impl(model, q_tok, q_len, c_tok):
    """Log-probs of every choice token [I C Lc] and the answer-position log-softmax [I V].

    The questions [I Lq] (right-padded; q_len the true lengths) fill a KV cache once; each
    item's choices [C Lc] then run from position q_len on a copy of its cache row.  Padding
    after a question is overwritten by the choice tokens or hidden by the causal mask."""
    import jax
    import jax.numpy as jnp

    I, Lq = q_tok.shape
    C, Lc = c_tok.shape[1:]
    cache = model.empty_cache(I, Lq + Lc)
    z, cache, _ = model(q_tok, pos0=0, cache=cache)
    z_ans = jax.nn.log_softmax(z[jnp.arange(I), q_len - 1])  # [I V]: predicts each choice's 1st token

    def item(args):
        cache_i, lp_ans, ql, ct = args
        cache_c = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x[None], (C,) + x.shape), cache_i)
        zc, _, _ = model(ct, pos0=ql, cache=cache_c)  # [C Lc V]
        lp = jax.nn.log_softmax(zc[:, :-1])  # predicts tokens 1..Lc-1
        lp = jnp.concatenate([jnp.broadcast_to(lp_ans[None, None], (C, 1, lp_ans.shape[-1])), lp], axis=1)
        return jnp.take_along_axis(lp, ct[..., None], axis=-1)[..., 0]

    tok_lp = jax.lax.map(item, (cache, z_ans, q_len, c_tok))
    return tok_lp, z_ans


_JIT: dict = {}


def _jit(name):
    """nnx.jit of the pieces above, built on first use (keeps `import` cheap)."""
    if name not in _JIT:
        from flax import nnx

        _JIT.update(nll=nnx.jit(_nll_impl, static_argnames=("chunk",)),
                    final=nnx.jit(_final_impl, static_argnames=("chunk",)), choices=nnx.jit(_choices_impl))
    return _JIT[name]


# ------------------------------------------------------------------ the base phase -----

@dataclass
class BaseCache:
    """Everything about the base model that does not depend on the compressed one."""

    config: MeasureConfig
    meta: dict  # model, path, fingerprint of the weights and tokenizer
    tokens: np.ndarray  # [B T] the measured windows
    hs: np.ndarray  # [L+1 N d] base residuals at the scored positions (only h_L unless per_layer)
    nll: np.ndarray  # [N]
    mc: dict = field(default_factory=dict)  # arrays, see _mc_inputs / compute
    prompts: np.ndarray | None = None  # [K P]
    gen: np.ndarray | None = None  # [K N] base greedy continuations

    @property
    def targets(self) -> np.ndarray:
        return self.tokens[:, 1:].reshape(-1)

    # -- disk (the sweep's phase 1 output) --
    def save(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"tokens": self.tokens, "hs": self.hs, "nll": self.nll,
                  "meta": np.asarray(json.dumps({"meta": self.meta, "config": self.config.as_dict()},
                                                sort_keys=True))}
        arrays.update({f"mc_{k}": v for k, v in self.mc.items()})
        if self.prompts is not None:
            arrays.update(prompts=self.prompts, gen=self.gen)
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
    def load(cls, path: Path, loaded, config: MeasureConfig) -> "BaseCache | None":
        """The cache at `path` if it was made for this model and config, else None."""
        try:
            with np.load(path, allow_pickle=False) as z:
                head = json.loads(str(z["meta"]))
                if head["meta"] != model_fingerprint(loaded) or head["config"] != config.as_dict():
                    return None
                mc = {k[3:]: z[k] for k in z.files if k.startswith("mc_")}
                return cls(config, head["meta"], z["tokens"], z["hs"], z["nll"], mc,
                           z["prompts"] if "prompts" in z.files else None,
                           z["gen"] if "gen" in z.files else None)
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
    return {"model": str(loaded.name), "path": str(path.resolve()), "files": digest, "format": CACHE_FORMAT}


def _round_up(n: int, m: int) -> int:
    return max(m, -(-n // m) * m)


def _mc_inputs(loaded, config: MeasureConfig) -> dict:
    """Tokenized MC items as padded arrays (see _choices_impl)."""
    from hemorrhage.sim.data import mc_items

    tok = loaded.tokenizer
    items, task_of = [], []
    for t, name in enumerate(config.mc_tasks):
        if config.mc_items:
            got = mc_items(name, config.mc_items, config.mc_seed)
            items += got
            task_of += [t] * len(got)
    if not items:
        return {}
    enc = lambda s: list(tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    cs = [[enc(c) for c in it.choices] for it in items]
    if any(len(c) == 0 for row in cs for c in row):
        raise UserError("a multiple-choice answer tokenizes to nothing")
    Lc = _round_up(max(len(c) for row in cs for c in row), 4)
    C = max(len(row) for row in cs)
    max_pos = int(getattr(loaded.cfg, "max_positions", 1 << 30))
    keep = min(config.mc_max_question, max_pos - Lc)
    if keep < 1:
        raise UserError(f"the model's {max_pos} positions leave no room for a question")
    qs = [enc(it.question)[-keep:] for it in items]
    if any(len(q) == 0 for q in qs):
        raise UserError("a multiple-choice question tokenizes to nothing")
    Lq = min(_round_up(max(len(q) for q in qs), 16), max_pos - Lc)
    I = len(items)
    q_tok = np.zeros((I, Lq), np.int32)
    c_tok = np.zeros((I, C, Lc), np.int32)
    c_mask = np.zeros((I, C, Lc), bool)
    valid = np.zeros((I, C), bool)
    for i, (q, row) in enumerate(zip(qs, cs)):
        q_tok[i, :len(q)] = q
        for j, c in enumerate(row):
            c_tok[i, j, :len(c)] = c
            c_mask[i, j, :len(c)] = True
            valid[i, j] = True
    return {"q_tok": q_tok, "q_len": np.asarray([len(q) for q in qs], np.int32), "c_tok": c_tok,
            "c_mask": c_mask, "valid": valid, "answer": np.asarray([it.answer for it in items], np.int32),
            "task": np.asarray(task_of, np.int32)}


def choice_scores(model, mc: dict) -> tuple[np.ndarray, np.ndarray]:
    """(scores [I C] = summed log-probs, −inf for missing choices; answer-position log-probs [I V])."""
    import jax.numpy as jnp

    I, Lq = mc["q_tok"].shape
    C, Lc = mc["c_tok"].shape[1:]
    vocab = int(model.cfg.vocab_size) if hasattr(model, "cfg") else 50_000
    batch = int(max(1, min(8, I, (1 << 27) // max(1, Lq * vocab))))  # ≤ ~0.5 GB of prefill logits
    n_pad = (-I) % batch
    idx = np.concatenate([np.arange(I), np.zeros(n_pad, int)])
    fn = _jit("choices")
    tok_lp, ans = [], []
    for s in range(0, len(idx), batch):
        b = idx[s:s + batch]
        lp, za = fn(model, jnp.asarray(mc["q_tok"][b]), jnp.asarray(mc["q_len"][b]), jnp.asarray(mc["c_tok"][b]))
        tok_lp.append(np.asarray(lp))
        ans.append(np.asarray(za))
    tok_lp = np.concatenate(tok_lp)[:I].astype(np.float64)
    scores = np.where(mc["c_mask"], tok_lp, 0.0).sum(-1)
    scores = np.where(mc["valid"], scores, -np.inf)
    return scores, np.concatenate(ans)[:I]


def _prompts(loaded, config: MeasureConfig) -> np.ndarray | None:
    from hemorrhage.sim.data import eval_windows

    if config.prompts == 0:
        return None
    w = eval_windows(loaded.tokenizer, config.source, seqlen=config.prompt_len, stride=config.seqlen,
                     max_windows=config.windows + config.prompts)
    p = w[config.windows:]
    if len(p) == 0:
        raise UserError(f"the held-out {config.source} text has no room for prompts after "
                        f"{config.windows} windows of {config.seqlen} tokens")
    return p


def _generate(model, prompts, n: int) -> np.ndarray:
    import jax.numpy as jnp

    from hemorrhage.sim.generate import generate

    return np.asarray(generate(model, jnp.asarray(prompts), n), np.int32)


def compute_base(loaded, config: MeasureConfig) -> BaseCache:
    """Phase 1: every base-only quantity (one trace, the MC scores, the base generations)."""
    import jax.numpy as jnp

    from hemorrhage.sim.data import eval_windows

    tokens = eval_windows(loaded.tokenizer, config.source, seqlen=config.seqlen, stride=config.seqlen,
                          max_windows=config.windows)
    model = loaded.model
    max_pos = int(getattr(loaded.cfg, "max_positions", 1 << 30))
    if config.seqlen > max_pos or (config.prompts and config.prompt_len + config.new_tokens > max_pos):
        raise UserError(f"the model has {max_pos} positions: lower --seqlen / --prompt-len + --new-tokens")
    hs = _scored_hs(model, tokens, config.per_layer)
    nll = np.asarray(_jit("nll")(model, jnp.asarray(hs[-1]), jnp.asarray(tokens[:, 1:].reshape(-1)),
                                 chunk=_chunk(hs.shape[1], 128)))
    mc = _mc_inputs(loaded, config)
    if mc:
        mc["scores"], mc["ans_logp"] = choice_scores(model, mc)
    prompts = _prompts(loaded, config)
    gen = None if prompts is None else _generate(model, prompts, config.new_tokens)
    return BaseCache(config, model_fingerprint(loaded), tokens, hs, nll, mc, prompts, gen)


def _scored_hs(model, tokens, all_layers: bool) -> np.ndarray:
    """Residuals at the scored positions (all but each window's last): [L+1 or 1, N, d]."""
    import jax.numpy as jnp

    tr = model.trace(jnp.asarray(tokens))
    h = tr.h[:, :, :-1, :]
    h = h.reshape(h.shape[0], -1, h.shape[-1])
    return np.asarray(h if all_layers else h[-1:])


_MEMO: dict = {}


def base_cache(loaded, config: MeasureConfig, path: Path | None = None, *, log=None) -> BaseCache:
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


# ------------------------------------------------------------------ phase 2: measure ---

def _f(x) -> float:
    return float(x)


def _mean(x) -> float:
    x = np.asarray(x, np.float64)
    return float(x.mean()) if x.size else float("nan")


def _kl_rows(logp: np.ndarray, logq: np.ndarray) -> np.ndarray:
    """KL(p ‖ q) per row from log-probabilities (float64; 0·log 0 = 0)."""
    logp, logq = logp.astype(np.float64), logq.astype(np.float64)
    p = np.exp(logp)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        terms = np.where(p > 0, p * (logp - logq), 0.0)
    return terms.sum(-1)


def _log_softmax_rows(s: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        m = np.max(s, -1, keepdims=True)
        return s - m - np.log(np.sum(np.exp(s - m), -1, keepdims=True))


def _mc_metrics(base: BaseCache, s_c: np.ndarray, ans_c: np.ndarray) -> dict:
    mc = base.mc
    s_b, valid, answer = mc["scores"], mc["valid"], mc["answer"]
    ok_c = np.all(np.isfinite(np.where(valid, s_c, 0.0)), -1)
    pred_b = np.argmax(s_b, -1)
    pred_c = np.where(ok_c, np.argmax(np.where(ok_c[:, None], s_c, 0.0), -1), -1)
    kl_choices = _kl_rows(_log_softmax_rows(s_b), _log_softmax_rows(np.where(valid, s_c, -np.inf)))
    kl_full = _kl_rows(mc["ans_logp"], ans_c)

    def summary(sel) -> dict:
        return {"items": int(sel.sum()), "agreement": _mean(pred_b[sel] == pred_c[sel]),
                "acc_base": _mean(pred_b[sel] == answer[sel]), "acc": _mean(pred_c[sel] == answer[sel]),
                "kl_choices": _mean(kl_choices[sel]), "kl_full": _mean(kl_full[sel])}

    allv = summary(np.ones(len(answer), bool))
    out = {"mc_items": allv["items"], "mc_agreement": allv["agreement"], "mc_acc_base": allv["acc_base"],
           "mc_acc": allv["acc"], "mc_kl_choices": allv["kl_choices"], "mc_kl_full": allv["kl_full"],
           "mc_nonfinite_items": int((~ok_c).sum())}
    out["mc_by_task"] = {name: summary(mc["task"] == t) for t, name in enumerate(base.config.mc_tasks)
                         if (mc["task"] == t).any()}
    return out


def _gen_metrics(gen_b: np.ndarray, gen_c: np.ndarray) -> dict:
    K, N = gen_b.shape
    diff = gen_b != gen_c
    first = np.where(diff.any(-1), diff.argmax(-1), N)
    return {"first_divergence": [int(x) for x in first], "first_divergence_mean": _mean(first),
            "gen_prefix_agreement": _mean(first) / N, "gen_token_agreement": _mean(~diff),
            "gen_identical": _mean(first == N), "new_tokens": int(N), "prompts": int(K)}


def measure(loaded, comp_model, base: BaseCache, record: dict | None = None) -> dict:
    """Phase 2: every metric of `comp_model` against the base held in `base` (module docstring)."""
    import jax.numpy as jnp

    config = base.config
    targets = jnp.asarray(base.targets)
    hs_c = _scored_hs(comp_model, base.tokens, config.per_layer)
    hb, hc = jnp.asarray(base.hs[-1]), jnp.asarray(hs_c[-1])
    chunk = _chunk(hb.shape[0], 128)
    nll_c = np.asarray(_jit("nll")(comp_model, hc, targets, chunk=chunk), np.float64)
    tok = {k: np.asarray(v, np.float64)
           for k, v in _jit("final")(loaded.model, comp_model, hb, hc, chunk=chunk).items()}
    nll_b = base.nll.astype(np.float64)

    out: dict = {"model": str(loaded.name), "base_note": getattr(loaded, "base_note", "")}
    if record is not None:
        out["method"] = record.get("method")
        out["settings"] = record.get("settings")
        out["record"] = {k: v for k, v in record.items() if k != "seconds"}  # timings break determinism
    out["config"] = config.as_dict()
    out.update(nll_base=_mean(nll_b), nll=_mean(nll_c))
    with np.errstate(over="ignore", invalid="ignore"):
        out.update(ppl_base=float(np.exp(out["nll_base"])), ppl=float(np.exp(out["nll"])))
    out.update(kl=_mean(tok["kl"]), kl_pred=_mean(tok["var_p"]) / 2, var_p_dz=_mean(tok["var_p"]),
               var_r_dz=_mean(tok["var_r"]), top1_agreement=_mean(tok["top1"]), cos_h=_mean(tok["cos_h"]),
               cos_z=_mean(tok["cos_z"]), cos_p=_mean(tok["cos_p"]))
    bad_tok = ~(np.isfinite(nll_c) & np.isfinite(tok["kl"]) & np.isfinite(tok["cos_z"]))
    out["nonfinite_tokens"] = int(bad_tok.sum())

    if base.mc:
        s_c, ans_c = choice_scores(comp_model, base.mc)
        out.update(_mc_metrics(base, s_c, ans_c))
    if base.prompts is not None:
        out.update(_gen_metrics(base.gen, _generate(comp_model, base.prompts, config.new_tokens)))

    if config.per_layer:
        from hemorrhage.validate.metrics import per_layer

        pl = per_layer(loaded.model, comp_model, jnp.asarray(base.hs), jnp.asarray(hs_c),
                       chunk=_chunk(hb.shape[0], 256))
        out["per_layer"] = {k: [_f(x) for x in np.asarray(v)] for k, v in sorted(pl.items())}

    notes = []
    if out["nonfinite_tokens"]:
        notes.append(f"the compressed model gives NaN/inf logits or NLL at {out['nonfinite_tokens']} of "
                     f"{len(nll_c)} scored positions: ppl, kl, cos_* and var_* are averaged over them as "
                     f"computed, so they are NaN or inf (a collapsed model; a result, not an error)")
    if out.get("mc_nonfinite_items"):
        notes.append(f"{out['mc_nonfinite_items']} MC items have NaN/inf choice scores under the compressed "
                     f"model: they count as disagreeing and wrong; mc_kl_* are NaN there")
    if not math.isfinite(out["ppl"]) and not out["nonfinite_tokens"]:
        notes.append("ppl overflows float64 (mean NLL > 709): inf")
    if not math.isfinite(out["ppl_base"]):
        notes.append("the BASE model is not finite on these windows")
    out["collapsed"] = bool(out["nonfinite_tokens"] or out.get("mc_nonfinite_items", 0))
    out["notes"] = notes
    return out


def row_view(result: dict) -> dict:
    """A sweep row: the measure result without bulky arrays (per-layer kl, cos_h, top1 kept)."""
    row = {k: v for k, v in result.items() if k != "per_layer"}
    if "per_layer" in result:
        row["per_layer"] = {k: result["per_layer"][k] for k in ROW_PER_LAYER if k in result["per_layer"]}
    return row
