"""Peak resident memory of `hemorrhage measure` as the OS reports it, against issue 29's target.

    python bench/bench_memory.py --measure-rss [--rss-models smollm2-135m:float32,...] [--json PATH]
                                 [-- extra measure flags]

Each case runs `hemorrhage measure --model M --dtype D --json` (default settings unless extra
flags follow `--`) in its own subprocess, one after the other, and reads that child's peak RSS
from the kernel (os.wait4's rusage: ru_maxrss, KiB on Linux): the whole process, libraries,
XLA's scratch and the allocator's retained pages included, as `/usr/bin/time -v` reports it.

    weight_bytes     the model's parameters in the dtype it is held in: Σ elements × itemsize
                     over the tensors the model loads (read from the safetensors headers, no
                     tensor read)
    target_bytes     2.5 × weight_bytes + 1.5 GB (1.5·10⁹ bytes): the issue's budget
    ratio_to_target  peak_rss_bytes / target_bytes (≤ 1: within the budget)

No test times or sizes this; the numbers go in bench/README.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

DEFAULT_CASES = (
    "smollm2-135m:float32",
    "qwen2.5-coder-0.5b:float32",
    "qwen2.5-coder-0.5b:bfloat16",
    "qwen2.5-coder-1.5b:bfloat16",
)
_ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}


def weight_bytes(model: str, dtype: str) -> int:
    """Bytes of the parameters the model loads, held in `dtype`, from the checkpoint's headers."""
    from hemorrhage.sim.models import ModelConfig
    from hemorrhage.sim.models.loader import FAMILY_MODULES
    from hemorrhage.sim.models.weights import held_dtype, weight_files
    from hemorrhage.sim.hub.preflight import safetensors_header
    from hemorrhage.sim.hub.registry import resolve

    path = resolve(model, quiet=True)
    held = held_dtype(path, dtype)
    shapes = {
        k: v["shape"] for f in weight_files(path) for k, v in safetensors_header(f).items() if k != "__metadata__"
    }
    cfg = ModelConfig.from_json_file(path / "config.json")
    _, names = FAMILY_MODULES[cfg.family]
    loaded = {theirs for theirs, *_ in names(cfg).values()}  # a fused tensor counts once
    n = sum(_prod(shapes[k]) for k in loaded if k in shapes)
    return n * _ITEMSIZE[held]


def _prod(shape) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def run_case(model: str, dtype: str, extra: list[str]) -> dict:
    """One `hemorrhage measure` in a child process; its peak RSS from the kernel."""
    exe = shutil.which("hemorrhage")
    cmd = ([exe] if exe else [sys.executable, "-m", "hemorrhage.cli"]) + [
        "measure",
        "--model",
        model,
        "--dtype",
        dtype,
        "--json",
        *extra,
    ]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read().decode(errors="replace")[-1500:]
    if proc.returncode:
        sys.exit(f"rss_measure: {model} {dtype} failed (exit {proc.returncode}):\n{tail}")
    w = weight_bytes(model, dtype)
    peak = int(usage.ru_maxrss) * 1024
    target = int(2.5 * w + 1.5e9)
    return {
        "model": model,
        "dtype": dtype,
        "measure_flags": list(extra),
        "weight_bytes": w,
        "peak_rss_bytes": peak,
        "target_bytes": target,
        "ratio_to_target": round(peak / target, 3),
        "peak_over_weights": round(peak / w, 2),
        "within_target": peak <= target,
    }


def _is_ours(path) -> bool:
    try:
        return json.loads(open(path).read()).get("bench") == "measure_rss"
    except (OSError, ValueError, AttributeError):
        return False


def main(cases: list[str], extra: list[str], json_path: str | None) -> None:
    from hemorrhage.sim.outputs import atomic_write_text, check_output_file

    if json_path:  # before the runs: a file of the user's is never replaced
        check_output_file(json_path, flag="--json", is_ours=_is_ours, what="measure_rss result")
    rows = []
    print(
        f"{'model':<22} {'dtype':<9} {'weights GB':>10} {'peak RSS GB':>11} {'target GB':>9} {'peak/target':>11}",
        file=sys.stderr,
    )
    for case in cases:
        model, _, dtype = case.partition(":")
        r = run_case(model, dtype or "auto", extra)
        rows.append(r)
        print(
            f"{model:<22} {r['dtype']:<9} {r['weight_bytes'] / 1e9:>10.2f} {r['peak_rss_bytes'] / 1e9:>11.2f} "
            f"{r['target_bytes'] / 1e9:>9.2f} {r['ratio_to_target']:>11.2f}",
            file=sys.stderr,
            flush=True,
        )
    res = {"bench": "measure_rss", "target": "2.5 x weight_bytes + 1.5e9", "cpu_threads": os.cpu_count(), "cases": rows}
    text = json.dumps(res, indent=2, sort_keys=True) + "\n"
    if json_path:
        atomic_write_text(json_path, text)
    print(text, end="")
