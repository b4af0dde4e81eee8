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

import dataclasses
import time
from typing import Any, Iterator

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
    given = {ALIASES.get(k, k) if ALIASES.get(k) in fields else k: v
             for k, v in settings.items() if v is not None}
    unknown = set(given) - fields
    if unknown:
        raise UserError(f"method {name!r} takes no setting {', '.join(sorted(unknown))}; "
                        f"it takes: {', '.join(sorted(fields)) or 'none'}")
    return cls(**given)  # each dataclass validates itself in __post_init__


def linears(model) -> Iterator[tuple[str, Any, str, Linear]]:
    """(path, parent, attribute, layer) for every linear layer inside the blocks.

    The embedding and the LM head are left alone, as the field does.  Projections of a
    dropped branch (layer dropping) are skipped: there is nothing left to compress."""
    for i, block in enumerate(model.layers):
        for part in ("attn", "mlp"):
            sub = getattr(block, part)
            for attr in ("q", "k", "v", "qkv", "o", "gate", "up", "down", "fc", "proj"):
                layer = getattr(sub, attr, None)
                if isinstance(layer, nnx.Module) and hasattr(layer, "weight") and not getattr(layer, "dropped", False):
                    yield f"layers.{i}.{part}.{attr}", sub, attr, layer


def needs_calibration(method) -> bool:
    return bool(getattr(method, "needs_calibration", False))


def compress(model, method, calib_tokens=None):
    """A compressed copy of `model` (same class) and a JSON-able record of what was done."""
    from hemorrhage.sim.compress.storage import memory_report

    if hasattr(method, "check"):
        method.check(model)
    if needs_calibration(method) and calib_tokens is None:
        raise UserError(f"method {method.name!r} needs calibration tokens")
    from hemorrhage.sim.compress.blas import single_thread_blas

    small = nnx.clone(model)
    t0 = time.perf_counter()
    with single_thread_blas():
        record = method.apply(small, calib_tokens if needs_calibration(method) else None) or {}
    out = {"method": method.name, "settings": dataclasses.asdict(method), **record}
    out["memory"] = memory_report(small)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return small, out


def calibration_tokens_for(loaded, *, calib_samples: int = 16, calib_seqlen: int = 128, seed: int = 0,
                           calib_source: str = "wiki"):
    from hemorrhage.sim.data import calibration_tokens

    if int(calib_samples) < 1 or int(calib_seqlen) < 2:
        raise UserError(f"--calib-samples must be >= 1 and --calib-seqlen >= 2, "
                        f"got {calib_samples} and {calib_seqlen}")
    return calibration_tokens(loaded.tokenizer, source=calib_source, n_samples=int(calib_samples),
                              seqlen=int(calib_seqlen), seed=int(seed))


def compress_from_args(loaded, method_name: str, **settings):
    """Build the method from CLI-style settings, fetch calibration text if it needs it
    (the packaged Wikipedia excerpt by default), compress `loaded.model`.

    settings: the method's fields (sparsity, pattern, bits, group_size, symmetric,
    act_order, n_drop, part, rank, layers, ...) plus calib_samples, calib_seqlen, seed,
    calib_source.  None values mean "the method's default".  Returns (model, record)."""
    calib = {k: settings.pop(k) for k in CALIB_SETTINGS if k in settings}
    calib = {k: v for k, v in calib.items() if v is not None}
    method = make_method(method_name, **settings)
    if hasattr(method, "check"):
        method.check(loaded.model)
    tokens = None
    if needs_calibration(method):
        calib.setdefault("calib_samples", 16)
        calib.setdefault("calib_seqlen", 128)
        calib.setdefault("seed", 0)
        calib.setdefault("calib_source", "wiki")
        tokens = calibration_tokens_for(loaded, **calib)
    model, record = compress(loaded.model, method, tokens)
    if tokens is not None:
        record["calibration"] = {"source": calib["calib_source"], "samples": int(tokens.shape[0]),
                                 "seqlen": int(tokens.shape[1]), "seed": int(calib["seed"])}
    record["model"] = getattr(loaded, "name", "")
    record["base_note"] = getattr(loaded, "base_note", "")
    return model, record
