"""Fuzzing bad input (hypothesis): malformed settings, grids, checkpoints and calibration
data must end in a clean error every time — a UserError from the API, and from the command
line a non-zero exit with exactly one line on stderr and no traceback — never a crash.

Examples are few (max_examples small, no shrinking deadline) so the file stays under a
minute on two cores; hypothesis keeps its failures in .hypothesis/ and replays them first.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from helpers import assert_one_line_error as one_line_error

from hemorrhage.cli import main
from hemorrhage.errors import UserError

FEW = settings(max_examples=25, deadline=None, derandomize=True, database=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# values a setting might wrongly be given: wrong types, out of range, NaN/inf, huge
ANY = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.sampled_from([10**30, -10**30]),
                st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
                st.sampled_from(["2:4", "4:8", "0:4", "4:2", "a:b", "1:300", "3,5", "1-", "-1", "9-3", "x"]),
                st.lists(st.integers(-3, 3), max_size=3),
                st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))
FIELDS = ["sparsity", "pattern", "bits", "group_size", "symmetric", "act_order", "damp", "true_sequential",
          "n_grid", "part", "n_drop", "rank", "layers", "base", "lam", "m", "n"]


def run_cli(capsys, argv) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(argv))  # anything but a UserError would propagate here: a crash fails the test
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str) -> None:
    one_line_error(code, err, prefix="hemorrhage: error:")


# ------------------------------------------------------------------ settings ------------

@FEW
@given(name=st.sampled_from(["magnitude", "wanda", "sparsegpt", "owl", "drop", "rtn", "gptq", "awq", "w8a8"]),
       settings_=st.dictionaries(st.sampled_from(FIELDS), ANY, min_size=1, max_size=3))
def test_make_method_rejects_or_accepts_cleanly(name, settings_):
    from hemorrhage.sim.compress import make_method

    try:
        make_method(name, **settings_)
    except UserError as e:
        assert str(e) and "\n" not in str(e)


GRID_TOKENS = ["magnitude", "rtn", "gptq", "drop", "owl", "w8a8", "nope", ":", ";", "=", ",", "sparsity", "bits",
               "group_size", "pattern", "seed", "calib_samples", "calib_seqlen", "calib_source", "part", "layers",
               "0", "0.5", "1.5", "-1", "4", "2:4", "1e400", "nan", "inf", "true", "none", "mlp", "wiki", " ", "x"]


@FEW
@given(spec=st.one_of(st.lists(st.sampled_from(GRID_TOKENS), max_size=12).map("".join), st.text(max_size=30)))
def test_parse_grid_never_crashes(spec):
    from hemorrhage.validate.sweep import parse_grid

    try:
        grid = parse_grid(spec)
    except UserError as e:
        assert "\n" not in str(e)
        return
    assert grid and all(isinstance(s, dict) for _, s in grid)


@settings(max_examples=15, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flags=st.lists(st.tuples(st.sampled_from(["--sparsity", "--bits", "--group-size", "--pattern", "--damp",
                                                 "--n-drop", "--part", "--rank", "--layers", "--owl-lambda",
                                                 "--owl-m", "--calib-samples", "--calib-seqlen", "--seed",
                                                 "--method", "--mesh"]),
                                st.sampled_from(["-1", "0", "1.5", "nan", "inf", "abc", "", "2:4", "99", "1e400",
                                                 "3-1", "data=0", "rtn", "magnitude:x"])),
                      min_size=1, max_size=3),
       command=st.sampled_from(["compress", "measure", "hierarchy"]))
def test_cli_rejects_bad_settings_in_one_line(capsys, tmp_path, flags, command):
    argv = [command, "--model", str(tmp_path / "no-such-model")] + [x for f in flags for x in f]
    if command == "compress":
        argv += ["--out", str(tmp_path / "out")]
    code, err = run_cli(capsys, argv)  # every path ends in an error: the model does not exist
    assert_one_line_error(code, err)


# ------------------------------------------------------------------ checkpoints ---------

@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """Tiny random checkpoints of each family with a broken tokenizer_config.json: a checkpoint
    that survives its mutation (an optional field deleted, a dtype changed) still ends in a
    clean error, at the tokenizer, after the config and every weight were read."""
    from helpers import save_tiny_hf

    root = tmp_path_factory.mktemp("fuzz")
    out = {fam: save_tiny_hf(fam, root / fam) for fam in ("llama", "gemma3_text", "gpt2")}
    for path in out.values():
        (path / "tokenizer_config.json").write_text("{ not json")
    return out


def _copy(src: Path) -> Path:
    dst = Path(tempfile.mkdtemp(prefix="fuzz-ckpt-"))
    for f in src.iterdir():
        shutil.copy(f, dst / f.name)
    return dst


def _generate(capsys, path: Path) -> None:
    try:
        code, err = run_cli(capsys, ["generate", "--model", str(path), "--prompt", "hi", "--max-new-tokens", "2"])
    finally:
        shutil.rmtree(path, ignore_errors=True)
    assert_one_line_error(code, err)


GARBAGE = st.one_of(st.none(), st.booleans(), st.sampled_from([0, -1, -7, 1, 3, 5, 10**9, 2**63, 1e400, -1e400, 0.5]),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4),
                    st.lists(st.integers(-2, 2), max_size=2),
                    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))


@FEW
@given(family=st.sampled_from(["llama", "gemma3_text", "gpt2"]), data=st.data())
def test_garbage_config_fields(capsys, ckpts, family, data):
    cfg = json.loads((ckpts[family] / "config.json").read_text())
    keys = sorted(cfg) + ["rope_parameters", "text_config", "layer_types", "eos_token_id", "n_inner"]
    edits = data.draw(st.dictionaries(st.sampled_from(keys), st.one_of(GARBAGE, st.just("<delete>")),
                                      min_size=1, max_size=2))
    for k, v in edits.items():
        if v == "<delete>":
            cfg.pop(k, None)
        else:
            cfg[k] = v
    path = _copy(ckpts[family])
    (path / "config.json").write_text(json.dumps(cfg, allow_nan=True))
    _generate(capsys, path)


@FEW
@given(blob=st.one_of(st.binary(max_size=40), st.sampled_from([b"", b"{", b"[1,2]", b'"x"', b"null", b"{}",
                                                              b'{"model_type": "llama"}', b"\xff\xfe\x00",
                                                              b"[" * 50000, b"NaN"])))
def test_config_that_is_not_a_json_object(capsys, ckpts, blob):
    path = _copy(ckpts["llama"])
    (path / "config.json").write_bytes(blob)
    _generate(capsys, path)


@FEW
@given(family=st.sampled_from(["llama", "gpt2"]), frac=st.floats(0.0, 0.999))
def test_truncated_safetensors(capsys, ckpts, family, frac):
    path = _copy(ckpts[family])
    f = path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: int(frac * len(data))])
    _generate(capsys, path)


@FEW
@given(family=st.sampled_from(["llama", "gemma3_text", "gpt2"]), data=st.data())
def test_tensors_that_disagree_with_the_config(capsys, ckpts, family, data):
    """A tensor reshaped, cut, dropped, or given another dtype; or a corrupted header."""
    from safetensors.numpy import load_file, save_file

    path = _copy(ckpts[family])
    f = path / "model.safetensors"
    tensors = load_file(str(f))
    name = data.draw(st.sampled_from(sorted(tensors)))
    how = data.draw(st.sampled_from(["drop", "flat", "cut", "transpose", "scalar", "int8", "extra_layer", "header"]))
    t = tensors[name]
    if how == "drop":
        tensors.pop(name)
    elif how == "flat":
        tensors[name] = t.reshape(-1)
    elif how == "cut":
        tensors[name] = t[..., : max(t.shape[-1] - 1, 0)] if t.ndim else t
    elif how == "transpose":
        tensors[name] = np.ascontiguousarray(t.T) if t.ndim == 2 and t.shape[0] != t.shape[1] else t[None]
    elif how == "scalar":
        tensors[name] = np.asarray(1.0, np.float32)
    elif how == "int8":
        tensors[name] = np.zeros(t.shape, np.int8)  # a dtype change alone loads: the run ends at the tokenizer
    elif how == "extra_layer":
        tensors[name.replace(".0.", ".99.", 1) if ".0." in name else name + ".99"] = t
    save_file(tensors, str(f))
    if how == "header":  # a header length pointing past the end of the file
        raw = f.read_bytes()
        f.write_bytes(struct.pack("<Q", len(raw) * 2) + raw[8:])
    _generate(capsys, path)


# ------------------------------------------------------------------ calibration ---------

@pytest.fixture(scope="module")
def tiny_model():
    from hemorrhage.sim.models import ModelConfig, build, tiny

    return build(ModelConfig.from_hf(tiny("llama", vocab_size=96)), seed=3)


@settings(max_examples=12, deadline=None, derandomize=True, database=None)
@given(method=st.sampled_from([("gptq", {"bits": 4}), ("sparsegpt", {"sparsity": 0.5}), ("wanda", {"sparsity": 0.5}),
                               ("awq", {"bits": 3}), ("owl", {"sparsity": 0.5}), ("drop", {"n_drop": 1})]),
       shape=st.sampled_from([(0, 4), (2, 0), (1, 1), (1, 2), (3,), (1, 2, 2), (2, 3)]),
       values=st.sampled_from(["ok", "negative", "too_big", "float"]))
def test_calibration_tokens_short_empty_or_wrong(tiny_model, method, shape, values):
    """Empty, one-token, 1-D or 3-D calibration batches, ids outside the vocabulary, floats:
    a UserError, or (a usable batch, however short) a compressed model with finite weights."""
    from hemorrhage.sim.compress import compress, make_method
    from hemorrhage.sim.compress.storage import all_linears

    tokens = np.random.default_rng(0).integers(0, 96, size=shape)
    tokens = {"ok": tokens, "negative": tokens - 200, "too_big": tokens + 96, "float": tokens + 0.5}[values]
    try:
        small, record = compress(tiny_model, make_method(method[0], **method[1]), tokens)
    except UserError as e:
        assert "\n" not in str(e)
        return
    assert values == "ok" and len(shape) == 2 and min(shape) >= 1
    assert all(bool(np.isfinite(np.asarray(layer.weight())).all()) for _, layer in all_linears(small))


@pytest.mark.parametrize("ids", [np.zeros(0, np.int32), np.arange(5, dtype=np.int32)])
def test_calibration_text_empty_or_shorter_than_a_window(monkeypatch, ids):
    """The train split tokenizes to nothing, or to fewer tokens than one window."""
    from hemorrhage.sim import data, windows

    monkeypatch.setattr(windows, "_tokens", lambda tokenizer, source, part: ids)  # no cache file is written
    with pytest.raises(UserError, match="fewer than seqlen"):
        data.calibration_tokens(object(), "wiki", n_samples=2, seqlen=8)
    for bad in ({"n_samples": 0}, {"seqlen": 1}):
        with pytest.raises(UserError):
            data.calibration_tokens(object(), "wiki", **{"n_samples": 2, "seqlen": 8, **bad})
    with pytest.raises(UserError):
        data.calibration_tokens(object(), "klingon", n_samples=2, seqlen=8)


def test_calibration_window_longer_than_the_text_through_the_cli(capsys, tmp_path):
    """A calibration window longer than the whole train split: one line, before compressing."""
    from helpers import save_tiny_hf

    from hemorrhage.sim.registry import fetch_model

    ckpt = save_tiny_hf("llama", tmp_path / "tiny", vocab_size=49152)
    src = fetch_model("smollm2-135m", quiet=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, ckpt / name)
    code, err = run_cli(capsys, ["compress", "--model", str(ckpt), "--method", "wanda", "--calib-seqlen", "100000000",
                                 "--out", str(tmp_path / "out")])
    assert_one_line_error(code, err)
    assert "fewer than seqlen" in err and not (tmp_path / "out").exists()


def test_fuzz_examples_are_not_vacuous():
    """The strategies above do produce values that pass (so the tests are not all errors)."""
    from hemorrhage.sim.compress import make_method
    from hemorrhage.validate.sweep import parse_grid

    assert make_method("rtn", bits=4).bits == 4 and parse_grid("rtn:bits=4;magnitude")
    assert make_method("magnitude", sparsity=0.0).sparsity == 0.0 and not math.isnan(0.0)
