"""Multiple choice: the items as padded arrays, the choice scores, the agreement metrics.

Definitions (validate/measure.py's docstring has the whole list): a choice's score is the
SUM of the log-probabilities of its tokens given the question and its own earlier tokens;
the question runs once and its KV cache is reused for every choice.  π = softmax of the
choice scores is p renormalised over the answer subspace (seed 002's "renormalise p over
the answer tokens", exactly so for one-token choices).
"""

from __future__ import annotations

import numpy as np

from hemorrhage.errors import UserError
from hemorrhage.validate.arrays import kl_rows, log_softmax_rows, mean


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
    h, cache, _ = model(q_tok, pos0=0, cache=cache, logits=False)  # logits only where read: [I V], not [I Lq V]
    z_ans = jax.nn.log_softmax(model.unembed(h[jnp.arange(I), q_len - 1]))  # predicts each choice's 1st token

    def item(args):
        cache_i, lp_ans, ql, ct = args
        cache_c = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x[None], (C,) + x.shape), cache_i)
        zc, _, _ = model(ct, pos0=ql, cache=cache_c)  # [C Lc V]
        lp = jax.nn.log_softmax(zc[:, :-1])  # predicts tokens 1..Lc-1
        lp = jnp.concatenate([jnp.broadcast_to(lp_ans[None, None], (C, 1, lp_ans.shape[-1])), lp], axis=1)
        return jnp.take_along_axis(lp, ct[..., None], axis=-1)[..., 0]

    tok_lp = jax.lax.map(item, (cache, z_ans, q_len, c_tok))
    return tok_lp, z_ans


_CHOICES = []


def _choices_jit():
    if not _CHOICES:
        from hemorrhage.sim.jit import jit

        _CHOICES.append(jit(_choices_impl))
    return _CHOICES[0]


