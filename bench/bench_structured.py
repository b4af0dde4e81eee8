"""Structured removal and low-rank factors on a real model: bytes, prefill speed, and how
well the first-order (linear) response predicts the KL of a head / channel removal.

    python bench/bench_structured.py [--model smollm2-135m] [--seqlen 256] [--repeats 3] [--json PATH]

Speed.  Variants `dense`, `heads` (share 0.34, uniform), `channels` (share 0.25, uniform),
`lowrank` (asvd, param_ratio 0.5), each compressed from the same base in this process:
linear_bytes (memory_report: the blocks' linears as stored) and prefill tokens/s of the
jitted forward on one window of --seqlen tokens, the median of --repeats timed calls after a
warm-up call.  Structured removal stores smaller dense matrices and low-rank two thin ones,
so bytes and matmul work fall with them (no special kernels involved).

Linear response.  Removing units is an exact, known weight change: ΔW = −W on the removed
columns of o_proj (heads: zeroing them equals removing the heads) or of down_proj
(channels).  On held-out windows: z the base logits, Δz_lin = J_W z · ΔW (one JVP), and
    kl_lin  = mean KL(softmax z ‖ softmax(z + Δz_lin))      the first-order prediction
    kl_true = mean KL(softmax z ‖ softmax(z_compressed))     the compressed model's
The tangent is exact in the weights; the response is not linear in them, so kl_lin/kl_true
says how far the first order carries at each share.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VARIANTS = {
    "heads": ("heads", {"share": 0.34}),
    "channels": ("channels", {"share": 0.25}),
    "lowrank": ("lowrank", {"variant": "asvd", "param_ratio": 0.5}),
}
LR_POINTS = [
    ("heads", {"share": 0.1, "schedule": "global"}),
    ("heads", {"share": 0.2, "schedule": "global"}),
    ("heads", {"share": 0.34}),
    ("channels", {"share": 0.1}),
    ("channels", {"share": 0.3}),
    ("channels", {"share": 0.5}),
]


def prefill_speed(model, tokens, repeats: int) -> float:
    import jax

    from hemorrhage.sim.models import forward

    jax.block_until_ready(forward(model, tokens))  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(forward(model, tokens))
        times.append(time.perf_counter() - t0)
    return tokens.size / statistics.median(times)


def _kl(z, q_logits):
    import jax
    import jax.numpy as jnp

    lp, lq = jax.nn.log_softmax(z, -1), jax.nn.log_softmax(q_logits, -1)
    return float(jnp.mean(jnp.sum(jnp.exp(lp) * (lp - lq), -1)))


def removal_tangent(model, small, method: str, removed: list):
    """The state-shaped ΔW of a removal: −W on the removed o_proj / down_proj columns."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    gd, state = nnx.split(model)
    tm = nnx.merge(gd, jax.tree.map(jnp.zeros_like, state))
    for i, (b, bs) in enumerate(zip(model.layers, small.layers)):
        if method == "heads":
            H, K, D = b.attn.H, b.attn.K, b.attn.D
            G = H // K
            kept_heads = bs.attn.K
            if kept_heads == K:
                continue
            gone = removed[i]
            cols = np.concatenate([np.arange(g * G * D, (g + 1) * G * D) for g in gone])
            w = b.attn.o.w[...]
            tm.layers[i].attn.o.w.set_value(jnp.zeros_like(w).at[:, cols].set(-w[:, cols]))
        else:
            kept = np.asarray(bs.mlp.kept[...])
            cols = np.setdiff1d(np.arange(b.mlp.down.w.shape[1]), kept)
            if cols.size == 0:
                continue
            w = b.mlp.down.w[...]
            tm.layers[i].mlp.down.w.set_value(jnp.zeros_like(w).at[:, cols].set(-w[:, cols]))
    return gd, state, nnx.state(tm)


def linear_response(loaded, calib, windows) -> list[dict]:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from hemorrhage.sim.compress import compress, make_method
    from hemorrhage.sim.models import forward

    model = loaded.model
    toks = jnp.asarray(windows)
    z = forward(model, toks)[:, :-1]
    out = []
    for method, st in LR_POINTS:
        small, rec = compress(model, make_method(method, **st), calib)
        gd, state, tangent = removal_tangent(model, small, method, rec.get("removed", []))
        f = jax.jit(lambda s: nnx.merge(gd, s)(toks)[0][:, :-1])
        _, dz = jax.jvp(f, (state,), (tangent,))
        zc = forward(small, toks)[:, :-1]
        kl_lin, kl_true = _kl(z, z + dz), _kl(z, zc)
        agree = lambda q: float(jnp.mean(jnp.argmax(q, -1) == jnp.argmax(z, -1)))  # noqa: E731
        out.append(
            {
                "method": method,
                "settings": st,
                "param_share_removed": rec["param_share_removed"],
                "kl_lin": kl_lin,
                "kl_true": kl_true,
                "kl_lin_over_true": kl_lin / kl_true if kl_true else None,
                "top1_lin": agree(z + dz),
                "top1_true": agree(zc),
                "dz_rms_ratio": float(jnp.sqrt(jnp.mean((zc - z - dz) ** 2) / jnp.mean(dz**2))),
            }
        )
        print(json.dumps(out[-1]), file=sys.stderr, flush=True)
        del small, tangent, state
        jax.clear_caches()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--lr-windows", type=int, default=2, help="held-out windows of 128 tokens for the KL check")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-lr", action="store_true")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)

    import jax.numpy as jnp

    from hemorrhage.sim import load
    from hemorrhage.sim.compress import compress, make_method, memory_report
    from hemorrhage.sim.compress.registry import calibration_tokens_for
    from hemorrhage.sim.windows import eval_windows

    loaded = load(args.model, quiet=True)
    calib = calibration_tokens_for(loaded, calib_samples=8, calib_seqlen=128)
    res = {
        "model": args.model,
        "seqlen": args.seqlen,
        "repeats": args.repeats,
        "calibration": "8 x 128 wiki",
        "variants": {},
        "linear_response": None,
    }
    if not args.skip_speed:
        toks = jnp.asarray(
            eval_windows(loaded.tokenizer, "wiki", seqlen=args.seqlen, stride=args.seqlen, max_windows=1)
        )
        rows = {"dense": (loaded.model, {"param_share_removed": 0.0, "memory": memory_report(loaded.model)})}
        for name, (m, st) in VARIANTS.items():
            rows[name] = compress(loaded.model, make_method(m, **st), calib)
        for name, (model, rec) in rows.items():
            res["variants"][name] = {
                "param_share_removed": rec["param_share_removed"],
                "linear_bytes": rec["memory"]["bytes"],
                "prefill_tok_s": prefill_speed(model, toks, args.repeats),
            }
            print(name, json.dumps(res["variants"][name]), file=sys.stderr, flush=True)
        d = res["variants"]["dense"]
        for v in res["variants"].values():
            v["bytes_vs_dense"] = v["linear_bytes"] / d["linear_bytes"]
            v["speed_vs_dense"] = v["prefill_tok_s"] / d["prefill_tok_s"]
        del rows
    if not args.skip_lr:
        win = eval_windows(loaded.tokenizer, "wiki", seqlen=128, stride=128, max_windows=args.lr_windows)
        res["linear_response"] = linear_response(loaded, calib, win)
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        from pathlib import Path

        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
