"""Recovery: masks and grids survive training exactly; the quick mode runs on the real model."""

import json
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest

from hemorrhage.cli import main


@pytest.fixture(scope="module")
def tiny_llama():
    """A small random Llama with O(1) logits (weights scaled up from the 0.02 init)."""
    from hemorrhage.sim.models import ModelConfig, build, tiny

    model = build(
        ModelConfig.from_hf(
            tiny("llama", vocab_size=61, hidden_size=32, intermediate_size=64, tie_word_embeddings=True)
        ),
        seed=1,
    )
    from hemorrhage.sim.compress.registry import linears

    for _, _, _, layer in linears(model):
        layer.w.set_value(layer.w[...] * 8.0)
    model.embed.w.set_value(model.embed.w[...] * 20.0)
    return model


@pytest.fixture(scope="module")
def mixed(tiny_llama):
    """One compressed model holding every storage type sim.compress produces: PackedLinear (RTN
    3-bit asymmetric per channel; 2-bit symmetric in groups of 16; AWQ-style input scales),
    W8A8 ActQuantLinear, unstructured MaskedLinear and 2:4 NMSparseLinear — one training run
    exercises them all."""
    from flax import nnx

    from hemorrhage.sim.compress.quantizer import rtn
    from hemorrhage.sim.compress.storage import ActQuantLinear, MaskedLinear, NMSparseLinear, PackedLinear

    rng = np.random.default_rng(0)

    def packed(w, bits, group=None, sym=False, awq=False):
        s = jnp.asarray(np.exp(0.3 * rng.standard_normal(w.shape[1])), jnp.float32) if awq else None
        codes, scale, zero = rtn(w if s is None else w * s, bits=bits, group_size=group, symmetric=sym)
        return PackedLinear(codes, scale, zero, bits=bits, group_size=group, in_scale=s)

    def magnitude(w, sparsity):
        return MaskedLinear(w, np.abs(np.asarray(w)) > np.quantile(np.abs(np.asarray(w)), sparsity))

    def two_four(w):
        a = np.abs(np.asarray(w)).reshape(w.shape[0], -1, 4)
        keep = np.argsort(np.argsort(-a, axis=-1), axis=-1) < 2
        return NMSparseLinear(w, keep.reshape(w.shape), 2, 4)

    make = {
        "rtn3": lambda w: packed(w, 3),
        "rtn2": lambda w: packed(w, 2, 16, True),
        "awq": lambda w: packed(w, 3, awq=True),
        "w8a8": lambda w: ActQuantLinear(packed(w, 8, sym=True)),
        "mag": lambda w: magnitude(w, 0.6),
        "2:4": two_four,
    }
    plan = [
        ["mag", "2:4", "rtn2", "w8a8", "awq", "mag", "2:4"],
        ["rtn3", "rtn3", "rtn3", "rtn3", "rtn3", "awq", "rtn2"],
        ["rtn3", "rtn3", "rtn3", "mag", "rtn3", "rtn3", "rtn3"],
    ]
    comp = nnx.clone(tiny_llama)
    for block, kinds in zip(comp.layers, plan):
        for (part, attr), kind in zip(
            [("attn", a) for a in "qkvo"] + [("mlp", a) for a in ("gate", "up", "down")], kinds
        ):
            sub = getattr(block, part)
            setattr(sub, attr, make[kind](getattr(sub, attr).weight()))
    return comp


