"""The exported Hugging Face folder: transformers' logits equal hemorrhage's on the
compressed model (tiny llama, gemma3, gpt2 × magnitude 2:4, RTN 4-bit groups, layer drop)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from helpers import save_tiny_hf, torch_logits

from hemorrhage.errors import UserError
from hemorrhage.sim.compress import compress, export_hf, make_method
from hemorrhage.sim.generate import generate
from hemorrhage.sim.models import export_state, forward, load_checkpoint
from hemorrhage.sim.outputs import MARKER

FAMILIES = ["llama", "gemma3_text", "gpt2"]
METHODS = [
    ("magnitude", dict(pattern="2:4")),
    ("rtn", dict(bits=4, group_size=16)),
    ("drop", dict(part="block", layers="0,2")),
]  # attention-only drop: the generate test


@pytest.fixture(scope="module", params=FAMILIES)
def tiny_ckpt(request, tmp_path_factory):
    path = save_tiny_hf(request.param, tmp_path_factory.mktemp(request.param))
    model, cfg = load_checkpoint(path)
    return request.param, path, model, cfg


@pytest.mark.parametrize("method", METHODS, ids=lambda m: f"{m[0]}-{'-'.join(map(str, m[1].values()))}")
def test_transformers_runs_the_exported_model_exactly(tiny_ckpt, method, tmp_path):
    family, src, model, cfg = tiny_ckpt
    small, record = compress(model, make_method(method[0], **method[1]))
    out = export_hf(small, src, tmp_path / "out", record)
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    rec = json.loads((out / "hemorrhage_compression.json").read_text())
    assert rec["method"] == method[0] and "memory" in rec
    toks = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 20))
    ref = torch_logits(out, toks)
    ours = np.asarray(forward(small, jnp.asarray(toks)))
    before, after = export_state(model), export_state(small)
    assert any(not np.array_equal(before[k], after[k]) for k in before), "nothing changed: the test proves nothing"
    assert np.abs(ref).max() > 1.0
    assert np.abs(ours - ref).max() <= 1e-3


def test_dropped_layers_generate_like_transformers(tiny_ckpt, tmp_path):
    """Greedy decoding with the KV cache (passed through the dropped attention) matches."""
    from transformers import AutoModelForCausalLM

    family, src, model, cfg = tiny_ckpt
    small, record = compress(model, make_method("drop", part="attn", layers="0"))
    out = export_hf(small, src, tmp_path / "out", record)
    prompt = np.random.default_rng(2).integers(0, cfg.vocab_size, (1, 5))
    ref = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    with torch.no_grad():
        want = ref.generate(
            torch.as_tensor(prompt), max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0
        )[0, 5:].numpy()
    np.testing.assert_array_equal(np.asarray(generate(small, jnp.asarray(prompt), 8))[0], want)


def test_export_is_atomic_and_replaces(tmp_path):
    src = save_tiny_hf("llama", tmp_path / "src")
    model, cfg = load_checkpoint(src)
    small, record = compress(model, make_method("magnitude", sparsity=0.5))
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with pytest.raises(UserError, match="--overwrite"):  # the user's file, in a folder we did not write
        export_hf(small, src, out, record)
    assert (out / "stale.txt").read_text() == "old"
    # an earlier export of ours wrote stale.txt (its marker says so): this one no longer does
    (out / MARKER).write_text(json.dumps({"written_by": "hemorrhage", "files": ["stale.txt"]}))
    export_hf(small, src, out, record)
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # no temporary folder left behind
    reloaded, _ = load_checkpoint(out)
    toks = jnp.asarray(np.random.default_rng(3).integers(0, cfg.vocab_size, (1, 12)))
    np.testing.assert_allclose(np.asarray(forward(reloaded, toks)), np.asarray(forward(small, toks)), atol=1e-5)
