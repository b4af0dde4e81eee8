"""Retrieval from held-out Wikipedia: does a compressed model still find the right passage?

    rs = retrieval_set(n_documents=1000)          # queries, documents, gold (deterministic)
    emb = embed_texts(model, tokenizer, texts)    # {"mean": [n d], "last": [n d]} or the encoder's pooling
    m = retrieval_metrics(q, d, gold)             # recall_at_1, recall_at_10, mrr, ranks
    row = measure_retrieval(loaded, comp_model, n_documents)   # the `measure` keys below

The task (LLM-KICK's and the representation-hierarchy paper's non-generative side).  Each
held-out Wikipedia paragraph (sim.data.split_text("wiki", "heldout"), one per line) with at
least two sentences of >= 4 words gives one pair: the query is one of its sentences (drawn
with `seed`), the document is the paragraph without that sentence.  The held-out split has
about 570 such paragraphs; beyond them the corpus is filled to `n_documents` with whole
paragraphs of the train split as distractors (no query points at them), drawn with `seed`.
So n_queries = min(n_documents, held-out pairs) and every document is a distinct paragraph.

Embeddings: an encoder (sim/models/bert.py) pools as its files say (MiniLM: mean over the
mask, unit length).  A causal LM is read at its last residual h_L (input of the final norm,
`model.trace(tokens).h[-1]`): "mean" = the mean of h_L over the text's tokens, "last" = h_L at
its last token, as E5-Mistral-style embedders do (Wang et al. 2024, "Improving Text
Embeddings with Large Language Models").  Texts are cut to `max_tokens` tokens.

Ranking by cosine similarity s_ij = cos(q_i, d_j).  With g(i) the gold document of query i,

    rank_i       = #{j : s_ij >= s_i,g(i)}      ties count against the query (an embedder that
                                                maps everything to one point ranks last, never first);
                                                a query whose similarities are not finite ranks last
    recall@k     = mean_i [rank_i <= k]
    MRR          = mean_i 1 / rank_i
    embedding_cos = mean over every query and document of cos(e_compressed, e_base)
                   (Theorem 1 reads 1 − cos as the relative size of the embedding's change)

`measure` keys: retrieval_recall_at_1, retrieval_recall_at_10, retrieval_mrr, embedding_cos and
the base's recall as retrieval_recall_at_1_base, ..._at_10_base, retrieval_mrr_base; for a
causal LM these are mean pooling, and `retrieval_last_token` holds the same for last-token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from hemorrhage.sim.jit import jit
from hemorrhage.errors import UserError
from hemorrhage.validate.computable import KEY as NC

_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
MIN_WORDS = 4
KEYS = ("retrieval_recall_at_1", "retrieval_recall_at_10", "retrieval_mrr")


@dataclass(frozen=True)
class RetrievalSet:
    queries: tuple[str, ...]
    documents: tuple[str, ...]
    gold: np.ndarray  # [n_queries] index of each query's document
    n_heldout: int  # documents from held-out paragraphs (each the answer of one query)
    n_distractors: int  # whole train paragraphs no query points at


def sentences(paragraph: str) -> list[str]:
    return [s for s in _SENT.split(paragraph.strip()) if len(s.split()) >= MIN_WORDS]


def prose_paragraphs(text: str) -> list[str]:
    """The lines of a text split (sim.data.split_text) that are prose paragraphs."""
    # a line of one or two words is an article title or a section heading, not prose
    return [p.strip() for p in text.split("\n") if len(p.split()) > 2]


def make_pairs(paragraphs: list[str], seed: int) -> list[tuple[str, str]]:
    """(query sentence, paragraph without it) for every paragraph with >= 2 sentences."""
    rng = np.random.default_rng(seed)
    out = []
    for p in paragraphs:
        sents = sentences(p)
        if len(sents) < 2:
            continue
        k = int(rng.integers(len(sents)))
        out.append((sents[k], " ".join(sents[:k] + sents[k + 1 :])))
    return out


def build_set(heldout: list[str], train: list[str], n_documents: int, seed: int = 0) -> RetrievalSet:
    """The module docstring's corpus from paragraph lists (retrieval_set reads the packaged ones)."""
    if n_documents < 2:
        raise UserError(f"retrieval needs at least 2 documents, got {n_documents}")
    pairs = make_pairs(heldout, seed)[:n_documents]
    if not pairs:
        raise UserError("no held-out paragraph has two sentences: nothing to retrieve")
    seen = {d for _, d in pairs}
    pool = [p for p in train if len(sentences(p)) >= 2 and p not in seen]
    n_fill = n_documents - len(pairs)
    if n_fill > len(pool):
        raise UserError(f"at most {len(pairs) + len(pool)} retrieval documents are available, asked {n_documents}")
    order = np.random.default_rng(seed + 1).permutation(len(pool))[:n_fill]
    docs = [d for _, d in pairs] + [pool[i] for i in sorted(order)]
    return RetrievalSet(tuple(q for q, _ in pairs), tuple(docs), np.arange(len(pairs)), len(pairs), n_fill)


