"""Will it fit?  The device-memory plan of a command, from a model's config alone.

    plan = make_plan(PlanRequest(model="tests/data/llama-3.1-8b.json", dtype="bfloat16",
                                 mesh={"model": 8}, device_memory=80e9, command="measure"))
    plan["weight_bytes"], plan["peak_bytes_per_device"], plan["fits"], plan["programs"]

The model is built with `nnx.eval_shape` (shapes and dtypes only: no weight is allocated), its
variables re-typed to --dtype, and each jitted program the command runs is lowered on abstract
arguments and compiled: `jax.jit(f).lower(ShapeDtypeStruct...).compile().memory_analysis()` is
XLA's own account of that program's buffers on one device (arguments, outputs, temporaries;
Pope et al. 2022, "Efficiently Scaling Transformer Inference", §2 use the same split of
weights / activations / KV cache).  Per device:

    W_res            resident weights: the base model (plus, for measure / compress, a second
                     copy of the block linears: the compressed model, counted dense in --dtype,
                     a bound: packed codes and N:M values are smaller); split over "model" by
                     sim.shard.param_spec, whole on every "data" device
    peak_i           W_res + (args_i - W_i) + out_i + temp_i, W_i the weights program i reads
    peak             max_i peak_i;  fits = peak <= --device-memory

Programs (their shapes are the command's defaults, `Shapes`):
    measure    forward [windows, seqlen]; trace (every h_l, the logit lens) at the same shape;
               decode: generate's prefill + KV-cache scan [prompts, prompt_len + new_tokens];
               dtype_floor (--dtype not float32): the fp32 forward of the reference measure
               loads and drops before the model in --dtype (only it resident then)
    predict    the JVP of h_L in the block linears (jax.linearize's tangent program, a tangent
               as large as those weights) on the eval windows and the generated paths; the
               Taylor-mode pass (jet, 2nd order) on the eval windows; decode
    compress   the calibration forward keeping every h_l [calib_samples, calib_seqlen]; the
               Hessian H = Σ x xᵀ of the widest linear input and its Cholesky factor in fp32
               (GPTQ, Frantar et al. 2023, eq. 2-5); forward

target: "this" compiles for the backend jax runs here (what `bench/bench_memory_plan.py`
compares with the measured peak).  "accelerator" plans for a GPU/TPU from a CPU: XLA:CPU has
no native bf16/fp16 dot and converts every half-precision weight to fp32 inside the program
(temporaries of ~2x the weights), which an accelerator does not; so the programs are compiled
with fp32 weights and activations instead and their temporaries scaled by itemsize/4 (the
activations and the per-call stack of block weights are in --dtype there; the fp32 logits'
softmax is not, so this may undercount it: `temp_bytes_fp32_compile` is the upper bound), the
weights counted in --dtype.  On a GPU/TPU backend both targets compile as they run.

Meshes: the programs are compiled SPMD over a Mesh of that many devices (on CPU, fake host
devices: XLA_FLAGS=--xla_force_host_platform_device_count=N, set in a subprocess by
`plan_in_subprocess` when this process has fewer), weights annotated with NamedSharding
(Megatron layout, sim/shard.py), token batches over "data" where they divide.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hemorrhage.errors import UserError
from hemorrhage.sim.abstract_bytes import (
    abstract_model,
    analyse,
    bytes_by_dtype,
    linear_bytes,
    nbytes,
    per_device_bytes,
    sharded,
)

DTYPES = ("float32", "bfloat16", "float16")
COMMANDS = ("measure", "predict", "compress")
TARGETS = ("accelerator", "this")
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


@dataclass(frozen=True)
class Shapes:
    """The batch and sequence sizes of each command's programs (the commands' defaults)."""

    windows: int = 4  # measure --windows (predict: 2)
    seqlen: int = 128
    prompts: int = 8  # measure --prompts (predict: 4)
    prompt_len: int = 16
    new_tokens: int = 32
    calib_samples: int = 16
    calib_seqlen: int = 128


PREDICT_SHAPES = Shapes(windows=2, prompts=4)


@dataclass(frozen=True)
class PlanRequest:
    model: str  # registry name, checkpoint folder, or a config.json file
    dtype: str = "bfloat16"
    mesh: dict = field(default_factory=dict)  # {"data": D, "model": M}
    device_memory: int | None = None  # bytes; None: no verdict
    command: str = "measure"
    shapes: Shapes | None = None  # None: the command's defaults
    target: str = "accelerator"
    programs: tuple | None = None  # a subset of the command's program names; None: all


# ------------------------------------------------------------------ inputs -------------


def parse_bytes(text: str) -> int:
    """ "80GB" -> 80e9, "80GiB" -> 80·2³⁰, "123" -> 123 bytes; UserError otherwise."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS or float(m.group(1)) <= 0:
        raise UserError(f"--device-memory: expected a positive size such as 80GB or 24GiB, got {text!r}")
    return int(float(m.group(1)) * _UNITS[unit])


