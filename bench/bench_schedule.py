"""XLA's CPU scheduler against the compressed forward: memory-first vs concurrency-first.

    python bench/bench_schedule.py [--model smollm2-135m] [--dtype auto] [--rounds 3] [--json PATH]

XLA's CPU compiler orders a program's instructions with its concurrency-optimized
scheduler unless `--xla_cpu_enable_concurrency_optimized_scheduler=false` is in XLA_FLAGS.
That scheduler starts independent work early: in a packed or N:M model the decode of every
layer's weights depends only on the parameters, so it runs all of them first and holds every
decoded layer at once (the forward's temporaries ≈ all linear weights in fp32). The
memory-first scheduler decodes each layer just before its matmul. hemorrhage asks for the
memory-first one (with loop-invariant code motion off) for models held in bf16/fp16, and
otherwise only with HEMORRHAGE_XLA_SCHEDULE=memory (sim/xla_flags.py); this bench measures
what it costs and saves (--dtype bfloat16 for the first case).

Each (round, schedule, variant) runs bench_memory.py's child in its own process with the
flag set explicitly either way; rounds interleave the two schedules so machine load hits
both alike. Printed: per variant, the median over rounds of XLA's temporaries, prefill and
decode tokens/s under each schedule, and memory-first / concurrency-first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"
# memory-first as sim/xla_flags.py asks for it: the scheduler and no loop-invariant code motion
SCHEDULES = {
    "concurrency": f"{FLAG}=true",
    "memory": f"{FLAG}=false --xla_disable_hlo_passes=while-loop-invariant-code-motion",
}
VARIANTS = ("dense", "rtn4", "nm24")  # bench_memory.VARIANTS
KEYS = ("xla_temp_bytes", "prefill_tok_s", "decode_tok_s", "compile_s")


def run_child(variant: str, schedule: str, args) -> dict:
    env = {
        **os.environ,
        "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " " + SCHEDULES[schedule]).strip(),
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [
        sys.executable,
        str(HERE / "bench_memory.py"),
        "--variant",
        variant,
        "--model",
        args.model,
        "--dtype",
        args.dtype,
        "--batch",
        str(args.batch),
        "--seqlen",
        str(args.seqlen),
        "--new",
        str(args.new),
        "--repeats",
        str(args.repeats),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"bench_schedule: {variant} under {schedule} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="auto", help="the dtype the model is held in (auto: as stored)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args()
    runs: dict[str, dict[str, list[dict]]] = {v: {s: [] for s in SCHEDULES} for v in VARIANTS}
    for r in range(args.rounds):
        order = list(SCHEDULES) if r % 2 == 0 else list(SCHEDULES)[::-1]
        for schedule in order:
            for variant in VARIANTS:
                runs[variant][schedule].append(run_child(variant, schedule, args))
                print(f"round {r} {schedule:<11} {variant}: done", file=sys.stderr, flush=True)
    table = {}
    for variant, by_sched in runs.items():
        med = {s: {k: statistics.median(row[k] for row in rows) for k in KEYS} for s, rows in by_sched.items()}
        table[variant] = {
            "median": med,
            "memory_over_concurrency": {
                k: med["memory"][k] / med["concurrency"][k] if med["concurrency"][k] else None for k in KEYS
            },
        }
    res = {
        "model": args.model,
        "dtype": args.dtype,
        "rounds": args.rounds,
        "cpu_threads": os.cpu_count(),
        "load_avg_1m_end": round(os.getloadavg()[0], 2),
        "variants": table,
        "runs": runs,
    }
    text = json.dumps(res, indent=2)
    if args.json_path:
        tmp = Path(args.json_path + ".tmp")
        tmp.write_text(text)
        tmp.replace(args.json_path)
    print(text)
    print(
        f"{'variant':<6} {'schedule':<11} {'temp MiB':>9} {'prefill tok/s':>13} {'decode tok/s':>12} {'compile s':>9}",
        file=sys.stderr,
    )
    for variant, t in table.items():
        for s in SCHEDULES:
            m = t["median"][s]
            print(
                f"{variant:<6} {s:<11} {m['xla_temp_bytes'] / 2**20:>9.1f} {m['prefill_tok_s']:>13.0f} "
                f"{m['decode_tok_s']:>12.1f} {m['compile_s']:>9.2f}",
                file=sys.stderr,
            )
        ratio = t["memory_over_concurrency"]
        print(
            f"{variant:<6} {'mem/conc':<11} {ratio['xla_temp_bytes']:>9.3f} {ratio['prefill_tok_s']:>13.2f} "
            f"{ratio['decode_tok_s']:>12.2f} {ratio['compile_s']:>9.2f}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
