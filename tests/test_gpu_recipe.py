"""The CPU path of bench/gpu_llama8b.py on a tiny config: the random checkpoint it writes is
sharded, indexed, bf16 throughout, and loads and runs in hemorrhage as written."""

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from gpu_llama8b import command_argv, write_checkpoint  # noqa: E402

from hemorrhage.sim.hub.preflight import safetensors_header  # noqa: E402


def test_random_checkpoint_is_sharded_bf16_and_loads(tmp_path):
    from hemorrhage.sim import load
    from hemorrhage.sim.models.base import forward

    out = write_checkpoint(ROOT / "tests" / "data" / "llama-tiny.json", tmp_path / "ckpt")
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    shards = sorted(out.glob("*.safetensors"))
    assert len(shards) > 1 and set(index.values()) == {f.name for f in shards}
    headers = {f: safetensors_header(f) for f in shards}
    tags = {v["dtype"] for h in headers.values() for k, v in h.items() if k != "__metadata__"}
    assert tags == {"BF16"}
    for f, h in headers.items():  # the index says where each tensor is
        assert all(index[k] == f.name for k in h if k != "__metadata__")
    loaded = load(str(out))
    assert loaded.dtype == "bfloat16"
    z = np.asarray(forward(loaded.model, np.arange(8, dtype=np.int32)[None] % 300))
    assert np.isfinite(z).all() and z.std() > 0
    assert command_argv("measure", out, ("x", 2, 16, 1, 4))[:3] == ["measure", "--model", str(out)]
