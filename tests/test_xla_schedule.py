"""XLA:CPU's memory-first scheduler (sim/xla_flags.py): with HEMORRHAGE_XLA_SCHEDULE=memory a
compressed layer is decoded just before its matmul, and for a model held in bf16 (the `auto`
default) each weight is up-cast just before its matmul, so a forward's temporaries hold one
layer's fp32 weights instead of all of them."""

from __future__ import annotations

import os
import subprocess
import sys

# Ten layers whose weights are int8 codes decoded to fp32 inside the program, as PackedLinear
# does: one decoded layer is 4 MiB.
PROGRAM = """
import sys
import hemorrhage.sim  # sets XLA_FLAGS before the backend starts, when asked to
from hemorrhage.sim.xla_flags import prefer_memory_first_schedule
prefer_memory_first_schedule(sys.argv[1] if len(sys.argv) > 1 else None)  # as the CLI does, knowing the dtype
import jax, jax.numpy as jnp
def f(codes, x):
    for c in codes:
        x = jnp.tanh(x @ (c.astype(jnp.float32) * 0.1).T)
    return x
codes = [jnp.zeros((1024, 1024), jnp.int8) for _ in range(10)]
ma = jax.jit(f).lower(codes, jnp.zeros((8, 1024))).compile().memory_analysis()
print(ma.temp_size_in_bytes)
"""

# Ten bf16 layers, bf16 activations: XLA:CPU converts both operands of every matmul to fp32.
PROGRAM_BF16 = (
    PROGRAM.replace("jnp.int8", "jnp.bfloat16")
    .replace("(c.astype(jnp.float32) * 0.1)", "c")
    .replace("jnp.zeros((8, 1024))", "jnp.zeros((8, 1024), jnp.bfloat16)")
)

# The same layers applied at every step of a loop, as token-by-token decoding does.
PROGRAM_BF16_LOOP = PROGRAM_BF16.replace("def f(codes, x):", "def g(codes, x):").replace(
    "ma = jax.jit(f)",
    "f = lambda codes, x: jax.lax.fori_loop(0, 4, lambda i, y: g(codes, y), x)\nma = jax.jit(f)",
)


def _temp_bytes(schedule: str | None, program: str = PROGRAM, held: str | None = None) -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "HEMORRHAGE_XLA_SCHEDULE")}
    if schedule:
        env["HEMORRHAGE_XLA_SCHEDULE"] = schedule
    argv = [sys.executable, "-c", program] + ([held] if held else [])
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
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


def test_a_bf16_model_up_casts_one_layer_at_a_time_by_default():
    layer_fp32 = 1024 * 1024 * 4
    concurrency = _temp_bytes("concurrency", PROGRAM_BF16, "bfloat16")
    auto = _temp_bytes(None, PROGRAM_BF16, "bfloat16")
    assert auto <= 2 * layer_fp32 < 5 * layer_fp32 <= concurrency, (auto, concurrency)
    assert _temp_bytes(None, PROGRAM_BF16, "float32") == concurrency  # fp32 models keep the default
    in_loop = _temp_bytes(None, PROGRAM_BF16_LOOP, "bfloat16")
    assert in_loop <= 2 * layer_fp32 < 5 * layer_fp32 <= _temp_bytes("concurrency", PROGRAM_BF16_LOOP, "bfloat16")


def test_the_cli_reads_the_held_dtype(monkeypatch, tmp_path):
    from argparse import Namespace

    from hemorrhage.commands.common import schedule_for_held_dtype
    from hemorrhage.sim import xla_flags

    monkeypatch.delenv("HEMORRHAGE_XLA_SCHEDULE", raising=False)
    monkeypatch.setattr(xla_flags, "_jaxlib_version", lambda: (9, 9))
    monkeypatch.setattr(xla_flags, "_backend_started", lambda: False)  # this worker's has
    import torch
    from safetensors.torch import save_file

    bf16 = tmp_path / "bf16"
    bf16.mkdir()
    save_file({"w": torch.zeros(2, 2, dtype=torch.bfloat16)}, str(bf16 / "model.safetensors"))
    for args, added in [
        (Namespace(model="smollm2-135m", dtype="auto"), False),  # registry models are stored fp32
        (Namespace(model="smollm2-135m", dtype="float32"), False),
        (Namespace(model=str(tmp_path / "missing"), dtype="auto"), False),  # the command reports it
        (Namespace(model="smollm2-135m"), False),  # a command without --dtype
        (Namespace(model="smollm2-135m", dtype="bfloat16"), True),
        (Namespace(model=str(bf16), dtype="auto"), True),  # a local folder stored in bf16
        (Namespace(model="smollm2-135m", dtype="float16"), True),
    ]:
        monkeypatch.setenv("XLA_FLAGS", "")
        assert schedule_for_held_dtype(args) is added, args
        assert (xla_flags.FLAG in os.environ["XLA_FLAGS"]) is added
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("HEMORRHAGE_XLA_SCHEDULE", "concurrency")
    assert not schedule_for_held_dtype(Namespace(model="smollm2-135m", dtype="bfloat16"))
    # once JAX runs, a flag would act only on subprocesses: none is added
    monkeypatch.delenv("HEMORRHAGE_XLA_SCHEDULE")
    monkeypatch.undo()
    import jax.numpy as jnp

    jnp.zeros(1).block_until_ready()
    before = os.environ.get("XLA_FLAGS")
    assert not xla_flags.prefer_memory_first_schedule("bfloat16") and os.environ.get("XLA_FLAGS") == before
