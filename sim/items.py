"""Benchmark items out of the cached data (hemorrhage.sim.data re-exports mc_items / gen_items).

    mc_items(name, n, seed)  -> [MCItem]: BIG-bench tasks with target_scores, MMLU, wiki cloze
    gen_items(name, n, seed) -> [GenItem]: qa_wikidata, arithmetic (exact answer), HumanEval

Prompts follow BIG-bench's zero-shot format (task_prefix, then 'Q: … / A:' unless the task sets
its own prefixes) and the usual MMLU format ('The following are multiple choice questions …',
'A. …' lines, 'Answer:' with choices ' A' … ' D').
"""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np

from hemorrhage.errors import UserError
from hemorrhage.sim.data import (
    BIGBENCH,
    CLOZE_CONTEXT_WORDS,
    CLOZE_DEFAULT_N,
    DATASETS,
    GEN_NAMES,
    MC_NAMES,
    GenItem,
    MCItem,
    fetch_data,
    split_text,
)


def _subset(n_total: int, n: int | None, seed: int | None) -> list[int]:
    """All indices (n None), the first n (seed None), or n sorted indices drawn with the seed."""
    if n is None or n >= n_total:
        return list(range(n_total))
    if n < 1:
        raise UserError(f"n must be >= 1, got {n}")
    if seed is None:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n_total, size=n, replace=False).tolist())


def _bigbench_task(name: str) -> dict:
    return json.loads((fetch_data(name) / "task.json").read_text())


def _bigbench_prompt(task: dict, inp: str) -> str:
    """BIG-bench zero-shot format: task_prefix, then input/output prefixes (defaults 'Q: ', 'A: ')."""
    pre = task.get("example_input_prefix", "\nQ: ")
    post = task.get("example_output_prefix", "\nA: ")
    prompt = f"{pre}{inp}{post}".rstrip(" ")
    if task.get("task_prefix"):
        prompt = task["task_prefix"].strip() + "\n" + prompt.lstrip("\n")
    return prompt.lstrip("\n")


def _bigbench_mc(name: str, n: int | None, seed: int) -> list[MCItem]:
    task = _bigbench_task(name)
    examples = [e for e in task["examples"] if e.get("target_scores")]
    rng = np.random.default_rng(seed)
    items = []
    for i in _subset(len(examples), n, seed):
        e = examples[i]
        opts = list(e["target_scores"].items())
        order = rng.permutation(len(opts))  # the source puts the answer at a fixed slot in some tasks
        opts = [opts[j] for j in order]
        best = max(s for _, s in opts)
        items.append(
            MCItem(
                _bigbench_prompt(task, e["input"]),
                [f" {c}" for c, _ in opts],
                next(k for k, (_, s) in enumerate(opts) if s == best),
                f"bigbench/{name}",
            )
        )
    return items


def _mmlu_items(n: int | None, seed: int) -> list[MCItem]:
    lines = (fetch_data("mmlu") / "mmlu.jsonl").read_text().splitlines()
    items = []
    for i in _subset(len(lines), n, seed):
        r = json.loads(lines[i])
        opts = "".join(f"\n{L}. {r[f'answer_{L.lower()}']}" for L in "ABCD")
        q = (
            f"The following are multiple choice questions (with answers) about {r['topic']}.\n\n"
            f"{r['question'].strip()}{opts}\nAnswer:"
        )
        items.append(MCItem(q, [" A", " B", " C", " D"], "ABCD".index(r["correct_answer"]), f"mmlu/{r['topic']}"))
    return items


_WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?")


