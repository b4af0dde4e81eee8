"""HEMORRHAGE_XLA_SCHEDULE=memory: XLA:CPU decodes a compressed layer just before its matmul,
so a forward's temporaries hold one decoded layer instead of all of them (sim/xla_flags.py)."""

from __future__ import annotations

import os
import subprocess
import sys

# Ten layers whose weights are int8 codes decoded to fp32 inside the program, as PackedLinear
# does: one decoded layer is 4 MiB.
PROGRAM = """
import hemorrhage.sim  # sets XLA_FLAGS before the backend starts, when asked to
import jax, jax.numpy as jnp
def f(codes, x):
    for c in codes:
        x = jnp.tanh(x @ (c.astype(jnp.float32) * 0.1).T)
    return x
codes = [jnp.zeros((1024, 1024), jnp.int8) for _ in range(10)]
ma = jax.jit(f).lower(codes, jnp.zeros((8, 1024))).compile().memory_analysis()
print(ma.temp_size_in_bytes)
"""


def _temp_bytes(schedule: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "HEMORRHAGE_XLA_SCHEDULE")}
    if schedule:
        env["HEMORRHAGE_XLA_SCHEDULE"] = schedule
    out = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split()[-1])


def test_memory_first_schedule_holds_one_decoded_layer():
    layer = 1024 * 1024 * 4
    default, memory = _temp_bytes(None), _temp_bytes("memory")
    assert memory <= 2 * layer < default, (default, memory)


def test_the_users_own_flag_wins(monkeypatch):
    from hemorrhage.sim import xla_flags

    monkeypatch.setenv("HEMORRHAGE_XLA_SCHEDULE", "memory")
    monkeypatch.setenv("XLA_FLAGS", f"{xla_flags.FLAG}=true")
    assert not xla_flags.prefer_memory_first_schedule()
    assert os.environ["XLA_FLAGS"] == f"{xla_flags.FLAG}=true"
    monkeypatch.delenv("HEMORRHAGE_XLA_SCHEDULE")
    monkeypatch.setenv("XLA_FLAGS", "")
    assert not xla_flags.prefer_memory_first_schedule() and os.environ["XLA_FLAGS"] == ""
