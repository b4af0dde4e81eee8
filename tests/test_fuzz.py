"""Fuzzing bad input (hypothesis): malformed settings, grids, checkpoints and calibration
data must end in a clean error every time — a UserError from the API, and from the command
line a non-zero exit with exactly one line on stderr and no traceback — never a crash.
Each input reaches the check it is meant for: settings are drawn from the method's own fields,
and the command line and the checkpoints run on real tiny checkpoints with a working tokenizer,
so a check that is missing shows as a run that goes on (or crashes), not as some other error.

Examples are few (max_examples small, no shrinking deadline) so the file stays under a
minute on two cores; hypothesis keeps its failures in .hypothesis/ and replays them first.
"""

from __future__ import annotations

import dataclasses
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

FEW = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# values a setting might wrongly be given: wrong types, out of range, NaN/inf, huge
ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.sampled_from([10**30, -(10**30)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.sampled_from(["2:4", "4:8", "0:4", "4:2", "a:b", "1:300", "3,5", "1-", "-1", "9-3", "x"]),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)
FIELDS = [
    "sparsity",
    "pattern",
    "bits",
    "group_size",
    "symmetric",
    "act_order",
    "damp",
    "true_sequential",
    "n_grid",
    "part",
    "n_drop",
    "rank",
    "layers",
    "base",
    "lam",
    "m",
    "n",
]


def run_cli(capsys, argv) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(argv))  # anything but a UserError would propagate here: a crash fails the test
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str) -> None:
    one_line_error(code, err, prefix="hemorrhage: error:")


# ------------------------------------------------------------------ settings ------------

METHODS = ["magnitude", "wanda", "sparsegpt", "owl", "drop", "rtn", "gptq", "awq", "w8a8"]


def _number(lo: float, hi: float, hi_open: bool = True):
    return lambda v: (
        isinstance(v, (int, float))
        and not isinstance(v, bool)
        and math.isfinite(v)
        and lo <= v
        and (v < hi if hi_open else v <= hi)
    )


def _integer(lo: int, hi: float = math.inf, optional: bool = False):
    return lambda v: (optional and v is None) or (isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi)


# What an accepted method may hold, field by field (the documented domains, written out here
# independently of the validators): a value outside these built without an error is a bug.
VALID = {
    "sparsity": _number(0.0, 1.0),
    "damp": _number(0.0, 10.0),
    "lam": _number(0.0, 0.5, hi_open=False),
    "m": lambda v: _number(0.0, math.inf)(v) and v > 0,
    "bits": _integer(1, 16),
    "group_size": _integer(1, optional=True),
    "n_grid": _integer(1, 100),
    "n_drop": _integer(1, optional=True),
    "symmetric": lambda v: isinstance(v, bool),
    "act_order": lambda v: isinstance(v, bool),
    "true_sequential": lambda v: isinstance(v, bool),
    "base": lambda v: v in ("wanda", "magnitude"),
    "pattern": lambda v: v is None or (isinstance(v, str) and 0 < int(v.split(":")[0]) < int(v.split(":")[1])),
    "part": lambda v: v in ("block", "attn", "mlp"),
    "rank": lambda v: v in ("cos", "shortgpt", "angular", "list"),
    "layers": lambda v: v is None or (isinstance(v, tuple) and all(isinstance(i, int) for i in v)),
}


def own_fields(name: str) -> list[str]:
    from hemorrhage.sim.compress.registry import METHODS as REGISTRY

    return sorted(f.name for f in dataclasses.fields(REGISTRY[name]))


def own_settings(name: str):
    """Settings dicts over the method's own fields (w8a8 has none: any setting is foreign), so an
    example reaches the value checks instead of stopping at "takes no setting"."""
    return st.dictionaries(st.sampled_from(own_fields(name) or FIELDS), ANY, min_size=1, max_size=2)


def out_of_domain(method) -> dict:
    values = {f.name: getattr(method, f.name) for f in dataclasses.fields(method)}
    return {k: v for k, v in values.items() if not VALID[k](v)}


