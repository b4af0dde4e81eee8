"""`hemorrhage measure` and `hemorrhage sweep`: metric properties on SmolLM2, collapse as a
result, grid parsing, and a sweep that survives SIGKILL three times (on a tiny random model
carrying SmolLM2's tokenizer, so the real held-out data and MC items apply)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hemorrhage.cli import main

TINY_MEASURE = [
    "--windows",
    "2",
    "--seqlen",
    "32",
    "--mc-items",
    "4",
    "--prompts",
    "2",
    "--prompt-len",
    "8",
    "--new-tokens",
    "8",
]
# 8 settings of one method: one compiled graph, rows slow enough to kill between
SWEEP_GRID = "magnitude:sparsity=0,0.1,0.2,0.3,0.5,0.7,0.8,0.9"


# ------------------------------------------------------------------ SmolLM2 -------------


@pytest.fixture(scope="module")
def small_config():
    from hemorrhage.validate.measure import MeasureConfig

    return MeasureConfig(windows=2, seqlen=32, mc_items=4, prompts=2, prompt_len=8, new_tokens=8, per_layer=False)


@pytest.fixture(scope="module")
def smol_base(smollm2, small_config):
    from hemorrhage.validate.base_phase import base_cache

    return base_cache(smollm2, small_config)


@pytest.mark.real
def test_sparsity_zero_is_the_base(smollm2, smol_base):
    """Magnitude at sparsity 0 must measure as the base itself: every property here can fail."""
    from hemorrhage.sim.compress import compress_from_args
    from hemorrhage.validate.measure import measure
    from hemorrhage.validate.base_phase import base_cache

    comp, record = compress_from_args(smollm2, "magnitude", sparsity=0.0)
    r = measure(smollm2, comp, smol_base, record)
    assert base_cache(smollm2, smol_base.config) is smol_base  # memoised, not recomputed
    assert r["config"]["scored_tokens"] == 2 * 31 and r["config"]["stride"] == 32
    assert 0 <= r["kl"] < 1e-6 and r["top1_agreement"] == 1.0
    assert r["ppl"] == r["ppl_base"] and 1 < r["ppl_base"] < 1000
    assert r["cos_h"] > 1 - 1e-6 and r["cos_z"] > 1 - 1e-6 and r["cos_p"] > 1 - 1e-6
    assert r["var_p_dz"] < 1e-8
    assert r["mc_items"] == 4 and r["mc_agreement"] == 1.0 and r["mc_acc"] == r["mc_acc_base"]
    assert r["mc_kl_choices"] < 1e-8 and r["mc_kl_full"] < 1e-8
    assert r["first_divergence"] == [8, 8] and r["first_divergence_mean"] == 8
    assert r["gen_identical"] == 1.0 and r["gen_token_agreement"] == 1.0
    assert r["collapsed"] is False and r["notes"] == []
    assert "timings" not in r["record"] and r["not_computable"] == {}
    json.dumps(r, allow_nan=False)  # all finite


@pytest.mark.real
def test_nan_weights_are_a_collapsed_result(smollm2, smol_base):
    """A model gone NaN is measured, reported collapsed, and its JSON keeps the NaN."""
    import jax.numpy as jnp
    from flax import nnx

    from hemorrhage.validate.measure import measure

    bad = nnx.clone(smollm2.model)  # same graph as the base: no new compilation
    w = bad.layers[3].mlp.down.w
    w.set_value(jnp.full_like(w.get_value(), jnp.nan))
    r = measure(smollm2, bad, smol_base, {"method": "nan", "settings": {}})
    assert r["collapsed"] is True and r["nonfinite_tokens"] == 62
    # no value is null with its reason (validate.computable), never NaN posing as a number
    assert r["kl"] is None and r["ppl"] is None and "not finite" in r["not_computable"]["kl"]
    assert math.isfinite(r["ppl_base"]) and r["top1_agreement"] == 0.0  # NaN logits are no prediction
    assert r["mc_agreement"] == 0.0 and r["mc_acc"] == 0.0 and r["mc_nonfinite_items"] == 4
    assert r["first_divergence"] == [0, 0] and r["gen_identical"] == 0.0
    assert any("NaN" in n for n in r["notes"])
    text = json.dumps(r, allow_nan=True)
    assert "NaN" in text and json.loads(text)["collapsed"] is True  # the per-step arrays keep their NaN


def test_bad_flags_are_one_line_errors(capsys):
    for argv, needle in [
        (["measure", "--windows", "0"], "--windows"),
        (["measure", "--mc-tasks", "cloze,nope"], "nope"),
        (["measure", "--new-tokens", "0"], "--new-tokens"),
        (["measure", "--source", "klingon"], "--source"),
        (["sweep", "--grid", "magnitude:sparsity=0.5,2"], "sparsity"),
        (["sweep", "--grid", "gptq:bitz=4"], "bitz"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err


# ------------------------------------------------------------------ grid + file ---------


def test_grid_parsing():
    from hemorrhage.errors import UserError
    from hemorrhage.validate.sweep import parse_grid, row_key

    g = parse_grid("magnitude:sparsity=0,0.5;magnitude:pattern=2:4,4:8; magnitude")
    assert g == [
        ("magnitude", {"sparsity": 0.0}),
        ("magnitude", {"sparsity": 0.5}),
        ("magnitude", {"pattern": "2:4"}),
        ("magnitude", {"pattern": "4:8"}),
        ("magnitude", {}),
    ]
    assert isinstance(g[0][1]["sparsity"], float)
    assert len(parse_grid("rtn:bits=4,3,group_size=32,64")) == 4
    assert row_key("m", "magnitude", {"b": 1, "a": 2}) == row_key("m", "magnitude", {"a": 2, "b": 1})
    for bad, needle in [
        ("", "empty"),
        ("nope:bits=4", "unknown method"),
        ("magnitude:sparsity=1.5", "sparsity"),
        ("magnitude:0.5", "KEY=VALUE"),
        ("magnitude:bits=4", "bits"),
        ("magnitude:sparsity=0.1,sparsity=0.2", "repeated"),
    ]:
        with pytest.raises(UserError, match=needle):
            parse_grid(bad)


def test_partial_last_line_is_dropped(tmp_path):
    from hemorrhage.validate.sweep import append_row, read_rows, row_key

    f = tmp_path / "s.jsonl"
    a, b = row_key("m", "rtn", {"bits": 4}), row_key("m", "rtn", {"bits": 3})  # sweep rows: key and grid
    append_row(f, {"key": a, "grid": {"method": "rtn"}, "x": float("nan")})
    append_row(f, {"key": b, "grid": {"method": "rtn"}, "x": float("inf")})
    with open(f, "ab") as fh:
        fh.write(b'{"key": "c", "x"')  # a run killed mid-line
    rows = read_rows(f)
    assert [r["key"] for r in rows] == [a, b] and math.isnan(rows[0]["x"]) and rows[1]["x"] == math.inf
    assert f.read_bytes().endswith(b"}\n") and f.read_bytes().count(b"\n") == 2


# ------------------------------------------------------------------ the sweep -----------


def test_choice_scores_match_a_plain_forward(tiny_ckpt):
    """The KV-cache trick (question once, choices from its cache) equals scoring each
    question + choice sequence from scratch."""
    import jax
    import jax.numpy as jnp

    from hemorrhage.sim import load
    from hemorrhage.sim.models.base import forward
    from hemorrhage.validate.mc import choice_scores, mc_inputs as _mc_inputs
    from hemorrhage.validate.measure import MeasureConfig

    loaded = load(str(tiny_ckpt), quiet=True)
    mc = _mc_inputs(loaded, MeasureConfig(mc_tasks=("cloze", "mmlu"), mc_items=2))
    scores, ans = choice_scores(loaded.model, mc)
    assert scores.shape == mc["valid"].shape and np.isneginf(scores[~mc["valid"]]).all()
    cases, seqs = [], []
    for i in range(len(mc["answer"])):
        q = mc["q_tok"][i, : mc["q_len"][i]]
        for j in np.flatnonzero(mc["valid"][i]):
            c = mc["c_tok"][i, j][mc["c_mask"][i, j]]
            cases.append((i, j, len(q), c))
            seqs.append(np.concatenate([q, c]))
    width = max(map(len, seqs))
    batch = np.stack([np.pad(x, (0, width - len(x))) for x in seqs])  # right padding: causal, harmless
    lp = np.asarray(jax.nn.log_softmax(forward(loaded.model, jnp.asarray(batch))))
    for n, (i, j, nq, c) in enumerate(cases):
        want = sum(float(lp[n, nq - 1 + t, c[t]]) for t in range(len(c)))
        assert scores[i, j] == pytest.approx(want, abs=1e-3)
        np.testing.assert_allclose(ans[i], lp[n, nq - 1], atol=1e-3)


def _sweep_argv(model: Path, out: Path, grid: str = SWEEP_GRID) -> list[str]:
    return [
        "sweep",
        "--model",
        str(model),
        "--grid",
        grid,
        "--out",
        str(out),
        *TINY_MEASURE,
        "--per-layer",
        "--no-progress",
        "--json",
    ]


def _complete_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@contextlib.contextmanager
def _cache_every_program():
    """Every program compiled inside goes to the persistent compilation cache, however quick."""
    import jax

    keys = ("jax_persistent_cache_min_compile_time_secs", "jax_persistent_cache_min_entry_size_bytes")
    kept = [getattr(jax.config, k) for k in keys]
    for k in keys:
        jax.config.update(k, 0)
    try:
        yield
    finally:
        for k, v in zip(keys, kept):
            jax.config.update(k, v)


def test_sweep_resumes_after_sigkill_and_is_deterministic(tiny_ckpt, tmp_path, capsys):
    import jax

    n = len(SWEEP_GRID.split(","))
    # a clean run, in this process; what it compiles is cached for the subprocesses below, which
    # would otherwise compile it all again before their first row
    clean = tmp_path / "clean.jsonl"
    with _cache_every_program():
        assert main(_sweep_argv(tiny_ckpt, clean)) == 0
    printed = json.loads(capsys.readouterr().out)
    rows = [json.loads(x) for x in clean.read_text().splitlines()]
    assert len(rows) == n == len({r["key"] for r in rows}) and printed == rows
    assert (tmp_path / "clean.base.npz").is_file()
    kl = [r["kl"] for r in rows]
    assert kl[0] == 0.0 and rows[0]["first_divergence_mean"] == 8 and rows[0]["mc_agreement"] == 1.0
    assert kl[0] < kl[2] < kl[4] < kl[5] and rows[5]["top1_agreement"] < rows[2]["top1_agreement"]  # damage grows
    assert len(rows[0]["per_layer"]["kl"]) == 4 and max(rows[0]["per_layer"]["kl"]) == 0.0  # L+1 = 4 layers
    assert "mc_by_task" in rows[0] and "timings" not in rows[0]["record"] and rows[0]["not_computable"] == {}

    # the same sweep in subprocesses, SIGKILLed at a random point three times, then finished
    out = tmp_path / "killed.jsonl"
    env = {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir or str(tmp_path / "jax"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    rng = random.Random(7)
    logs = []
    for attempt in range(3):
        before = _complete_lines(out)
        log = open(tmp_path / f"run{attempt}.err", "w+")
        proc = subprocess.Popen(
            [sys.executable, "-m", "hemorrhage", *_sweep_argv(tiny_ckpt, out)],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=env,
        )
        deadline = time.monotonic() + 240
        while _complete_lines(out) <= before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.05))  # somewhere inside the next setting's work (or its write)
        proc.send_signal(signal.SIGKILL)
        code = proc.wait()
        log.seek(0)
        logs.append(log.read())
        log.close()
        assert code == -signal.SIGKILL, f"run {attempt} ended by itself ({code}): {logs[-1][-2000:]}"
        assert _complete_lines(out) > before
    assert "base phase: reused" in logs[1] and "base phase: reused" in logs[2]
    assert _complete_lines(out) < n
    assert main(_sweep_argv(tiny_ckpt, out)) == 0
    capsys.readouterr()
    resumed = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(resumed) == n and sorted(r["key"] for r in resumed) == sorted(r["key"] for r in rows)
    assert {json.dumps(r, sort_keys=True) for r in resumed} == {json.dumps(r, sort_keys=True) for r in rows}
    # rows computed in four different processes are byte-identical to the clean run's
    assert out.read_bytes() == clean.read_bytes()

    # determinism is shown above (four processes, the clean run's bytes); a finished sweep
    # reruns to no change
    assert main(_sweep_argv(tiny_ckpt, clean)) == 0
    assert out.read_bytes() == clean.read_bytes()
    # past the memory limit the compiled programs are dropped between settings: same bytes
    os.environ["HEMORRHAGE_SWEEP_MEMORY_GB"] = "0.001"
    try:
        capsys.readouterr()
        lean = tmp_path / "lean.jsonl"
        assert main(_sweep_argv(tiny_ckpt, lean, "magnitude:sparsity=0,0.1")) == 0
        assert "freed compiled programs" in capsys.readouterr().err
        assert lean.read_bytes().splitlines() == clean.read_bytes().splitlines()[:2]
    finally:
        del os.environ["HEMORRHAGE_SWEEP_MEMORY_GB"]
    # other measurement flags on the same file are refused, not mixed in
    capsys.readouterr()
    assert main([*_sweep_argv(tiny_ckpt, clean), "--windows", "3"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_collapsed_setting_is_a_row_not_a_crash(tiny_ckpt, tmp_path, monkeypatch, capsys):
    """A compression that leaves NaN weights is recorded (collapsed = true, NaN kept); a setting
    whose compression raises is skipped, reported, retried on the next run."""
    import jax.numpy as jnp
    from flax import nnx

    import hemorrhage.sim.compress as C

    real = C.compress_from_args

    def fake(loaded, method, **settings):
        if settings.get("sparsity") == 0.9:
            raise FloatingPointError("simulated failure")
        model, record = real(loaded, method, **settings)
        if settings.get("sparsity") == 0.5:
            model = nnx.clone(loaded.model)
            w = model.layers[0].attn.o.w
            w.set_value(jnp.full_like(w.get_value(), jnp.inf))
        return model, record

    monkeypatch.setattr(C, "compress_from_args", fake)
    out = tmp_path / "c.jsonl"
    argv = _sweep_argv(tiny_ckpt, out, "magnitude:sparsity=0.1,0.5,0.9")
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "simulated failure" in captured.err
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["grid"]["settings"]["sparsity"] for r in rows] == [0.1, 0.5]
    assert rows[0]["collapsed"] is False and rows[1]["collapsed"] is True
    assert rows[1]["kl"] is None and "kl" in rows[1]["not_computable"] and rows[1]["notes"]
    assert "NaN" in out.read_text()
    monkeypatch.setattr(C, "compress_from_args", real)
    assert main(argv) == 0  # the failed setting is retried, the others are not redone
    assert [json.loads(x)["grid"]["settings"]["sparsity"] for x in out.read_text().splitlines()] == [0.1, 0.5, 0.9]
