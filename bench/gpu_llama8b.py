"""GPU recipe: a random-weight Llama-3.1-8B in bf16, `measure` and `predict` at three settings,
the peak device memory of each beside `hemorrhage memory`'s plan.  One command, on one 80 GB GPU:

    pip install -e . "jax[cuda12]"        # the CUDA 12 wheels of jax (PyPI); torch stays CPU
    python bench/gpu_llama8b.py --out /tmp/llama8b

    python bench/gpu_llama8b.py --config tests/data/llama-tiny.json --out /tmp/t --dry-run   # CPU check

Steps:
  1. the checkpoint: tests/data/llama-3.1-8b.json's config, random bf16 weights written one
     safetensors shard at a time (a few blocks each, with model.safetensors.index.json): the host
     holds one tensor in fp32 at most (the embedding, 2.1 GB), never the model; the tokenizer is
     SmolLM2's (49 152 tokens < 128 256: every id it makes is a row of the embedding)
  2. per setting (windows × seqlen, prompts × new tokens) and command: `hemorrhage memory
     --target this` (the plan for this backend), then the command itself in a child process
     that reports the device's peak bytes in use (jax `Device.memory_stats()`; on a CPU, where
     JAX keeps none, the process's peak RSS, labelled so)
  3. a table: planned peak, measured peak, measured / planned

Never needed by tests or CI (tests/test_gpu_recipe.py runs the --dry-run path on a tiny config).
Random weights make every measured KL meaningless; only the memory columns are the point.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# (name, windows, seqlen, prompts, new tokens): the default, a longer and a wider one
SETTINGS = (("default", 4, 128, 8, 32), ("long", 4, 1024, 8, 64), ("wide", 16, 512, 32, 32))
DRY = (("dry", 2, 16, 1, 4),)
BLOCKS_PER_SHARD = 4


def write_checkpoint(config: Path, out: Path, tokenizer: str = "smollm2-135m", seed: int = 0) -> Path:
    """A Hugging Face folder at `out`: `config` with random bf16 weights, sharded, indexed."""
    import jax
    import ml_dtypes
    import numpy as np
    from flax import nnx
    from safetensors.numpy import save_file

    from hemorrhage.sim.abstract_bytes import abstract_model
    from hemorrhage.sim.models.config import ModelConfig
    from hemorrhage.sim.models.loader import FAMILY_MODULES
    from hemorrhage.sim.hub.registry import resolve

    hf = json.loads(Path(config).read_text())
    cfg = ModelConfig.from_hf(hf)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({**hf, "torch_dtype": "bfloat16"}, indent=2))
    tok = Path(tokenizer) if Path(tokenizer).is_dir() else resolve(tokenizer, quiet=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok / name, out / name)
    _, state = abstract_model(cfg, "bfloat16")
    shapes = {".".join(map(str, p)): tuple(v.get_value().shape) for p, v in nnx.to_flat_state(state)}
    rng = np.random.default_rng(seed)
    biggest = max(int(np.prod(v)) for v in shapes.values())
    pool = rng.standard_normal(min(1 << 24, biggest), dtype=np.float32)  # slices of one pool: fast, never a model
    groups: dict[int, list] = {}  # shard -> [(our name, HF name, transposed)]; -1: embedding, final norm, head
    for ours, (theirs, transposed, *_) in FAMILY_MODULES[cfg.family][1](cfg).items():
        block = int(ours.split(".")[1]) if ours.startswith("layers.") else -1
        groups.setdefault(block // BLOCKS_PER_SHARD if block >= 0 else -1, []).append((ours, theirs, transposed))
    weight_map = {}
    for i, key in enumerate(sorted(groups)):
        name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for ours, theirs, transposed in groups[key]:
            shape = shapes[ours][::-1] if transposed else shapes[ours]
            if len(shape) == 1:  # norm gains: 1 (a random gain would only rescale)
                t = np.ones(shape, np.float32)
            else:
                n = int(np.prod(shape))
                start = int(rng.integers(0, pool.size - min(n, pool.size) + 1))
                t = np.resize(pool[start : start + n], n).reshape(shape) * np.float32(shape[-1] ** -0.5)
            tensors[theirs] = t.astype(ml_dtypes.bfloat16)  # one fp32 tensor at a time
            del t
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
        del tensors  # this shard written: dropped before the next
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    jax.clear_caches()
    return out


def command_argv(command: str, folder: Path, setting: tuple) -> list[str]:
    """The hemorrhage command line of one setting (RTN 4-bit g128: a method every command takes)."""
    _, windows, seqlen, prompts, new = setting
    argv = [
        command,
        "--model",
        str(folder),
        "--dtype",
        "bfloat16",
        "--method",
        "rtn",
        "--bits",
        "4",
        "--group-size",
        "128",
        "--windows",
        str(windows),
        "--seqlen",
        str(seqlen),
        "--prompts",
        str(prompts),
        "--new-tokens",
        str(new),
        "--json",
    ]
    if command == "measure":
        argv += ["--mc-items", "8", "--no-steps"]
    return argv


def plan(command: str, folder: Path, setting: tuple) -> dict:
    _, windows, seqlen, prompts, new = setting
    argv = [
        sys.executable,
        "-m",
        "hemorrhage.cli",
        "memory",
        "--model",
        str(folder),
        "--dtype",
        "bfloat16",
        "--command",
        command,
        "--target",
        "this",
        "--windows",
        str(windows),
        "--seqlen",
        str(seqlen),
        "--prompts",
        str(prompts),
        "--new-tokens",
        str(new),
        "--json",
    ]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout)


def child(argv: list[str]) -> None:
    """Run one hemorrhage command here, then print the device's peak bytes in use."""
    import contextlib

    import jax

    from hemorrhage.cli import main

    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        code = main(argv)
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "code": code,
                "platform": jax.devices()[0].platform,
                "peak_bytes": peak if peak is not None else rss,
                "peak_source": "device memory_stats" if peak is not None else "process peak RSS (no device stats)",
            }
        )
    )


