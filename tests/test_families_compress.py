"""Every compression method on every dense family added for issue 28, and its HF export run
by transformers: the exported folder (Phi-3's q/k/v and gate/up written back fused) loads
and gives our compressed model's logits.

One model per family (module fixture), one test per family, smallest settings, 2 × 12
random calibration tokens: the point is that each method finds and swaps every linear of
these layouts (Phi-3: fused tensors split at load and re-fused at export; OLMo 2: norms
after the sublayers, q/k norm over the whole projection; the rest Llama's or Gemma 3's
linears with other constants) and that the export is faithful, not quality.  The families
share shapes, so after the first one most programs come from the compile cache.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import save_tiny_hf, torch_logits

from hemorrhage.errors import UserError
from hemorrhage.sim.compress import ActQuantLinear, compress, export_hf, linears, make_method
from hemorrhage.sim.models import ModelConfig, build, export_state, forward, load_checkpoint, tiny

FAMILIES = ["qwen3", "olmo2", "gemma2", "phi3", "granite", "smollm3"]
# group 8 divides every input width of the tiny presets (32, 48, 64)
METHODS = [
    ("magnitude", dict(sparsity=0.5)),
    ("wanda", dict(sparsity=0.5)),
    ("sparsegpt", dict(sparsity=0.5)),
    ("owl", dict(sparsity=0.5)),
    ("drop", dict(part="attn", layers="1")),
    ("rtn", dict(bits=4, group_size=8)),
    ("gptq", dict(bits=4, group_size=8)),
    ("awq", dict(bits=4, group_size=8, n_grid=2)),
    ("w8a8", {}),
]


@pytest.fixture(scope="module", params=FAMILIES)
def tiny_family(request, tmp_path_factory):
    path = save_tiny_hf(request.param, tmp_path_factory.mktemp(request.param))
    model, cfg = load_checkpoint(path)
    return request.param, path, model, cfg


def _weights_only(model):
    """W8A8's export carries its int8 weights, not its per-token activation rounding
    (sim/compress/export.py says so): compare transformers with the weights alone."""
    m = nnx.clone(model)
    for _, parent, attr, layer in list(linears(m)):
        if isinstance(layer, ActQuantLinear):
            setattr(parent, attr, layer.inner)
    return m


def test_every_method_compresses_and_exports_faithfully(tiny_family, tmp_path):
    name, src, model, cfg = tiny_family
    rng = np.random.default_rng(3)
    calib = rng.integers(0, cfg.vocab_size, (2, 12))
    toks = rng.integers(0, cfg.vocab_size, (2, 20))
    before = export_state(model)
    for method, settings in METHODS:
        small, record = compress(model, make_method(method, **settings), calib)
        after = export_state(small)
        assert set(after) == set(before), f"{method}: the export's tensor names changed"
        changed = [k for k in before if not np.array_equal(before[k], after[k])]
        assert changed, f"{method} changed nothing on {name}"
        if name == "phi3" and method != "drop":  # the fused tensors were compressed and written back
            assert any("qkv_proj" in k for k in changed) and any("gate_up_proj" in k for k in changed)
        out = export_hf(small, src, tmp_path / method, record)
        ref = torch_logits(out, toks)
        ours = np.asarray(forward(_weights_only(small), jnp.asarray(toks)))
        assert np.isfinite(ref).all() and np.abs(ref).max() > 0.5
        err = np.abs(ours - ref).max()
        assert err <= 1e-4, f"{name} {method}: max |Δz| = {err:.2e} between hemorrhage and its export"


def test_the_predictors_head_is_the_models_head():
    """sim.predict.logit_space takes z = W·norm(h) + b apart: Granite's logits_scaling is folded into W
    (same logits as the model's), Gemma 2's final soft-cap is refused, not linearised wrongly."""
    from hemorrhage.sim.predict import base_logits

    granite = build(ModelConfig.from_hf(tiny("granite")))
    h = jnp.asarray(np.random.default_rng(4).normal(size=(5, 32)), jnp.float32) * 10
    z = np.asarray(granite.unembed(h))
    np.testing.assert_allclose(np.asarray(base_logits(granite, h)), z, rtol=1e-5, atol=1e-6)
    undivided = np.asarray(granite.norm(h) @ granite.lm_head.weight().T)
    assert np.abs(undivided - z).max() > 10 * np.abs(z).max() * 1e-5  # the scaling is there to fold
    with pytest.raises(UserError, match="soft-cap"):
        base_logits(build(ModelConfig.from_hf(tiny("gemma2"))), h)
