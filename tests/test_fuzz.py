"""Fuzzing bad input (hypothesis): malformed settings and grids must end in a clean error
every time — a UserError from the API, and from the command line a non-zero exit with exactly
one line on stderr and no traceback — never a crash (checkpoints and calibration data:
tests/test_fuzz_files.py).
Each input reaches the check it is meant for: settings are drawn from the method's own fields,
and the command line and the checkpoints run on real tiny checkpoints with a working tokenizer,
so a check that is missing shows as a run that goes on (or crashes), not as some other error.

Examples are few (max_examples small, no shrinking deadline) so the file stays under a
minute on two cores; hypothesis keeps its failures in .hypothesis/ and replays them first.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from helpers import FEW_EXAMPLES as FEW
from helpers import assert_cli_error as assert_one_line_error
from helpers import run_cli_err as run_cli

from hemorrhage.errors import UserError

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
def test_cli_rejects_each_bad_setting_before_loading(capsys, monkeypatch, tmp_path, fuzz_ckpts, command):
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
            argv = [command, "--model", str(fuzz_ckpts["llama"]), "--method", method, flag, value]
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
