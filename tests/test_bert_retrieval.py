"""The BERT encoder (sim/models/bert.py) against transformers, its pooling, compression of its
linears, the retrieval metrics and corpus (validate/retrieval.py), and `measure` on an encoder."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

TINY = dict(
    vocab_size=97,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    type_vocab_size=2,
    hidden_act="gelu",
    layer_norm_eps=1e-12,
)


def _tiny_pair(seed=0):
    """(transformers BertModel with random weights, our encoder holding the same weights)."""
    import torch
    import transformers

    from hemorrhage.sim.models.bert import BertConfig, BertEncoder, load_bert_state
    from flax import nnx

    torch.manual_seed(seed)
    ref = transformers.BertModel(transformers.BertConfig(**TINY), add_pooling_layer=False).eval()
    ours = BertEncoder(BertConfig.from_hf({"model_type": "bert", **TINY}, ("mean", True, 64)), nnx.Rngs(0))
    load_bert_state(ours, {k: v.numpy() for k, v in ref.state_dict().items()})
    return ref, ours


def _batch():
    tokens = np.array([[2, 5, 9, 14, 3, 0, 0], [2, 7, 7, 11, 40, 8, 3]], np.int32)
    mask = (np.arange(7)[None] < np.array([[5], [7]])).astype(np.float32)
    return tokens, mask


def test_bert_equals_transformers_on_a_tiny_random_config():
    import torch

    ref, ours = _tiny_pair()
    tokens, mask = _batch()
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    got = np.asarray(ours.hidden(jnp.asarray(tokens), jnp.asarray(mask))[-1])
    real = mask.astype(bool)  # padding positions' states are never read (pooling masks them)
    assert np.abs(got - want)[real].max() <= 1e-5


def _st_folder(tmp_path, modules, pooling):
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return tmp_path


MEAN_NORM = (
    [
        {"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ],
    {"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False},
)
CLS_RAW = (MEAN_NORM[0][:2], {"pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True})


@pytest.mark.parametrize("files,expect", [(MEAN_NORM, ("mean", True)), (CLS_RAW, ("cls", False))])
def test_pooling_follows_the_sentence_transformers_files(tmp_path, files, expect):
    from dataclasses import replace

    from hemorrhage.sim.models.bert import read_pooling

    how, normalize, _ = read_pooling(_st_folder(tmp_path, *files))
    assert (how, normalize) == expect
    _, ours = _tiny_pair()
    ours.cfg = replace(ours.cfg, pooling=how, normalize=normalize)
    tokens, mask = _batch()
    h = np.asarray(ours.hidden(jnp.asarray(tokens), jnp.asarray(mask))[-1], np.float64)
    want = h[:, 0] if how == "cls" else (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    if normalize:
        want = want / np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(ours.encode(jnp.asarray(tokens), jnp.asarray(mask))), want, atol=1e-5)


@pytest.mark.real
def test_minilm_equals_transformers_and_sentence_transformers_pooling():
    import torch
    import transformers

    from hemorrhage.sim import load
    from hemorrhage.sim.models.bert import encode

    loaded = load("minilm-l6", quiet=True)
    assert (loaded.cfg.pooling, loaded.cfg.normalize, loaded.cfg.max_seq_length) == ("mean", True, 256)
    enc = loaded.tokenizer(["The capital of France is Paris.", "A fox."], padding=True, return_tensors="np")
    tokens, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.float32)
    ref = transformers.BertModel.from_pretrained(str(loaded.path), dtype=torch.float32).eval()
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    got = np.asarray(loaded.model.hidden(jnp.asarray(tokens), jnp.asarray(mask))[-1])
    assert np.abs(got - want)[mask.astype(bool)].max() <= 1e-5
    pooled = (want * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(
        np.asarray(encode(loaded.model, jnp.asarray(tokens), jnp.asarray(mask))), pooled, atol=1e-5
    )


@pytest.mark.parametrize("method,settings", [("rtn", dict(bits=3)), ("magnitude", dict(sparsity=0.5))])
def test_an_encoder_compresses_every_linear(method, settings):
    from hemorrhage.sim.compress import compress, linears, make_method

    _, ours = _tiny_pair()
    found = [p for p, *_ in linears(ours)]
    assert len(found) == 6 * ours.cfg.n_layers  # q k v o fc proj of every block
    small, record = compress(ours, make_method(method, **settings))
    ref_w = {p: layer.weight() for p, _, _, layer in linears(ours)}
    for path, _, _, layer in linears(small):
        w = np.asarray(layer.weight())
        assert not np.allclose(w, np.asarray(ref_w[path])), path
        if method == "magnitude":
            assert abs(np.mean(w == 0) - 0.5) < 0.02, path
    tokens, mask = _batch()
    e0, e1 = (np.asarray(m.encode(jnp.asarray(tokens), jnp.asarray(mask))) for m in (ours, small))
    assert np.isfinite(e1).all() and not np.allclose(e0, e1)


def test_retrieval_metrics_on_known_ranks():
    from hemorrhage.validate.retrieval import retrieval_metrics

    n_docs, ranks = 20, [1, 2, 5, 11, 1, 20]
    docs = np.eye(n_docs, dtype=np.float32)  # cos(q, d_j) = q_j / ‖q‖: a query's row IS its scores
    q = np.zeros((len(ranks), n_docs), np.float32)
    for i, r in enumerate(ranks):
        q[i] = 0.1 * np.arange(n_docs, 0, -1)  # distinct scores, highest at doc 0
        q[i, [i, r - 1]] = q[i, [r - 1, i]]  # gold doc i takes the r-th highest score
    q[-1] = 1.0  # every score tied: ties count against the query (last, not first)
    gold = np.arange(len(ranks))
    m = retrieval_metrics(q, docs, gold)
    np.testing.assert_array_equal(m["ranks"], ranks)
    assert m["recall_at_1"] == pytest.approx(2 / 6) and m["recall_at_10"] == pytest.approx(4 / 6)
    assert m["mrr"] == pytest.approx(np.mean([1 / r for r in ranks]))
    q[0, 3] = np.nan  # a query with a non-finite score ranks last
    m = retrieval_metrics(q, docs, gold)
    assert m["ranks"][0] == n_docs and m["nonfinite_queries"] == 1


def test_retrieval_set_pairs_a_sentence_with_the_rest_of_its_paragraph():
    from hemorrhage.validate.retrieval import build_set, sentences

    held = [
        f"Topic {i} has a first sentence here. Topic {i} has a second sentence too. And a third one about {i} ends."
        for i in range(5)
    ] + ["One sentence only, no pair made."]
    train = [f"Train paragraph {i} says a thing. It then says another thing." for i in range(10)]
    rs = build_set(held, train, n_documents=8, seed=3)
    assert len(rs.queries) == 5 and len(rs.documents) == 8 and rs.n_distractors == 3
    for q, g in zip(rs.queries, rs.gold):
        doc, para = rs.documents[g], held[int(g)]
        assert q not in doc and sorted(sentences(doc) + [q]) == sorted(sentences(para))
    assert all(d in train for d in rs.documents[5:])
    again = build_set(held, train, 8, seed=3)  # deterministic
    assert (again.queries, again.documents) == (rs.queries, rs.documents)


def test_measure_on_an_encoder_reports_lm_metrics_null_with_a_reason(monkeypatch):
    from hemorrhage.sim.hub.loading import Loaded
    from hemorrhage.validate import retrieval
    from hemorrhage.validate.measure import MeasureConfig
    from hemorrhage.validate.measure_encoder import LM_KEYS, measure_encoder

    _, ours = _tiny_pair()
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    held = [f"{w} is a word. {w} starts this line. It ends with {w} again." for w in words]
    monkeypatch.setattr(retrieval, "retrieval_set", lambda n, seed=0: retrieval.build_set(held, [], n, seed))

    class Tok:  # ids from the characters: enough for a 97-token vocabulary
        def __call__(self, text, truncation=True, max_length=64):
            return {"input_ids": [2] + [3 + ord(c) % 90 for c in text][: max_length - 2] + [1]}

    loaded = Loaded(ours, ours.cfg, Tok(), None, "tiny-bert", "random")
    res = measure_encoder(loaded, ours, MeasureConfig(retrieval=10))
    for k in LM_KEYS:
        assert res[k] is None and "encoder" in res["not_computable"][k], k
    assert res["retrieval"]["n_queries"] == 10
    assert res["embedding_cos"] == pytest.approx(1.0, abs=1e-6)
    assert res["retrieval_recall_at_1"] == res["retrieval_recall_at_1_base"]


def test_exp_retrieval_verdict_follows_its_rules(tmp_path):
    from hemorrhage.validate.exp_retrieval import retrieval

    def row(s, r1, cos, prefix):
        return {
            "model": "m",
            "grid": {"method": "magnitude", "settings": {"sparsity": s}},
            "retrieval_recall_at_1": r1,
            "retrieval_recall_at_1_base": 0.8,
            "embedding_cos": cos,
            "gen_prefix_agreement": prefix,
        }

    # collapsed (prefix < 0.5) at 0.5, 0.6, 0.7; retrieval within 5 % of 0.8 (>= 0.76) at 0.5 and 0.6 only
    rows = [
        row(0.1, 0.8, 0.999, 1.0),
        row(0.3, 0.79, 0.99, 0.9),
        row(0.5, 0.77, 0.97, 0.3),
        row(0.6, 0.76, 0.95, 0.2),
        row(0.7, 0.5, 0.8, 0.0),
    ]
    v = retrieval(rows, results=tmp_path, figures=tmp_path, stem="t")
    assert v["holds"] is True and v["evidence"]["collapsed_settings"] == 3
    assert v["evidence"]["retrieval_survives_there"] == 2
    assert v["evidence"]["cos_predicts"] is True  # recall loss rises as the cosine falls
    rows[3]["retrieval_recall_at_1"] = 0.75  # now 1 of 3 collapsed settings keeps its recall
    assert retrieval(rows, results=tmp_path, figures=tmp_path, stem="t")["holds"] is False
    none = retrieval(
        [{k: v for k, v in r.items() if k != "gen_prefix_agreement"} for r in rows],
        results=tmp_path,
        figures=tmp_path,
        stem="t",
    )
    assert none["holds"] is None  # an encoder's rows: no generation to collapse


def test_measure_json_on_a_causal_model_reports_retrieval(tiny_ckpt, capsys):
    from hemorrhage.cli import main

    argv = [
        "measure",
        "--model",
        str(tiny_ckpt),
        "--method",
        "magnitude",
        "--sparsity",
        "0.5",
        "--windows",
        "1",
        "--seqlen",
        "16",
        "--mc-items",
        "0",
        "--prompts",
        "1",
        "--new-tokens",
        "4",
        "--no-steps",
        "--strata-bins",
        "0",
        "--no-per-layer",
        "--retrieval",
        "6",
        "--json",
    ]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["retrieval"]["n_documents"] == 6 and res["config"]["retrieval"] == 6
    for d in (res, res["retrieval_last_token"]):  # mean pooling at the top, last-token beside it
        for k in ("retrieval_recall_at_1", "retrieval_recall_at_10", "retrieval_mrr"):
            assert 0 <= d[k] <= 1 and 0 <= d[f"{k}_base"] <= 1
        assert -1 <= d["embedding_cos"] < 1  # half the weights gone: the embeddings moved
