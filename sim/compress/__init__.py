"""Compression methods: one small dataclass per method, one registry (jaxpruner style).

    method = make_method("magnitude", sparsity=0.5)
    small, record = compress(model, method, calib_tokens)

`compress` returns a new model of the same class whose Linear layers are replaced by
compressed ones with the same call signature; `record` says what was done.
"""

from hemorrhage.sim.compress.registry import METHODS, compress, linears, make_method
from hemorrhage.sim.compress import pruning  # noqa: F401  (registers its methods)

__all__ = ["METHODS", "compress", "linears", "make_method"]
