"""The CLI keeps XLA's compiled programs on disk (hemorrhage.cli.keep_compiled_programs)."""

import os
import subprocess
import sys

COMPILE = (
    "from hemorrhage.cli import keep_compiled_programs; keep_compiled_programs(); "
    "import jax, jax.numpy as jnp; jax.jit(lambda x: jnp.tanh(x @ x).sum())(jnp.ones((64, 64))).block_until_ready()"
)


def _run(tmp_path, **env):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
    base.pop("HEMORRHAGE_XLA_CACHE", None)
    env = {
        **base,
        "HEMORRHAGE_CACHE": str(tmp_path / "cache"),
        "JAX_PLATFORMS": "cpu",
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        **env,
    }
    proc = subprocess.run([sys.executable, "-c", COMPILE], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _entries(folder):
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_compiled_programs_go_to_the_cache_folder(tmp_path):
    _run(tmp_path)
    assert _entries(tmp_path / "cache" / "xla"), "no compiled program was written"


def test_cache_can_be_turned_off_or_moved(tmp_path):
    _run(tmp_path, HEMORRHAGE_XLA_CACHE="0")
    assert not _entries(tmp_path / "cache" / "xla")
    _run(tmp_path, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "elsewhere"))
    assert _entries(tmp_path / "elsewhere") and not _entries(tmp_path / "cache" / "xla")
