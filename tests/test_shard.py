"""Sharding (hemorrhage.sim.shard): every sharded computation equals the one-device one.

The equality checks run in ONE subprocess with 8 fake CPU devices (tests/shard_check.py;
XLA_FLAGS=--xla_force_host_platform_device_count=8 must be set before jax is imported) and
report their differences as JSON; the tests below read that report.  The rules and the
one-line errors need no devices and run here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hemorrhage.cli import main

HERE = Path(__file__).resolve().parent
FP32 = 1e-5  # relative: a different summation order across devices, nothing more


def _run_shard_check(root: Path) -> dict:
    from helpers import save_tiny_hf_with_smollm2_tokenizer

    ckpt = save_tiny_hf_with_smollm2_tokenizer(root / "tiny")  # real data applies
    (root / "sweep").mkdir()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    proc = subprocess.run(
        [sys.executable, str(HERE / "shard_check.py"), str(ckpt), str(root / "sweep"), "--smollm2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    from helpers import once_per_run

    return once_per_run(tmp_path_factory, "shard_check", _run_shard_check)  # the costliest fixture: never twice


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "gpt2"])
def test_tensor_parallel_forward_equals_one_device(report, family):
    """data=2 × model=4: q/k/v (GPT-2's fused qkv) split over their outputs, o over its
    inputs, the embedding over the vocabulary; a batch of 6 padded to 8 and cut back."""
    r = report[f"forward_{family}"]
    assert report["devices"] == 8 and r["n_devices"] == 8 and r["logits_devices"] == 8
    assert r["shape"] == [6, 16, 96]
    assert r["col_spec"] == "P('model',)" and r["row_spec"] == "P(None, 'model')" and r["embed_spec"] == "P('model',)"
    assert r["scale"] > 1.0  # logits O(1-10): equality is not trivial
    assert r["max_abs_diff"] <= FP32 * r["scale"], r


@pytest.mark.real
def test_smollm2_tensor_parallel_forward(report):
    r = report["smollm2"]
    assert r["logits_devices"] == 8 and r["argmax_equal"]
    assert r["max_abs_diff"] <= FP32 * r["scale"] * 10, r  # 30 layers of reordered sums


@pytest.mark.parametrize("method", ["gptq", "wanda"])
def test_data_parallel_calibration_equals_one_device(report, method):
    """Calibration batch and block activations split over 8 devices (Σxxᵀ reduced across
    them): the same compressed weights and logits as one device, the same record."""
    assert report["calib_h_devices"] == 8 and report["calib_h_spec"] == "P('data',)"
    r = report[f"calib_{method}"]
    assert r["record_equal"] and r["devices"] == 8
    assert r["weight_diff"] <= 1e-5, r
    assert r["logit_diff"] <= FP32 * max(r["scale"], 1.0), r


def test_sweep_on_two_devices_writes_the_one_device_file(report):
    """Settings run two at a time on cpu:0 and cpu:1, rows still one per setting, in grid
    order, byte-identical to the in-order one-device sweep."""
    s = report["sweep"]
    assert s["failed"] == []
    assert len(s["rows_one"]) == 4 and s["rows_many"] == s["rows_one"] and s["bytes_equal"]
    assert [r["grid"]["settings"]["sparsity"] for r in s["rows_many"]] == [0.1, 0.3, 0.5, 0.7]
    assert {d for devs in s["placement_one"].values() for d in devs} == {"cpu:0"}  # the default device
    used = {d for devs in s["placement_many"].values() for d in devs}
    assert len(s["placement_many"]) == 4 and all(len(d) == 1 for d in s["placement_many"].values())
    assert used == {"cpu:0", "cpu:1"}, s["placement_many"]
    assert any("2 device group(s)" in line for line in s["logs"])
    assert sum("base phase: computing" in line for line in s["logs"]) == 1  # once, shared by both
    assert report["sweep_cli"] == {"code": 0, "bytes_equal": True}  # `hemorrhage sweep --devices 2`


# ------------------------------------------------------------------ no devices needed ---


def test_data_parallel_measurement_equals_one_device(report):
    m = report["measured"]
    assert m["same_generation"], m
    for k, d in m["diff"].items():
        assert d <= 1e-4, (k, m)
    assert m["per_layer_kl_diff"] <= 1e-4 and m["steps_kl_diff"] <= 1e-4, m


def test_partition_rules():
    from hemorrhage.sim.shard import param_spec
    from jax.sharding import PartitionSpec as P

    def spec(path, shape, m=4):
        return param_spec(tuple(path.split(".")), shape, m)

    assert spec("layers.0.attn.q.w", (32, 16)) == P("model")
    assert spec("layers.0.attn.q.b", (32,)) == P("model")
    assert spec("layers.0.mlp.down.w", (16, 48)) == P(None, "model")
    assert spec("layers.0.mlp.down.b", (16,)) == P()
    assert spec("layers.0.mlp.up.scale", (48, 4)) == P("model")  # a PackedLinear's scales
    assert spec("layers.0.mlp.up.packed", (384,)) == P()  # flat codes stay whole
    assert spec("layers.0.attn.o.in_scale", (32,)) == P("model")
    assert spec("layers.0.mlp.gate.inner.scale", (48, 1)) == P("model")  # W8A8 wraps a PackedLinear
    assert spec("embed.w", (96, 32)) == P("model") and spec("lm_head.w", (96, 32)) == P("model")
    assert spec("embed.w", (97, 32)) == P()  # 97 does not split over 4: replicated
    assert spec("layers.0.norm1.w", (32,)) == P() and spec("pos_embed", (128, 32)) == P()
    assert spec("layers.0.attn.q.w", (32, 16), m=1) == P()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["sweep", "--grid", "magnitude", "--mesh", "data=x"], "--mesh"),
        (["sweep", "--grid", "magnitude", "--mesh", "pipeline=2"], "AXIS=SIZE"),
        (["sweep", "--grid", "magnitude", "--mesh", "data=2,data=2"], "each once"),
        (["sweep", "--grid", "magnitude", "--devices", "0"], "--devices"),
        (["sweep", "--grid", "magnitude", "--devices", "64"], "devices"),
        (["measure", "--mesh", "data=0"], "positive"),
        (["compress", "--out", "x", "--mesh", "model=4096"], "needs 4096 devices"),
    ],
)
def test_bad_mesh_and_devices_are_one_line_errors(capsys, argv, needle):
    capsys.readouterr()
    assert main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0], err