def retrieval_set(n_documents: int = 1000, seed: int = 0) -> RetrievalSet:
    from hemorrhage.sim.data import split_text

    return build_set(
        prose_paragraphs(split_text("wiki", "heldout")),
        prose_paragraphs(split_text("wiki", "train")),
        n_documents,
        seed,
    )


# ---------------------------------------------------------------- embeddings ----------


def is_encoder(model) -> bool:
    return getattr(getattr(model, "cfg", None), "family", None) == "bert"


@jit
def _encoder_embed(model, tokens, mask):
    return model.encode(tokens, mask)


@jit
def _causal_embed(model, tokens, mask):
    """mean and last-token pooling of h_L; causal attention, so right padding leaves the real
    tokens' h unchanged (XLA drops the logits trace computes: only h_L leaves the jit)."""
    h = model.trace(tokens).h[-1]
    m = mask[..., None]
    mean = jnp.sum(h * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
    last = jnp.take_along_axis(h, (jnp.sum(mask, axis=1).astype(jnp.int32) - 1)[:, None, None], axis=1)[:, 0]
    return {"mean": mean, "last": last}


def pooling_names(model) -> tuple[str, ...]:
    return (model.cfg.pooling,) if is_encoder(model) else ("mean", "last")


def tokenize(tokenizer, texts, max_tokens: int) -> list[list[int]]:
    """Token ids of each text as its tokenizer encodes it (special tokens included: BERT's
    [CLS]/[SEP], Gemma's BOS), cut to max_tokens."""
    out = []
    for t in texts:
        ids = list(tokenizer(t, truncation=True, max_length=max_tokens)["input_ids"])
        out.append(ids[:max_tokens] or [0])
    return out


def embed_ids(model, ids: list[list[int]], *, batch: int = 32, bucket: int = 16) -> dict[str, np.ndarray]:
    """Embeddings [n d] per pooling: texts sorted by length, padded to a multiple of `bucket`
    (few shapes to compile), results put back in the input order."""
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    fn = _encoder_embed if is_encoder(model) else _causal_embed
    parts: dict[str, list] = {}
    for s in range(0, len(order), batch):
        idx = order[s : s + batch]
        T = -(-max(len(ids[i]) for i in idx) // bucket) * bucket
        tok = np.zeros((batch, T), np.int32)  # a ragged last batch is padded with empty rows
        mask = np.zeros((batch, T), np.float32)
        mask[len(idx) :, 0] = 1.0  # empty rows see one token, so no row divides by zero
        for r, i in enumerate(idx):
            tok[r, : len(ids[i])], mask[r, : len(ids[i])] = ids[i], 1.0
        out = fn(model, jnp.asarray(tok), jnp.asarray(mask))
        out = {pooling_names(model)[0]: out} if not isinstance(out, dict) else out
        for k, v in out.items():
            parts.setdefault(k, []).append(np.asarray(v, np.float32)[: len(idx)])
    inv = np.argsort(np.asarray(order))
    return {k: np.concatenate(v)[inv] for k, v in parts.items()}


# ---------------------------------------------------------------- metrics -------------


@jax.jit
def _ranks(q: Float[Array, "nq d"], d: Float[Array, "nd d"], gold):
    unit = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-30)  # noqa: E731
    s = unit(q) @ unit(d).T
    sg = jnp.take_along_axis(s, gold[:, None], axis=1)
    ok = jnp.all(jnp.isfinite(s), axis=1)
    return jnp.where(ok, jnp.sum(s >= sg, axis=1), d.shape[0]), ok


def retrieval_metrics(q: np.ndarray, d: np.ndarray, gold: np.ndarray) -> dict:
    """recall_at_1, recall_at_10, mrr, nonfinite_queries and ranks [n_queries] (module docstring)."""
    ranks, ok = _ranks(jnp.asarray(q, jnp.float32), jnp.asarray(d, jnp.float32), jnp.asarray(gold, jnp.int32))
    r = np.asarray(ranks, np.float64)
    return {
        "recall_at_1": float(np.mean(r <= 1)),
        "recall_at_10": float(np.mean(r <= 10)),
        "mrr": float(np.mean(1.0 / r)),
        "nonfinite_queries": int((~np.asarray(ok)).sum()),
        "ranks": r,
    }


def mean_cos(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of cos(a_i, b_i) (float64); NaN where a row is not finite."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.mean(np.sum(a * b, axis=1) / den))


# ---------------------------------------------------------------- measure -------------


@dataclass(frozen=True)
class RetrievalConfig:
    n_documents: int = 1000
    seed: int = 0
    max_tokens: int = 128


_BASE: dict[tuple, tuple] = {}  # (id(base model), config) -> (model, set, ids, base embeddings)


def _base(model, tokenizer, config: RetrievalConfig):
    key = (id(model), config)
    hit = _BASE.get(key)
    if hit is None or hit[0] is not model:
        rs = retrieval_set(config.n_documents, config.seed)
        ids = tokenize(tokenizer, rs.queries + rs.documents, config.max_tokens)
        _BASE.clear()  # one base at a time: embeddings of 1000 documents are not small
        hit = _BASE[key] = (model, rs, ids, embed_ids(model, ids))
    return hit[1:]


def _scores(emb: np.ndarray, rs: RetrievalSet) -> dict:
    nq = len(rs.queries)
    return retrieval_metrics(emb[:nq], emb[nq:], rs.gold)


def measure_retrieval(loaded, comp_model, config: RetrievalConfig) -> dict:
    """The module docstring's `measure` keys for `comp_model` against `loaded.model`."""
    rs, ids, base = _base(loaded.model, loaded.tokenizer, config)
    comp = embed_ids(comp_model, ids)
    out: dict = {
        "retrieval": {
            "n_queries": len(rs.queries),
            "n_documents": len(rs.documents),
            "n_distractors": rs.n_distractors,
            "max_tokens": config.max_tokens,
            "seed": config.seed,
            "pooling": pooling_names(comp_model)[0],
        }
    }
    nc: dict = {}
    for i, pooling in enumerate(pooling_names(comp_model)):
        b, c = _scores(base[pooling], rs), _scores(comp[pooling], rs)
        d = {f"retrieval_{k}": c[k] for k in ("recall_at_1", "recall_at_10", "mrr")}
        d.update({f"retrieval_{k}_base": b[k] for k in ("recall_at_1", "recall_at_10", "mrr")})
        d["embedding_cos"] = mean_cos(comp[pooling], base[pooling])
        d["retrieval_nonfinite_queries"] = c["nonfinite_queries"]
        if b["nonfinite_queries"]:
            for k in KEYS + tuple(f"{k}_base" for k in KEYS) + ("embedding_cos",):
                d[k] = None
                d.setdefault(NC, {})[k] = (
                    f"base embeddings not finite for {b['nonfinite_queries']} of {len(rs.queries)} queries"
                )
        elif not np.isfinite(d["embedding_cos"]):
            d["embedding_cos"] = None
            d.setdefault(NC, {})["embedding_cos"] = "compressed embeddings not finite"
        if i == 0:
            nc.update(d.pop(NC, {}))
            out.update(d)
        else:
            out[f"retrieval_{pooling}_token"] = d
    if nc:
        out[NC] = nc
    return out
