"""The control's data: its tokenizer, its training batches and its held-out report.

The recipe is in sim/train.py's docstring: a byte-level BPE fitted on the train splits of the
packaged Wikipedia excerpt and Shakespeare (one special token, never inserted into the
text), batches of windows at seeded offsets, and a held-out perplexity next to an add-one
smoothed unigram model on the same scored tokens.
"""

from __future__ import annotations

import numpy as np

SPECIAL = "<|endoftext|>"
SOURCES = ("wiki", "shakespeare")
SAMPLE_PROMPTS = ("The history of", "KING. My lord,")


def train_texts(spec) -> dict[str, str]:
    from hemorrhage.sim.data import split_text

    out = {}
    for src in SOURCES:
        t = split_text(src, "train")
        out[src] = t[: spec.max_chars] if spec.max_chars else t
    return out


def train_tokenizer(texts: dict[str, str], vocab_size: int):
    """A byte-level BPE fitted on the train texts, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )

    def chunks():
        for src in SOURCES:  # fixed order; BPE counts are order-free, merges break ties by pair
            t = texts[src]
            for i in range(0, len(t), 1 << 16):
                yield t[i : i + (1 << 16)]

    tok.train_from_iterator(chunks(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=SPECIAL, eos_token=SPECIAL, pad_token=SPECIAL, model_max_length=int(1e9)
    )


def encode(tokenizer, text: str) -> np.ndarray:
    """The text as one token stream, no special tokens (as sim.data tokenizes a split)."""
    return np.asarray(tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids, np.int32)


def batch_starts(rng, lengths: dict[str, int], spec) -> list[tuple[str, np.ndarray]]:
    n_wiki = int(round(spec.batch * spec.wiki_share))
    width = spec.seqlen + 1
    return [
        (src, rng.integers(0, lengths[src] - width + 1, size=n))
        for src, n in (("wiki", n_wiki), ("shakespeare", spec.batch - n_wiki))
        if n > 0
    ]


def make_batch(streams: dict[str, np.ndarray], starts, width: int) -> np.ndarray:
    return np.stack([streams[src][s : s + width] for src, ss in starts for s in ss]).astype(np.int32)


def _nll_fn():
    import jax
    import jax.numpy as jnp

    from hemorrhage.sim.jit import jit

    @jit
    def nll(model, tokens):
        logp = jax.nn.log_softmax(model(tokens)[0][:, :-1])
        return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]

    return nll


def heldout_report(model, tokenizer, streams: dict[str, np.ndarray], spec) -> dict:
    """Held-out perplexity per source vs a unigram model on the same scored tokens."""
    import jax.numpy as jnp

    from hemorrhage.sim.windows import eval_windows

    counts = np.ones(spec.vocab_size, np.float64)  # add-one smoothing
    for ids in streams.values():
        counts += np.bincount(ids, minlength=spec.vocab_size)[: spec.vocab_size]
    log_uni = np.log(counts / counts.sum())
    nll = _nll_fn()
    out = {}
    for src in SOURCES:
        win = eval_windows(tokenizer, src, seqlen=spec.seqlen, stride=spec.seqlen, max_windows=spec.eval_windows)
        losses = np.concatenate([np.asarray(nll(model, jnp.asarray(win[i : i + 16]))) for i in range(0, len(win), 16)])
        targets = win[:, 1:]
        out[src] = {
            "ppl": float(np.exp(losses.mean())),
            "unigram_ppl": float(np.exp(-log_uni[targets].mean())),
            "windows": int(len(win)),
            "scored_tokens": int(targets.size),
        }
        out[src]["ratio_to_unigram"] = out[src]["ppl"] / out[src]["unigram_ppl"]
    return out


def samples(model, tokenizer, n_prompts: int = len(SAMPLE_PROMPTS), n_new: int = 40) -> list[dict]:
    """Greedy and sampled (T = 0.8, top-p 0.95, seed 0) continuations of fixed prompts."""
    import jax.numpy as jnp

    from hemorrhage.sim.generate import generate

    out = []
    for prompt in SAMPLE_PROMPTS[:n_prompts]:
        ids = jnp.asarray([encode(tokenizer, prompt)])
        n = min(n_new, model.cfg.max_positions - ids.shape[1])
        greedy = generate(model, ids, n)
        sampled = generate(model, ids, n, temperature=0.8, top_p=0.95, seed=0)
        out.append(
            {
                "prompt": prompt,
                "greedy": tokenizer.decode(np.asarray(greedy[0])),
                "sampled_t0.8": tokenizer.decode(np.asarray(sampled[0])),
            }
        )
    return out
