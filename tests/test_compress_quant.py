"""Quantization: the RTN grid, bit packing, GPTQ/AWQ/W8A8 on tiny models (property tests)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hemorrhage.errors import UserError
from hemorrhage.sim.compress import PackedLinear, compress, make_method, memory_report
from hemorrhage.sim.compress.quantizer import grid_check, rtn, rtn_dequant
from hemorrhage.sim.compress.storage import pack, packed_size, unpack
from hemorrhage.sim.models import ModelConfig, build, forward, tiny

PROPS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def square_model(seed=0):
    """Every linear 32×32: one compile per kernel for the whole model."""
    return build(ModelConfig.from_hf(tiny("llama", intermediate_size=32, num_key_value_heads=4)), seed=seed)


def tokens(n=4, t=16, vocab=97, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, (n, t)).astype(np.int32)


@st.composite
def matrices(draw):
    rows, groups, g = 8, 4, 8  # one shape: each example is new data, not a new compile
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-3, 1.0, 50.0]))
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, groups * g)) * scale).astype(np.float32)
    if draw(st.booleans()):  # outliers and exact zeros
        w[rng.random(w.shape) < 0.1] *= 30
        w[rng.random(w.shape) < 0.1] = 0.0
    if draw(st.booleans()):
        w[0, :g] = 0.7  # a constant group
    return w, draw(st.sampled_from([None, g, 2 * g]))


@PROPS
@given(matrices(), st.integers(1, 8), st.booleans())
def test_rtn_on_grid_error_bound_idempotent(wg, bits, symmetric):
    w, group = wg
    if symmetric and bits < 2:
        bits = 2
    codes, scale, zero = rtn(jnp.asarray(w), bits=bits, group_size=group, symmetric=symmetric)
    codes, scale = np.asarray(codes), np.asarray(scale)
    assert codes.min() >= 0 and codes.max() <= 2**bits - 1
    wh = np.asarray(rtn_dequant(w, bits, group, symmetric))
    g = group or w.shape[1]
    step = np.repeat(scale, g, axis=1)
    # on the grid: (ŵ − zero)/step is an integer
    base = -(2 ** (bits - 1) - 1) * step if zero is None else np.repeat(np.asarray(zero), g, axis=1)
    k = (wh - base) / step
    np.testing.assert_allclose(k, np.round(k), atol=1e-3)
    # |error| ≤ step/2
    assert np.all(np.abs(wh - w) <= step / 2 * (1 + 1e-5) + 1e-6 * np.abs(w) + 1e-30)
    # idempotent: re-quantizing gives the same codes, and the same values to float rounding
    codes2, _, _ = rtn(jnp.asarray(wh), bits=bits, group_size=group, symmetric=symmetric)
    np.testing.assert_array_equal(np.asarray(codes2), codes)
    again = np.asarray(rtn_dequant(wh, bits, group, symmetric))
    np.testing.assert_allclose(again, wh, rtol=0, atol=float(np.max(np.abs(wh))) * 2**bits * 1e-7 + 1e-30)


_unpack = jax.jit(unpack, static_argnums=(1, 2))


@settings(max_examples=24, deadline=None)
@given(st.integers(1, 16), st.sampled_from([5, 301]), st.integers(0, 2**31 - 1))
def test_pack_unpack_round_trip(bits, n, seed):
    codes = np.random.default_rng(seed).integers(0, 2**bits, n)
    packed = pack(jnp.asarray(codes), bits)
    assert packed.dtype == jnp.uint8 and packed.size == packed_size(n, bits)
    assert packed.size <= n * bits / 8 + bits  # never more than bits/8 bytes a code (+ padding)
    np.testing.assert_array_equal(np.asarray(_unpack(packed, bits, n)), codes)


def test_four_bit_codes_are_two_per_byte():
    codes = jnp.asarray([1, 2, 15, 0, 7], jnp.int32)
    packed = np.asarray(pack(codes, 4))
    assert packed.tolist() == [1 | 2 << 4, 15, 7]


@PROPS
@given(matrices(), st.integers(2, 8), st.booleans())
def test_packed_linear_decodes_exactly_to_the_dequantized_weights(wg, bits, symmetric):
    w, group = wg
    codes, scale, zero = rtn(jnp.asarray(w), bits=bits, group_size=group, symmetric=symmetric)
    layer = PackedLinear(codes, scale, zero, bits=bits, group_size=group)
    np.testing.assert_array_equal(np.asarray(layer.codes()), np.asarray(codes))
    np.testing.assert_array_equal(np.asarray(layer.weight()), np.asarray(rtn_dequant(w, bits, group, symmetric)))
    x = np.random.default_rng(0).standard_normal((2, w.shape[1])).astype(np.float32)
    y = jax.jit(lambda x: layer(x))(x)  # dequantized inside the jitted matmul
    scale = np.abs(x) @ np.abs(np.asarray(layer.weight())).T  # float rounding grows with it
    assert np.all(np.abs(np.asarray(y) - x @ np.asarray(layer.weight()).T) <= 1e-5 * scale + 1e-6)


def test_rtn_model_memory_and_execution():
    m = square_model()
    small, rec = compress(m, make_method("rtn", bits=4, group_size=16))
    layers = [small.layers[0].attn.q, small.layers[2].mlp.down]
    assert all(isinstance(x, PackedLinear) for x in layers)
    mem = memory_report(small)
    assert mem["value_ratio"] == pytest.approx(0.125)  # 4 bits of 32
    assert mem["ratio"] == pytest.approx(0.125 + 8 / 16 / 4)  # + fp32 scale and zero per 16
    assert rec["memory"] == mem and rec["bits"] == 4
    z0, z1 = forward(m, jnp.asarray(tokens())), forward(small, jnp.asarray(tokens()))
    assert 0 < float(jnp.max(jnp.abs(z1 - z0))) < 1.0


def _correlated_inputs(d, n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.3
    x[:, :3] *= 20  # outlier channels
    return x.astype(np.float32)


def test_gptq_equals_rtn_when_inputs_are_uncorrelated():
    """H diagonal: no error to spread, GPTQ is RTN (per channel and per group)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((24, 32)).astype(np.float32)
    h = jnp.diag(jnp.asarray(rng.uniform(0.5, 2.0, 32), jnp.float32))
    for group in (None, 8):
        m = make_method("gptq", bits=3, group_size=group)
        codes, scale, zero, _ = m.quantize_layer(w, h)
        ref = rtn(jnp.asarray(w), bits=3, group_size=group, symmetric=False)
        np.testing.assert_array_equal(np.asarray(codes), np.asarray(ref[0]))
        np.testing.assert_allclose(np.asarray(scale), np.asarray(ref[1]), rtol=1e-6)


