"""Compression methods: one small dataclass per method, one registry (jaxpruner style).

    method = make_method("magnitude", sparsity=0.5)
    small, record = compress(model, method, calib_tokens)
    small, record = compress_from_args(loaded, "gptq", bits=4, group_size=64)   # fetches calibration text
    export_hf(small, loaded.path, "out/", record)                                # HF safetensors folder

`compress` returns a new model of the same class whose Linear layers are replaced by
compressed ones with the same call signature (storage.py: PackedLinear, NMSparseLinear,
MaskedLinear, ActQuantLinear; drop.py: ZeroAttention/ZeroMLP for dropped branches); `record`
says what was done, with `memory_report` of the linear weights.

Methods (fields):
    magnitude  sparsity, pattern                       pruning.py
    wanda      sparsity, pattern
    sparsegpt  sparsity, pattern, damp
    owl        sparsity, base (wanda|magnitude), lam, m
    drop       part (block|attn|mlp), n_drop, rank (cos|shortgpt|angular|list), layers   drop.py
    expand     span (a:b, duplicate blocks) | at (3,7: identity blocks)            expand.py
    rtn        bits, group_size, symmetric             quant.py
    gptq       bits, group_size, symmetric, act_order, damp, true_sequential
    awq        bits, group_size, symmetric, n_grid
    w8a8       (none)
    heads      share, schedule (uniform|global|owl)           structured.py (smaller shapes)
    channels   share, schedule (uniform|global|owl)
    lowrank    variant (plain|asvd), rank_ratio | param_ratio  lowrank.py (two thin matmuls)
"""

from hemorrhage.sim.compress.registry import (
    METHODS,
    compress,
    compress_from_args,
    linears,
    make_method,
    needs_calibration,
)
from hemorrhage.sim.compress import drop, pruning, quant  # noqa: F401  (register their methods)
from hemorrhage.sim.compress import expand  # noqa: F401  (registers `expand`)
from hemorrhage.sim.compress import lowrank, structured  # noqa: F401  (register heads, channels, lowrank)
from hemorrhage.sim.compress.export import export_hf
from hemorrhage.sim.compress.storage import (
    ActQuantLinear,
    MaskedLinear,
    NMSparseLinear,
    PackedLinear,
    memory_report,
)
from hemorrhage.sim.compress.drop import ZeroAttention, ZeroLinear, ZeroMLP

__all__ = [
    "METHODS",
    "ActQuantLinear",
    "MaskedLinear",
    "NMSparseLinear",
    "PackedLinear",
    "ZeroAttention",
    "ZeroLinear",
    "ZeroMLP",
    "compress",
    "compress_from_args",
    "export_hf",
    "linears",
    "make_method",
    "memory_report",
    "needs_calibration",
]