def builds(name: str, settings_: dict):
    """The method, or None when make_method refuses the settings with a one-line UserError."""
    from hemorrhage.sim.compress import make_method

    try:
        return make_method(name, **settings_)
    except UserError as e:
        assert str(e) and "\n" not in str(e)
        return None


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(data=st.data(), name=st.sampled_from(METHODS))
def test_make_method_rejects_or_accepts_cleanly(data, name):
    """Garbage in a method's own settings: a one-line UserError, or a method whose every
    field lies in its domain (NaN, inf, bools for numbers, out-of-range values never pass)."""
    method = builds(name, data.draw(own_settings(name)))
    assert method is None or not out_of_domain(method), (name, method)


SPECIAL = [
    math.nan,
    math.inf,
    -math.inf,
    True,
    False,
    None,
    0,
    -1,
    1,
    0.5,
    1.0,
    99,
    10**30,
    "",
    "x",
    "nan",
    "2:4",
    "list",
    "mlp",
    "magnitude",
    "3,5",
    [1],
    {},
]


@pytest.mark.parametrize("name", METHODS)
def test_make_method_every_field_against_special_values(name):
    """Each own field of each method set to each awkward value in turn (drop also beside a
    layer list, so rank=list is reached): rejected in one line, or every field in its domain."""
    for context in [{}] + ([{"layers": "1"}] if name == "drop" else []):
        for field in own_fields(name) or ["bits"]:
            for v in SPECIAL:
                method = builds(name, {**context, field: v})
                assert method is None or not out_of_domain(method), (name, field, v, method)


GRID_TOKENS = [
    "magnitude",
    "rtn",
    "gptq",
    "drop",
    "owl",
    "w8a8",
    "nope",
    ":",
    ";",
    "=",
    ",",
    "sparsity",
    "bits",
    "group_size",
    "pattern",
    "seed",
    "calib_samples",
    "calib_seqlen",
    "calib_source",
    "part",
    "layers",
    "0",
    "0.5",
    "1.5",
    "-1",
    "4",
    "2:4",
    "1e400",
    "nan",
    "inf",
    "true",
    "none",
    "mlp",
    "wiki",
    " ",
    "x",
]


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


PRUNE, QUANT, CALIBRATED = ("magnitude", "wanda", "sparsegpt"), ("rtn", "gptq", "awq"), ("wanda", "gptq")
# (flag, bad value, methods that take the flag, what the one error line names); each value is wrong
# whatever else is given, and is the only thing wrong on its command line
BAD = [
    *[("--sparsity", v, PRUNE + ("owl",), "sparsity") for v in ("-1", "1.5", "1", "nan", "inf", "1e400", "abc")],
    *[("--bits", v, QUANT, "bits") for v in ("0", "-1", "99", "1.5")],
    *[("--group-size", v, QUANT, "group") for v in ("0", "-1", "x")],
    *[("--pattern", v, PRUNE, "pattern") for v in ("4:2", "0:4", "a:b", "1:300", "2-4", "")],
    *[("--damp", v, ("gptq", "sparsegpt"), "damp") for v in ("-1", "nan", "inf", "10")],
    *[("--n-drop", v, ("drop",), "n drop") for v in ("0", "-1", "1.5")],
    ("--part", "x", ("drop",), "part"),
    ("--rank", "x", ("drop",), "rank"),
    *[("--layers", v, ("drop",), "layers") for v in ("a", "1,1", "x-2")],
    *[("--owl-lambda", v, ("owl",), "lambda") for v in ("-1", "0.9", "nan")],
    *[("--owl-m", v, ("owl",), "owl m") for v in ("0", "-1", "nan", "inf")],
    ("--owl-base", "x", ("owl",), "owl base"),
    *[("--calib-samples", v, CALIBRATED, "calib samples") for v in ("0", "-1")],
    *[("--calib-seqlen", v, CALIBRATED, "calib seqlen") for v in ("0", "1")],
    ("--seed", "-1", CALIBRATED, "seed"),
    *[("--mesh", v, ("magnitude",), "mesh") for v in ("data=0", "abc", "data=2,data=2", "")],
    *[("--method", v, ("",), "method") for v in ("nope", "magnitude:x", "")],
]
# found only once the model is known: more blocks than it has, a group that does not divide d=32
NEEDS_MODEL = [("--n-drop", "99", ("drop",), "n drop"), ("--group-size", "5", QUANT, "group")]


