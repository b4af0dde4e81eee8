"""Safetensors checkpoint folder <-> nnx model, through each family's name table."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from hemorrhage.errors import UserError
from hemorrhage.sim.models import gemma3, gpt2, llama
from hemorrhage.sim.models.config import ModelConfig

FAMILY_MODULES = {"llama": (llama.Llama, llama.hf_names), "gemma3": (gemma3.Gemma3, gemma3.hf_names),
                  "gpt2": (gpt2.GPT2, gpt2.hf_names)}


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


def load_state(model, tensors: dict[str, np.ndarray]) -> None:
    """Copy HF tensors into the model's parameters, checking every shape."""
    cfg = model.cfg
    _, names = FAMILY_MODULES[cfg.family]
    for ours, (theirs, transposed) in names(cfg).items():
        t = tensors.get(theirs)
        if t is None and theirs.startswith("transformer."):  # GPT-2 saved without the prefix
            t = tensors.get(theirs[len("transformer."):])
        if t is None:
            raise UserError(f"checkpoint lacks the tensor {theirs!r}")
        t = np.asarray(t, np.float32)
        if transposed:
            t = t.T
        parent, leaf = _resolve(model, ours)
        param = getattr(parent, leaf)
        if tuple(param.shape) != tuple(t.shape):
            raise UserError(f"tensor {theirs!r} has shape {tuple(t.shape)}, config implies {tuple(param.shape)}")
        param.set_value(jnp.asarray(t))


def export_state(model) -> dict[str, np.ndarray]:
    """HF tensor dict of the model's *effective* weights (dequantized / masked layers
    are written dense, so transformers runs exactly what hemorrhage runs)."""
    cfg = model.cfg
    _, names = FAMILY_MODULES[cfg.family]
    out = {}
    for ours, (theirs, transposed) in names(cfg).items():
        parent, leaf = _resolve(model, ours)
        value = parent.weight() if leaf == "w" and hasattr(parent, "weight") else getattr(parent, leaf)[...]
        t = np.asarray(value, np.float32)
        out[theirs] = np.ascontiguousarray(t.T if transposed else t)
    return out


def checkpoint_files(path: Path, allow_pickle: bool = False) -> list[Path]:
    if not path.is_dir():
        raise UserError(f"{path} is not a directory (expected a Hugging Face checkpoint folder)")
    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not a checkpoint: no config.json")
    files = sorted(path.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(path.glob("*.bin")) + sorted(path.glob("*.pt"))
    if pickles and not allow_pickle:
        raise UserError(f"{path} holds only pickle weights ({pickles[0].name}); pickle can run code: "
                        "pass --allow-pickle to load it anyway, or convert to safetensors")
    if pickles:
        return pickles
    raise UserError(f"{path} is not a checkpoint: no *.safetensors weights")


def read_tensors(files: list[Path]) -> dict[str, np.ndarray]:
    tensors = {}
    for f in files:
        try:
            if f.suffix == ".safetensors":
                from safetensors.numpy import load_file

                tensors.update(load_file(str(f)))
            else:
                import torch  # only for opted-in pickle checkpoints

                sd = torch.load(str(f), map_location="cpu", weights_only=True)
                tensors.update({k: v.float().numpy() for k, v in sd.items()})
        except Exception as e:  # a truncated or corrupt file: say which and why, in one line
            raise UserError(f"cannot read weights {f.name}: {str(e).splitlines()[0][:200]}") from None
    return tensors


def load_checkpoint(path: str | Path, *, allow_pickle: bool = False):
    """(model, cfg) from a local HF folder (config.json + safetensors)."""
    path = Path(path)
    files = checkpoint_files(path, allow_pickle)
    cfg = ModelConfig.from_json_file(path / "config.json")
    model = nnx.eval_shape(lambda: build(cfg))  # shapes only: every param is then filled
    load_state(model, read_tensors(files))
    return model, cfg


def read_config_json(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())
