"""The success-case experiments' rules on synthetic rows, and the calibration matrix on a tiny model:
exp_retrieval's two poolings, exp_in_context, exp_calibration (validate/)."""

import math

import numpy as np
import pandas as pd
import pytest


def test_retrieval_reads_a_causal_rows_last_token_pooling_as_its_own_embedder(tmp_path):
    from hemorrhage.validate.exp_retrieval import retrieval, retrieval_frame

    def row(s, mean_r1, last_r1, prefix):
        return {
            "model": "m",
            "grid": {"method": "wanda", "settings": {"sparsity": s}},
            "retrieval": {"pooling": "mean"},
            "retrieval_recall_at_1": mean_r1,
            "retrieval_recall_at_1_base": 0.5,
            "embedding_cos": 0.9,
            "gen_prefix_agreement": prefix,
            "retrieval_last_token": {
                "retrieval_recall_at_1": last_r1,
                "retrieval_recall_at_1_base": 0.4,
                "embedding_cos": 0.8,
            },
        }

    rows = [row(0.5, 0.5, 0.1, 0.2), row(0.7, 0.1, 0.4, 0.1)]
    df = retrieval_frame(rows)
    assert len(df) == 4 and set(df.pooling) == {"mean", "last"}
    last = df[df.pooling == "last"].sort_values("level")
    assert last.retrieval_recall_at_1.tolist() == [0.1, 0.4] and (last.retrieval_recall_at_1_base == 0.4).all()
    assert (
        last.gen_prefix_agreement.tolist()
        == df[df.pooling == "mean"].sort_values("level").gen_prefix_agreement.tolist()
    )
    v = retrieval(rows, results=tmp_path, figures=tmp_path, stem="t")
    assert v["evidence"]["collapsed_settings"] == 4 and v["evidence"]["retrieval_survives_there"] == 2


def _ic_row(method, axis, level, em, em_base=0.6):
    return {
        "model": "m",
        "grid": {"method": method, "settings": {axis: level}},
        "ic_em": em,
        "ic_em_base": em_base,
        "ic_agreement": em,
        "cb_em": 0.1,
        "cb_em_base": 0.2,
        "ic_items": 10,
    }


def test_in_context_verdict_follows_its_rules(tmp_path):
    from hemorrhage.validate.exp_in_context import EM_TOL, in_context

    ok = 0.6 * (1 - EM_TOL)
    rows = [
        _ic_row("magnitude", "sparsity", 0.3, 0.6),
        _ic_row("magnitude", "sparsity", 0.5, ok),
        _ic_row("wanda", "sparsity", 0.5, 0.58),
        _ic_row("rtn", "bits", 3, 0.1),
    ]
    v = in_context(rows, results=tmp_path, figures=tmp_path, stem="t")
    assert v["holds"] is True
    assert v["evidence"]["limits"]["m magnitude"]["robust_up_to"] == 0.5
    assert v["evidence"]["limits"]["m rtn"]["robust_up_to"] is None
    rows[2]["ic_em"] = ok - 0.01
    assert in_context(rows, results=tmp_path, figures=tmp_path, stem="t")["holds"] is False
    assert in_context(rows[:1] + rows[3:], results=tmp_path, figures=tmp_path, stem="t")["holds"] is None


def _matrix(kl: dict) -> pd.DataFrame:
    return pd.DataFrame(
        [{"method": "wanda sparsity=0.5", "calib": c, "eval": e, "kl": v, "top1": 1 - v} for (c, e), v in kl.items()]
    )


