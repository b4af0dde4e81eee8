"""Token windows of the registry's text: calibration batches and held-out evaluation windows.

    calibration_tokens(tok, ...)  [n, seqlen] int32 random windows of the train split (seeded)
    eval_windows(tok, ...)        [n, seqlen] int32 first windows of the held-out split
    adds_bos(tok)                 whether the tokenizer starts a text with BOS

Token windows follow the tokenizer's own convention (`adds_bos`): where its encoding starts
a text with BOS (Gemma), column 0 is BOS and the window holds seqlen-1 text tokens; where it
does not (GPT-2, SmolLM2, the control), no special tokens.  add_bos=True/False overrides.
Why it matters: without its BOS, Gemma 3 makes the first text token its attention sink and
is out of distribution at every window start — 4–5× the KL of the same compression and a
strongly nonlinear response there (bench/README.md, bench_predict).
All of them are re-exported by hemorrhage.sim.data, the public API.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import weakref

import numpy as np

from hemorrhage.errors import UserError

_TOKEN_CACHE: dict[tuple, np.ndarray] = {}


_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _tokenizer_fingerprint(tokenizer) -> str:
    """Hash of the tokenizer's full definition (memoised: it takes a noticeable time for a large
    vocabulary such as Gemma's 262k)."""
    try:
        return _FINGERPRINTS[tokenizer]
    except (KeyError, TypeError):
        pass
    backend = getattr(tokenizer, "backend_tokenizer", None)
    desc = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    fp = hashlib.sha256(f"{type(tokenizer).__name__}\n{desc}".encode()).hexdigest()[:16]
    try:
        _FINGERPRINTS[tokenizer] = fp
    except TypeError:  # not weak-referenceable / hashable: recompute next time
        pass
    return fp


def _source(name: str) -> str:
    from hemorrhage.sim.data import text_source

    return text_source(name)


def _tokens(tokenizer, source: str, part: str) -> np.ndarray:
    """The whole split tokenized without special tokens; kept in memory and on disk
    (data/<source>/tokens-<part>-<tokenizer fingerprint>.npy) since shakespeare takes seconds."""
    key = (_tokenizer_fingerprint(tokenizer), source, part)
    if key in _TOKEN_CACHE:
        return _TOKEN_CACHE[key]
    from hemorrhage.sim.data import data_dir, split_text

    txt = split_text(source, part)
    path = data_dir(source) / f"tokens-{part}-{key[0]}.npy"
    try:
        ids = np.load(path)
    except (OSError, ValueError):
        ids = np.asarray(tokenizer(txt, add_special_tokens=False, verbose=False)["input_ids"], dtype=np.int32)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            np.save(f, ids)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    while len(_TOKEN_CACHE) >= 4:
        _TOKEN_CACHE.pop(next(iter(_TOKEN_CACHE)))
    _TOKEN_CACHE[key] = ids
    return ids


_ADDS_BOS: dict[str, bool] = {}


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer's own encoding (add_special_tokens=True) starts a text with its
    BOS token: Gemma's does, GPT-2's and SmolLM2's do not.  False for anything that cannot say."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None or not callable(tokenizer):
        return False
    key = _tokenizer_fingerprint(tokenizer)
    if key not in _ADDS_BOS:
        try:
            ids = list(tokenizer("The", add_special_tokens=True)["input_ids"])
        except (TypeError, KeyError, ValueError):
            ids = []
        _ADDS_BOS[key] = bool(ids) and ids[0] == bos
    return _ADDS_BOS[key]


def _bos(tokenizer, add_bos: bool | None) -> bool:
    return adds_bos(tokenizer) if add_bos is None else bool(add_bos)


def _windows(ids: np.ndarray, starts, width: int, tokenizer, add_bos: bool) -> np.ndarray:
    out = np.stack([ids[s : s + width] for s in starts]).astype(np.int32)
    if add_bos:
        bos = getattr(tokenizer, "bos_token_id", None)
        if bos is None:
            raise UserError("add_bos=True but the tokenizer has no BOS token")
        out = np.concatenate([np.full((len(out), 1), bos, np.int32), out], axis=1)
    return out


def calibration_tokens(
    tokenizer,
    source: str = "wiki",
    n_samples: int = 16,
    seqlen: int = 128,
    seed: int = 0,
    *,
    add_bos: bool | None = None,
) -> np.ndarray:
    """[n_samples, seqlen] int32: windows at uniformly random offsets (np.random.default_rng(seed),
    with replacement) of the tokenized *train* split.  Same tokenizer + seed -> same array.
    add_bos None: the tokenizer's convention (`adds_bos`)."""
    if n_samples < 1:
        raise UserError(f"n_samples must be >= 1, got {n_samples}")
    if seqlen < 2:
        raise UserError(f"seqlen must be >= 2, got {seqlen}")
    ids = _tokens(tokenizer, _source(source), "train")
    add_bos = _bos(tokenizer, add_bos)
    width = seqlen - int(add_bos)
    if len(ids) < width:
        raise UserError(f"{source} train split has {len(ids)} tokens, fewer than seqlen={seqlen}")
    starts = np.random.default_rng(seed).integers(0, len(ids) - width + 1, size=n_samples)
    return _windows(ids, starts, width, tokenizer, add_bos)


def eval_windows(
    tokenizer,
    source: str = "wiki",
    seqlen: int = 128,
    stride: int = 128,
    max_windows: int | None = 8,
    *,
    add_bos: bool | None = None,
) -> np.ndarray:
    """[n, seqlen] int32 from the *held-out* split: the windows starting at token 0, stride,
    2·stride, … that fit entirely, the first `max_windows` of them (None: all).  Deterministic.
    add_bos None: the tokenizer's convention (`adds_bos`; then the text of a window is its
    last seqlen − 1 tokens)."""
    if seqlen < 2 or stride < 1:
        raise UserError(f"need seqlen >= 2 and stride >= 1, got seqlen={seqlen}, stride={stride}")
    if max_windows is not None and max_windows < 1:
        raise UserError(f"max_windows must be >= 1 or None, got {max_windows}")
    ids = _tokens(tokenizer, _source(source), "heldout")
    add_bos = _bos(tokenizer, add_bos)
    width = seqlen - int(add_bos)
    starts = list(range(0, len(ids) - width + 1, stride))[:max_windows]
    if not starts:
        raise UserError(f"{source} held-out split has {len(ids)} tokens, fewer than seqlen={seqlen}")
    return _windows(ids, starts, width, tokenizer, add_bos)