def _round_up(n: int, m: int) -> int:
    return max(m, -(-n // m) * m)


def mc_inputs(loaded, config) -> dict:
    """Tokenized MC items as padded arrays (see _choices_impl)."""
    from hemorrhage.sim.data import mc_items
    from hemorrhage.sim.windows import adds_bos

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
    bos = [int(tok.bos_token_id)] if adds_bos(tok) else []  # the question starts as the tokenizer starts a text
    keep = min(config.mc_max_question, max_pos - Lc) - len(bos)
    if keep < 1:
        raise UserError(f"the model's {max_pos} positions leave no room for a question")
    qs = [enc(it.question)[-keep:] for it in items]
    if any(len(q) == 0 for q in qs):
        raise UserError("a multiple-choice question tokenizes to nothing")
    qs = [bos + q for q in qs]
    Lq = min(_round_up(max(len(q) for q in qs), 16), max_pos - Lc)
    I = len(items)
    q_tok = np.zeros((I, Lq), np.int32)
    c_tok = np.zeros((I, C, Lc), np.int32)
    c_mask = np.zeros((I, C, Lc), bool)
    valid = np.zeros((I, C), bool)
    for i, (q, row) in enumerate(zip(qs, cs)):
        q_tok[i, : len(q)] = q
        for j, c in enumerate(row):
            c_tok[i, j, : len(c)] = c
            c_mask[i, j, : len(c)] = True
            valid[i, j] = True
    return {
        "q_tok": q_tok,
        "q_len": np.asarray([len(q) for q in qs], np.int32),
        "c_tok": c_tok,
        "c_mask": c_mask,
        "valid": valid,
        "answer": np.asarray([it.answer for it in items], np.int32),
        "task": np.asarray(task_of, np.int32),
    }


def choice_scores(model, mc: dict) -> tuple[np.ndarray, np.ndarray]:
    """(scores [I C] = summed log-probs, −inf for missing choices; answer-position log-probs [I V])."""
    I, Lq = mc["q_tok"].shape
    C, Lc = mc["c_tok"].shape[1:]
    vocab = int(model.cfg.vocab_size) if hasattr(model, "cfg") else 50_000
    batch = int(max(1, min(8, I, (1 << 27) // max(1, Lq * vocab))))  # ≤ ~0.5 GB of prefill logits
    n_pad = (-I) % batch
    idx = np.concatenate([np.arange(I), np.zeros(n_pad, int)])
    from hemorrhage.sim.shard import on_active_mesh

    fn = _choices_jit()
    tok_lp, ans = [], []
    for s in range(0, len(idx), batch):
        b = idx[s : s + batch]
        lp, za = fn(model, *(on_active_mesh(mc[k][b]) for k in ("q_tok", "q_len", "c_tok")))
        tok_lp.append(np.asarray(lp))
        ans.append(np.asarray(za))
    tok_lp = np.concatenate(tok_lp)[:I].astype(np.float64)
    scores = np.where(mc["c_mask"], tok_lp, 0.0).sum(-1)
    scores = np.where(mc["valid"], scores, -np.inf)
    return scores, np.concatenate(ans)[:I]


def mc_metrics(mc: dict, task_names, s_c: np.ndarray, ans_c: np.ndarray) -> dict:
    """Agreement, accuracy and the subspace vs full KL of compressed scores s_c against the base's.

    An item whose compressed scores are not finite counts as disagreeing and wrong (the model
    gave no valid answer); an item whose BASE scores are not finite has no reference, so
    agreement, the base's accuracy and the KLs are not computable (null + reason,
    validate.computable) wherever such an item is included."""
    from hemorrhage.validate.computable import count_reason, null_nans

    s_b, valid, answer = mc["scores"], mc["valid"], mc["answer"]
    finite_rows = lambda s, a: (
        np.all(np.isfinite(np.where(valid, s, 0.0)), -1)  # noqa: E731
        & np.all(np.isfinite(a), -1)
    )
    ok_b, ok_c = finite_rows(s_b, mc["ans_logp"]), finite_rows(s_c, ans_c)
    pred_b = np.argmax(s_b, -1)
    pred_c = np.where(ok_c, np.argmax(np.where(ok_c[:, None], s_c, 0.0), -1), -1)
    agree = np.where(ok_b, pred_b == pred_c, np.nan)  # argmax of NaN base scores is 0: not an answer
    right_b = np.where(ok_b, pred_b == answer, np.nan)
    kl_choices = kl_rows(log_softmax_rows(s_b), log_softmax_rows(np.where(valid, s_c, -np.inf)))
    kl_full = kl_rows(mc["ans_logp"], ans_c)

    def summary(sel) -> dict:
        out = {
            "items": int(sel.sum()),
            "chance": mean(1.0 / valid[sel].sum(-1)),
            "agreement": mean(agree[sel]),
            "acc_base": mean(right_b[sel]),
            "acc": mean(pred_c[sel] == answer[sel]),
            "kl_choices": mean(kl_choices[sel]),
            "kl_full": mean(kl_full[sel]),
        }
        why = count_reason(
            "MC choice scores or answer-position logits",
            int((~ok_b[sel]).sum()),
            int((~ok_c[sel]).sum()),
            int(sel.sum()),
            "items",
        )
        return null_nans(out, ("agreement", "acc_base", "kl_choices", "kl_full"), why)

    allv = summary(np.ones(len(answer), bool))
    out = {
        "mc_items": allv["items"],
        "mc_agreement": allv["agreement"],
        "mc_acc_base": allv["acc_base"],
        "mc_acc": allv["acc"],
        "mc_kl_choices": allv["kl_choices"],
        "mc_kl_full": allv["kl_full"],
        "mc_nonfinite_items": int((~ok_c).sum()),
    }
    if allv.get("not_computable"):
        out["not_computable"] = {f"mc_{k}": v for k, v in allv["not_computable"].items()}
    out["mc_by_task"] = {name: summary(mc["task"] == t) for t, name in enumerate(task_names) if (mc["task"] == t).any()}
    return out
