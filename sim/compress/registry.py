"""The method registry, the walk over a model's linear layers, `compress` and
`compress_from_args`.

A method is a frozen dataclass with a class attribute `name`, settings as fields
(validated in __post_init__, UserError on bad input), and

    needs_calibration            bool (class attribute or property)
    check(model)                 optional: settings that depend on the model (group size
                                 divides every input dimension, layer indices exist, ...)
    apply(model, calib_tokens)   mutates the (already cloned) model, returns a record dict
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from typing import Any, Iterator

import numpy as np
from flax import nnx

from hemorrhage.errors import UserError
from hemorrhage.sim.models.layers import Linear

METHODS: dict[str, type] = {}

# Settings that are not fields of a method: they choose the calibration data.
CALIB_SETTINGS = ("calib_samples", "calib_seqlen", "seed", "calib_source")
# Alternative spellings accepted by make_method / compress_from_args.
ALIASES = {"n": "n_drop"}


def register(cls):
    """Class decorator: METHODS[cls.name] = cls."""
    METHODS[cls.name] = cls
    return cls


def make_method(name: str, **settings: Any):
    """Build a method from its name and settings; unknown names/settings are UserErrors."""
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; valid: {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    given = {ALIASES.get(k, k) if ALIASES.get(k) in fields else k: v for k, v in settings.items() if v is not None}
    unknown = set(given) - fields
    if unknown:
        raise UserError(
            f"method {name!r} takes no setting {', '.join(sorted(unknown))}; "
            f"it takes: {', '.join(sorted(fields)) or 'none'}"
        )
    return cls(**given)  # each dataclass validates itself in __post_init__


def linears(model) -> Iterator[tuple[str, Any, str, Linear]]:
    """(path, parent, attribute, layer) for every linear layer inside the blocks.

    The embedding and the LM head are left alone, as the field does.  Projections of a
    dropped branch (layer dropping) are skipped: there is nothing left to compress.  In a
    mixture of experts each expert's gate/up/down are layers of their own
    (`layers.i.mlp.experts.e.gate`); the router only if `moe.compress_router` asked for it."""
    for i, block in enumerate(model.layers):
        for path, sub, attr, layer in block_linears(block, f"layers.{i}"):
            if not getattr(layer, "dropped", False):
                yield path, sub, attr, layer


_PROJ = ("q", "k", "v", "qkv", "o", "gate", "up", "down", "fc", "proj")


def block_linears(block, prefix: str) -> Iterator[tuple[str, Any, str, Any]]:
    """(path, parent, attribute, layer) for every projection of one block, dropped ones included."""
    for part in ("attn", "mlp"):
        sub = getattr(block, part)
        subs = [(f"{prefix}.{part}", sub, _PROJ)]
        if getattr(sub, "experts", None) is not None:
            if getattr(sub, "router_compressible", False):
                subs.append((f"{prefix}.{part}", sub, ("router",)))
            subs += [(f"{prefix}.{part}.experts.{e}", ex, _PROJ) for e, ex in enumerate(sub.experts)]
        for where, parent, attrs in subs:
            for attr in attrs:
                layer = getattr(parent, attr, None)
                if isinstance(layer, nnx.Module) and hasattr(layer, "weight"):
                    yield f"{where}.{attr}", parent, attr, layer


def needs_calibration(method) -> bool:
    return bool(getattr(method, "needs_calibration", False))


def compress(model, method, calib_tokens=None, *, mesh=None):
    """A compressed copy of `model` (same class) and a JSON-able record of what was done.

    `mesh` (sim.shard): calibrate data-parallel over its "data" axis (same result up to
    fp32 rounding); None keeps whatever `shard.data_parallel` set, else one device."""
    from hemorrhage.sim import shard
    from hemorrhage.sim.compress.storage import memory_report

    if hasattr(method, "check"):
        method.check(model)
    if needs_calibration(method) and calib_tokens is None:
        raise UserError(f"method {method.name!r} needs calibration tokens")
    from hemorrhage.sim.compress.blas import single_thread_blas

    from hemorrhage.sim.compress.calib import collect_uncalibrated

    small = nnx.clone(model)
    t0 = time.perf_counter()
    dp = shard.data_parallel(mesh) if mesh is not None else contextlib.nullcontext()
    with single_thread_blas(), dp, collect_uncalibrated() as missed:
        record = method.apply(small, calib_tokens if needs_calibration(method) else None) or {}
    out = {"method": method.name, "settings": dataclasses.asdict(method), **record}
    routers = [b.mlp for b in model.layers if getattr(b.mlp, "experts", None) is not None]
    if routers:
        out["moe"] = {
            "router": "compressed"
            if any(getattr(r, "router_compressible", False) for r in routers)
            else "dense (not compressed)",
            "expert_calibration": "each expert on the tokens routed to it, unweighted by the routing "
            "weight; an expert no token reaches uses isotropic statistics "
            "(its method's calibration-free form)",
            "uncalibrated_experts": sorted(missed),
        }
    out["memory"] = memory_report(small)
    out["timings"] = {"seconds": round(time.perf_counter() - t0, 3)}  # sim.timings: not in --json or files
    return small, out


# (tokenizer id, samples, seqlen, seed, source, cache folder) -> (tokenizer, tokens): a sweep draws the
# same calibration windows for every calibrated setting; they are drawn once (the tokenizer
# is held so its id cannot be reused while the entry lives).
_CALIB_MEMO: dict[tuple, tuple] = {}
_CALIB_LOCK = threading.Lock()
CALIB_STATS = {"drawn": 0, "reused": 0}  # counters, for bench/bench_sweep.py


def check_calibration(**calib) -> None:
    """UserError unless every given calibration setting is usable (integers in range, a
    known text source): checked before a model loads, not deep inside the run."""
    from hemorrhage.sim.data import TEXT_SOURCES

    for name, lo in (("calib_samples", 1), ("calib_seqlen", 2), ("seed", 0)):
        v = calib.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < lo):
            raise UserError(f"{name} must be an integer >= {lo}, got {v!r}")
    src = calib.get("calib_source")
    if src is not None and src not in TEXT_SOURCES:
        raise UserError(f"calib_source must be one of {', '.join(TEXT_SOURCES)}, got {src!r}")


def calibration_tokens_for(
    loaded, *, calib_samples: int = 16, calib_seqlen: int = 128, seed: int = 0, calib_source: str = "wiki"
):
    """[calib_samples, calib_seqlen] int32 of the train split (sim.data.calibration_tokens),
    memoised per tokenizer and settings (a read-only array: callers must not write into it)."""
    from hemorrhage.sim.windows import calibration_tokens

    check_calibration(calib_samples=calib_samples, calib_seqlen=calib_seqlen, seed=seed, calib_source=calib_source)
    key = (
        id(loaded.tokenizer),
        int(calib_samples),
        int(calib_seqlen),
        int(seed),
        calib_source,
        os.environ.get("HEMORRHAGE_CACHE"),
    )  # another cache folder may hold other text
    with _CALIB_LOCK:  # sweep workers share one tokenizer: draw under the lock
        hit = _CALIB_MEMO.get(key)
        if hit is not None and hit[0] is loaded.tokenizer:
            CALIB_STATS["reused"] += 1
            return hit[1]
        tokens = calibration_tokens(
            loaded.tokenizer,
            source=calib_source,
            n_samples=int(calib_samples),
            seqlen=int(calib_seqlen),
            seed=int(seed),
        )
        tokens.setflags(write=False)
        while len(_CALIB_MEMO) >= 8:
            _CALIB_MEMO.pop(next(iter(_CALIB_MEMO)))
        _CALIB_MEMO[key] = (loaded.tokenizer, tokens)
        CALIB_STATS["drawn"] += 1
        return tokens


CALIB_DEFAULTS = {"calib_samples": 16, "calib_seqlen": 128, "seed": 0, "calib_source": "wiki"}


def plan(method_name: str, **settings):
    """(method, calibration settings with defaults filled in, or None if it needs none) from
    CLI-style settings (method fields plus CALIB_SETTINGS; None values mean the default)."""
    calib = {k: settings.pop(k) for k in CALIB_SETTINGS if k in settings}
    method = make_method(method_name, **settings)
    if not needs_calibration(method):
        return method, None
    return method, {**CALIB_DEFAULTS, **{k: v for k, v in calib.items() if v is not None}}


def compress_from_args(loaded, method_name: str, *, mesh=None, **settings):
    """Build the method from CLI-style settings, fetch calibration text if it needs it
    (the packaged Wikipedia excerpt by default), compress `loaded.model`.

    settings: the method's fields (sparsity, pattern, bits, group_size, symmetric,
    act_order, n_drop, part, rank, layers, ...) plus calib_samples, calib_seqlen, seed,
    calib_source.  None values mean "the method's default".  `mesh`: see `compress`.
    Returns (model, record)."""
    method, calib = plan(method_name, **settings)
    if hasattr(method, "check"):
        method.check(loaded.model)
    tokens = None
    if calib is not None:
        tokens = calibration_tokens_for(loaded, **calib)
    model, record = compress(loaded.model, method, tokens, mesh=mesh)
    if tokens is not None:
        record["calibration"] = {
            "source": calib["calib_source"],
            "samples": int(tokens.shape[0]),
            "seqlen": int(tokens.shape[1]),
            "seed": int(calib["seed"]),
        }
    record["model"] = getattr(loaded, "name", "")
    record["base_note"] = getattr(loaded, "base_note", "")
    return model, record
