"""Issue 29: a model is built from shapes and filled tensor by tensor, from the shards the
index names, in the dtype asked; bad shards and dtypes are one line before any tensor is read."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_one_line_error, save_tiny_hf
from hemorrhage.sim.models import forward, load_checkpoint

from hemorrhage.cli import main
from hemorrhage.errors import UserError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_hf("llama", tmp_path_factory.mktemp("tiny") / "m")


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """The same tiny model saved in several shards with a model.safetensors.index.json."""
    import torch
    from transformers import AutoModelForCausalLM

    src = save_tiny_hf("llama", tmp_path_factory.mktemp("src") / "m")
    out = tmp_path_factory.mktemp("sharded") / "m"
    AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).save_pretrained(str(out), max_shard_size="40KB")
    return src, out


def _tokens(cfg):
    return jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (1, 8)))


def test_load_materialises_no_random_init(tiny, monkeypatch):
    """The init's random draws only ever see tracers (nnx.eval_shape): a concrete draw
    would be a full random copy of the model, allocated and thrown away."""
    real = jax.random.normal

    def traced_only(*a, **k):
        out = real(*a, **k)
        if not isinstance(out, jax.core.Tracer):
            raise AssertionError("a random init was materialised during load")
        return out

    monkeypatch.setattr(jax.random, "normal", traced_only)
    model, cfg = load_checkpoint(tiny)
    from safetensors.numpy import load_file

    stored = load_file(str(tiny / "model.safetensors"))["model.layers.0.mlp.up_proj.weight"]
    np.testing.assert_array_equal(np.asarray(model.layers[0].mlp.up.w[...]), stored)


def test_sharded_checkpoint_loads_and_stray_shard_is_ignored(sharded):
    src, out = sharded
    shards = sorted(out.glob("*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").is_file()
    ref, cfg = load_checkpoint(src)
    # a stray shard the index does not list, holding a tensor of the same name and another shape
    from safetensors.numpy import save_file

    save_file({"model.embed_tokens.weight": np.zeros((3, 3), np.float32)}, str(out / "model-stray.safetensors"))
    model, _ = load_checkpoint(out)
    np.testing.assert_array_equal(np.asarray(forward(model, _tokens(cfg))), np.asarray(forward(ref, _tokens(cfg))))


def test_index_naming_a_missing_shard_is_one_line_before_any_read(sharded, tmp_path, monkeypatch, capsys):
    import shutil

    from hemorrhage.sim.models import weights

    _, out = sharded
    bad = tmp_path / "m"
    shutil.copytree(out, bad)
    index = json.loads((bad / "model.safetensors.index.json").read_text())
    gone = sorted(set(index["weight_map"].values()))[-1]
    (bad / gone).unlink()

    def no_read(*a, **k):
        raise AssertionError("a tensor was read before the index was checked")

    monkeypatch.setattr(weights, "read_tensor", no_read)
    capsys.readouterr()
    code = main(["generate", "--model", str(bad), "--prompt", "hi"])
    assert_one_line_error(code, capsys.readouterr().err, gone)
    with pytest.raises(UserError, match=gone):
        load_checkpoint(bad)


def test_compressed_model_shares_what_it_does_not_change(tiny):
    """No whole-model copy: the embedding, norms and head of the compressed model are the
    base's own buffers; only the compressed projections are new."""
    from hemorrhage.sim.compress import compress, make_method

    model, _ = load_checkpoint(tiny)
    small, _ = compress(model, make_method("magnitude", sparsity=0.5))
    same = lambda a, b: a[...].unsafe_buffer_pointer() == b[...].unsafe_buffer_pointer()  # noqa: E731
    assert same(model.embed.w, small.embed.w) and same(model.norm.w, small.norm.w)
    assert same(model.layers[0].norm1.w, small.layers[0].norm1.w)
    assert not same(model.layers[0].mlp.up.w, small.layers[0].mlp.up.w)  # pruned: a new array


def test_tensors_are_read_one_at_a_time(tiny, monkeypatch):
    """Each tensor read from the file is dropped before the next is read (the checkpoint is
    never held whole beside the model): at every read, no earlier read is still alive."""
    import gc
    import weakref

    from hemorrhage.sim.models import weights

    real, alive, worst = weights.read_tensor, [], [0]

    def counted(*a, **k):
        gc.collect()
        worst[0] = max(worst[0], sum(r() is not None for r in alive))
        t = real(*a, **k)
        alive.append(weakref.ref(t))
        return t

    monkeypatch.setattr(weights, "read_tensor", counted)
    load_checkpoint(tiny)
    assert len(alive) > 10 and worst[0] == 0
