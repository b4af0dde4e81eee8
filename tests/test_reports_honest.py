"""Reports that must not lie: a model whose logits are NaN gets no perfect score (its
metrics are null with a reason), `generate` says when its logits are not finite, and the
same `compress --json` prints the same bytes (wall-clock timings only with --timings).

A tiny random Llama carrying SmolLM2's tokenizer (real held-out text and MC items apply)
and a copy of it with one layer's MLP weights NaN, which makes every logit NaN."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from hemorrhage.cli import main

MEASURE = [
    "--method",
    "magnitude",
    "--sparsity",
    "0",
    "--windows",
    "1",
    "--seqlen",
    "16",
    "--mc-items",
    "2",
    "--prompts",
    "2",
    "--prompt-len",
    "4",
    "--new-tokens",
    "4",
    "--strata-bins",
    "2",
]
AGREEMENTS = ("top1_agreement", "mc_agreement", "gen_identical", "gen_prefix_agreement", "gen_token_agreement")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """(tiny clean checkpoint, the same with layer 1's MLP down-projection NaN)."""
    from helpers import save_tiny_hf_with_smollm2_tokenizer
    from safetensors.numpy import load_file, save_file

    root = tmp_path_factory.mktemp("honest")
    clean = save_tiny_hf_with_smollm2_tokenizer(root / "clean")
    nan = root / "nan"
    shutil.copytree(clean, nan)
    weights = load_file(str(nan / "model.safetensors"))
    key = next(k for k in weights if "layers.1.mlp.down_proj" in k)
    weights[key] = np.full_like(weights[key], np.nan)
    save_file(weights, str(nan / "model.safetensors"), metadata={"format": "pt"})
    return clean, nan


def _walk(obj, path=""):
    """(dotted path, value) of every scalar in a nested JSON object."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, obj


def test_nan_checkpoint_measures_as_not_computable(ckpts, capsys):
    """Base and compressed both NaN: argmax of NaN is token 0 on both sides, which used to read
    as top-1 agreement 1, identical continuations and an MC KL of 0.  Now every comparison is
    null with a reason, and the table says so."""
    from hemorrhage.commands.measure import print_report

    _, nan = ckpts
    capsys.readouterr()
    assert main(["measure", "--model", str(nan), *MEASURE, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    nc = res["not_computable"]
    perfect = [(p, v) for p, v in _walk(res) if ("agreement" in p or "identical" in p or "matches" in p) and v == 1.0]
    assert perfect == []
    for k in (*AGREEMENTS, "kl", "ppl", "cos_p", "mc_kl_choices", "mc_kl_full", "mc_acc_base", "first_divergence"):
        assert res[k] is None and "not finite" in nc[k], k
    assert res["steps"]["tf_agreement"] is None and "not finite" in res["steps"]["not_computable"]["tf_agreement"]
    assert res["mc_by_task"]["cloze"]["agreement"] is None and res["mc_by_task"]["cloze"]["not_computable"]
    assert res["collapsed"] is True and res["mc_acc"] == 0.0  # wrong answers are a result, not "not computable"
    print_report(res)
    table = capsys.readouterr().out
    assert "top-1 agreement not computable (logits not finite)" in table
    assert "identical continuations not computable" in table and "1.000" not in table


def test_nan_compressed_model_disagrees(ckpts):
    """Only the compressed model NaN: its positions are no prediction, so top-1, MC and
    generation agreement count them as disagreeing (0, not the 1 an argmax of 0 could
    give), while the KL, which has no value, is null with its reason."""
    import jax.numpy as jnp
    from flax import nnx

    from hemorrhage.sim import load
    from hemorrhage.validate.measure import MeasureConfig, measure
    from hemorrhage.validate.base_phase import base_cache

    clean, _ = ckpts
    loaded = load(str(clean), quiet=True)
    base = base_cache(
        loaded,
        MeasureConfig(
            windows=1, seqlen=16, mc_items=2, prompts=2, prompt_len=4, new_tokens=4, per_layer=False, strata_bins=0
        ),
    )
    bad = nnx.clone(loaded.model)
    w = bad.layers[1].mlp.down.w
    w.set_value(jnp.full_like(w.get_value(), jnp.nan))
    r = measure(loaded, bad, base, {"method": "nan", "settings": {}})
    assert r["top1_agreement"] == 0.0 and r["mc_agreement"] == 0.0
    assert r["gen_identical"] == 0.0 and r["first_divergence"] == [0, 0] and r["gen_token_agreement"] == 0.0
    assert r["steps"]["tf_agreement"] == 0.0
    assert r["kl"] is None and r["not_computable"]["kl"].startswith("logits not finite: compressed at 15 of 15")
    assert r["ppl_base"] is not None and "ppl_base" not in r["not_computable"]


def test_generate_says_when_logits_are_not_finite(ckpts, capsys):
    clean, nan = ckpts
    argv = ["generate", "--prompt", "The river", "--max-new-tokens", "3", "--json"]
    capsys.readouterr()
    assert main(["generate", "--model", str(nan), *argv[1:]]) == 0
    out, err = capsys.readouterr()
    warn = [ln for ln in err.splitlines() if "not finite" in ln]
    assert len(warn) == 1 and warn[0].startswith("hemorrhage: warning:")
    got = json.loads(out)
    assert got["logits_finite"] is False and got["first_nonfinite_step"] == 0
    assert main(["generate", "--model", str(clean), *argv[1:]]) == 0
    out, err = capsys.readouterr()
    assert "not finite" not in err and json.loads(out)["logits_finite"] is True


def test_same_compress_command_prints_the_same_bytes(ckpts, tmp_path, capsys):
    """Two identical `compress --json` runs: identical stdout and hemorrhage_compression.json;
    the wall-clock seconds appear only with --timings."""
    clean, _ = ckpts
    argv = ["compress", "--model", str(clean), "--method", "rtn", "--bits", "4", "--out", str(tmp_path / "o"), "--json"]
    runs = []
    for _ in range(2):
        capsys.readouterr()
        assert main(argv) == 0
        runs.append((capsys.readouterr().out, (tmp_path / "o" / "hemorrhage_compression.json").read_bytes()))
    assert runs[0] == runs[1]
    assert "timings" not in runs[0][0] and b"timings" not in runs[0][1]
    assert main([*argv, "--timings"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["timings"]["seconds"] >= 0
    assert b"timings" not in (tmp_path / "o" / "hemorrhage_compression.json").read_bytes()


def test_argmax_of_nan_is_no_agreement():
    """The comparisons themselves, where an argmax of NaN (index 0) meets a base whose choice
    is index 0: a compressed NaN is a disagreement, a base NaN is no reference (NaN / null)."""
    import jax.numpy as jnp

    from hemorrhage.validate.arrays import kl_rows
    from hemorrhage.theory import top1_agreement
    from hemorrhage.validate.steps import gen_metrics

    z = jnp.asarray([[3.0, 1.0, 0.0], [3.0, 1.0, 0.0], [jnp.nan, 0.0, 0.0]])
    zc = jnp.asarray([[2.0, 1.0, 0.0], [jnp.nan, 1.0, 0.0], [3.0, 1.0, 0.0]])
    t = np.asarray(top1_agreement(z, zc))
    assert t[0] == 1.0 and t[1] == 0.0 and np.isnan(t[2])
    assert np.isnan(kl_rows(np.array([[np.nan, 0.0]]), np.log(np.array([[0.5, 0.5]]))))[0]
    zeros = np.zeros((2, 3), np.int32)  # both sides emit token 0
    fine = np.ones((2, 3), bool)
    g = gen_metrics(zeros, zeros, fine, np.array([[True, False, True], [True, True, True]]))
    assert g["first_divergence"] == [1, 3] and g["gen_identical"] == 0.5
    g = gen_metrics(zeros, zeros, ~fine, fine)
    assert g["gen_identical"] is None and "base at 2" in g["not_computable"]["gen_identical"]