def check_request(req: PlanRequest) -> None:
    """Every flag's value, before anything is read or compiled."""
    if req.dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)} for a plan, got {req.dtype!r}")
    if req.command not in COMMANDS:
        raise UserError(f"--command must be one of {', '.join(COMMANDS)}, got {req.command!r}")
    if req.target not in TARGETS:
        raise UserError(f"--target must be one of {', '.join(TARGETS)}, got {req.target!r}")


def read_model_config(model: str):
    """The ModelConfig of a registry name (fetched on first use), a folder holding a
    config.json (weights not needed) or a config.json file itself."""
    from hemorrhage.sim.models.config import ModelConfig
    from hemorrhage.sim.hub.preflight import check_config, read_config

    p = Path(model).expanduser()
    if p.is_dir():
        p = p / "config.json"
        if not p.is_file():
            raise UserError(f"{p.parent} has no config.json to plan from")
    elif not p.is_file():
        from hemorrhage.sim.hub.registry import resolve

        p = resolve(model) / "config.json"
    hf = read_config(p)
    check_config(hf)
    return ModelConfig.from_hf(hf)


def check_mesh(cfg, mesh: dict) -> None:
    """The "model" axis must split the heads, the KV heads and the MLP width evenly (else
    the Megatron split of sim.shard leaves them whole on every device)."""
    m = int(mesh.get("model", 1))
    if m == 1:
        return
    for name in ("n_heads", "n_kv_heads", "d_ff"):
        v = int(getattr(cfg, name))
        if v % m:
            raise UserError(f"--mesh model={m} does not divide the model's {name} = {v}")


# ------------------------------------------------------------------ the plan -----------


def _mesh_of(shape: dict):
    """A Mesh of prod(shape) devices: this backend's when it has enough, else host CPU ones
    (None when neither has: plan_in_subprocess fakes them)."""
    import jax

    from hemorrhage.sim.shard import make_mesh

    need = math.prod(int(shape.get(a, 1)) for a in ("data", "model"))
    for devs in (jax.devices(), jax.devices("cpu")):
        if len(devs) >= need:
            return make_mesh(shape, devs[:need])
    return None


