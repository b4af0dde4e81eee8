"""In-context retrieval (validate/in_context.py): the question builder and the exact-match metric."""

import numpy as np
import pytest

from hemorrhage.validate import in_context as icm

PARAGRAPHS = [
    "Paris is the capital of France. It had 2,100 inhabitants in the year 1850 and grew after that. "
    "The river Seine crosses the city from east to west.",
    "One line only, no second sentence here at all",
    "The tower was finished in 1889 by Gustave Eiffel. Visitors from Japan and Brazil come every year. "
    "In 1889 the fair opened.",
]


def test_every_answer_occurs_exactly_once_in_its_passage():
    items = icm.heldout_items(40, seed=0) + icm.build_items(PARAGRAPHS, 5, seed=1)
    assert len(items) > 40
    for it in items:
        assert it.passage.count(it.answer) == 1, (it.answer, it.passage)
        assert icm.BLANK in it.cloze and it.answer not in it.cloze.replace(icm.BLANK, "", 1)
        assert it.cloze.replace(icm.BLANK, it.answer, 1) in it.passage  # the blanked sentence is the passage's
        assert it.passage in it.open_prompt and it.passage not in it.closed_prompt
    # "1889" occurs twice in the third paragraph: never an answer there
    assert all(it.answer != "1889" for s in range(20) for it in icm.build_items(PARAGRAPHS, 5, seed=s))


def test_items_are_deterministic_and_the_seed_matters():
    a, b = icm.heldout_items(30, seed=0), icm.heldout_items(30, seed=0)
    assert a == b
    assert [it.answer for it in icm.heldout_items(30, seed=1)] != [it.answer for it in a]


def test_matches_is_exact():
    top = np.array([[5, 7, 9], [5, 7, 9]])
    assert icm.matches(top, [[5, 7, 9], [5, 7]]).tolist() == [True, True]
    assert icm.matches(top, [[5, 8, 9], [6]]).tolist() == [False, False]


@pytest.fixture(scope="module")
def tiny(tiny_ckpt):
    from hemorrhage.sim import load

    loaded = load(str(tiny_ckpt), quiet=True)
    return loaded, icm.in_context_inputs(loaded, icm.heldout_items(6, seed=0))


def test_the_base_agrees_with_itself_and_not_with_a_corrupted_answer(tiny):
    loaded, ic = tiny
    row = icm.measure_in_context(ic, loaded.model)
    assert row["ic_agreement"] == 1.0 and row["cb_agreement"] == 1.0
    assert row["ic_em"] == row["ic_em_base"] and row["cb_span_nll"] == row["cb_span_nll_base"]
    V = int(loaded.model.cfg.vocab_size)
    for book in ("ic", "cb"):
        prompts, greedy = ic[book]["prompts"], ic[book]["base_greedy"]
        top, _, _ = icm.score(loaded.model, prompts, greedy)
        assert icm.matches(top, greedy).all()
        corrupted = [[(g[0] + 1) % V] + g[1:] for g in greedy]
        assert not icm.matches(top, corrupted).any()


def test_a_pruned_model_is_scored_against_the_base(tiny):
    from hemorrhage.sim.compress import compress_from_args

    loaded, ic = tiny
    comp, _ = compress_from_args(loaded, "magnitude", sparsity=0.9)
    row = icm.measure_in_context(ic, comp)
    assert row["ic_items"] == 6 and 0.0 <= row["ic_agreement"] <= 1.0
    assert row["ic_span_nll"] != row["ic_span_nll_base"]
