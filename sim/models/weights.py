"""Checkpoint tensors read one at a time, converted to the dtype asked on the way in.

    DTYPES                       the --dtype names: auto | float32 | bfloat16 | float16
    weight_files(path)           the *.safetensors a folder's model is made of: the shards
                                 model.safetensors.index.json names, else every *.safetensors
    TensorReader(files, dtype)   .get(name) -> np.ndarray in `dtype`, read from its file only
                                 when asked, so the peak is the model in `dtype` plus one
                                 tensor, never the whole checkpoint twice
    resolve_dtype(stored, asked) the dtype the model is held in (auto = the stored one)

Why: every tensor used to be read into one dict and cast to fp32 before the model was filled,
so a bf16 checkpoint was held three times (file bytes, fp32 copy, device copy).  A shard the
index does not list is a stray (an older export, a half-copied folder): not loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np

from hemorrhage.errors import UserError

INDEX = "model.safetensors.index.json"
DTYPES = ("auto", "float32", "bfloat16", "float16")
_NP = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16), "float16": np.dtype(np.float16)}
# safetensors' header spelling -> ours; anything else (F64, F8_*, integers) cannot be held as asked
_STORED = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
_CONVERTIBLE = set(_STORED) | {"F64"}
_FILE_DTYPES = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F64": np.dtype("<f8"),
}


def np_dtype(name: str) -> np.dtype:
    """numpy dtype of a resolved --dtype name (bfloat16 through ml_dtypes, as JAX uses)."""
    return _NP[name]


def check_dtype_name(name: str) -> str:
    if name not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return name


def read_index(path: Path) -> dict[str, str] | None:
    """tensor name -> shard file name from the folder's index.json, or None without one."""
    f = path / INDEX
    if not f.is_file():
        return None
    try:
        index = json.loads(f.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise UserError(f"{f} is not JSON (corrupt index)") from None
    wm = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wm, dict) or not wm or not all(isinstance(v, str) for v in wm.values()):
        raise UserError(f"{f}: weight_map must be a non-empty object of tensor name -> shard file")
    return wm


def weight_files(path: Path) -> list[Path]:
    """The safetensors shards of the folder: those the index names (each must exist, no
    path outside the folder), else every *.safetensors in it."""
    wm = read_index(path)
    if wm is None:
        return sorted(path.glob("*.safetensors"))
    files = []
    for name in sorted(set(wm.values())):
        f = path / name
        if Path(name).name != name or not f.is_file():
            raise UserError(f"{path / INDEX} names the shard {name!r}, which is not a file in {path}")
        files.append(f)
    return files


def stored_tags(headers: dict[Path, dict]) -> dict[str, str]:
    """tensor name -> its safetensors dtype tag (F32, BF16, I8, ...), from the given headers."""
    return {
        k: str(v.get("dtype"))
        for h in headers.values()
        for k, v in h.items()
        if k != "__metadata__" and isinstance(v, dict)
    }


def resolve_dtype(stored: set[str], asked: str) -> str:
    """The dtype the model is held in, from the tags of the tensors it loads (`stored`: a
    buffer it does not load, e.g. GPT-2's causal-mask bias, does not count).  auto = the
    stored dtype (the widest where tensors are stored in several, so nothing loses precision
    at load); a stored dtype that is not a float we can convert (integer codes, fp8) is
    refused, as is auto on one we do not run in (fp64: pass --dtype float32)."""
    check_dtype_name(asked)
    odd = sorted(t for t in stored if t not in _CONVERTIBLE)
    if odd:
        raise UserError(
            f"the checkpoint stores tensors as {', '.join(map(str, odd))}, which cannot be held as "
            "float32/bfloat16/float16 (a quantized checkpoint: dequantize it first)"
        )
    if asked != "auto":
        return asked
    if "F64" in stored:
        raise UserError(
            "the checkpoint is stored in float64, which hemorrhage does not run in: "
            "pass --dtype float32 (or bfloat16/float16)"
        )
    for tag in ("F32", "BF16", "F16"):  # widest first; BF16 before F16: its range is fp32's
        if tag in stored:
            return _STORED[tag]
    return "float32"  # no tensors at all: the loader then names the first one missing


def held_dtype(path: Path, asked: str) -> str | None:
    """The dtype `load_checkpoint` will hold the folder's model in, from the safetensors
    headers alone (no tensor read); None where that needs the tensors (pickle weights).
    Every stored tensor counts here, where the loader counts only those it fills from: the
    two differ only for a checkpoint whose unused buffers are wider than its weights."""
    from hemorrhage.sim.hub.preflight import safetensors_header

    files = weight_files(path)
    if not files:
        return asked if asked != "auto" else None
    return resolve_dtype(set(stored_tags({f: safetensors_header(f) for f in files}).values()), asked)


class TensorReader:
    """Lazy name -> tensor view of a checkpoint's safetensors files.

    Only the headers are read up front; `get` reads one tensor's bytes from its file into a
    fresh array (a plain read, not a memory map: a mapped file stays resident as the tensors
    are touched and counted twice, measured 2.1x the fp32 weights' peak RSS on SmolLM2) and
    converts it to `dtype` (no-op when stored so), so a caller that drops each tensor after
    use holds one at a time."""

    def __init__(self, files: list[Path], dtype: str, headers: dict[Path, dict] | None = None):
        from hemorrhage.sim.hub.preflight import safetensors_header

        self.dtype = np_dtype(dtype)
        headers = headers or {f: safetensors_header(f) for f in files}
        self.where = {k: (f, v) for f, h in headers.items() for k, v in h.items() if k != "__metadata__"}

    def get(self, name: str) -> np.ndarray | None:
        f, entry = self.where.get(name, (None, None))
        if f is None:
            return None
        t = read_tensor(f, name, entry)
        with np.errstate(over="ignore"):  # fp16 overflow is a result (validate.dtype_floor), not a warning
            return t.astype(self.dtype, copy=False)


def read_tensor(f: Path, name: str, entry: dict) -> np.ndarray:
    """One tensor of a safetensors file, as stored: its bytes read at the header's offsets."""
    try:
        dtype, shape = _FILE_DTYPES[entry["dtype"]], tuple(int(s) for s in entry["shape"])
        a, b = (int(x) for x in entry["data_offsets"])
        with open(f, "rb") as fh:
            (n,) = np.frombuffer(fh.read(8), "<u8")
            if (b - a) != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
                raise ValueError(f"tensor {name!r}: {b - a} bytes for shape {list(shape)} of {entry['dtype']}")
            fh.seek(8 + int(n) + a)
            buf = bytearray(b - a)  # read straight into the array's own memory: one copy of the tensor
            if fh.readinto(buf) != b - a:
                raise ValueError(f"tensor {name!r} ends past the end of the file")
        return np.frombuffer(buf, dtype).reshape(shape)
    except (KeyError, TypeError, ValueError, OSError) as e:  # a corrupt file: which and why, in one line
        raise UserError(f"cannot read weights {f.name}: {str(e).splitlines()[0][:200]}") from None


class DictReader:
    """The same interface over tensors already in memory (opted-in pickle checkpoints)."""

    def __init__(self, tensors: dict[str, np.ndarray], dtype: str):
        self.tensors, self.dtype = tensors, np_dtype(dtype)

    def get(self, name: str) -> np.ndarray | None:
        t = self.tensors.get(name)
        with np.errstate(over="ignore"):
            return None if t is None else np.asarray(t).astype(self.dtype, copy=False)
