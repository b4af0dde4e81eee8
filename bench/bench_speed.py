"""JAX (jitted) vs transformers' PyTorch on the same model, same CPU threads.

    python bench/bench_speed.py [--model smollm2-135m] [--batch 8] [--seqlen 256] [--new 128]

Prints tokens/s of each and the ratio JAX / torch, measured in this run:
  prefill  batch × seqlen tokens through the full forward (targets: ≥ 1.5×)
  decode   batch 1, `new` greedy tokens with a KV cache vs `generate` (target: ≥ 1.0×)
Compile time is reported separately and excluded from the steady-state rate.

Scanned blocks (sim/models/scan.py) against the unrolled loop (`scan_layers = False`), same run:
  compile_s_prefill / compile_s_decode   {model: {scan, unrolled, ratio}}: first call minus a warm
                                         call, forward [1 64] and generate 16 + 32 (target ratio ≤ 1/5)
  compile_depth_ratio                    compile of a tiny config with 32 layers over the same with 2
                                         (scanned; target ≤ 1.5), and the unrolled ratio beside it
  scan_steady                            warm prefill / decode time unrolled over scanned (stacking the
                                         layer weights per call costs what), XLA temp bytes of each

    python bench/bench_speed.py --json out.json [--compile-models smollm2-135m,gemma3-270m]
"""

from __future__ import annotations

import argparse
import json
import os
import time


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument(
        "--compile-models",
        default="smollm2-135m,gemma3-270m",
        help="models whose compile time is compared scanned vs unrolled (empty: none)",
    )
    ap.add_argument("--compile-only", action="store_true", help="skip the torch throughput comparison")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import jax
    import torch

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    res = {
        "model": args.model,
        "cpu_threads": threads,
        "jax": jax.__version__,
        "torch": torch.__version__,
        "device": str(jax.devices()[0]),
    }
    res.update(compile_figures([m for m in args.compile_models.split(",") if m], args.repeats))
    if not args.compile_only:
        res.update(throughput(args, threads))
    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2, sort_keys=True)


def _first_and_warm(fn, repeats: int) -> tuple[float, float]:
    """(compile seconds = first call − best warm call, best warm call)."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    warm = best_of(fn, repeats)
    return max(first - warm, 0.0), warm


def _temp_bytes(model, x) -> int:
    import jax
    from flax import nnx

    gd, state = nnx.split(model)
    f = jax.jit(lambda st, t: nnx.merge(gd, st)(t)[0])
    return int(f.lower(state, x).compile().memory_analysis().temp_size_in_bytes)


def compile_figures(models: list[str], repeats: int) -> dict:
    import jax.numpy as jnp
    import numpy as np

    from hemorrhage.sim import load
    from hemorrhage.sim.generate import generate
    from hemorrhage.sim.models import ModelConfig, build, forward, tiny

    x = jnp.asarray(np.random.default_rng(0).integers(0, 1000, (1, 64)), jnp.int32)
    prefill, decode, steady = {}, {}, {}
    for name in models:
        model = load(name, quiet=True).model
        row_p, row_d, row_s = {}, {}, {}
        for path, scan_on in (("scan", True), ("unrolled", False)):
            model.scan_layers = scan_on
            row_p[path], warm_p = _first_and_warm(lambda: forward(model, x).block_until_ready(), repeats)
            row_d[path], warm_d = _first_and_warm(lambda: generate(model, x[:, :16], 32).block_until_ready(), repeats)
            row_s[f"{path}_prefill_s"], row_s[f"{path}_decode_s"] = warm_p, warm_d
            row_s[f"{path}_temp_bytes"] = _temp_bytes(model, x)
        model.scan_layers = True
        for row in (row_p, row_d):
            row["ratio"] = row["scan"] / row["unrolled"]
        row_s["prefill_unrolled_over_scan"] = row_s["unrolled_prefill_s"] / row_s["scan_prefill_s"]
        row_s["decode_unrolled_over_scan"] = row_s["unrolled_decode_s"] / row_s["scan_decode_s"]
        prefill[name], decode[name], steady[name] = row_p, row_d, row_s
        del model

    depth = {}
    xt = jnp.asarray(np.random.default_rng(0).integers(0, 97, (1, 16)), jnp.int32)
    for path, scan_on in (("scan", True), ("unrolled", False)):
        times = {}
        for n in (2, 32):
            model = build(
                ModelConfig.from_hf(tiny("llama", num_hidden_layers=n, hidden_size=64, intermediate_size=128))
            )
            model.scan_layers = scan_on
            times[n] = _first_and_warm(lambda: forward(model, xt).block_until_ready(), repeats)[0]
        depth[path] = times[32] / times[2]
    return {
        "compile_s_prefill": prefill,
        "compile_s_decode": decode,
        "scan_steady": steady,
        "compile_depth_ratio": depth["scan"],
        "compile_depth_ratio_unrolled": depth["unrolled"],
    }


def throughput(args, threads: int) -> dict:
    import jax.numpy as jnp
    import numpy as np
    import torch

    from hemorrhage.sim import load
    from hemorrhage.sim.windows import eval_windows
    from hemorrhage.sim.generate import generate
    from hemorrhage.sim.models import forward
    from hemorrhage.validate.check import torch_reference

    loaded = load(args.model, quiet=True)
    ref = torch_reference(loaded.path)
    tokens = np.asarray(
        eval_windows(loaded.tokenizer, "wiki", seqlen=args.seqlen, stride=args.seqlen, max_windows=args.batch)
    )
    n_tok = tokens.size
    x = jnp.asarray(tokens)

    t = time.perf_counter()
    forward(loaded.model, x).block_until_ready()
    compile_prefill = time.perf_counter() - t
    jax_prefill = best_of(lambda: forward(loaded.model, x).block_until_ready(), args.repeats)
    xt = torch.as_tensor(tokens, dtype=torch.long)
    with torch.inference_mode():
        ref(xt)
        torch_prefill = best_of(lambda: ref(xt), args.repeats)

    prompt = tokens[:1, :16]
    t = time.perf_counter()
    generate(loaded.model, jnp.asarray(prompt), args.new).block_until_ready()
    compile_decode = time.perf_counter() - t
    jax_decode = best_of(
        lambda: generate(loaded.model, jnp.asarray(prompt), args.new).block_until_ready(), args.repeats
    )
    pt = torch.as_tensor(prompt, dtype=torch.long)
    gen_kw = dict(
        max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False, pad_token_id=loaded.tokenizer.eos_token_id
    )
    with torch.inference_mode():
        ref.generate(pt, **gen_kw)
        torch_decode = best_of(lambda: ref.generate(pt, **gen_kw), args.repeats)

    return {
        "prefill": {
            "tokens": n_tok,
            "jax_tok_s": n_tok / jax_prefill,
            "torch_tok_s": n_tok / torch_prefill,
            "ratio_jax_over_torch": torch_prefill / jax_prefill,
            "target": 1.5,
            "jax_compile_s": compile_prefill,
        },
        "decode": {
            "new_tokens": args.new,
            "jax_tok_s": args.new / jax_decode,
            "torch_tok_s": args.new / torch_decode,
            "ratio_jax_over_torch": torch_decode / jax_decode,
            "target": 1.0,
            "jax_compile_s": compile_decode,
        },
    }


if __name__ == "__main__":
    main()
