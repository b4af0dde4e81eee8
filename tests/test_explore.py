"""The tutorials' knob (validate/explore.py) on a tiny random Llama with SmolLM2's tokenizer:
the base side once, each setting measured and cached, the view drawn.  What a student sees
under `marimo edit`; the scripts (test_tutorials.py) never turn the knob."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import save_tiny_hf_with_smollm2_tokenizer

from hemorrhage.validate.explore import Explorer, hierarchy_figure, summary_markdown


@pytest.fixture(scope="module")
def explorer(tmp_path_factory):
    from hemorrhage.sim import load

    loaded = load(str(save_tiny_hf_with_smollm2_tokenizer(tmp_path_factory.mktemp("tiny"))), quiet=True)
    return Explorer(loaded, seqlen=16, mc_items=2, new_tokens=6, calib_samples=2, calib_seqlen=16)


def test_knob_measures_each_level_of_the_damage(explorer):
    none = explorer.damage("magnitude", 0.0)  # nothing pruned: no damage anywhere
    L1 = explorer.h_base.shape[0]
    assert all(v.shape == (L1,) for v in none.per_layer.values())
    assert np.allclose(none.per_layer["cos_p"], 1, atol=1e-5) and np.all(none.per_layer["kl"] < 1e-6)
    assert none.text_compressed == none.text_base and none.first_divergence == explorer.new_tokens
    assert np.array_equal(none.mc_compressed, none.mc_base) and len(none.mc_base) == 2
    hard = explorer.damage("magnitude", 0.8)
    assert hard.per_layer["kl"][-1] > 1e-4 and hard.per_layer["cos_p"][-1] < 1
    assert explorer.damage("magnitude", 0.8) is hard  # turning back to a setting is free
    text = summary_markdown(hard, L1 - 1, explorer.questions)
    assert "½Var_p(Δz)" in text and repr(hard.text_compressed) in text and "Multiple choice" in text
    q = explorer.damage("rtn", 3)
    assert q.per_layer["kl"][-1] > 0 and np.isfinite(q.per_layer["kl_pred"]).all()
    fig = hierarchy_figure(hard, 1)
    assert len(fig.axes) == 2


def test_notebook_knob_cells_build_the_view(explorer):
    """The cells every tutorial shares (explore.method_dropdown ... knob_view) with marimo's own
    UI elements: the slider offers the method's settings, the view holds the figure and text."""
    import marimo as mo

    from hemorrhage.validate import explore

    method = explore.method_dropdown(mo, "magnitude")
    level = explore.level_slider(mo, method.value)
    layer = explore.layer_slider(mo, explorer)
    assert method.value == "magnitude" and level.value == explore.KNOBS["magnitude"][1][3]
    assert layer.value == explorer.h_base.shape[0] - 1
    html = explore.knob_view(mo, explorer, method.value, level.value, layer).text
    d = explorer.damage("magnitude", level.value)  # cached: the view measured this setting
    assert "data:image/png" in html and "Multiple choice" in html and d.text_compressed[:8].replace("<", "&lt;") in html
