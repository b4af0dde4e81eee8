"""Safetensors checkpoint folder <-> nnx model, through each family's name table."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from hemorrhage.errors import UserError
from hemorrhage.sim.models import gemma3, gpt2, llama, moe, neox, opt
from hemorrhage.sim.models.config import ModelConfig
from hemorrhage.sim.models.weights import DictReader, TensorReader, np_dtype, resolve_dtype, stored_tags, weight_files

_TORCH_TAGS = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "float64": "F64"}  # numpy's names

FAMILY_MODULES = {
    "llama": (llama.Llama, llama.hf_names),
    "gemma3": (gemma3.Gemma3, gemma3.hf_names),
    "gpt2": (gpt2.GPT2, gpt2.hf_names),
    "neox": (neox.NeoX, neox.hf_names),
    "opt": (opt.OPT, opt.hf_names),
    "moe": (moe.MoE, moe.hf_names),
    "gemma2": (gemma3.Gemma3, gemma3.hf_names),
}


def build(cfg: ModelConfig, seed: int = 0):
    cls, _ = FAMILY_MODULES[cfg.family]
    return cls(cfg, rngs=nnx.Rngs(seed))


def _resolve(model, path: str):
    """'layers.3.attn.q.w' -> (parent module, attribute name)."""
    *parents, leaf = path.split(".")
    obj = model
    for part in parents:
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj, leaf


def load_state(model, tensors, dtype: str = "float32") -> None:
    """Fill the model's parameters from HF tensors, one at a time, checking every shape.

    `tensors` is a dict (converted to `dtype`) or a reader of sim.models.weights whose
    `get` returns each tensor already in the model's dtype; each becomes a jax array only
    after that conversion, and is dropped before the next is read."""
    if isinstance(tensors, dict):
        tensors = DictReader(tensors, dtype)
    cfg = model.cfg
    _, names = FAMILY_MODULES[cfg.family]
    for ours, (theirs, transposed, *rows) in names(cfg).items():
        t = tensors.get(theirs)
        if t is None and theirs.startswith("transformer."):  # GPT-2 saved without the prefix
            t = tensors.get(theirs[len("transformer.") :])
        if t is None:
            raise UserError(f"checkpoint lacks the tensor {theirs!r}")
        if transposed:
            t = t.T
        if rows:  # our rows [a, b) of a fused HF tensor (Phi-3's qkv_proj, gate_up_proj)
            a, b = rows[0]
            if t.shape[0] < b:
                raise UserError(f"tensor {theirs!r} has {t.shape[0]} rows, config implies at least {b}")
            t = t[a:b]
        parent, leaf = _resolve(model, ours)
        param = getattr(parent, leaf)
        if tuple(param.shape) != tuple(t.shape):
            raise UserError(f"tensor {theirs!r} has shape {tuple(t.shape)}, config implies {tuple(param.shape)}")
        param.set_value(jnp.asarray(t))
        del t  # before the next read: one host tensor at a time


def export_state(model) -> dict[str, np.ndarray]:
    """HF tensor dict of the model's *effective* weights (dequantized / masked layers
    are written dense, so transformers runs exactly what hemorrhage runs)."""
    cfg = model.cfg
    _, names = FAMILY_MODULES[cfg.family]
    out, pieces = {}, {}
    for ours, (theirs, transposed, *rows) in names(cfg).items():
        parent, leaf = _resolve(model, ours)
        value = parent.weight() if leaf == "w" and hasattr(parent, "weight") else getattr(parent, leaf)[...]
        t = np.asarray(value, np.float32)
        if rows:  # written back fused, its pieces in row order
            pieces.setdefault((theirs, transposed), []).append((rows[0][0], t))
            continue
        out[theirs] = np.ascontiguousarray(t.T if transposed else t)
    for (theirs, transposed), parts in pieces.items():
        t = np.concatenate([t for _, t in sorted(parts, key=lambda p: p[0])])
        out[theirs] = np.ascontiguousarray(t.T if transposed else t)
    return out


def checkpoint_files(path: Path, allow_pickle: bool = False) -> list[Path]:
    if not path.is_dir():
        raise UserError(f"{path} is not a directory (expected a Hugging Face checkpoint folder)")
    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not a checkpoint: no config.json")
    files = weight_files(path)  # the index's shards where it has one: a stray file is not loaded
    if files:
        return files
    pickles = sorted(path.glob("*.bin")) + sorted(path.glob("*.pt"))
    if pickles and not allow_pickle:
        raise UserError(
            f"{path} holds only pickle weights ({pickles[0].name}); pickle can run code: "
            "pass --allow-pickle to load it anyway, or convert to safetensors"
        )
    if pickles:
        return pickles
    raise UserError(f"{path} is not a checkpoint: no *.safetensors weights")


def read_tensors(files: list[Path]) -> dict[str, np.ndarray]:
    """Every tensor of opted-in pickle checkpoints, in memory (pickle cannot be read lazily)."""
    import torch

    tensors = {}
    for f in files:
        try:
            sd = torch.load(str(f), map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated or corrupt file: say which and why, in one line
            raise UserError(f"cannot read weights {f.name}: {str(e).splitlines()[0][:200]}") from None
        # numpy has no bfloat16 through torch: its bits, viewed as ml_dtypes' bfloat16
        tensors.update(
            {
                k: v.view(torch.int16).numpy().view(np_dtype("bfloat16")) if v.dtype == torch.bfloat16 else v.numpy()
                for k, v in sd.items()
            }
        )
    return tensors


def load_checkpoint(path: str | Path, *, allow_pickle: bool = False, dtype: str = "auto"):
    """(model, cfg) from a local HF folder (config.json + safetensors), its weights held in
    `dtype` (auto = as stored; sim.models.weights).  The model is built from shapes only
    (nnx.eval_shape: no random init is materialised) and filled tensor by tensor."""
    path = Path(path)
    files = checkpoint_files(path, allow_pickle)
    cfg = ModelConfig.from_json_file(path / "config.json")
    if files[0].suffix == ".safetensors":
        from hemorrhage.sim.hub.preflight import safetensors_header

        headers = {f: safetensors_header(f) for f in files}
        held = resolve_dtype(_loaded_tags(cfg, stored_tags(headers)), dtype)  # refused here, before the build
        source = TensorReader(files, held, headers)
    else:
        tensors = read_tensors(files)
        tags = {k: _TORCH_TAGS.get(str(t.dtype), str(t.dtype)) for k, t in tensors.items()}
        held = resolve_dtype(_loaded_tags(cfg, tags), dtype)
        source = DictReader(tensors, held)
    model = nnx.eval_shape(lambda: build(cfg))  # shapes only: every param is then filled
    load_state(model, source)
    return model, cfg


def _loaded_tags(cfg: ModelConfig, tags: dict[str, str]) -> set[str]:
    """The stored dtype tags of the tensors the model is filled from (load_state's names)."""
    _, names = FAMILY_MODULES[cfg.family]
    out = set()
    for theirs, *_ in names(cfg).values():
        tag = tags.get(theirs)
        if tag is None and theirs.startswith("transformer."):  # GPT-2 saved without the prefix
            tag = tags.get(theirs[len("transformer.") :])
        if tag is not None:
            out.add(tag)
    return out


def read_config_json(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())