def _cloze_items(n: int | None, seed: int) -> list[MCItem]:
    """From the wiki held-out split: ~40 words of context ending before a word; choices are the
    true next word and 3 words of similar frequency (nearest ranks in the held-out vocabulary),
    sampled with the seed, in their usual spelling (capitalised if the true word is)."""
    n = CLOZE_DEFAULT_N if n is None else n
    if n < 1:
        raise UserError(f"n must be >= 1, got {n}")
    held = split_text("wiki", "heldout")
    words = [(m.start(), m.group()) for m in _WORD.finditer(held)]
    counts = Counter(w.lower() for _, w in words)
    surface = {}  # lower-case word -> its most common spelling ('british' -> 'British')
    for w, _ in Counter(w for _, w in words).most_common():
        surface.setdefault(w.lower(), w)
    vocab = sorted(w for w in counts if w.isalpha() and len(w) > 1)
    vocab = [vocab[j] for j in np.random.default_rng(0).permutation(len(vocab))]  # ties: no alphabet order
    vocab.sort(key=lambda w: -counts[w])
    rank = {w: i for i, w in enumerate(vocab)}
    breaks = [m.start() for m in re.finditer(r"\n\n", held)]
    article = np.searchsorted(breaks, [pos for pos, _ in words])  # which article each word is in
    k = CLOZE_CONTEXT_WORDS
    eligible = [
        i
        for i in range(k, len(words))
        if words[i][1].lower() in rank and held[words[i][0] - 1] == " " and article[i - k] == article[i]
    ]
    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(len(eligible), size=min(n, len(eligible)), replace=False).tolist())
    items = []
    for p in picks:
        i = eligible[p]
        pos, w = words[i]
        r = rank[w.lower()]
        lo = max(0, min(r - 25, len(vocab) - 51))
        pool = [v for v in vocab[lo : lo + 51] if v != w.lower()]
        distract = [surface[pool[j]] for j in rng.choice(len(pool), size=3, replace=False)]
        if w[0].isupper():
            distract = [d[0].upper() + d[1:] for d in distract]
        choices = [w] + distract
        order = rng.permutation(4)
        context = held[words[i - k][0] : pos].rstrip(" ")
        items.append(MCItem(context, [f" {choices[j]}" for j in order], int(np.argmin(order)), "wiki-cloze"))
    return items


def mc_items(name: str, n: int | None = None, seed: int = 0) -> list[MCItem]:
    """Multiple-choice items; score each choice as a continuation of `question`.
    n None: every item (cloze: 1000); else n items drawn with the seed (kept in source order).
    BIG-bench choices are shuffled with the seed (some tasks always put the answer first/last)."""
    if name == "mmlu":
        return _mmlu_items(n, seed)
    if name == "cloze":
        return _cloze_items(n, seed)
    if name in DATASETS and "mc" in DATASETS[name].kind and DATASETS[name].package == BIGBENCH:
        return _bigbench_mc(name, n, seed)
    raise UserError(f"no multiple-choice items for {name!r}; known: {', '.join(MC_NAMES)}")


def gen_items(name: str, n: int | None = None, seed: int | None = None) -> list[GenItem]:
    """Generation items: the first n (seed None) or n drawn with the seed; n None: all."""
    if name == "humaneval":
        rows = [json.loads(x) for x in (fetch_data(name) / "HumanEval.jsonl").read_text().splitlines() if x.strip()]
        return [
            GenItem(
                rows[i]["prompt"],
                [rows[i]["canonical_solution"]],
                f"humaneval/{rows[i]['task_id']}",
                {"entry_point": rows[i]["entry_point"], "test": rows[i]["test"]},
            )
            for i in _subset(len(rows), n, seed)
        ]
    if name in ("qa_wikidata", "arithmetic"):
        task = _bigbench_task(name)
        ex = task["examples"]
        out = []
        for i in _subset(len(ex), n, seed):
            t = ex[i]["target"]
            out.append(
                GenItem(
                    _bigbench_prompt(task, ex[i]["input"]), [t] if isinstance(t, str) else list(t), f"bigbench/{name}"
                )
            )
        return out
    raise UserError(f"no generation items for {name!r}; known: {', '.join(GEN_NAMES)}")