def test_calibration_verdict_follows_its_rules(tmp_path):
    from hemorrhage.validate.exp_calibration import SOURCES, calibration

    diag = {(c, e): (0.1 if c == e else 0.2) for c in SOURCES for e in SOURCES}
    v = calibration(_matrix(diag), results=tmp_path, figures=tmp_path, stem="t")
    assert v["holds"] is True and v["evidence"]["in_domain_wins"] == 3
    assert v["evidence"]["median_advantage"] == pytest.approx(2.0)
    assert v["evidence"]["predictor_sees_it"] is None
    flat = {k: 0.1 + (0.001 if k[0] == "wiki" else 0.0) for k in diag}  # wiki calibration slightly worse everywhere
    assert calibration(_matrix(flat), results=tmp_path, figures=tmp_path, stem="t")["holds"] is False
    # off-domain damage is larger on average, but another source calibrates better: in domain does not win
    skew = {
        (c, e): 0.2 if c == e else (0.1 if SOURCES.index(c) == (SOURCES.index(e) + 1) % 3 else 1.0)
        for c in SOURCES
        for e in SOURCES
    }
    v = calibration(_matrix(skew), results=tmp_path, figures=tmp_path, stem="t")
    assert v["evidence"]["median_advantage"] > 2 and v["evidence"]["in_domain_wins"] == 0 and v["holds"] is False
    pred = _matrix(diag).rename(columns={"kl": "kl_pred"})
    assert (
        calibration(_matrix(diag), pred, results=tmp_path, figures=tmp_path, stem="t")["evidence"]["predictor_sees_it"]
        is True
    )
    wrong = _matrix({k: -v for k, v in diag.items()}).rename(columns={"kl": "kl_pred"})
    assert (
        calibration(_matrix(diag), wrong, results=tmp_path, figures=tmp_path, stem="t")["evidence"]["predictor_sees_it"]
        is False
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from helpers import save_tiny_hf_with_tokenizer

    from hemorrhage.sim import load

    return load(str(save_tiny_hf_with_tokenizer("llama", tmp_path_factory.mktemp("tiny") / "llama")), quiet=True)


def test_calibration_matrix_shape_and_the_calibration_source_matters(tiny):
    from hemorrhage.validate.exp_calibration import calibration_matrix

    rng = np.random.default_rng(0)
    # two "sources" with disjoint token ranges: their input statistics differ
    calib = {"a": rng.integers(0, 100, (2, 16)).astype(np.int32), "b": rng.integers(200, 300, (2, 16)).astype(np.int32)}
    evals = {"a": rng.integers(0, 100, (1, 16)).astype(np.int32), "b": rng.integers(200, 300, (1, 16)).astype(np.int32)}
    df = calibration_matrix(tiny, [("wanda", {"sparsity": 0.5}), ("magnitude", {"sparsity": 0.5})], calib, evals)
    assert len(df) == 2 * 2 * 2 and df.groupby("method").size().to_dict() == {
        "magnitude sparsity=0.5": 4,
        "wanda sparsity=0.5": 4,
    }
    assert all(math.isfinite(x) and x > 0 for x in df.kl)
    wanda = df[df.method.str.startswith("wanda")].set_index(["calib", "eval"]).kl
    assert wanda["a", "a"] != wanda["b", "a"] and wanda["a", "b"] != wanda["b", "b"]  # calibrated on a ≠ on b
    magnitude = df[df.method.str.startswith("magnitude")].set_index(["calib", "eval"]).kl
    assert magnitude["a", "a"] == magnitude["b", "a"]  # no calibration: the source cannot matter


def test_code_is_a_text_source_split_by_problem():
    from hemorrhage.sim import data
    from hemorrhage.sim.compress.registry import check_calibration

    train, held = data.split_text("code", "train"), data.split_text("code", "heldout")
    assert data.text("code") == train + "\n\n" + held
    heads = lambda t: {ln for ln in t.splitlines() if ln.startswith("def ")}  # noqa: E731
    assert heads(held) and not heads(train) & heads(held)  # no held-out function is calibrated on
    check_calibration(calib_source="code")  # a calibration source for every calibrated method


def test_success_command_runs_the_retrieval_verdict_and_refuses_bad_input(tmp_path, capsys):
    """`hemorrhage success retrieval` on stored rows prints the verdict and writes its table;
    a non-positive count or a --results below a file is one line, exit 2, before any model loads."""
    import json

    from helpers import assert_one_line_error

    from hemorrhage.cli import main

    rows = tmp_path / "rows.jsonl"
    row = {
        "model": "m",
        "grid": {"method": "wanda", "settings": {"sparsity": 0.5}},
        "retrieval": {"pooling": "mean"},
        "retrieval_recall_at_1": 0.5,
        "retrieval_recall_at_1_base": 0.5,
        "embedding_cos": 0.9,
        "gen_prefix_agreement": 0.2,
    }
    rows.write_text(json.dumps(row) + "\n")
    res, fig = tmp_path / "r", tmp_path / "f"
    capsys.readouterr()
    argv = ["success", "retrieval", "--rows", str(rows), "--results", str(res), "--figures", str(fig)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("retrieval") and "table:" in out and any(res.glob("*.csv"))
    (tmp_path / "file").write_text("x")
    for bad in (
        ["success", "in_context", "--grid", "magnitude", "--items", "0"],
        ["success", "retrieval", "--rows", str(rows), "--results", str(tmp_path / "file" / "r")],
    ):
        code = main(bad)
        assert_one_line_error(code, capsys.readouterr().err)
