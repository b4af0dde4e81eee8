"""`hemorrhage compress`: bad input is one line and a non-zero exit; calibration is
reproducible; the command writes a folder transformers loads.  Uses a tiny random llama
saved with the real SmolLM2 tokenizer, so calibration reads the real packaged text."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import save_tiny_hf, torch_logits
from helpers import assert_one_line_error as one_line_error

from hemorrhage.cli import main
from hemorrhage.sim.compress import compress_from_args, linears
from hemorrhage.sim.models import forward

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from hemorrhage.sim.hub.registry import fetch_model

    src = fetch_model("smollm2-135m", quiet=True)  # its tokenizer, for a tiny model
    path = save_tiny_hf("llama", tmp_path_factory.mktemp("tiny"), vocab_size=49152)
    for f in TOKENIZER_FILES:
        shutil.copy(src / f, path / f)
    return path


@pytest.fixture(scope="module")
def tiny_loaded(tiny_folder):
    from hemorrhage.sim import load

    return load(str(tiny_folder), quiet=True)


def run_cli(capsys, *argv):
    capsys.readouterr()
    code = main(["compress", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["--method", "prune-it-all"], ["prune-it-all", "magnitude", "gptq", "wanda", "drop"]),
        (["--method", "rtn", "--bits", "0"], ["1..16"]),
        (["--method", "gptq", "--bits", "17"], ["1..16"]),
        (["--method", "magnitude", "--sparsity", "1.0"], ["[0, 1)"]),
        (["--method", "wanda", "--sparsity", "-0.2"], ["[0, 1)"]),
        (["--method", "magnitude", "--pattern", "4:4"], ["0 < N < M"]),
        (["--method", "sparsegpt", "--pattern", "8:4"], ["0 < N < M"]),
        (["--method", "magnitude", "--bits", "4"], ["takes no setting bits"]),
        (["--method", "drop", "--part", "head"], ["block, attn, mlp"]),
        (["--method", "rtn", "--bits", "four"], ["invalid int"]),
    ],
)
def test_bad_settings_fail_before_loading(capsys, tmp_path, argv, needles):
    code, _, err = run_cli(capsys, "--model", str(tmp_path / "never-read"), *argv, "--out", str(tmp_path / "o"))
    one_line_error(code, err, *needles)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["--method", "rtn", "--bits", "4", "--group-size", "20"], ["group size 20 does not divide", "32"]),
        (["--method", "gptq", "--bits", "3", "--group-size", "64"], ["does not divide"]),
        (["--method", "drop", "--layers", "1,3"], ["layer index 3 out of range", "3 layers"]),
        (["--method", "drop", "--n-drop", "9"], ["exceeds"]),
        (["--method", "magnitude", "--pattern", "3:7"], ["divisible by 7"]),
    ],
)
def test_settings_that_do_not_fit_the_model(capsys, tmp_path, tiny_folder, argv, needles):
    code, _, err = run_cli(capsys, "--model", str(tiny_folder), *argv, "--out", str(tmp_path / "o"))
    one_line_error(code, err, *needles)
    assert not (tmp_path / "o").exists()


def test_same_seed_same_result(tiny_loaded):
    a, ra = compress_from_args(tiny_loaded, "wanda", sparsity=0.5, calib_samples=4, calib_seqlen=32, seed=7)
    b, rb = compress_from_args(tiny_loaded, "wanda", sparsity=0.5, calib_samples=4, calib_seqlen=32, seed=7)
    c, rc = compress_from_args(tiny_loaded, "wanda", sparsity=0.5, calib_samples=4, calib_seqlen=32, seed=8)
    assert ra["calibration"] == {"source": "wiki", "samples": 4, "seqlen": 32, "seed": 7}
    wa = [np.asarray(layer.weight()) for *_, layer in linears(a)]
    wb = [np.asarray(layer.weight()) for *_, layer in linears(b)]
    wc = [np.asarray(layer.weight()) for *_, layer in linears(c)]
    assert all(np.array_equal(x, y) for x, y in zip(wa, wb))
    assert not all(np.array_equal(x, y) for x, y in zip(wa, wc))


def test_compress_command_writes_a_folder_transformers_runs(capsys, tmp_path, tiny_folder, tiny_loaded):
    out = tmp_path / "wanda"
    code, stdout, err = run_cli(
        capsys,
        "--model",
        str(tiny_folder),
        "--method",
        "wanda",
        "--pattern",
        "2:4",
        "--calib-samples",
        "4",
        "--calib-seqlen",
        "32",
        "--out",
        str(out),
    )
    assert code == 0, err
    assert "sparsity   0.5000" in stdout and "memory" in stdout and "vs" in stdout and str(out) in stdout
    rec = json.loads((out / "hemorrhage_compression.json").read_text())
    assert rec["method"] == "wanda" and rec["calibration"]["samples"] == 4
    assert (out / "tokenizer.json").is_file()
    model, _ = compress_from_args(tiny_loaded, "wanda", pattern="2:4", calib_samples=4, calib_seqlen=32)
    toks = np.random.default_rng(0).integers(0, 49152, (1, 16))
    ours = np.asarray(forward(model, jnp.asarray(toks)))
    assert np.abs(torch_logits(out, toks) - ours).max() <= 1e-3


def test_json_output(capsys, tmp_path, tiny_folder):
    code, stdout, err = run_cli(
        capsys,
        "--model",
        str(tiny_folder),
        "--method",
        "rtn",
        "--bits",
        "3",
        "--symmetric",
        "--out",
        str(tmp_path / "o"),
        "--json",
    )
    assert code == 0, err
    rec = json.loads(stdout)
    assert rec["settings"] == {"bits": 3, "group_size": None, "symmetric": True}
    assert rec["memory"]["value_ratio"] == pytest.approx(3 / 32)
