"""Scaling with JAX's own sharding: a device mesh, tensor-parallel weights, data-parallel
batches and calibration, and device groups for running sweep settings side by side.

    mesh = make_mesh({"data": 2, "model": 4})     # or parse_mesh("data=2,model=4")
    shard_model(model, mesh)                       # weights placed tensor-parallel, in place
    z = sharded_forward(model, tokens, mesh)       # batch over "data", jit propagates the rest
    with data_parallel(mesh):                      # calibration batch over "data":
        small, rec = compress(model, method, calib_tokens)     # Σxxᵀ is a cross-device sum

Nothing here changes a number beyond fp32 rounding: jax.jit compiles the same program for
any placement (GSPMD inserts the collectives), so sharding is only about where the work
and the memory go.  The mesh has two axes:

    data    the batch axis B of token batches and of the calibration activations h
    model   tensor parallelism inside each linear layer (Megatron layout):
              column-parallel q, k, v, qkv, gate, up, fc   W [out in] split over out
              row-parallel    o, down, proj                W [out in] split over in
              embedding E [vocab d] and lm_head [vocab d]  split over vocab
              everything else (norms, biases of row-parallel layers, positions) replicated
            A column-parallel layer's output is split over its features, so the row-
            parallel layer after it needs no gather until its partial sums are reduced.
            Compressed layers (sim.compress.storage) follow the same rule for their
            scales / kept values; flat bit-packed codes and masks stay replicated.  A
            tensor whose split axis does not divide by the axis size stays replicated.

Running on accelerators.  One host with 8 GPUs or a TPU v5e-8: `jax.devices()` lists them.
`hemorrhage compress|measure --mesh data=2,model=4` places the weights tensor-parallel over
4 devices and calibrates over 2 (`--mesh data=8`: weights whole on each device, calibration
over all 8; a 135M model fits one device, so "model" only pays for big models).  The
measurement runs with the weights where they are, and inside `data_parallel` its token
batches (windows, MC questions, prompts) are split over "data" too (`on_active_mesh`).  `hemorrhage sweep --devices 8` runs 8
settings at once, one per device (each worker holds its own copy of the base: the model
must fit one device); `--devices 4 --mesh data=2` gives each of 4 settings a group of 2
devices (calibration data-parallel inside the group).  On CPU, `XLA_FLAGS=--xla_force_host_platform_device_count=8`
(set before jax is imported) fakes 8 devices; that is how the tests check equality.

Multi-host (a TPU pod slice, several GPU nodes): start ONE process per host running the
same command, and call `jax.distributed.initialize()` first (on TPU and SLURM it finds the
coordinator itself; elsewhere pass coordinator_address, num_processes, process_id).
`jax.devices()` is then the global list and `make_mesh` builds the global mesh over it
(hosts × local devices; put "model" within a host, where the links are fast: e.g. 4 hosts
× 8 GPUs -> data=4·2, model=4).  Every process runs the same jitted program on its local
shards; a result read to the host (np.asarray) must first be gathered
(jax.experimental.multihost_utils.process_allgather) because no single process holds all of
a global array.  Only `is_writer()` (process 0) appends rows to the sweep file and writes the
base cache; the others compute the same rows and write nothing.  The per-device sweep
workers (`--devices`) use local devices only (`jax.local_devices()`): to spread a sweep over
hosts without collectives, give each host its own --grid share and --out file instead.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Float, Int

from hemorrhage.errors import UserError

AXES = ("data", "model")
COLUMN = ("q", "k", "v", "qkv", "gate", "up", "fc")  # W [out in] split over out
ROW = ("o", "down", "proj")  # W [out in] split over in
VOCAB = ("embed", "lm_head")  # [vocab d] split over vocab


# ------------------------------------------------------------------ the mesh -----------


def parse_mesh(text: str | None) -> dict[str, int] | None:
    """ "data=2,model=4" -> {"data": 2, "model": 4}; a bare "8" means data=8.  UserError on
    anything else (an unknown axis, a repeated one, a size that is not a positive integer)."""
    if text is None:
        return None
    t = str(text).strip()
    if not t:
        raise UserError("--mesh is empty; e.g. --mesh data=2,model=4")
    if t.isdigit():
        t = f"data={t}"
    out: dict[str, int] = {}
    for part in (p.strip() for p in t.split(",")):
        name, eq, size = part.partition("=")
        name = name.strip()
        if not eq or name not in AXES or name in out:
            raise UserError(f"--mesh: expected AXIS=SIZE with AXIS in {', '.join(AXES)} (each once), got {part!r}")
        if not size.strip().isdigit() or int(size) < 1:
            raise UserError(f"--mesh: {name} size must be a positive integer, got {size.strip()!r}")
        out[name] = int(size)
    return out


def make_mesh(shape: dict[str, int] | str | int | None = None, devices=None) -> Mesh:
    """A ("data", "model") mesh over `devices` (default: every local device on "data").

    `shape` may leave one axis out (it is 1) and must use exactly the devices given, or,
    with devices=None, at most the local devices (the first prod(shape) are taken)."""
    if isinstance(shape, str):
        shape = parse_mesh(shape)
    elif isinstance(shape, int):
        shape = {"data": shape}
    devs = list(jax.local_devices() if devices is None else devices)
    shape = dict(shape or {"data": len(devs)})
    sizes = tuple(int(shape.get(a, 1)) for a in AXES)
    need = math.prod(sizes)
    if need > len(devs) or (devices is not None and need != len(devs)):
        raise UserError(
            f"mesh {'×'.join(map(str, sizes))} ({', '.join(AXES)}) needs {need} devices; "
            f"{len(devs)} {'given' if devices is not None else 'available'} ({devs[0].platform})"
        )
    return Mesh(np.asarray(devs[:need], dtype=object).reshape(sizes), AXES)


def device_groups(n_groups: int, shape: dict[str, int] | None = None) -> list[Mesh]:
    """`n_groups` disjoint meshes of `shape` (default 1 device each) over the local devices,
    for settings run side by side (validate.sweep's --devices)."""
    devs = jax.local_devices()
    if isinstance(n_groups, bool) or not isinstance(n_groups, int) or n_groups < 1:
        raise UserError(f"--devices must be a positive integer, got {n_groups!r}")
    per = math.prod(int((shape or {}).get(a, 1)) for a in AXES)
    if n_groups * per > len(devs):
        raise UserError(
            f"--devices {n_groups} groups of {per} device(s) need {n_groups * per} devices; "
            f"{len(devs)} available ({devs[0].platform})"
        )
    return [make_mesh(shape or {"data": 1}, devs[g * per : (g + 1) * per]) for g in range(n_groups)]


def axis_size(mesh: Mesh | None, axis: str) -> int:
    return 1 if mesh is None else int(mesh.shape.get(axis, 1))


def is_writer() -> bool:
    """True in the one process that writes files (process 0; always true on one host)."""
    return jax.process_index() == 0


# ------------------------------------------------------------------ weights ------------


def _names(path) -> list[str]:
    return [str(p) for p in path]


def param_spec(path, shape: tuple[int, ...], model_size: int) -> P:
    """The PartitionSpec of one model variable at `path` (see the module docstring)."""
    names, nd = _names(path), len(shape)

    def split(axis: int) -> P:
        if model_size == 1 or nd <= axis or shape[axis] % model_size:
            return P()
        return P(*([None] * axis + ["model"]))

    leaf = names[-1]
    if names[0] in VOCAB and leaf == "w" and nd == 2:
        return split(0)
    proj = next((n for n in reversed(names[:-1]) if n in COLUMN + ROW), None)
    if proj is None or "layers" not in names:
        return P()
    if proj in COLUMN:
        # W, scale, zero [out G], N:M values/indices [out G N], bias [out]: all split over out;
        # AWQ's input scale [in] and flat packed codes / masks stay whole
        return P() if leaf in ("in_scale", "packed", "mask") else split(0)
    if leaf == "in_scale":
        return split(0)
    if leaf in ("w", "scale", "zero", "values", "idx") and nd >= 2:
        return split(1)  # [out in], [out G] and [out G N]: split over the input side
    return P()  # row-parallel bias (added after the reduction), packed codes, masks


def _place(model, sharding_of) -> None:
    """device_put every variable of `model` to `sharding_of(path, shape)`, then nnx.update."""
    state = nnx.state(model)
    flat = nnx.to_flat_state(state)
    for path, var in flat:
        value = var.get_value()
        if isinstance(value, jax.Array | np.ndarray):
            var.set_value(jax.device_put(value, sharding_of(path, tuple(value.shape))))
    nnx.update(model, nnx.from_flat_state(flat))


def shard_model(model, mesh: Mesh):
    """Place `model`'s weights on `mesh` tensor-parallel over "model" (replicated over
    "data"), in place; returns the model.  Works for dense and compressed models."""
    m = axis_size(mesh, "model")
    _place(model, lambda path, shape: NamedSharding(mesh, param_spec(path, shape, m)))
    return model


def replicate(model, mesh: Mesh):
    """Every weight whole on every device of `mesh` (pure data parallelism), in place."""
    _place(model, lambda path, shape: NamedSharding(mesh, P()))
    return model


def to_device(model, device):
    """A copy of `model` committed to one device (the original is left where it is)."""
    copy = nnx.clone(model)
    _place(copy, lambda path, shape: jax.sharding.SingleDeviceSharding(device))
    return copy


def devices_of(model) -> set:
    """Every device holding a part of `model`'s weights (to check where work really runs)."""
    out: set = set()
    for _, var in nnx.to_flat_state(nnx.state(model)):
        v = var.get_value()
        if isinstance(v, jax.Array):
            out |= set(v.devices())
    return out


# ------------------------------------------------------------------ batches ------------


def shard_batch(x, mesh: Mesh) -> jax.Array:
    """x [B, ...] with B split over "data" (B must divide by the data axis size)."""
    d = axis_size(mesh, "data")
    x = np.asarray(x) if not isinstance(x, jax.Array) else x
    if x.shape[0] % d:
        raise UserError(f"a batch of {x.shape[0]} does not split over {d} data-parallel devices")
    return jax.device_put(x, NamedSharding(mesh, P("data")))


def pad_batch(x: np.ndarray, multiple: int) -> tuple[np.ndarray, int]:
    """(x padded with copies of its last row to a multiple of `multiple` rows, true B)."""
    x = np.asarray(x)
    n = x.shape[0]
    pad = (-n) % multiple
    return (np.concatenate([x, np.repeat(x[-1:], pad, 0)]) if pad else x), n


def sharded_forward(model, tokens: Int[Array, "B T"], mesh: Mesh) -> Float[Array, "B T vocab"]:
    """The jitted forward with the batch over "data" (padded to a multiple, cut back) and
    the weights wherever they are (shard_model them first for tensor parallelism)."""
    from hemorrhage.sim.models.base import forward

    padded, n = pad_batch(np.asarray(tokens, np.int32), axis_size(mesh, "data"))
    return forward(model, shard_batch(padded, mesh))[:n]


# ------------------------------------------------------------------ data parallel ------

_ACTIVE: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("hemorrhage_mesh", default=None)


@contextlib.contextmanager
def data_parallel(mesh: Mesh | None) -> Iterator[Mesh | None]:
    """Inside, calibration (sim.compress.calib.Sequential) splits its token batch and the
    block activations over the mesh's "data" axis.  Per thread (a ContextVar)."""
    token = _ACTIVE.set(mesh)
    try:
        yield mesh
    finally:
        _ACTIVE.reset(token)


def active_mesh() -> Mesh | None:
    """The mesh set by `data_parallel` in this thread, or None (single device)."""
    return _ACTIVE.get()


def place_rows(x, mesh: Mesh | None) -> jax.Array:
    """x [B, ...] over "data" when B divides by its size, else replicated on the mesh
    (no mesh: an ordinary uncommitted array, exactly as without sharding)."""
    if mesh is None:
        return jnp.asarray(x)
    spec = P("data") if x.shape[0] % axis_size(mesh, "data") == 0 else P()
    return jax.device_put(x, NamedSharding(mesh, spec))


def on_active_mesh(x) -> jax.Array:
    """`place_rows` on the mesh of `data_parallel` in this thread: the measurement's token
    batches (validate.base_phase, validate.mc, validate.steps) split over "data" inside a
    data-parallel sweep worker, an ordinary array otherwise."""
    return place_rows(np.asarray(x), active_mesh())
