"""Checks of a checkpoint folder before a model is built from it: a malformed folder is one
UserError naming what is wrong, never an exception from deep inside the build.

    check_checkpoint(path)      config.json + weight headers, raises UserError

What it checks (sim.hub.loading.load runs it before sim.models.load_checkpoint):
    config.json      UTF-8 text holding one JSON object (not nested absurdly deep)
    model_type       a string (the family table in sim/models/config.py decides the rest)
    sizes            every size field the family reads (hidden_size, num_attention_heads,
                     num_hidden_layers, intermediate_size, vocab_size, head_dim, n_embd, …)
                     is an integer ≥ 1 (optional ones may be absent / null; sliding_window
                     may be 0 = none), below 2³¹ — no ZeroDivisionError or OverflowError
                     later; head count divides the width where the head dim is derived
    numbers          eps, RoPE θ, Gemma's query_pre_attn_scalar and soft-caps, Granite's
                     multipliers, partial_rotary_factor: finite, all but eps > 0
    fields           a field whose value changes the forward in a way not implemented is
                     refused, naming it (sim/models/config_keys.py: every key classified)
    nested           text_config, rope_parameters, rope_scaling: objects; layer_types: a list
                     of strings; eos/bos ids: an integer or a non-empty list of integers
    index            model.safetensors.index.json, where present, is a JSON weight_map whose
                     every shard exists in the folder; only those shards are read (a stray
                     *.safetensors beside them is not)
    weights          each *.safetensors header is readable (8-byte length, JSON within the
                     file): a truncated file is named here, before anything is read; the
                     tensor names hold at least num_hidden_layers blocks (a corrupted layer
                     count would otherwise build millions of blocks before one is missed)

Anything the checks let through is read by ModelConfig.from_hf as before, so a folder that
loaded before still loads the same way.
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path

from hemorrhage.errors import UserError
from hemorrhage.sim.models.config_keys import check_keys

_MAX = 2**31 - 1
# family field -> (required?, least value); 0 where from_hf reads 0 as "the default"
_ROPE_SIZES = {
    "hidden_size": (True, 1),
    "num_attention_heads": (True, 1),
    "num_hidden_layers": (True, 1),
    "intermediate_size": (True, 1),
    "vocab_size": (True, 1),
    "num_key_value_heads": (False, 0),
    "head_dim": (False, 0),
    "max_position_embeddings": (False, 1),
    "sliding_window_pattern": (False, 1),
    "max_window_layers": (False, 0),
    "sliding_window": (False, 0),
}
_GPT2_SIZES = {
    "n_embd": (True, 1),
    "n_head": (True, 1),
    "n_layer": (True, 1),
    "vocab_size": (True, 1),
    "n_inner": (False, 0),
    "n_positions": (False, 1),
}
# OPT names its MLP width ffn_dim
_OPT_SIZES = {
    **{k: v for k, v in _ROPE_SIZES.items() if k != "intermediate_size"},
    "ffn_dim": (True, 1),
    "word_embed_proj_dim": (False, 1),
}
_POSITIVE = (
    "rope_theta",
    "rope_local_base_freq",
    "query_pre_attn_scalar",
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "embedding_multiplier",
    "residual_multiplier",
    "attention_multiplier",
    "logits_scaling",
    "partial_rotary_factor",
)
_FLOATS = ("rms_norm_eps", "layer_norm_epsilon") + _POSITIVE


def check_checkpoint(path: Path) -> dict:
    """The config.json dict of the folder at `path`, after every check above."""
    path = Path(path)
    hf = read_config(path / "config.json")
    check_config(hf)
    from hemorrhage.sim.models.config import ModelConfig  # here: sim.models imports this module

    ModelConfig.from_hf(hf)  # every config refusal (RoPE spellings, fields) before a weight byte is read
    n_layers = _layer_count(hf)
    from hemorrhage.sim.models.weights import weight_files

    files = weight_files(path)  # index.json's shards (each must exist), else every *.safetensors
    blocks: set[int] = set()
    for f in files:  # a sharded checkpoint spreads its blocks over several files
        blocks |= _blocks_in(f)
    if files and n_layers is not None and n_layers > (max(blocks) + 1 if blocks else 0):
        raise UserError(f"config.json says {n_layers} layers but the weights hold blocks {_ranges(sorted(blocks))}")
    return hf


def check_has_weights(path: Path) -> None:
    """UserError for a folder holding a config.json and no weight file at all: such a folder
    plans (`hemorrhage memory`) but cannot run."""
    path = Path(path)
    if not path.is_dir() or not (path / "config.json").is_file():
        return  # not this case: sim.models.loader.checkpoint_files names what is wrong
    kinds = ("*.safetensors", "*.bin", "*.pt", "model.safetensors.index.json")
    if not any(next(path.glob(k), None) for k in kinds):
        raise UserError(
            f"{path} holds a config.json but no weights: only `hemorrhage memory` plans from a config "
            "alone; this command needs the checkpoint's *.safetensors"
        )


def read_config(file: Path) -> dict:
    try:
        raw = file.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {file}: {e.strerror or e}") from None
    try:
        hf = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{file} is not UTF-8 text (not a config.json)") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{file} is not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise UserError(f"{file} nests too deeply to be a config.json") from None
    if not isinstance(hf, dict):
        raise UserError(f"{file} is not a JSON object")
    return hf


def check_config(hf: dict) -> None:
    """UserError unless the fields ModelConfig.from_hf reads have usable types and ranges."""
    mt = hf.get("model_type")
    if not isinstance(mt, str):
        raise UserError(f"config.json: model_type must be a string, got {mt!r}")
    if mt == "gemma3" and "text_config" in hf:
        if not isinstance(hf["text_config"], dict):
            raise UserError("config.json: text_config must be an object")
        hf = {**hf["text_config"], "model_type": "gemma3_text"}
    check_keys(hf, hf["model_type"])  # a forward-changing field we do not run: refused, named
    sizes = _GPT2_SIZES if mt == "gpt2" else _OPT_SIZES if mt == "opt" else _ROPE_SIZES
    got = {}
    for name, (required, lo) in sizes.items():
        if hf.get(name) is None:
            if required:
                raise UserError(f"config.json for {mt} lacks the field {name!r}")
            continue
        got[name] = _size(name, hf[name], lo)
    d, h = (
        (got.get("n_embd"), got.get("n_head"))
        if mt == "gpt2"
        else (got.get("hidden_size"), got.get("num_attention_heads"))
    )
    if d is not None and h is not None and (mt == "gpt2" or not got.get("head_dim")) and d % h:
        raise UserError(f"config.json: width {d} is not divisible by {h} heads")
    for name in _FLOATS:
        v = hf.get(name)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise UserError(f"config.json: {name} must be a finite number, got {v!r}")
        if (name in _POSITIVE and v <= 0) or v < 0:
            raise UserError(f"config.json: {name} must be {'> 0' if name in _POSITIVE else '>= 0'}, got {v!r}")
    for name in ("rope_parameters", "rope_scaling"):
        rope = hf.get(name)
        if rope is None:
            continue
        if not isinstance(rope, dict):
            raise UserError(f"config.json: {name} must be an object, got {rope!r}")
        for kind in ("full_attention", "sliding_attention"):  # Gemma 3: one set per attention type
            if kind in rope and not isinstance(rope[kind], dict):
                raise UserError(f"config.json: {name}.{kind} must be an object, got {rope[kind]!r}")
        for part in [rope] + [v for v in rope.values() if isinstance(v, dict)]:
            for key in ("factor", "rope_theta"):
                if part.get(key) is not None:
                    _number(f"{name}.{key}", part[key])
    lt = hf.get("layer_types")
    if lt is not None and (not isinstance(lt, list) or not all(isinstance(t, str) for t in lt)):
        raise UserError(f"config.json: layer_types must be a list of strings, got {lt!r}")
    for name in ("eos_token_id", "bos_token_id"):
        v = hf.get(name)
        ok = v is None or _is_int(v) or (isinstance(v, list) and v and all(_is_int(x) for x in v))
        if not ok:
            raise UserError(f"config.json: {name} must be an integer or a non-empty list of integers, got {v!r}")
    for name in ("hidden_act", "hidden_activation"):
        if hf.get(name) is not None and not isinstance(hf[name], str):
            raise UserError(f"config.json: {name} must be a string, got {hf[name]!r}")
    from hemorrhage.sim.models.hf_fields import CONFIG_KEYS, check_refused

    if mt in CONFIG_KEYS:  # GPT-NeoX, OPT, MoE: a key that changes the forward and is not implemented
        check_refused(hf, mt)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _size(name: str, v, lo: int = 1) -> int:
    """An integer field: an int (or an integral float / digit string, as from_hf's int() reads)."""
    if isinstance(v, bool):
        n = None
    elif isinstance(v, int):
        n = v
    elif isinstance(v, float) and math.isfinite(v) and v == int(v) or isinstance(v, str) and v.strip().isdigit():
        n = int(v)
    else:
        n = None
    if n is None or not lo <= n <= _MAX:
        raise UserError(f"config.json: {name} must be an integer in [{lo}, {_MAX}], got {v!r}")
    return n


def _number(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise UserError(f"config.json: {name} must be a positive finite number, got {v!r}")
    return float(v)


def _layer_count(hf: dict) -> int | None:
    if hf.get("model_type") == "gemma3" and isinstance(hf.get("text_config"), dict):
        hf = hf["text_config"]
    v = hf.get("n_layer", hf.get("num_hidden_layers"))
    return None if v is None else _size("num_hidden_layers", v)


def safetensors_header(f: Path) -> dict:
    """The JSON header of a safetensors file (tensor name -> dtype, shape, offsets)."""
    size = f.stat().st_size
    with open(f, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise UserError(f"cannot read weights {f.name}: {size} bytes, shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise UserError(
                f"cannot read weights {f.name}: header of {n} bytes in a file of {size} (truncated or not safetensors)"
            )
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise UserError(f"cannot read weights {f.name}: its header is not JSON (corrupt file)") from None
    if not isinstance(header, dict):
        raise UserError(f"cannot read weights {f.name}: its header is not a JSON object")
    end = max(
        (
            int(v["data_offsets"][1])
            for k, v in header.items()
            if k != "__metadata__"
            and isinstance(v, dict)
            and isinstance(v.get("data_offsets"), list)
            and len(v["data_offsets"]) == 2
            and _is_int(v["data_offsets"][1])
        ),
        default=0,
    )
    if 8 + n + end > size:
        raise UserError(
            f"cannot read weights {f.name}: the header describes {8 + n + end} bytes, the file has {size} (truncated)"
        )
    return header


_BLOCK = re.compile(r"(?:^|\.)(?:layers|h)\.(\d+)\.")


def _blocks_in(f: Path) -> set[int]:
    return {int(m.group(1)) for k in safetensors_header(f) for m in [_BLOCK.search(k)] if m}


def _ranges(xs: list[int]) -> str:
    if not xs:
        return "none"
    return f"{xs[0]}..{xs[-1]}" + ("" if len(xs) == xs[-1] - xs[0] + 1 else f" ({len(xs)} of them)")