def measured(argv: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(argv)], capture_output=True, text=True)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "tests" / "data" / "llama-3.1-8b.json"))
    ap.add_argument("--out", default="/tmp/hemorrhage-llama8b", help="the random checkpoint's folder (rebuilt)")
    ap.add_argument("--tokenizer", default="smollm2-135m", help="registry name or folder with tokenizer.json")
    ap.add_argument("--commands", default="measure,predict")
    ap.add_argument("--dry-run", action="store_true", help="one tiny setting: the CPU check of this script")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return 0
    out = Path(args.out)
    if out.exists() and not (out / "model.safetensors.index.json").is_file():
        sys.exit(f"{out} exists and is not a checkpoint this script wrote: choose another --out")
    t0 = time.perf_counter()
    write_checkpoint(Path(args.config), out, args.tokenizer)
    print(f"checkpoint written in {time.perf_counter() - t0:.0f} s: {out}", flush=True)
    rows = []
    for setting in DRY if args.dry_run else SETTINGS:
        for command in args.commands.split(","):
            p = plan(command, out, setting)
            m = measured(command_argv(command, out, setting))
            rows.append(
                {
                    "setting": setting[0],
                    "command": command,
                    "planned": p.get("peak_bytes_per_device"),
                    "measured": m.get("peak_bytes"),
                    "source": m.get("peak_source"),
                    "error": p.get("error") or m.get("error"),
                }
            )
            r = rows[-1]
            ratio = r["measured"] / r["planned"] if r["planned"] and r["measured"] else float("nan")
            print(
                f"{setting[0]:8s} {command:8s} planned {_gb(r['planned'])}  measured {_gb(r['measured'])}  "
                f"measured/planned {ratio:.2f}  ({r['source'] or r['error']})  {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
    print(json.dumps(rows))
    return 0 if all(r["error"] is None for r in rows) else 1


def _gb(n) -> str:
    return "   n/a  " if n is None else f"{n / 1e9:6.2f} GB"


if __name__ == "__main__":
    sys.exit(main())