@pytest.mark.parametrize(
    "settings",
    [
        dict(bits=3),
        dict(bits=4, group_size=8),
        dict(bits=3, act_order=True),
        dict(bits=4, group_size=8, act_order=True, symmetric=True),
    ],
)
def test_gptq_beats_rtn_on_correlated_inputs(settings):
    from hemorrhage.sim.compress.storage import decode

    rng = np.random.default_rng(1)
    w = rng.standard_normal((40, 32)).astype(np.float32)
    x = _correlated_inputs(32)
    h = jnp.asarray(2 * x.T @ x / len(x))
    m = make_method("gptq", **settings)
    codes, scale, zero, _ = m.quantize_layer(w, h)
    wq = np.asarray(decode(codes, scale, zero, m.bits, m.group_size or 32))
    wr = np.asarray(rtn_dequant(w, m.bits, m.group_size, m.symmetric))
    err = lambda a: np.linalg.norm((a - w) @ x.T)
    assert err(wq) < 0.9 * err(wr)
    # its codes are a valid grid: the stored layer decodes to the same matrix
    layer = PackedLinear(codes, scale, zero, bits=m.bits, group_size=m.group_size)
    np.testing.assert_array_equal(np.asarray(layer.weight()), wq)


def test_gptq_survives_a_singular_hessian():
    w = np.random.default_rng(2).standard_normal((16, 32)).astype(np.float32)
    x = _correlated_inputs(32, n=4)  # rank 4 < 32
    x[:, 5] = 0.0  # a dead input
    h = jnp.asarray(2 * x.T @ x / len(x))
    codes, scale, zero, lam = make_method("gptq", bits=4, damp=0.0).quantize_layer(w, h)
    assert np.all(np.isfinite(np.asarray(scale))) and lam >= 0