def make_plan(req: PlanRequest) -> dict:
    """The plan (module docstring) as a JSON-able dict."""
    import jax
    import jax.numpy as jnp

    check_request(req)
    cfg = read_model_config(req.model)
    check_mesh(cfg, req.mesh)
    sh = req.shapes or (PREDICT_SHAPES if req.command == "predict" else Shapes())
    mesh = None
    if math.prod(int(req.mesh.get(a, 1)) for a in ("data", "model")) > 1:
        mesh = _mesh_of(req.mesh)
        if mesh is None:
            if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
                raise UserError(f"--mesh {req.mesh} needs more devices than XLA_FLAGS gives this process")
            return plan_in_subprocess(req)
    platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
    half = jnp.dtype(req.dtype).itemsize < 4
    emulate = req.target == "accelerator" and platform == "cpu" and half
    compile_dtype = "float32" if emulate else req.dtype
    graphdef, held = abstract_model(cfg, req.dtype)
    _, compiled = abstract_model(cfg, compile_dtype)
    if mesh is not None:
        held, compiled = sharded(held, mesh), sharded(compiled, mesh)
    weight_total = nbytes(held)
    base = per_device_bytes(held)
    lin = linear_bytes(graphdef, held) if req.command in ("measure", "compress") else 0
    resident = base + lin
    programs = {}
    floor = None
    if req.command == "measure" and req.dtype != "float32":  # measure's fp32 reference, loaded and dropped first
        floor = abstract_model(cfg, "float32")[1]
        floor = floor if mesh is None else sharded(floor, mesh)
    from hemorrhage.sim.memory_programs import programs as command_programs

    progs = command_programs(req.command, graphdef, compiled, cfg, sh, mesh, floor)
    unknown = sorted(set(req.programs or ()) - set(progs))
    if unknown:
        raise UserError(f"--programs: {', '.join(unknown)} not among {req.command}'s ({', '.join(progs)})")
    for name, (fn, args, wargs) in progs.items():
        if req.programs and name not in req.programs:
            continue
        a = analyse(fn, args, wargs)
        if (
            emulate and name != "dtype_floor"
        ):  # temporaries (activations, stacked block weights) are in --dtype there: scaled
            a["temp_bytes_fp32_compile"] = a["temp_bytes"]
            a["temp_bytes"] = int(a["temp_bytes"] * jnp.dtype(req.dtype).itemsize / 4)
        # the program's weights counted as held (in --dtype), its other inputs as compiled
        here = per_device_bytes(floor) if name == "dtype_floor" else resident
        a["peak_bytes"] = int(
            here
            + a["argument_bytes"]
            - a["weight_argument_bytes"]
            + a["output_bytes"]
            + a["temp_bytes"]
            - a["alias_bytes"]
        )
        programs[name] = a
    peak = max([p["peak_bytes"] for p in programs.values()], default=resident)
    fits = None if req.device_memory is None else bool(peak <= req.device_memory)
    n_dev = 1 if mesh is None else int(mesh.devices.size)
    method = (
        f"XLA memory_analysis of each program compiled on abstract shapes for {n_dev} {platform} device(s)"
        + (" (SPMD over the mesh, weights NamedSharding-annotated)" if mesh is not None else "")
        + (
            "; accelerator target from a CPU: programs compiled in float32 (XLA:CPU upcasts half-precision "
            f"weights to fp32 inside every program), temporaries scaled to {req.dtype} (the float32 ones, an "
            f"upper bound, kept as temp_bytes_fp32_compile), weights counted in {req.dtype}"
            if emulate
            else ""
        )
    )
    return {
        "model": str(req.model),
        "model_type": cfg.model_type,
        "dtype": req.dtype,
        "command": req.command,
        "mesh": {"data": int(req.mesh.get("data", 1)), "model": int(req.mesh.get("model", 1))},
        "target": req.target,
        "method": method,
        "shapes": asdict(sh),
        "parameters": int(sum(math.prod(s.shape) for s in jax.tree.leaves(held))),
        "weight_bytes": weight_total,
        "weight_bytes_by_dtype": bytes_by_dtype(held),
        "weight_bytes_per_device": base,
        "compressed_copy_bytes_per_device": lin,
        "resident_bytes_per_device": resident,
        "programs": programs,
        "peak_program": _argmax(programs),
        "peak_bytes_per_device": int(peak),
        "device_memory": req.device_memory,
        "fits": fits,
    }


def _argmax(programs: dict) -> str | None:
    return max(programs, key=lambda k: programs[k]["peak_bytes"]) if programs else None


# ------------------------------------------------------------------ fake devices -------


def plan_in_subprocess(req: PlanRequest) -> dict:
    """make_plan in a fresh Python with N fake host devices (the count is fixed when JAX
    starts its CPU backend, so this process cannot grow its own)."""
    need = math.prod(int(req.mesh.get(a, 1)) for a in ("data", "model"))
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={need}").strip()
    env["JAX_PLATFORMS"] = "cpu"
    payload = {
        **asdict(req),
        "shapes": None if req.shapes is None else asdict(req.shapes),
        "programs": None if req.programs is None else list(req.programs),
    }
    done = subprocess.run(
        [sys.executable, "-m", "hemorrhage.sim.memory_plan"],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode == 2:  # a UserError there is one here
        raise UserError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "planning failed")
    if done.returncode != 0:
        raise RuntimeError(f"planning subprocess failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout)


def _main() -> int:
    req = json.loads(sys.stdin.read())
    req["shapes"] = None if req.get("shapes") is None else Shapes(**req["shapes"])
    req["programs"] = None if req.get("programs") is None else tuple(req["programs"])
    try:
        plan = make_plan(PlanRequest(**req))
    except UserError as e:
        print(str(e), file=sys.stderr)
        return 2
    json.dump(plan, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
