"""Where a sweep's settings run: in order on one device (or one mesh), or side by side on
disjoint device groups, results handed back in grid order.

    runner = make_runner(loaded, devices=4, mesh_shape=None)     # 4 groups of 1 device
    for item, outcome in runner.run(todo, calib, base):           # grid order, always
        ...                                                       # outcome: ("ok", row) | ("err", e)

One worker thread per group.  Each holds its own copy of the base weights committed to its
group (`sim.shard.to_device`: one device; `shard_model`: a mesh of several, where calibration
is data-parallel over the group's "data" axis, weights tensor-parallel over "model", and the
measurement runs with those weights: replicated over "data", split over "model"), and
runs under `jax.default_device(first device of the group)`, so every array it creates
(calibration tokens, compressed weights, measurement inputs) lives there and every jit it
calls compiles for and runs on that device.  `placement` records the devices that held each
compressed model's weights, so a test can check the work really went there.  JAX releases
the GIL while XLA runs, so the threads overlap on accelerators (on a CPU the devices share
the cores).

Results are yielded strictly in grid order (a finished later setting waits for the earlier
ones), so the sweep file is written exactly as by one device: one row per setting, grid
order, byte-identical rows (the same program on another device of the same kind gives the
same bits).  A setting that raises is an ("err", exception) outcome; the others go on.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterator

from hemorrhage.sim import shard


@dataclasses.dataclass
class _Group:
    """One place a setting runs: `loaded` (its model copy there) is compressed and measured there."""

    mesh: object | None  # jax Mesh, or None: the default device, exactly as without sharding
    device: object | None
    loaded: object

    def run(self, method: str, settings: dict, calib: dict, base) -> dict:
        import contextlib

        import jax

        from hemorrhage.sim.compress import compress_from_args
        from hemorrhage.validate.measure import measure

        many = self.mesh is not None and self.mesh.devices.size > 1
        where = jax.default_device(self.device) if self.device is not None else contextlib.nullcontext()
        with where, shard.data_parallel(self.mesh if many else None):
            comp, record = compress_from_args(self.loaded, method, **{**calib, **settings})
            placed = sorted(str(d) for d in shard.devices_of(comp))
            res = measure(self.loaded, comp, base, record)
        return {"result": res, "devices": placed}


class Runner:
    def __init__(self, groups: list[_Group], log):
        self.groups, self.log = groups, log
        self.placement: dict[str, list[str]] = {}

    def run(self, todo: list[tuple], calib: dict, base) -> Iterator[tuple[tuple, tuple]]:
        """Yield (item, ("ok", res) | ("err", exception)) for each (key, method, settings) in
        `todo`, in that order."""
        if len(self.groups) == 1:  # in this thread: the plain loop of a one-device sweep
            for item in todo:
                yield item, self._one(self.groups[0], item, calib, base)
            return
        jobs: queue.Queue = queue.Queue()
        for i, item in enumerate(todo):
            jobs.put((i, item))
        done: dict[int, tuple] = {}
        cond, stop = threading.Condition(), threading.Event()

        def worker(group: _Group) -> None:
            while not stop.is_set():
                try:
                    i, item = jobs.get_nowait()
                except queue.Empty:
                    return
                try:
                    outcome = self._one(group, item, calib, base)
                except BaseException as e:  # never leave the writer waiting for this index
                    outcome = ("err", e)
                with cond:
                    done[i] = outcome
                    cond.notify_all()

        threads = [
            threading.Thread(target=worker, args=(g,), daemon=True, name=f"sweep-{n}")
            for n, g in enumerate(self.groups)
        ]
        for t in threads:
            t.start()
        try:
            for i, item in enumerate(todo):
                with cond:
                    while i not in done:
                        cond.wait(timeout=1.0)
                    outcome = done.pop(i)
                yield item, outcome
        finally:
            stop.set()  # a kill or an error in the writer: workers stop after their setting

    def _one(self, group: _Group, item: tuple, calib: dict, base) -> tuple:
        key, method, settings = item
        try:
            got = group.run(method, settings, calib, base)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # one bad setting must not take the sweep down
            return ("err", e)
        self.placement[key] = got["devices"]
        return ("ok", got["result"])


def make_runner(loaded, devices: int = 1, mesh_shape: dict | None = None, log=None) -> Runner:
    """`devices` groups of `mesh_shape` devices each (default 1).  devices = 1 and no mesh:
    the loaded model as it is, on the default device (the sweep as it always ran)."""
    log = log or (lambda msg: None)
    if devices == 1 and not mesh_shape:
        return Runner([_Group(None, None, loaded)], log)
    meshes = shard.device_groups(devices, mesh_shape)
    groups = []
    for mesh in meshes:
        first = mesh.devices.flat[0]
        if mesh.devices.size == 1:
            model = shard.to_device(loaded.model, first)
        else:  # weights tensor-parallel over the group's "model" axis, replicated over "data"
            from flax import nnx

            model = shard.shard_model(nnx.clone(loaded.model), mesh)
        groups.append(_Group(mesh, first, dataclasses.replace(loaded, model=model)))
    shape = "×".join(f"{a}={n}" for a, n in meshes[0].shape.items())
    log(f"{len(groups)} device group(s) of {shape}: " + ", ".join(str(m.devices.flat[0]) for m in meshes))
    return Runner(groups, log)
