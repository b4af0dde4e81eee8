"""In-context retrieval (LLM-KICK): can a compressed model still copy the answer out of a passage?

    items = build_items(paragraphs, n=48, seed=0)          # deterministic, from held-out Wikipedia
    ic = in_context_inputs(loaded, items)                  # token arrays + the base's greedy answers
    row = measure_in_context(ic, comp_model)               # the keys below, for one compressed model
    rows = in_context_rows(loaded, grid, n=48)             # one row per grid setting (sweep-row shaped)

The task (LLM-KICK's "in-context retrieval", Jaiswal et al. 2023, built automatically).  A
passage is the first sentences (at most MAX_WORDS words, at least two sentences) of a held-out
Wikipedia paragraph (sim.data.split_text("wiki", "heldout"), one per line, the paragraphs of
validate/retrieval.py).  Its answer is a span that occurs exactly once in the passage (as a
substring): a number (NUMBER) or a run of capitalised words (NAME) that does not start a
sentence; one candidate per passage is drawn with `seed`.  The question is the sentence that
holds the span with the span replaced by a blank:

    open book    "{passage}\\nQuestion: In the text above, what fills the blank? \\"{cloze}\\"\\nAnswer:"
    closed book  "Question: What fills the blank? \\"{cloze}\\"\\nAnswer:"      (no passage)

and the target is " {span}".  The closed-book question is the knowledge baseline: the packaged
data hold no qa_wikidata (BIG-bench is gone from PyPI, sim/data.py), so closed-book knowledge is
the same question without its passage.

Metrics, with a = the target's k tokens and g = the base's k greedy tokens after the prompt:

    exact match  EM = [argmax_v z_t(prompt ⊕ a_<t) = a_t for every t < k]: teacher-forced on the
                 answer, which equals "greedy decoding of k tokens yields exactly the answer"
                 (greedy feeds back its own tokens, the answer's as long as they match)
    agreement    the same test against g instead of a: the compressed model's k greedy tokens
                 are the base's (1 for the base itself)
    span NLL     mean over the answer's tokens of −log p(a_t | prompt ⊕ a_<t)

Row keys: ic_em, ic_em_base, ic_agreement, ic_span_nll, ic_span_nll_base and cb_* the same
for closed book; ic_items, ic_answer_tokens (mean k).  A model whose logits are not finite at an
answer position gets EM and agreement 0 there (its argmax is no prediction) and a NaN span NLL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from hemorrhage.errors import UserError

MAX_WORDS = 80
NUMBER = re.compile(r"(?<![\w.,])\d{1,4}(?:[.,]\d+)?(?![\w])")
NAME = re.compile(r"(?<![\w-])[A-Z][a-z]+(?: [A-Z][a-z]+)*(?![\w-])")
OPEN = '{passage}\nQuestion: In the text above, what fills the blank? "{cloze}"\nAnswer:'
CLOSED = 'Question: What fills the blank? "{cloze}"\nAnswer:'
BLANK = "___"


@dataclass(frozen=True)
class ICItem:
    passage: str
    cloze: str  # the sentence holding the answer, the answer replaced by BLANK
    answer: str  # the span, without its leading space

    @property
    def open_prompt(self) -> str:
        return OPEN.format(passage=self.passage, cloze=self.cloze)

    @property
    def closed_prompt(self) -> str:
        return CLOSED.format(cloze=self.cloze)


def passage_of(paragraph: str) -> list[str]:
    """The paragraph's first sentences within MAX_WORDS words (validate.retrieval.sentences)."""
    from hemorrhage.validate.retrieval import sentences

    out, words = [], 0
    for s in sentences(paragraph):
        n = len(s.split())
        if words + n > MAX_WORDS:
            break
        out.append(s)
        words += n
    return out


def candidates(sents: list[str]) -> list[tuple[int, str]]:
    """(sentence index, span) for every NUMBER or NAME span, not at a sentence's start, that
    occurs exactly once in the whole passage."""
    passage = " ".join(sents)
    out = []
    for i, s in enumerate(sents):
        for rx in (NUMBER, NAME):
            for m in rx.finditer(s):
                if m.start() == 0 or len(m.group()) < 2:
                    continue
                if passage.count(m.group()) == 1:
                    out.append((i, m.group()))
    return out


