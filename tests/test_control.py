"""The clean fp32 control model: quick mode on the packaged real text, HF round trip, registry."""

import hashlib
import json
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from hemorrhage.cli import main


def _sha(path):
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


# --quick's tiny model trained 20× its default 40 steps: long enough to learn the text well
# (the control claim below), ≈20 s on two idle cores
QUICK_STEPS = 800


@pytest.fixture(scope="module")
def quick_control(tmp_path_factory):
    """`hemorrhage train-control --quick --steps QUICK_STEPS` into a temporary folder."""
    out = tmp_path_factory.mktemp("control") / "quick"
    code = main(
        ["train-control", "--quick", "--steps", str(QUICK_STEPS), "--out", str(out), "--minutes", "0", "--json"]
    )
    assert code == 0
    return out


def test_quick_control_learns_and_reports(quick_control):
    rep = json.loads((quick_control / "hemorrhage.json").read_text())
    curve = [c["loss"] for c in rep["loss_curve"]]
    # starts at the uniform guess log V, and training takes it well below
    assert curve[0] == pytest.approx(np.log(rep["spec"]["vocab_size"]), abs=0.3)
    assert curve[-1] < curve[0] - 0.8 and all(np.isfinite(curve))
    for src in ("wiki", "shakespeare"):
        h = rep["heldout"][src]
        assert np.isfinite(h["ppl"]) and h["ppl"] < rep["spec"]["vocab_size"] and h["unigram_ppl"] > 1
    assert rep["base_note"].startswith("clean fp32, trained by hemorrhage train-control (seed 0")
    assert rep["reproduce"] == f"hemorrhage train-control --seed 0 --steps {rep['steps']} --minutes 0 --quick"
    assert rep["samples"] and isinstance(rep["samples"][0]["greedy"], str)
    # no wall-clock numbers in the stored metadata: the same training writes the same file
    assert "timings" not in rep and not [k for k in rep if "seconds" in k]
    assert not [c for c in rep["loss_curve"] if "seconds" in c]


def test_budget_cut_run_is_reproduced_by_its_step_count(tmp_path):
    """A wall-clock budget only picks the step count (before the rate decays), so a fixed run of
    that many steps with the same seed gives the same bytes: deterministic from the seed."""
    from hemorrhage.sim import train

    spec = train.QUICK.replace(steps=12)
    cut = train.train_control(spec, seed=0, out_dir=tmp_path / "cut", minutes=0.01, quiet=True, evaluate=False)
    assert 5 < cut["steps"] < 12  # the budget was spent at once: the decay started as soon as it could
    again = train.train_control(
        spec.replace(steps=cut["steps"]), seed=0, out_dir=tmp_path / "again", quiet=True, evaluate=False
    )
    assert again["steps"] == cut["steps"] and _sha(tmp_path / "cut") == _sha(tmp_path / "again")
    assert (tmp_path / "cut" / "tokenizer.json").read_text() == (tmp_path / "again" / "tokenizer.json").read_text()
    prov = json.loads((tmp_path / "cut" / "hemorrhage.json").read_text())
    assert prov["reproduce"] == f"hemorrhage train-control --seed 0 --steps {cut['steps']} --minutes 0 --quick"


def test_transformers_loads_the_control_and_agrees(quick_control):
    """A standard HF folder: transformers' PyTorch logits equal ours, tokenizers agree."""
    import jax.numpy as jnp
    import transformers

    from helpers import torch_logits
    from hemorrhage.sim import load
    from hemorrhage.sim.windows import eval_windows
    from hemorrhage.sim.models import forward

    loaded = load(str(quick_control))
    assert "clean fp32" in loaded.base_note and loaded.cfg.family == "llama" and loaded.cfg.tie_embeddings
    tokens = eval_windows(loaded.tokenizer, "wiki", seqlen=32, stride=32, max_windows=2)
    ours = np.asarray(forward(loaded.model, jnp.asarray(tokens)))
    theirs = torch_logits(quick_control, tokens)
    assert np.max(np.abs(ours - theirs)) <= 1e-3
    assert np.max(np.abs(ours)) > 1.0  # trained, not flat logits
    tok = transformers.AutoTokenizer.from_pretrained(str(quick_control), local_files_only=True)
    text = "To be, or not to be: that is the question. Anarchism is a political philosophy"
    assert tok(text, add_special_tokens=False).input_ids == loaded.tokenizer(text).input_ids
    assert tok.decode(tok(text).input_ids) == text and tok.eos_token == tok.bos_token == "<|endoftext|>"


def test_registry_resolves_control_from_the_cache(quick_control, tmp_path, monkeypatch, capsys):
    """`--model control` is the cached folder (no training when it is there)."""
    from hemorrhage.sim import load
    from hemorrhage.sim.hub.registry import resolve

    monkeypatch.setenv("HEMORRHAGE_CACHE", str(tmp_path))
    shutil.copytree(quick_control, tmp_path / "models" / "control")
    assert resolve("control") == tmp_path / "models" / "control"
    assert "clean fp32" in load("control").base_note
    code = main(["generate", "--model", "control", "--prompt", "The history of", "--max-new-tokens", "4"])
    assert code == 0 and capsys.readouterr().out.startswith("The history of")
    # train-control finds it cached and only reports it
    code = main(["train-control", "--out", str(tmp_path / "models" / "control"), "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["cached"] is True


def test_train_control_bad_input(capsys, tmp_path):
    (tmp_path / "junk.txt").write_text("x")
    for argv, needle in [
        (["--steps", "0"], "--steps"),
        (["--seed", "-1"], "--seed"),
        (["--out", str(tmp_path)], "not a control model folder"),
    ]:
        assert main(["train-control", "--quick", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err


def test_control_far_better_than_unigram(quick_control):
    """The control claim (README: held-out perplexity far below a unigram model's on both texts),
    on a control CI can train: the recipe at --quick's size, QUICK_STEPS steps (the default
    1200-step control takes 15–27 min).  It at least halves the unigram perplexity on both
    held-out texts; the default spec it scales down is a 2–20 M-parameter model; and the
    default control, where this cache holds one, is under 0.4 of the unigram perplexity."""
    from hemorrhage.sim import train
    from hemorrhage.sim.models import ModelConfig

    rep = json.loads((quick_control / "hemorrhage.json").read_text())
    assert rep["steps"] == QUICK_STEPS
    for src in ("wiki", "shakespeare"):
        h = rep["heldout"][src]
        assert h["ppl"] * 2 <= h["unigram_ppl"] and h["ratio_to_unigram"] == pytest.approx(h["ppl"] / h["unigram_ppl"])
    spec = train.ControlSpec()  # its size, from the model it builds (untrained: no 4096-token BPE fitted)
    tok = train.train_tokenizer({"wiki": "a b c", "shakespeare": "a b c"}, 300)
    model = train.init_model(ModelConfig.from_hf(train.hf_config(spec, tok)), seed=0)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert 2e6 <= n_params <= 2e7
    full = train.control_path()
    if train.is_trained(full):
        rep = json.loads((full / "hemorrhage.json").read_text())
        assert rep["n_params"] == n_params
        for src in ("wiki", "shakespeare"):
            assert rep["heldout"][src]["ratio_to_unigram"] < 0.4, rep["heldout"]
