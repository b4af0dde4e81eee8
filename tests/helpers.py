"""Tiny random Hugging Face checkpoints of every family, saved by transformers itself."""

from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, settings

# few examples, no deadline, no database: the fuzz files stay near a minute on two cores
FEW_EXAMPLES = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def save_tiny_hf(model_type: str, out: Path, seed: int = 0, **overrides) -> Path:
    """A random transformers model of `model_type`, with weights scaled up so logits are
    O(1–10) (the default init gives logits ≈ 0, which would make equality trivial)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from hemorrhage.sim.models import tiny

    cfg = AutoConfig.for_model(**tiny(model_type, **overrides))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.mul_(8.0)
            else:  # norms and biases: move them off their init so a wrong convention shows
                p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(str(out))
    return out


def save_tiny_hf_with_tokenizer(model_type: str, out: Path, seed: int = 0, **overrides) -> Path:
    """`save_tiny_hf` with a working tokenizer beside it (a byte-level BPE of 300 tokens fitted on
    two sentences, vocab_size to match), so a command on it gets past loading into the run:
    whatever it rejects is rejected by the check under test, not by a missing tokenizer."""
    from hemorrhage.sim.control_data import train_tokenizer

    text = "The capital of France is Paris. To be, or not to be: that is the question. " * 4
    save_tiny_hf(model_type, out, seed, **{"vocab_size": 300, **overrides})
    train_tokenizer({"wiki": text, "shakespeare": text}, vocab_size=300).save_pretrained(str(out))
    return out


def save_tiny_hf_with_smollm2_tokenizer(out: Path, **overrides) -> Path:
    """save_tiny_hf("llama") at SmolLM2's vocabulary with its tokenizer files (fetched once)."""
    import shutil

    from hemorrhage.sim.hub.registry import fetch_model

    save_tiny_hf("llama", out, **{"vocab_size": 49152, **overrides})
    src = fetch_model("smollm2-135m", quiet=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, out / name)
    return out


def once_per_run(tmp_path_factory, name: str, compute) -> dict:
    """`compute(folder)` (a JSON-able dict) run once per pytest run.  pytest-xdist may split a
    module over its workers, and each would run the module's fixture again (a costly one twice):
    the first worker computes under a file lock in the run's shared temporary folder, the others
    read what it wrote."""
    import fcntl
    import json
    import os

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # gw0, gw1 sit side by side
    done = shared / name / "result.json"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if compute fails
        if done.is_file():
            return json.loads(done.read_text())
        done.parent.mkdir(exist_ok=True)
        result = compute(done.parent)
        done.write_text(json.dumps(result))
        return result


def torch_logits(path: Path, tokens: np.ndarray) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()


def assert_one_line_error(code: int, err: str, *needles: str, prefix: str | None = None) -> None:
    """A user mistake: non-zero exit, one line on stderr (no traceback) holding each needle.
    A first use may print "[hemorrhage] fetching X from PyPI" first: progress, not the error."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith("[hemorrhage] fetching ")]
    assert code != 0, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert prefix is None or lines[0].startswith(prefix), err
    for n in needles:
        assert n in lines[0], lines[0]


def run_cli_err(capsys, argv) -> tuple[int, str]:
    """`hemorrhage ARGV` in this process: (exit code, stderr).  Anything but a UserError
    propagates, so a crash fails the calling test."""
    from hemorrhage.cli import main

    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().err


def assert_cli_error(code: int, err: str) -> None:
    """One line on stderr, as the CLI prints a UserError."""
    assert_one_line_error(code, err, prefix="hemorrhage: error:")
