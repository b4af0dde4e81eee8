"""The compiled forwards return their results, not a copy of the weights (sim/jit.py).

nnx.jit's default makes every parameter an output of the program so that mutations can be
written back; for a forward that changes nothing that is a fresh copy of the whole model per
call.  Each program below is lowered on a tiny random Llama and its outputs' bytes counted
by XLA: they must be less than the weights' bytes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from hemorrhage.sim.models import ModelConfig
from hemorrhage.sim.models.loader import build
from hemorrhage.sim.models.tiny_configs import tiny

# wide enough that the weights (~1.3 MB) dwarf every result below
CFG = tiny("llama", hidden_size=128, intermediate_size=256, num_attention_heads=4, head_dim=32, vocab_size=97)


@pytest.fixture(scope="module")
def model():
    return build(ModelConfig.from_hf(CFG), seed=0)


def _param_bytes(model) -> int:
    return sum(v.nbytes for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _output_bytes(jitted, *args, **kwargs) -> int:
    return jitted.lower(*args, **kwargs).compile().memory_analysis().output_size_in_bytes


def test_forward_trace_and_decoding_return_no_weights(model):
    from hemorrhage.sim.generate import _generate
    from hemorrhage.sim.models.base import _trace, forward
    from hemorrhage.validate.measure_jit import _build

    tokens = jnp.ones((2, 8), jnp.int32)
    weights = _param_bytes(model)
    h = jnp.ones((16, CFG["hidden_size"]), jnp.float32)
    outs = {
        "forward": _output_bytes(forward, model, tokens, None),
        "trace": _output_bytes(_trace, model, tokens, None),
        "generate": _output_bytes(
            _generate,
            model,
            tokens,
            jax.random.key(0),
            max_new_tokens=4,
            temperature=0.0,
            top_p=1.0,
            perturb=None,
            keep_logits=False,
        ),
        "final": _output_bytes(_build()["final"], model, model, h, h, chunk=16),
    }
    for name, n in outs.items():
        assert 0 < n < weights / 2, (name, n, weights)


def test_plain_nnx_jit_would_copy_them(model):
    """The check above can fail: nnx.jit with its default graph updates returns the weights."""
    f = nnx.jit(lambda m, t: m(t)[0])
    assert _output_bytes(f, model, jnp.ones((2, 8), jnp.int32)) > _param_bytes(model)
