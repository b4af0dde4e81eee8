"""Counterfactual sublayer damage and the raw lens (validate/sublayer.py) on a tiny random Llama."""

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from helpers import save_tiny_hf_with_tokenizer

    from hemorrhage.sim import load

    path = save_tiny_hf_with_tokenizer("llama", tmp_path_factory.mktemp("tiny") / "llama")
    loaded = load(str(path), quiet=True)
    tokens = np.random.default_rng(0).integers(0, 300, size=(2, 16)).astype(np.int32)
    return loaded, tokens


def test_an_uncompressed_model_has_exactly_zero_counterfactual_damage(tiny):
    from hemorrhage.sim.compress import compress_from_args
    from hemorrhage.validate.sublayer import counterfactual_table

    loaded, tokens = tiny
    same, _ = compress_from_args(loaded, "magnitude", sparsity=0.0)
    for norm in (True, False):
        df = counterfactual_table(loaded.model, same, tokens, norm=norm)
        assert len(df) == 2 * loaded.model.cfg.n_layers and set(df.part) == {"attn", "mlp"}
        assert (df.kl == 0.0).all() and (df.rel_dh == 0.0).all() and (df.top1 == 1.0).all()


def test_a_compressed_model_has_positive_damage_in_every_sublayer(tiny):
    from hemorrhage.sim.compress import compress_from_args
    from hemorrhage.validate.sublayer import counterfactual_table, lens_layers

    loaded, tokens = tiny
    comp, _ = compress_from_args(loaded, "magnitude", sparsity=0.5)
    df = counterfactual_table(loaded.model, comp, tokens)
    assert (df.kl > 0).all() and (df.rel_dh > 0).all() and (df.cos_h < 1).all()
    raw = lens_layers(loaded.model, comp, tokens, norm=False)
    normed = lens_layers(loaded.model, comp, tokens, norm=True)
    assert raw["kl"][0] == 0.0 and normed["kl"][0] == 0.0  # h_0: the embedding is not compressed
    assert not np.allclose(raw["kl"][1:], normed["kl"][1:])  # the final norm changes what the lens reads


def test_hierarchy_options_write_their_views_and_leave_the_default_alone(tiny, tmp_path, capsys):
    import json

    from hemorrhage.cli import main

    loaded, _ = tiny
    base = [
        "hierarchy",
        "--model",
        str(loaded.path),
        "--method",
        "magnitude",
        "--sparsity",
        "0.5",
        "--windows",
        "1",
        "--seqlen",
        "16",
        "--results",
        str(tmp_path / "r"),
        "--figures",
        str(tmp_path / "f"),
        "--json",
    ]
    assert main(base) == 0
    plain = json.loads(capsys.readouterr().out)
    assert "views" not in plain and sorted(p.name for p in (tmp_path / "r").iterdir()) == [Path(plain["table"]).name]
    assert main(base + ["--counterfactual", "--raw-lens"]) == 0
    views = json.loads(capsys.readouterr().out)["views"]
    for key in ("counterfactual_table", "raw_lens_table", "views_figure"):
        assert Path(views[key]).is_file()
    assert views["disagreement"]["block_max_counterfactual"] in range(loaded.model.cfg.n_layers)