def test_awq_never_worse_than_rtn():
    from hemorrhage.sim.compress.calib import Stats

    w = np.random.default_rng(3).standard_normal((24, 32)).astype(np.float32)
    x = _correlated_inputs(32)
    stats = Stats(jnp.asarray(x.T @ x), jnp.asarray(np.abs(x).sum(0)), len(x))
    m = make_method("awq", bits=3, group_size=16)
    codes, scale, zero, s, alpha = m.quantize_layer(jnp.asarray(w), stats)
    layer = PackedLinear(codes, scale, zero, bits=3, group_size=16, in_scale=s)
    err = lambda a: np.linalg.norm((np.asarray(a) - w) @ x.T)
    assert err(layer.weight()) <= err(rtn_dequant(w, 3, 16)) + 1e-6
    assert 0.0 <= alpha < 1.0


def test_calibrated_quantizers_run_on_a_model():
    m = square_model()
    toks = tokens()
    z0 = forward(m, jnp.asarray(toks))
    # bytes per weight as a share of fp32's 4; every linear is d × d
    d = 32
    ratio = {
        "awq": (4 / 8 + 2 * 4 / 16 + 4 / d) / 4,  # 4-bit codes, fp32 scale + zero per 16, a scale per input
        "w8a8": (1 + 4 / d) / 4,
    }  # int8 codes, one fp32 scale per output channel, symmetric: no zero
    for name, s in [("awq", dict(bits=4, group_size=16)), ("w8a8", {})]:  # gptq: test_compress_real/cli
        small, rec = compress(m, make_method(name, **s), toks)
        z = forward(small, jnp.asarray(toks))
        assert np.all(np.isfinite(np.asarray(z)))
        assert float(jnp.max(jnp.abs(z - z0))) < (0.05 if name == "w8a8" else 0.5)
        assert rec["memory"]["ratio"] == pytest.approx(ratio[name]), name


def test_w8a8_runs_an_int8_matmul_close_to_fp32():
    from hemorrhage.sim.compress import ActQuantLinear

    m = square_model()
    small, rec = compress(m, make_method("w8a8"))
    layer = small.layers[0].mlp.up
    assert isinstance(layer, ActQuantLinear) and "per token" in rec["activations"]
    x = np.random.default_rng(0).standard_normal((3, 32)).astype(np.float32)
    y = np.asarray(layer(jnp.asarray(x)))
    ref = x @ np.asarray(layer.weight()).T
    assert np.abs(y - ref).max() < 0.02 * np.abs(ref).max()
    assert not np.array_equal(y, ref)  # the activations really were quantized


def test_grid_coincidence_is_detected():
    m = square_model()
    on_grid, _ = compress(m, make_method("rtn", bits=4, group_size=16))  # now weights lie on that grid
    hit = grid_check(on_grid, 4, 16, False)
    assert hit["coincides"] and "already" in hit["warning"] and hit["error_per_step"] < 1e-3
    _, rec = compress(on_grid, make_method("rtn", bits=4, group_size=16))
    assert rec["warnings"]
    assert not grid_check(on_grid, 3, None, True)["coincides"]  # coarser, misaligned grid
    assert not grid_check(m, 4, 16, False)["coincides"]  # random weights lie on no grid


@pytest.mark.parametrize(
    "settings, needle",
    [
        (dict(bits=0), "1..16"),
        (dict(bits=17), "1..16"),
        (dict(bits=1, symmetric=True), "bits >= 2"),
        (dict(bits=4, group_size=0), "positive"),
        (dict(bits=4.5), "1..16"),
    ],
)
def test_bad_quantization_settings(settings, needle):
    with pytest.raises(UserError, match=needle.replace(".", r"\.")):
        make_method("rtn", **settings)


def test_group_size_must_divide_every_input():
    m = square_model()
    with pytest.raises(UserError, match="does not divide"):
        compress(m, make_method("gptq", bits=4, group_size=12), tokens())
