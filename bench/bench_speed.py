"""JAX (jitted) vs transformers' PyTorch on the same model, same CPU threads.

    python bench/bench_speed.py [--model smollm2-135m] [--batch 8] [--seqlen 256] [--new 128]

Prints tokens/s of each and the ratio JAX / torch, measured in this run:
  prefill  batch × seqlen tokens through the full forward (targets: ≥ 1.5×)
  decode   batch 1, `new` greedy tokens with a KV cache vs `generate` (target: ≥ 1.0×)
Compile time is reported separately and excluded from the steady-state rate.
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
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from hemorrhage.sim import load
    from hemorrhage.sim.data import eval_windows
    from hemorrhage.sim.generate import generate
    from hemorrhage.sim.models import forward
    from hemorrhage.validate.check import torch_reference

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    loaded = load(args.model, quiet=True)
    ref = torch_reference(loaded.path)
    tokens = np.asarray(eval_windows(loaded.tokenizer, "wiki", seqlen=args.seqlen, stride=args.seqlen,
                                     max_windows=args.batch))
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
    jax_decode = best_of(lambda: generate(loaded.model, jnp.asarray(prompt), args.new).block_until_ready(),
                         args.repeats)
    pt = torch.as_tensor(prompt, dtype=torch.long)
    gen_kw = dict(max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False,
                  pad_token_id=loaded.tokenizer.eos_token_id)
    with torch.inference_mode():
        ref.generate(pt, **gen_kw)
        torch_decode = best_of(lambda: ref.generate(pt, **gen_kw), args.repeats)

    res = {
        "model": args.model, "cpu_threads": threads, "jax": jax.__version__, "torch": torch.__version__,
        "device": str(jax.devices()[0]),
        "prefill": {"tokens": n_tok, "jax_tok_s": n_tok / jax_prefill, "torch_tok_s": n_tok / torch_prefill,
                    "ratio_jax_over_torch": torch_prefill / jax_prefill, "target": 1.5,
                    "jax_compile_s": compile_prefill},
        "decode": {"new_tokens": args.new, "jax_tok_s": args.new / jax_decode,
                   "torch_tok_s": args.new / torch_decode, "ratio_jax_over_torch": torch_decode / jax_decode,
                   "target": 1.0, "jax_compile_s": compile_decode},
    }
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
