"""One call from a registry name or a checkpoint folder to a ready model + tokenizer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hemorrhage.errors import UserError


@dataclass
class Loaded:
    model: object  # a hemorrhage.sim.models.CausalLM
    cfg: object  # ModelConfig
    tokenizer: object
    path: Path
    name: str
    base_note: str  # what the base already carries (GGUF quantization, or nothing known)
    dtype: str = "float32"  # what the weights are held in (--dtype, auto resolved)


def load_tokenizer(path: str | Path):
    import transformers

    transformers.logging.set_verbosity_error()
    try:
        return transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # any failure to build the tokenizer is the folder's problem
        raise UserError(f"cannot load a tokenizer from {path}: {str(e).splitlines()[0][:200]}") from None


def load(model: str, *, allow_pickle: bool = False, quiet: bool = False, dtype: str = "auto") -> Loaded:
    """`model` is a registry name (fetched on first use) or a local HF checkpoint folder;
    its weights held in `dtype` (auto | float32 | bfloat16 | float16; auto = as stored)."""
    from hemorrhage.sim.models import load_checkpoint
    from hemorrhage.sim.models.bert import is_bert_folder
    from hemorrhage.sim.models.loader import checkpoint_files
    from hemorrhage.sim.hub.preflight import check_checkpoint, check_has_weights
    from hemorrhage.sim.models.weights import check_dtype_name, held_dtype
    from hemorrhage.sim.xla_flags import prefer_memory_first_schedule
    from hemorrhage.sim.hub.registry import resolve

    check_dtype_name(dtype)  # a typo is one line before any fetch
    path = resolve(model, quiet=quiet)
    check_has_weights(path)  # a config-only folder: only `hemorrhage memory` takes one
    if is_bert_folder(path):  # a sentence encoder (sim/models/bert.py): no LM head, held in fp32
        return _load_encoder(model, path, dtype)
    checkpoint_files(path, allow_pickle)  # the folder itself first: not one, no config.json, pickle only
    check_checkpoint(path)  # then a malformed config or weight file, as one line (sim/hub/preflight.py)
    prefer_memory_first_schedule(held_dtype(path, dtype))  # acts only if no JAX computation ran yet
    net, cfg = load_checkpoint(path, allow_pickle=allow_pickle, dtype=dtype)
    tok = load_tokenizer(path)
    note = "user checkpoint: base precision as stored"
    prov = path / "hemorrhage.json"
    if prov.is_file():
        note = json.loads(prov.read_text()).get("base_note", note)
    return Loaded(net, cfg, tok, path, str(model), note, str(net.embed.w[...].dtype))


def _load_encoder(model: str, path: Path, dtype: str) -> Loaded:
    from hemorrhage.sim.models.bert import load_encoder

    if dtype not in ("auto", "float32"):
        raise UserError(f"{model} is a BERT encoder, held in float32 only (got --dtype {dtype})")
    net, cfg = load_encoder(path)
    note = "user checkpoint: base precision as stored"
    prov = path / "hemorrhage.json"
    if prov.is_file():
        note = json.loads(prov.read_text()).get("base_note", note)
    return Loaded(net, cfg, load_tokenizer(path), path, str(model), note, "float32")
