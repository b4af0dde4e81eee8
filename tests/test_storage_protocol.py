"""Every layer that stands in for a Linear satisfies `StoredLinear` (sim/compress/storage.py).

The classes are discovered, not listed: every nnx.Module defined in a module of
hemorrhage.sim.compress that has a `weight()` (what makes it a linear's stand-in), so a
storage class added later is checked too.  Its methods are the Protocol's; its bias `b` is
a property or set in its `__init__`.  One instance of each kind a compression method leaves in
a tiny model is checked with isinstance as well.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import jax
import numpy as np
import pytest
from flax import nnx

import hemorrhage.sim.compress as compress_pkg
from hemorrhage.sim.compress.storage import StoredLinear


def protocol_methods() -> list[str]:
    return sorted(
        n for n, v in vars(StoredLinear).items() if callable(v) and (not n.startswith("_") or n == "__call__")
    )


def stand_in_classes() -> list[type]:
    found = {}
    for info in pkgutil.walk_packages(compress_pkg.__path__, compress_pkg.__name__ + "."):
        mod = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(mod, inspect.isclass):
            if cls.__module__ == mod.__name__ and issubclass(cls, nnx.Module) and hasattr(cls, "weight"):
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return [found[k] for k in sorted(found)]


def sets_bias(cls) -> bool:
    if isinstance(inspect.getattr_static(cls, "b", None), property):
        return True
    return any("self.b =" in inspect.getsource(c.__init__) for c in cls.__mro__ if "__init__" in vars(c))


def test_the_protocol_names_the_contract():
    assert protocol_methods() == ["__call__", "nbytes", "storage", "weight"]
    assert "b" in StoredLinear.__annotations__


@pytest.mark.parametrize("cls", stand_in_classes(), ids=lambda c: c.__qualname__)
def test_every_stand_in_class_satisfies_the_protocol(cls):
    missing = [n for n in protocol_methods() if not callable(inspect.getattr_static(cls, n, None))]
    assert not missing, f"{cls.__qualname__} lacks {missing}"
    assert sets_bias(cls), f"{cls.__qualname__} sets no bias `b`"


def test_discovery_sees_the_known_kinds():
    names = {c.__qualname__ for c in stand_in_classes()}
    assert {"PackedLinear", "MaskedLinear", "NMSparseLinear", "ActQuantLinear", "ZeroLinear"} <= names


def test_instances_left_by_compression_are_stored_linears():
    """rtn, magnitude 2:4 and magnitude 50 % on a tiny random Llama: each replaced layer is a
    StoredLinear at runtime, its nbytes() the sum of its storage(), and its forward is x·weight()ᵀ + b."""
    from hemorrhage.sim.compress import compress, linears, make_method
    from hemorrhage.sim.models.config import ModelConfig
    from hemorrhage.sim.models.loader import build

    cfg = ModelConfig(
        family="llama", vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, head_dim=16, d_ff=64
    )
    seen = set()
    for method in (
        make_method("rtn", bits=4),
        make_method("magnitude", pattern="2:4"),
        make_method("magnitude", sparsity=0.5),
    ):
        small, _ = compress(build(cfg), method)
        for name, _, _, layer in linears(small):
            assert isinstance(layer, StoredLinear), name
            w = layer.weight()
            assert w.ndim == 2 and layer.nbytes() == sum(layer.storage().values()) > 0
            x = jax.random.normal(jax.random.key(0), (2, w.shape[1]))
            bias = 0 if layer.b is None else layer.b[...]
            np.testing.assert_allclose(layer(x), x @ w.T + bias, rtol=1e-4, atol=1e-4)
            seen.add(type(layer).__name__)
    assert {"PackedLinear", "NMSparseLinear", "MaskedLinear"} <= seen