def build_items(paragraphs: list[str], n: int, seed: int = 0) -> list[ICItem]:
    """Up to n items from the paragraphs, in paragraph order (module docstring); deterministic."""
    if n < 1:
        raise UserError(f"in-context retrieval needs at least 1 item, got {n}")
    rng = np.random.default_rng(seed)
    items = []
    for p in paragraphs:
        sents = passage_of(p)
        if len(sents) < 2:
            continue
        cands = candidates(sents)
        if not cands:
            continue
        i, span = cands[int(rng.integers(len(cands)))]
        items.append(ICItem(" ".join(sents), sents[i].replace(span, BLANK, 1), span))
        if len(items) == n:
            break
    if not items:
        raise UserError("no paragraph yields an in-context retrieval question")
    return items


def heldout_items(n: int = 48, seed: int = 0) -> list[ICItem]:
    from hemorrhage.sim.data import split_text
    from hemorrhage.validate.retrieval import prose_paragraphs

    return build_items(prose_paragraphs(split_text("wiki", "heldout")), n, seed)


# ---------------------------------------------------------------- model side ----------


def _answer_scores_impl(model, tokens, pos, target):
    """argmax [B K] and log p(target) [B K] at positions pos (the token before each target)."""
    import jax
    import jax.numpy as jnp

    z = model(tokens)[0]
    zk = jnp.take_along_axis(z, pos[..., None], axis=1)  # [B K V]
    lp = jax.nn.log_softmax(zk)
    ok = jnp.all(jnp.isfinite(zk), axis=-1)
    top = jnp.where(ok, jnp.argmax(zk, axis=-1), -1)  # -1: no prediction, matches no token
    return top, jnp.take_along_axis(lp, target[..., None], axis=-1)[..., 0]


_FN: list = []


def _answer_scores(model, tokens, pos, target):
    if not _FN:
        from hemorrhage.sim.jit import jit

        _FN.append(jit(_answer_scores_impl))
    return _FN[0](model, tokens, pos, target)


