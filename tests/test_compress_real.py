"""On the real SmolLM2-135M: GPTQ/SparseGPT beat RTN/magnitude on real calibration text,
the GGUF grid is detected, 4-bit memory, and the exported folder runs in transformers."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import torch_logits

from hemorrhage.sim.compress import compress, compress_from_args, export_hf, make_method, memory_report
from hemorrhage.sim.compress.calib import layer_hessians, reconstruction_errors
from hemorrhage.sim.compress.quantizer import grid_check
from hemorrhage.sim.models import forward

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def head(smollm2):
    """The first block of SmolLM2 (real weights): enough for layer-wise errors."""
    m = nnx.clone(smollm2.model)
    m.layers = nnx.List(list(m.layers)[:1])
    return m


@pytest.fixture(scope="module")
def calib(smollm2):
    from hemorrhage.sim.windows import calibration_tokens

    return calibration_tokens(smollm2.tokenizer, "wiki", n_samples=8, seqlen=128, seed=0)


@pytest.fixture(scope="module")
def inputs(head, calib):
    """Each linear's input statistics in the uncompressed block (the same X for every method)."""
    return layer_hessians(head, calib)


def errors(head, inputs, method, calib):
    small, rec = compress(head, method, calib)
    return reconstruction_errors(head, small, stats=inputs), rec


def test_gptq_beats_rtn_on_real_activations(head, inputs, calib):
    gptq, _ = errors(head, inputs, make_method("gptq", bits=3, group_size=64), calib)
    rtn, _ = errors(head, inputs, make_method("rtn", bits=3, group_size=64), calib)
    assert np.mean(list(gptq.values())) < 0.8 * np.mean(list(rtn.values()))
    assert all(gptq[k] < rtn[k] for k in rtn)


def test_sparsegpt_beats_magnitude_on_real_activations(head, inputs, calib):
    sgpt, rec = errors(head, inputs, make_method("sparsegpt", sparsity=0.5), calib)
    mag, _ = errors(head, inputs, make_method("magnitude", sparsity=0.5), calib)
    assert rec["achieved_sparsity"] == pytest.approx(0.5, abs=1e-6)
    assert all(sgpt[k] < mag[k] for k in mag)


def test_the_gguf_grid_is_detected(head):
    """SmolLM2's base is GGUF Q4_1: 4-bit asymmetric in blocks of 32."""
    same = grid_check(head, 4, 32, False)
    assert same["coincides"] and same["error_per_step"] < 1e-3 and "GGUF" in same["warning"]
    assert not grid_check(head, 4, 64, False)["coincides"]  # two GGUF blocks per group: at most `partial`
    off = grid_check(head, 3, 32, False)
    assert not off["coincides"] and not off["partial"] and "warning" not in off


def test_four_bit_memory(smollm2):
    small, rec = compress(smollm2.model, make_method("rtn", bits=4))
    mem = memory_report(small)
    assert mem["value_ratio"] == pytest.approx(0.125) and mem["ratio"] <= 0.16
    assert rec["memory"]["fp32_bytes"] == 30 * 4 * (2 * 576 * 576 + 2 * 192 * 576 + 3 * 576 * 1536)


def test_exported_smollm2_runs_identically_in_transformers(smollm2, tmp_path):
    model, record = compress_from_args(smollm2, "rtn", bits=4, group_size=64)
    assert record["memory"]["ratio"] == pytest.approx(0.15625)  # 4-bit codes + fp32 scale, zero per 64
    out = export_hf(model, smollm2.path, tmp_path / "smol-rtn", record)
    toks = np.asarray(smollm2.tokenizer("The capital of France is Paris, and the capital of Italy is")["input_ids"])[
        None
    ]
    ours = np.asarray(forward(model, jnp.asarray(toks)))
    assert np.abs(torch_logits(out, toks) - ours).max() <= 1e-3
