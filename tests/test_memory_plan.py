"""`hemorrhage memory`: the plan's weight bytes are the model's, nothing is allocated, the
verdict follows the peak, and every bad input is one line before any compile."""

import json
import math
import resource
import time
from pathlib import Path

import pytest

from helpers import assert_one_line_error

from hemorrhage.cli import main
from hemorrhage.sim.abstract_bytes import abstract_model, nbytes
from hemorrhage.sim.memory_plan import PlanRequest, Shapes, make_plan
from hemorrhage.sim.models.config import ModelConfig
from hemorrhage.sim.models.tiny_configs import tiny

DATA = Path(__file__).parent / "data"
SMALL = Shapes(windows=2, seqlen=8, prompts=1, prompt_len=4, new_tokens=2, calib_samples=2, calib_seqlen=8)


def run_cli(capsys, *argv):
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    """A folder holding only a tiny Llama's config.json (no weights)."""
    d = tmp_path_factory.mktemp("config_only")
    (d / "config.json").write_text(json.dumps(tiny("llama", vocab_size=96)))  # even: split over model=2
    return d


def _plan(model, **kw):
    return make_plan(PlanRequest(model=str(model), **{"shapes": SMALL, "programs": ("forward",), **kw}))


def test_weight_bytes_are_the_abstract_and_the_loaded_models(tiny_ckpt):
    from flax import nnx

    from hemorrhage.sim import load

    plan = _plan(tiny_ckpt, dtype="float32")
    _, state = abstract_model(ModelConfig.from_json_file(tiny_ckpt / "config.json"), "float32")
    assert plan["weight_bytes"] == nbytes(state)
    real = load(str(tiny_ckpt), dtype="float32").model
    assert plan["weight_bytes"] == sum(v.nbytes for v in jax_leaves(nnx.state(real)))
    assert plan["peak_bytes_per_device"] >= plan["weight_bytes"]


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def test_bf16_halves_the_weights_and_peak_covers_them(tiny_config):
    f32, b16 = _plan(tiny_config, dtype="float32"), _plan(tiny_config, dtype="bfloat16")
    assert b16["weight_bytes"] * 2 == f32["weight_bytes"]
    assert b16["weight_bytes_by_dtype"] == {"bfloat16": b16["weight_bytes"]}
    for p in (f32, b16):
        assert p["peak_bytes_per_device"] >= p["resident_bytes_per_device"] >= p["weight_bytes"]
        assert p["programs"]["forward"]["temp_bytes"] > 0


def test_model_axis_splits_the_weights_over_fake_devices(tiny_config):
    """model=2 compiles SPMD over two (fake, in a subprocess) devices: each holds about half."""
    one = _plan(tiny_config, dtype="float32")
    two = _plan(tiny_config, dtype="float32", mesh={"model": 2})
    assert two["weight_bytes"] == one["weight_bytes"]
    assert one["weight_bytes"] / 2 <= two["weight_bytes_per_device"] < 0.6 * one["weight_bytes"]
    assert "2 cpu device(s)" in two["method"]
    assert two["programs"]["forward"]["weight_argument_bytes"] == two["weight_bytes_per_device"]


def test_8b_is_planned_in_seconds_without_allocating_it():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    plan = _plan(DATA / "llama-3.1-8b.json", dtype="bfloat16", shapes=Shapes(windows=1, seqlen=8))
    seconds = time.perf_counter() - t0
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    assert 8.0e9 < plan["parameters"] < 8.1e9  # Llama-3.1-8B: 8.03 B
    assert plan["weight_bytes"] == 2 * plan["parameters"]
    assert grew < 2e9, f"planning grew the process by {grew / 1e9:.1f} GB (the weights are 16 GB)"
    assert seconds < 120  # a generous bound on a loaded 2-core machine: it compiles, never runs


def test_fits_flips_at_the_peak(capsys, tiny_config):
    argv = (
        "memory",
        "--model",
        str(tiny_config),
        "--dtype",
        "float32",
        "--programs",
        "forward",
        "--windows",
        "2",
        "--seqlen",
        "8",
        "--json",
    )
    code, out, _ = run_cli(capsys, *argv)
    peak = json.loads(out)["peak_bytes_per_device"]
    code, out, _ = run_cli(capsys, *argv, "--device-memory", str(peak))
    assert code == 0 and json.loads(out)["fits"] is True
    code, out, _ = run_cli(capsys, *argv, "--device-memory", str(peak - 1))
    assert code == 0 and json.loads(out)["fits"] is False
    code, _, err = run_cli(capsys, *argv, "--device-memory", str(peak - 1), "--fail-if-not-fits")
    assert_one_line_error(code, err, "does not fit")


@pytest.mark.parametrize(
    "extra, words",
    [
        (("--dtype", "float64"), ("--dtype", "float64")),
        (("--dtype", "auto"), ("--dtype",)),
        (("--mesh", "model=two"), ("--mesh",)),
        (("--mesh", "pipe=2"), ("--mesh",)),
        (("--device-memory", "80 parsecs"), ("--device-memory",)),
        (("--device-memory", "-3GB"), ("--device-memory",)),
        (("--mesh", "model=3"), ("model=3", "n_heads")),  # 4 heads, 2 KV heads
        (("--command", "train"), ("--command", "train")),
        (("--fail-if-not-fits",), ("--device-memory",)),
        (("--programs", "backward"), ("backward",)),
    ],
)
def test_bad_input_is_one_line_before_any_compile(capsys, tiny_config, monkeypatch, extra, words):
    from hemorrhage.sim import memory_plan

    monkeypatch.setattr(memory_plan, "analyse", lambda *a, **k: pytest.fail("compiled before the input was checked"))
    code, _, err = run_cli(capsys, "memory", "--model", str(tiny_config), *extra)
    assert_one_line_error(code, err, *words)


@pytest.mark.parametrize("command", [("measure",), ("check",), ("generate", "--prompt", "hi")])
def test_config_only_folder_points_other_commands_to_memory(capsys, tiny_config, command):
    code, _, err = run_cli(capsys, command[0], "--model", str(tiny_config), *command[1:])
    assert_one_line_error(code, err, "no weights", "hemorrhage memory")


def test_public_llama_configs_are_the_model_cards():
    for name, (d, layers, heads, ff, params) in {
        "llama-3.1-8b.json": (4096, 32, 32, 14336, 8.03e9),
        "llama-3.1-70b.json": (8192, 80, 64, 28672, 70.55e9),
    }.items():
        cfg = ModelConfig.from_json_file(DATA / name)
        assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_ff, cfg.vocab_size) == (
            d,
            layers,
            heads,
            8,
            ff,
            128256,
        )
        assert not cfg.tie_embeddings and cfg.rope.kind == "llama3"  # rope_theta 500000, low-frequency scaled
        assert math.isclose(cfg.rope.inv_freq[1], 500000.0 ** (-2 / cfg.head_dim), rel_tol=1e-6)
        kv = cfg.n_kv_heads * cfg.head_dim  # GQA: q, o [d d]; k, v [kv d]; gate, up, down [ff d]; 2 norms
        block = 2 * d * d + 2 * kv * d + 3 * ff * d + 2 * d
        assert math.isclose(2 * cfg.vocab_size * d + layers * block + d, params, rel_tol=2e-3)