def _pad(seqs: list[list[int]], multiple: int = 32) -> np.ndarray:
    T = -(-max(len(s) for s in seqs) // multiple) * multiple
    out = np.zeros((len(seqs), T), np.int32)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


def score(model, prompts: list[list[int]], answers: list[list[int]], batch: int = 8):
    """(argmax [n K], log p [n K], mask [n K]) of each answer teacher-forced after its prompt;
    K = the longest answer, mask marks real answer tokens."""
    import jax.numpy as jnp

    K = max(len(a) for a in answers)
    seqs = [p + a for p, a in zip(prompts, answers)]
    tok = _pad(seqs)
    pos = np.zeros((len(seqs), K), np.int32)
    tgt = np.zeros((len(seqs), K), np.int32)
    mask = np.zeros((len(seqs), K), bool)
    for i, (p, a) in enumerate(zip(prompts, answers)):
        pos[i, : len(a)] = len(p) - 1 + np.arange(len(a))
        tgt[i, : len(a)] = a
        mask[i, : len(a)] = True
    n_pad = (-len(seqs)) % batch  # one batch shape: one compile per padded length
    idx = np.concatenate([np.arange(len(seqs)), np.zeros(n_pad, int)])
    tops, lps = [], []
    for s in range(0, len(idx), batch):
        b = idx[s : s + batch]
        t, lp = _answer_scores(model, jnp.asarray(tok[b]), jnp.asarray(pos[b]), jnp.asarray(tgt[b]))
        tops.append(np.asarray(t))
        lps.append(np.asarray(lp, np.float64))
    return np.concatenate(tops)[: len(seqs)], np.concatenate(lps)[: len(seqs)], mask


def greedy(model, prompts: list[list[int]], lengths: list[int]) -> list[list[int]]:
    """Each prompt's len greedy tokens, one teacher-forced pass per step on the padded batch
    (causal attention: the padding after a prompt never reaches its positions)."""
    seqs = [list(p) + [0] * k for p, k in zip(prompts, lengths)]
    for t in range(max(lengths)):
        top, _, _ = score(model, prompts, [s[len(p) :] for s, p in zip(seqs, prompts)])
        for i, (p, k) in enumerate(zip(prompts, lengths)):
            if t < k:
                seqs[i][len(p) + t] = int(top[i, t])
    return [s[len(p) :] for s, p in zip(seqs, prompts)]


def matches(top: np.ndarray, answers: list[list[int]]) -> np.ndarray:
    """[n] bool: every token of each answer is the argmax before it."""
    return np.asarray(
        [len(a) > 0 and all(int(top[i, t]) == a[t] for t in range(len(a))) for i, a in enumerate(answers)]
    )


def in_context_inputs(loaded, items: list[ICItem]) -> dict:
    """Tokenized prompts and answers (the tokenizer's own BOS convention), and the base's
    greedy answers and scores, computed once."""
    from hemorrhage.sim.windows import adds_bos

    tok = loaded.tokenizer
    enc = lambda s: list(tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    bos = [int(tok.bos_token_id)] if adds_bos(tok) else []
    answers = [enc(" " + it.answer) for it in items]
    if any(not a for a in answers):
        raise UserError("an in-context answer tokenizes to nothing")
    out = {"items": items, "answers": answers}
    for book, attr in (("ic", "open_prompt"), ("cb", "closed_prompt")):
        prompts = [bos + enc(getattr(it, attr)) for it in items]
        out[book] = {"prompts": prompts, "base_greedy": greedy(loaded.model, prompts, [len(a) for a in answers])}
    out["base"] = _model_scores(out, loaded.model)
    return out


def _model_scores(ic: dict, model) -> dict:
    res = {}
    for book in ("ic", "cb"):
        prompts, base_g = ic[book]["prompts"], ic[book]["base_greedy"]
        top, lp, mask = score(model, prompts, ic["answers"])
        em = matches(top, ic["answers"])
        same = [i for i, (g, a) in enumerate(zip(base_g, ic["answers"])) if g == a]
        other = [i for i in range(len(prompts)) if i not in set(same)]
        agree = np.zeros(len(prompts), bool)
        agree[same] = em[same]  # where the base answered the target, agreeing with it is EM
        if other:
            top_g, _, _ = score(model, [prompts[i] for i in other], [base_g[i] for i in other])
            agree[other] = matches(top_g, [base_g[i] for i in other])
        with np.errstate(invalid="ignore"):
            nll = -np.sum(np.where(mask, lp, 0.0), axis=1) / mask.sum(1)
        res[book] = {"em": em, "agree": agree, "nll": nll}
    return res


def measure_in_context(ic: dict, comp_model) -> dict:
    """The module docstring's row keys for comp_model against the base held in `ic`."""
    base, comp = ic["base"], _model_scores(ic, comp_model)
    out = {"ic_items": len(ic["items"]), "ic_answer_tokens": float(np.mean([len(a) for a in ic["answers"]]))}
    for book in ("ic", "cb"):
        out[f"{book}_em"] = float(np.mean(comp[book]["em"]))
        out[f"{book}_em_base"] = float(np.mean(base[book]["em"]))
        out[f"{book}_agreement"] = float(np.mean(comp[book]["agree"]))
        out[f"{book}_span_nll"] = float(np.mean(comp[book]["nll"]))
        out[f"{book}_span_nll_base"] = float(np.mean(base[book]["nll"]))
    return out


def in_context_rows(loaded, grid, n: int = 48, seed: int = 0, log=None, on_row=None) -> list[dict]:
    """One row per (method, settings) of a sweep grid (validate.sweep.parse_grid), shaped like a
    sweep row (grid, model) so validate.exp_in_context reads it; on_row(rows so far) after each."""
    from hemorrhage.sim.compress import compress_from_args

    ic = in_context_inputs(loaded, heldout_items(n, seed))
    rows = []
    for method, settings in grid:
        comp, _ = compress_from_args(loaded, method, **settings)
        rows.append(
            {
                "grid": {"method": method, "settings": settings},
                "model": str(loaded.name),
                "config": {"ic_items": n, "ic_seed": seed},
                **measure_in_context(ic, comp),
            }
        )
        del comp
        if on_row:
            on_row(rows)
        if log:
            log(
                f"{method} {settings}: EM {rows[-1]['ic_em']:.3f} (base {rows[-1]['ic_em_base']:.3f}), "
                f"closed book {rows[-1]['cb_em']:.3f} (base {rows[-1]['cb_em_base']:.3f})"
            )
    return rows
