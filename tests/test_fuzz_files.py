"""Fuzzing bad files (hypothesis): mutated checkpoints (config fields, truncated safetensors,
tensors that disagree with the config) and short, empty or wrong calibration data must end in a
clean error every time: a UserError from the API, one line on stderr and a non-zero exit from
the command line, never a crash.  The checkpoints are real tiny ones with a working tokenizer
(the `fuzz_ckpts` fixture), so a missing check shows as a run that goes on or crashes.
tests/test_fuzz.py fuzzes settings and grids.
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from helpers import FEW_EXAMPLES as FEW
from helpers import assert_cli_error as assert_one_line_error
from helpers import run_cli_err as run_cli

from hemorrhage.cli import main
from hemorrhage.errors import UserError


# ------------------------------------------------------------------ checkpoints ---------


def _copy(src: Path) -> Path:
    dst = Path(tempfile.mkdtemp(prefix="fuzz-ckpt-"))
    for f in src.iterdir():
        shutil.copy(f, dst / f.name)
    return dst


def _generate(capsys, path: Path, *, must_fail: bool = True) -> None:
    """`hemorrhage generate` on the folder: one clean line, or (where the mutation may be
    harmless: `must_fail` False) a continuation of the prompt with finite logits."""
    capsys.readouterr()
    try:
        code = main(["generate", "--model", str(path), "--prompt", "hi", "--max-new-tokens", "2"])
        out, err = capsys.readouterr()
        if code == 0 and not must_fail:
            import jax.numpy as jnp

            from hemorrhage.sim import load
            from hemorrhage.sim.models import forward

            assert out.startswith("hi"), out
            loaded = load(str(path), quiet=True)
            assert bool(jnp.isfinite(forward(loaded.model, jnp.asarray([[1, 2, 3]]))).all()), path
            return
    finally:
        shutil.rmtree(path, ignore_errors=True)
    assert_one_line_error(code, err)


GARBAGE = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, -1, -7, 1, 3, 5, 10**9, 2**63, 1e400, -1e400, 0.5]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.lists(st.integers(-2, 2), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)


@FEW
@given(family=st.sampled_from(["llama", "gemma3_text", "gpt2"]), data=st.data())
def test_garbage_config_fields(capsys, fuzz_ckpts, family, data):
    cfg = json.loads((fuzz_ckpts[family] / "config.json").read_text())
    keys = sorted(cfg) + ["rope_parameters", "text_config", "layer_types", "eos_token_id", "n_inner"]
    edits = data.draw(
        st.dictionaries(st.sampled_from(keys), st.one_of(GARBAGE, st.just("<delete>")), min_size=1, max_size=2)
    )
    for k, v in edits.items():
        if v == "<delete>":
            cfg.pop(k, None)
        else:
            cfg[k] = v
    path = _copy(fuzz_ckpts[family])
    (path / "config.json").write_text(json.dumps(cfg, allow_nan=True))
    _generate(capsys, path, must_fail=False)  # a field deleted or ignored may be harmless


@FEW
@given(
    blob=st.one_of(
        st.binary(max_size=40),
        st.sampled_from(
            [
                b"",
                b"{",
                b"[1,2]",
                b'"x"',
                b"null",
                b"{}",
                b'{"model_type": "llama"}',
                b"\xff\xfe\x00",
                b"[" * 50000,
                b"NaN",
            ]
        ),
    )
)
def test_config_that_is_not_a_json_object(capsys, fuzz_ckpts, blob):
    path = _copy(fuzz_ckpts["llama"])
    (path / "config.json").write_bytes(blob)
    _generate(capsys, path)


@FEW
@given(family=st.sampled_from(["llama", "gpt2"]), frac=st.floats(0.0, 0.999))
def test_truncated_safetensors(capsys, fuzz_ckpts, family, frac):
    path = _copy(fuzz_ckpts[family])
    f = path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: int(frac * len(data))])
    _generate(capsys, path)


@FEW
@given(family=st.sampled_from(["llama", "gemma3_text", "gpt2"]), data=st.data())
def test_tensors_that_disagree_with_the_config(capsys, fuzz_ckpts, family, data):
    """A tensor reshaped, cut, dropped, or given another dtype; or a corrupted header."""
    from safetensors.numpy import load_file, save_file

    path = _copy(fuzz_ckpts[family])
    f = path / "model.safetensors"
    tensors = load_file(str(f))
    name = data.draw(st.sampled_from(sorted(tensors)))
    how = data.draw(st.sampled_from(["drop", "flat", "cut", "transpose", "scalar", "int8", "extra_layer", "header"]))
    t = tensors[name]
    if how == "drop":
        tensors.pop(name)
    elif how == "flat":
        tensors[name] = t.reshape(-1) if t.ndim != 1 else t.reshape(1, -1)
    elif how == "cut":
        tensors[name] = t[..., : max(t.shape[-1] - 1, 0)] if t.ndim else t
    elif how == "transpose":
        tensors[name] = np.ascontiguousarray(t.T) if t.ndim == 2 and t.shape[0] != t.shape[1] else t[None]
    elif how == "scalar":
        tensors[name] = np.asarray(1.0, np.float32)
    elif how == "int8":
        tensors[name] = np.zeros(t.shape, np.int8)  # a dtype change alone loads (as fp32 zeros) and runs
    elif how == "extra_layer":
        tensors[name.replace(".0.", ".99.", 1) if ".0." in name else name + ".99"] = t
    save_file(tensors, str(f))
    if how == "header":  # a header length pointing past the end of the file
        raw = f.read_bytes()
        f.write_bytes(struct.pack("<Q", len(raw) * 2) + raw[8:])
    # a dtype change leaves a usable model, and so does a tensor the config describes no layer for
    # (ignored, as transformers ignores it: e.g. a multi-token-prediction block past the last layer)
    _generate(capsys, path, must_fail=how not in ("int8", "extra_layer"))


# ------------------------------------------------------------------ calibration ---------


@pytest.fixture(scope="module")
def tiny_model():
    from hemorrhage.sim.models import ModelConfig, build, tiny

    return build(ModelConfig.from_hf(tiny("llama", vocab_size=96)), seed=3)


@settings(max_examples=12, deadline=None, derandomize=True, database=None)
@given(
    method=st.sampled_from(
        [
            ("gptq", {"bits": 4}),
            ("sparsegpt", {"sparsity": 0.5}),
            ("wanda", {"sparsity": 0.5}),
            ("awq", {"bits": 3}),
            ("owl", {"sparsity": 0.5}),
            ("drop", {"n_drop": 1}),
        ]
    ),
    shape=st.sampled_from([(0, 4), (2, 0), (1, 1), (1, 2), (3,), (1, 2, 2), (2, 3)]),
    values=st.sampled_from(["ok", "negative", "too_big", "float"]),
)
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
    from hemorrhage.sim import windows

    monkeypatch.setattr(windows, "_tokens", lambda tokenizer, source, part: ids)  # no cache file is written
    with pytest.raises(UserError, match="fewer than seqlen"):
        windows.calibration_tokens(object(), "wiki", n_samples=2, seqlen=8)
    for bad in ({"n_samples": 0}, {"seqlen": 1}):
        with pytest.raises(UserError):
            windows.calibration_tokens(object(), "wiki", **{"n_samples": 2, "seqlen": 8, **bad})
    with pytest.raises(UserError):
        windows.calibration_tokens(object(), "klingon", n_samples=2, seqlen=8)


def test_calibration_window_longer_than_the_text_through_the_cli(capsys, tmp_path):
    """A calibration window longer than the whole train split: one line, before compressing."""
    from helpers import save_tiny_hf

    from hemorrhage.sim.hub.registry import fetch_model

    ckpt = save_tiny_hf("llama", tmp_path / "tiny", vocab_size=49152)
    src = fetch_model("smollm2-135m", quiet=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, ckpt / name)
    code, err = run_cli(
        capsys,
        [
            "compress",
            "--model",
            str(ckpt),
            "--method",
            "wanda",
            "--calib-seqlen",
            "100000000",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert_one_line_error(code, err)
    assert "fewer than seqlen" in err and not (tmp_path / "out").exists()
