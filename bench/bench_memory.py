"""Memory and speed of compressed storage vs the dense model, measured in the same run.

    python bench/bench_memory.py [--model smollm2-135m] [--batch 4] [--seqlen 128] [--new 32]
    python bench/bench_memory.py --measure-rss [--json PATH]   (bench/rss_measure.py: issue 29's budget)

Variants: `dense` (fp32 Linear), `rtn4` (rtn bits=4 group_size=64: PackedLinear, two 4-bit
codes a byte + fp32 scale/zero per 64 weights) and `nm24` (magnitude pattern=2:4:
NMSparseLinear, the 2 kept fp32 values of every 4 inputs + a uint8 position each).  Each
variant runs in its OWN subprocess (fresh allocator, so resident sizes do not mix), which
loads the dense base, compresses it, drops the dense copy and then reports:

    linear_bytes     bytes of the blocks' linear weights as stored (memory_report), and
                     ratio_vs_fp32 — what the storage format costs per weight
    weight_bytes     every array of the model (embedding, norms, codes, scales...): what sits
                     in device memory between calls
    xla_args/temp    XLA's own memory analysis of the compiled forward (compiled.memory_analysis()):
                     argument bytes and the scratch (temp) it allocates — a packed layer is
                     decoded to fp32 inside the jit, and this is where that shows
    rss_mb           process resident set after compression, gc and the timed runs, minus the
                     same process before the model was loaded (libraries, XLA client): on a CPU
                     the allocator keeps freed pages and XLA's scratch, so it is an upper bound;
                     peak_rss_mb (whole process) includes the dense model loaded first
    prefill_tok_s    tokens/s of the jitted forward, batch × seqlen, best of --repeats
    decode_tok_s     tokens/s of KV-cache greedy decode, batch 1 × --new tokens

Ratios are against `dense` from the same run.  On a CPU the compressed formats are decoded
to fp32 for every matmul (no int4 / sparse kernels), so they save memory between calls and
cost time; on an accelerator with fused dequantizing kernels the time ratio differs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import rss_measure
from bench_speed import best_of  # run as `python bench/bench_memory.py`: bench/ is on sys.path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VARIANTS = {
    "dense": ("none", {}),
    "rtn4": ("rtn", {"bits": 4, "group_size": 64}),
    "nm24": ("magnitude", {"pattern": "2:4"}),
}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(args) -> dict:
    """One variant, in this process: compress, then measure bytes and speed."""
    import gc

    import jax
    import jax.numpy as jnp
    import numpy as np
    import transformers  # noqa: F401  (the tokenizer's library: part of the baseline, not of the model)
    from flax import nnx

    from hemorrhage.sim import load
    from hemorrhage.sim.compress import compress, make_method, memory_report
    from hemorrhage.sim.windows import eval_windows
    from hemorrhage.sim.generate import generate

    jnp.zeros(1).block_until_ready()  # the XLA client itself, before any weight exists
    rss0 = _rss_mb()
    loaded = load(args.model, quiet=True, dtype=args.dtype)
    tokens = np.asarray(
        eval_windows(loaded.tokenizer, "wiki", seqlen=args.seqlen, stride=args.seqlen, max_windows=args.batch)
    )
    method, settings = VARIANTS[args.variant]
    if args.variant == "dense":
        model = loaded.model
    else:
        model, _ = compress(loaded.model, make_method(method, **settings))
        loaded.model = None  # the dense copy goes: only the compressed model stays resident
    del loaded
    gc.collect()
    arrays = [v.get_value() for _, v in nnx.to_flat_state(nnx.state(model)) if isinstance(v.get_value(), jax.Array)]
    mem = memory_report(model)
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)[0])
    x = jnp.asarray(tokens)
    t = time.perf_counter()
    compiled = fwd.lower(state, x).compile()
    compile_s = time.perf_counter() - t
    ma = compiled.memory_analysis()
    compiled(state, x).block_until_ready()
    prefill = best_of(lambda: compiled(state, x).block_until_ready(), args.repeats)
    prompt = jnp.asarray(tokens[:1, :16])
    generate(model, prompt, args.new).block_until_ready()  # compile
    decode = best_of(lambda: generate(model, prompt, args.new).block_until_ready(), args.repeats)
    return {
        "variant": args.variant,
        "method": method,
        "settings": settings,
        "linear_bytes": mem["bytes"],
        "linear_fp32_bytes": mem["fp32_bytes"],
        "ratio_vs_fp32": mem["ratio"],
        "weight_bytes": int(sum(a.nbytes for a in arrays)),
        "xla_argument_bytes": None if ma is None else int(ma.argument_size_in_bytes),
        "xla_temp_bytes": None if ma is None else int(ma.temp_size_in_bytes),
        "xla_output_bytes": None if ma is None else int(ma.output_size_in_bytes),
        "rss_mb": round(_rss_mb() - rss0, 1),
        "rss_baseline_mb": round(rss0, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "prefill_tok_s": tokens.size / prefill,
        "decode_tok_s": args.new / decode,
        "compile_s": round(compile_s, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="auto", help="the dtype the model is held in (auto: as stored)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)  # the child's job
    ap.add_argument(
        "--measure-rss",
        action="store_true",
        help="instead: peak RSS of `hemorrhage measure` per model:dtype vs 2.5 x weights + 1.5 GB "
        "(bench/rss_measure.py); flags after `--` go to measure",
    )
    ap.add_argument(
        "--rss-models",
        default=",".join(rss_measure.DEFAULT_CASES),
        help="--measure-rss cases, comma-separated model:dtype",
    )
    ap.add_argument("--json", dest="json_path", help="--measure-rss: also write the result to this file")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = ap.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if args.measure_rss:
        rss_measure.main([c for c in args.rss_models.split(",") if c], extra, args.json_path)
        return
    if args.variant:
        print(json.dumps(child(args)))
        return
    rows = {}
    for name in VARIANTS:  # one fresh process each, one after the other (no two share the cores)
        cmd = [
            sys.executable,
            __file__,
            "--variant",
            name,
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
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"bench_memory: {name} failed:\n{proc.stderr[-2000:]}")
        rows[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    dense = rows["dense"]
    for r in rows.values():
        r["vs_dense"] = {
            k: (r[k] / dense[k] if dense.get(k) else None)
            for k in (
                "linear_bytes",
                "weight_bytes",
                "xla_argument_bytes",
                "xla_temp_bytes",
                "rss_mb",
                "prefill_tok_s",
                "decode_tok_s",
            )
        }
    res = {
        "model": args.model,
        "cpu_threads": os.cpu_count(),
        "batch": args.batch,
        "seqlen": args.seqlen,
        "new_tokens": args.new,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "variants": rows,
    }
    print(json.dumps(res, indent=2))
    print(
        f"{'variant':<6} {'linear MiB':>10} {'×fp32':>6} {'weights MiB':>11} {'×dense':>6} {'XLA temp MiB':>12} "
        f"{'RSS MiB':>8} {'prefill tok/s':>13} {'×dense':>6} {'decode tok/s':>12} {'×dense':>6}",
        file=sys.stderr,
    )
    for n, r in rows.items():
        v = r["vs_dense"]
        print(
            f"{n:<6} {r['linear_bytes'] / 2**20:>10.1f} {r['ratio_vs_fp32']:>6.3f} "
            f"{r['weight_bytes'] / 2**20:>11.1f} {v['weight_bytes']:>6.3f} {(r['xla_temp_bytes'] or 0) / 2**20:>12.1f} {r['rss_mb']:>8.0f} "
            f"{r['prefill_tok_s']:>13.0f} {v['prefill_tok_s']:>6.2f} {r['decode_tok_s']:>12.1f} "
            f"{v['decode_tok_s']:>6.2f}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