@pytest.mark.parametrize("command", ["compress", "measure", "hierarchy"])
def test_cli_rejects_each_bad_setting_before_loading(capsys, monkeypatch, tmp_path, ckpts, command):
    """Every bad setting on a real (tiny) checkpoint: one line naming the setting, found before
    the model loads.  The model exists, so a check that is missing shows: the run goes on."""
    import hemorrhage.sim as sim_pkg

    loads = []
    real_load = sim_pkg.load
    monkeypatch.setattr(sim_pkg, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    for flag, value, methods, needle in BAD + NEEDS_MODEL:
        if flag == "--mesh" and command == "hierarchy":  # hierarchy runs on one device: no --mesh at all
            continue
        for method in methods:
            loads.clear()
            argv = [command, "--model", str(ckpts["llama"]), "--method", method, flag, value]
            argv = argv[:3] + argv[5:] if flag == "--method" else argv
            if command == "compress":
                argv += ["--out", str(tmp_path / "out")]
            if command == "hierarchy":  # a run that goes on must not write into the repository
                argv += ["--results", str(tmp_path / "out"), "--figures", str(tmp_path / "out")]
            code, err = run_cli(capsys, argv)
            assert_one_line_error(code, err)
            line = err.strip().splitlines()[-1].lower().replace("-", " ").replace("_", " ")
            assert needle in line, (argv, err)
            assert not loads or (flag, value) in [c[:2] for c in NEEDS_MODEL], ("loaded first", argv, err)
            assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ checkpoints ---------


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """Tiny random checkpoints of each family with a working tokenizer: a mutated checkpoint
    either ends in one clean line or generates, so a check that is missing shows up as a crash
    (or a run that should not have happened) instead of hiding behind a tokenizer error."""
    from helpers import save_tiny_hf_with_tokenizer

    root = tmp_path_factory.mktemp("fuzz")
    return {fam: save_tiny_hf_with_tokenizer(fam, root / fam) for fam in ("llama", "gemma3_text", "gpt2")}


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
def test_garbage_config_fields(capsys, ckpts, family, data):
    cfg = json.loads((ckpts[family] / "config.json").read_text())
    keys = sorted(cfg) + ["rope_parameters", "text_config", "layer_types", "eos_token_id", "n_inner"]
    edits = data.draw(
        st.dictionaries(st.sampled_from(keys), st.one_of(GARBAGE, st.just("<delete>")), min_size=1, max_size=2)
    )
    for k, v in edits.items():
        if v == "<delete>":
            cfg.pop(k, None)
        else:
            cfg[k] = v
    path = _copy(ckpts[family])
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

    from hemorrhage.sim.registry import fetch_model

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


def test_fuzz_examples_are_not_vacuous():
    """The strategies above reach both sides of every method's checks: for each method some
    drawn settings build and some are refused (w8a8 takes no setting, so all are refused), so
    the fuzz test is neither all errors nor all passes."""
    from hypothesis import find

    from hemorrhage.validate.sweep import parse_grid

    few = settings(max_examples=2000, database=None, derandomize=True)
    for name in METHODS:
        if name != "w8a8":
            find(own_settings(name), lambda s, name=name: builds(name, s) is not None, settings=few)
        find(own_settings(name), lambda s, name=name: builds(name, s) is None, settings=few)
    assert parse_grid("rtn:bits=4;magnitude")
