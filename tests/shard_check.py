"""Run by tests/test_shard.py in a subprocess with 8 fake CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=8 must be set before jax is imported, so
it cannot run inside the pytest process).  Prints one JSON object of measured differences
between each sharded computation and the same computation on one device (no mesh: the
default device, the code path of an ordinary run).

    python tests/shard_check.py TINY_CKPT OUT_DIR [--smollm2]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _maxdiff(a, b) -> float:
    import numpy as np

    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def forwards(out: dict) -> None:
    """Tensor-parallel weights + data-parallel batch vs one device, one tiny model per family."""
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from hemorrhage.sim import shard
    from hemorrhage.sim.models import ModelConfig, build, forward, tiny

    mesh = shard.make_mesh({"data": 2, "model": 4})
    tokens = np.random.default_rng(0).integers(0, 96, (6, 16)).astype(np.int32)  # 6: padded to 8 rows
    for fam in ("llama", "gemma3_text", "gpt2"):
        model = build(ModelConfig.from_hf(tiny(fam, vocab_size=96)), seed=1)
        for _, var in nnx.to_flat_state(nnx.state(model)):  # logits O(1-10), as the HF tests do
            v = var.get_value()
            var.set_value(v * (8.0 if v.ndim >= 2 else 1.0))
        z1 = np.asarray(forward(model, jnp.asarray(tokens)))
        sharded = shard.shard_model(nnx.clone(model), mesh)
        z2 = shard.sharded_forward(sharded, tokens, mesh)
        first = sharded.layers[0]
        col = (first.attn.qkv if fam == "gpt2" else first.attn.q).w.get_value()
        row = first.attn.o.w.get_value()
        out[f"forward_{fam}"] = {
            "max_abs_diff": _maxdiff(z1, z2),
            "scale": float(np.abs(z1).max()),
            "shape": list(z2.shape),
            "col_spec": str(col.sharding.spec),
            "row_spec": str(row.sharding.spec),
            "embed_spec": str(sharded.embed.w.get_value().sharding.spec),
            "col_shard_shape": list(col.addressable_shards[0].data.shape),
            "n_devices": len(shard.devices_of(sharded)),
            "logits_devices": len(z2.devices()),
        }


def calibrated(out: dict) -> None:
    """GPTQ and Wanda calibrated data-parallel (calibration batch over 'data') vs one device."""
    import jax.numpy as jnp
    import numpy as np

    from hemorrhage.sim import shard
    from hemorrhage.sim.compress import compress, make_method
    from hemorrhage.sim.compress.calib import Sequential
    from hemorrhage.sim.compress.storage import all_linears
    from hemorrhage.sim.models import ModelConfig, build, forward, tiny

    model = build(ModelConfig.from_hf(tiny("llama", vocab_size=96)), seed=2)
    rng = np.random.default_rng(1)
    calib, tokens = rng.integers(0, 96, (8, 32)).astype(np.int32), rng.integers(0, 96, (4, 16)).astype(np.int32)
    mesh = shard.make_mesh({"data": 8})
    with shard.data_parallel(mesh):
        h = Sequential(model, calib).h[0]
    out["calib_h_devices"] = len(h.devices())
    out["calib_h_spec"] = str(h.sharding.spec)
    for name, kw in (("gptq", {"bits": 4, "group_size": 16}), ("wanda", {"sparsity": 0.5})):
        a, ra = compress(model, make_method(name, **kw), calib)
        b, rb = compress(model, make_method(name, **kw), calib, mesh=mesh)
        za, zb = np.asarray(forward(a, jnp.asarray(tokens))), np.asarray(forward(b, jnp.asarray(tokens)))
        wa = dict(all_linears(a))
        wd = max(_maxdiff(wa[p].weight(), layer.weight()) for p, layer in all_linears(b))
        out[f"calib_{name}"] = {
            "logit_diff": _maxdiff(za, zb),
            "scale": float(np.abs(za).max()),
            "weight_diff": wd,
            "devices": len(shard.devices_of(b)),
            "record_equal": {k: v for k, v in ra.items() if k != "timings"}
            == {k: v for k, v in rb.items() if k != "timings"},
        }


def sweep(out: dict, ckpt: Path, folder: Path) -> None:
    """One grid measured in order on one device, then 2 settings at a time on 2 devices (one
    method kind: a compressed graph compiles once per device, and compiling dominates here)."""
    import dataclasses

    from hemorrhage.sim import load
    from hemorrhage.validate.measure import MeasureConfig
    from hemorrhage.validate.sweep import parse_grid, run_sweep

    loaded = load(str(ckpt), quiet=True)
    grid = parse_grid("magnitude:sparsity=0.1,0.3,0.5,0.7")
    small = dict(
        windows=2,
        seqlen=32,
        mc_items=2,
        prompts=1,
        prompt_len=8,
        new_tokens=6,
        per_layer=False,
        steps=False,
        strata_bins=0,
    )  # the optional parts off, where this version has them
    fields = {f.name for f in dataclasses.fields(MeasureConfig)}
    config = MeasureConfig(**{k: v for k, v in small.items() if k in fields})
    calib = {"calib_samples": 4, "calib_seqlen": 32, "seed": 0}
    logs = []
    one = run_sweep(loaded, grid, config, folder / "one.jsonl", calib=calib, progress=False, log=logs.append)
    many = run_sweep(
        loaded, grid, config, folder / "many.jsonl", calib=calib, progress=False, log=logs.append, devices=2
    )
    from hemorrhage.cli import main  # the same through the command line (its compiled programs are warm)

    argv = [
        "sweep",
        "--model",
        str(ckpt),
        "--grid",
        "magnitude:sparsity=0.1,0.3,0.5,0.7",
        "--out",
        str(folder / "cli.jsonl"),
        "--devices",
        "2",
        "--no-progress",
        "--calib-samples",
        "4",
        "--calib-seqlen",
        "32",
        "--windows",
        "2",
        "--seqlen",
        "32",
        "--mc-items",
        "2",
        "--prompts",
        "1",
        "--prompt-len",
        "8",
        "--new-tokens",
        "6",
    ]
    argv += [f for f, k in (("--no-steps", "steps"), ("--strata-bins=0", "strata_bins")) if k in fields]
    code = main(argv)
    out["sweep_cli"] = {
        "code": code,
        "bytes_equal": (folder / "cli.jsonl").read_bytes() == (folder / "one.jsonl").read_bytes(),
    }
    out["sweep"] = {
        "rows_one": one["rows"],
        "rows_many": many["rows"],
        "placement_many": many["placement"],
        "placement_one": one["placement"],
        "failed": [str(f) for f in one["failed"] + many["failed"]],
        "bytes_equal": (folder / "one.jsonl").read_bytes() == (folder / "many.jsonl").read_bytes(),
        "logs": logs,
    }


def measured(out: dict, ckpt: Path) -> None:
    """The measurement itself data-parallel (windows, MC questions and prompts over "data")
    vs one device: every number of the row equal within fp32 tolerance."""
    from hemorrhage.sim import load, shard
    from hemorrhage.sim.compress import compress_from_args
    from hemorrhage.validate.measure import MeasureConfig, measure
    from hemorrhage.validate.base_phase import compute_base

    loaded = load(str(ckpt), quiet=True)
    config = MeasureConfig(windows=2, seqlen=32, mc_items=2, prompts=2, prompt_len=8, new_tokens=6, per_layer=True)
    comp, record = compress_from_args(loaded, "magnitude", sparsity=0.3)
    one = measure(loaded, comp, compute_base(loaded, config), record)
    mesh = shard.make_mesh({"data": 2})
    with shard.data_parallel(mesh):
        base = compute_base(loaded, config)
        many = measure(loaded, comp, base, record)
    keys = ("kl", "top1_agreement", "ppl", "cos_h", "cos_p", "mc_agreement", "first_divergence_mean")
    out["measured"] = {
        "diff": {k: abs(one[k] - many[k]) for k in keys},
        "per_layer_kl_diff": _maxdiff(one["per_layer"]["kl"], many["per_layer"]["kl"]),
        "steps_kl_diff": _maxdiff(one["steps"]["mean"]["kl"], many["steps"]["mean"]["kl"]),
        "same_generation": one["first_divergence"] == many["first_divergence"],
    }


def smollm2(out: dict) -> None:
    """The real 30-layer model, tensor-parallel over 4 devices and data-parallel over 2."""
    import jax.numpy as jnp
    import numpy as np

    from hemorrhage.sim import load, shard
    from hemorrhage.sim.windows import eval_windows
    from hemorrhage.sim.models import forward

    loaded = load("smollm2-135m", quiet=True)
    tokens = eval_windows(loaded.tokenizer, "wiki", seqlen=16, stride=16, max_windows=2)
    z1 = np.asarray(forward(loaded.model, jnp.asarray(tokens)))
    mesh = shard.make_mesh({"data": 2, "model": 4})
    z2 = shard.sharded_forward(shard.shard_model(loaded.model, mesh), tokens, mesh)
    out["smollm2"] = {
        "max_abs_diff": _maxdiff(z1, z2),
        "scale": float(np.abs(z1).max()),
        "argmax_equal": bool((z1.argmax(-1) == np.asarray(z2).argmax(-1)).all()),
        "logits_devices": len(z2.devices()),
    }


def main() -> None:
    import jax

    ckpt, folder = Path(sys.argv[1]), Path(sys.argv[2])
    out: dict = {"devices": len(jax.devices()), "seconds": {}}
    parts = [
        ("forwards", forwards),
        ("calibrated", calibrated),
        ("sweep", lambda o: sweep(o, ckpt, folder)),
        ("measured", lambda o: measured(o, ckpt)),
    ]
    if "--smollm2" in sys.argv:
        parts.append(("smollm2", smollm2))
    for name, fn in parts:
        t = time.perf_counter()
        fn(out)
        out["seconds"][name] = round(time.perf_counter() - t, 1)
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
