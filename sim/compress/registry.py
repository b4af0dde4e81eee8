"""The method registry, the walk over a model's linear layers, and `compress`."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

from flax import nnx

from hemorrhage.errors import UserError
from hemorrhage.sim.models.layers import Linear

METHODS: dict[str, type] = {}


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
    given = {k: v for k, v in settings.items() if v is not None}
    unknown = set(given) - fields
    if unknown:
        raise UserError(f"method {name!r} takes no setting {', '.join(sorted(unknown))}; "
                        f"it takes: {', '.join(sorted(fields)) or 'none'}")
    return cls(**given)  # each dataclass validates itself in __post_init__


def linears(model) -> Iterator[tuple[str, Any, str, Linear]]:
    """(path, parent, attribute, layer) for every linear layer inside the blocks.

    The embedding and the LM head are left alone, as the field does."""
    for i, block in enumerate(model.layers):
        for part in ("attn", "mlp"):
            sub = getattr(block, part)
            for attr in ("q", "k", "v", "qkv", "o", "gate", "up", "down", "fc", "proj"):
                layer = getattr(sub, attr, None)
                if isinstance(layer, nnx.Module) and hasattr(layer, "weight"):
                    yield f"layers.{i}.{part}.{attr}", sub, attr, layer


def compress(model, method, calib_tokens=None):
    """A compressed copy of `model` (same class) and a JSON-able record of what was done."""
    small = nnx.clone(model)
    record = method.apply(small, calib_tokens)
    return small, {"method": method.name, "settings": dataclasses.asdict(method), **(record or {})}