def test_training_keeps_grids_and_masks(tiny_llama, mixed):
    """The straight-through estimator keeps every weight on its fixed grid; pruned weights stay
    exactly zero; the stored model computes what the training graph computed; the KL falls."""
    from hemorrhage.sim.compress import ActQuantLinear, MaskedLinear, NMSparseLinear, PackedLinear
    from hemorrhage.sim.compress.registry import linears
    from hemorrhage.sim.models import forward
    from hemorrhage.sim.recover import probe_from_tokens, recover
    from hemorrhage.sim.recover_layers import trainable

    kinds = {type(layer) for _, _, _, layer in linears(mixed)}
    assert kinds == {PackedLinear, MaskedLinear, NMSparseLinear, ActQuantLinear}
    rng = np.random.default_rng(0)
    train = rng.integers(0, 61, (16, 17)).astype(np.int32)
    probe = probe_from_tokens(tiny_llama, train[:4, :16], train[:2, :4], 6)  # the fitted text itself
    rec = recover(
        SimpleNamespace(model=tiny_llama, tokenizer=None),
        mixed,
        steps=30,
        lr=3e-3,
        ste_lr=0.02,
        batch=8,
        tokens=train,
        probe=probe,
        eval_every=10,
    )
    c = rec.constraints
    assert c["masks_exact"] and c["grids_fixed"] and c["codes_in_range"], c
    assert c["weights_changed"] > 0.05 and c["codes_changed"] > 0.01, c  # training moved codes
    assert rec.after["kl"] < 0.8 * rec.before["kl"], (rec.before["kl"], rec.after["kl"])
    assert [h["step"] for h in rec.history] == [0, 10, 20, 30]
    # the step-0 wrapper computes the compressed model; the stored result computes the trained wrapper
    x = jnp.asarray(train[:2])
    for seeded in (trainable(mixed), trainable(mixed, base=tiny_llama)):  # latents at bin centres / from the base
        assert np.max(np.abs(np.asarray(forward(seeded, x)) - np.asarray(forward(mixed, x)))) < 1e-4
    assert np.max(np.abs(np.asarray(forward(rec.trained, x)) - np.asarray(forward(rec.model, x)))) < 1e-4
    for (path, _, _, old), (_, _, _, new) in zip(linears(mixed), linears(rec.model)):
        assert type(old) is type(new), path
        if isinstance(new, MaskedLinear):  # pruned entries exactly zero, kept ones trained
            keep = np.asarray(old.keep())
            assert np.array_equal(keep, np.asarray(new.keep())) and np.all(np.asarray(new.weight())[~keep] == 0)


def test_ste_projection_is_the_grid(tiny_llama):
    """Q(w) of a latent equals decoding its codes; the STE weight is Q(w) forward."""
    from hemorrhage.sim.compress import PackedLinear, compress, make_method
    from hemorrhage.sim.recover_layers import RecoveringLinear

    comp, _ = compress(tiny_llama, make_method("rtn", bits=3, group_size=16), None)
    layer = comp.layers[0].mlp.up
    assert isinstance(layer, PackedLinear)
    r = RecoveringLinear(layer, rngs=__import__("flax").nnx.Rngs(0))
    np.testing.assert_array_equal(np.asarray(r.weight()), np.asarray(layer.weight()))
    r.w.set_value(r.w[...] + 0.3 * jnp.sin(jnp.arange(r.w[...].size).reshape(r.w[...].shape)))
    out = r.export()
    np.testing.assert_allclose(np.asarray(out.weight()), np.asarray(r.weight()), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out.scale[...]), np.asarray(layer.scale[...]))


def test_lora_keeps_constraints(tiny_llama, mixed):
    from hemorrhage.sim.recover import probe_from_tokens, recover

    train = np.random.default_rng(1).integers(0, 61, (8, 17)).astype(np.int32)
    probe = probe_from_tokens(tiny_llama, train[:4, :16])
    rec = recover(
        SimpleNamespace(model=tiny_llama, tokenizer=None),
        mixed,
        steps=20,
        lr=1e-2,
        ste_lr=0.02,
        batch=8,
        tokens=train,
        probe=probe,
        lora_rank=2,
    )
    c = rec.constraints
    assert c["masks_exact"] and c["grids_fixed"] and c["codes_in_range"], c
    assert rec.after["kl"] < rec.before["kl"], (rec.before["kl"], rec.after["kl"])
    from hemorrhage.sim.compress.registry import linears

    full = sum(int(layer.weight().size) for _, _, _, layer in linears(mixed))
    assert 0 < rec.settings["trainable_params"] < 0.5 * full


def test_recover_quick_on_the_real_model(capsys, smollm2):
    """`hemorrhage recover` quick mode on SmolLM2: two steps of KL distillation on train text."""
    code = main(
        [
            "recover",
            "--model",
            "smollm2-135m",
            "--method",
            "magnitude",
            "--sparsity",
            "0.5",
            "--steps",
            "2",
            "--lr",
            "1e-4",
            "--batch",
            "1",
            "--train-seqlen",
            "32",
            "--pool",
            "2",
            "--windows",
            "1",
            "--seqlen",
            "32",
            "--prompts",
            "0",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    for k in ("kl_before", "kl_after", "top1_before", "top1_after", "var_p_before", "var_p_after"):
        assert np.isfinite(out[k]), k
    assert out["kl_before"] > 0.01 and 0 <= out["top1_after"] <= 1
    assert out["kl_after"] < out["kl_before"]  # distillation helps, even held-out, even in 2 steps
    c = out["constraints"]
    assert c["masks_exact"] and c["grids_fixed"] and c["codes_in_range"]
    assert "GGUF" in out["base_note"]


def test_recover_bad_input(capsys):
    for argv, needle in [(["--steps", "-1"], "--steps"), (["--lr", "0"], "--lr"), (["--batch", "0"], "--batch")]:
        assert main(["recover", "--model", "smollm2-135m", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
