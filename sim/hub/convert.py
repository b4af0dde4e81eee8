"""GGUF -> Hugging Face folder (config.json, model.safetensors, tokenizer), once.

Weights are dequantized with numpy (`gguf.quants.dequantize`); we undo llama.cpp's
layout changes ourselves:
  * Llama q/k rows were permuted from rotate-half to interleaved RoPE order;
  * Gemma norm weights were stored as 1 + w (HF keeps w and adds 1 at run time).
transformers reads the config and rebuilds the tokenizer from the GGUF metadata.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

from hemorrhage.errors import UserError

_BLOCK = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",  # Llama; remapped for Gemma below
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_GEMMA_BLOCK = {"ffn_norm": "pre_feedforward_layernorm"}
_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def hf_name(gguf_name: str, arch: str) -> str:
    """'blk.3.attn_q.weight' -> 'model.layers.3.self_attn.q_proj.weight'."""
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    if m:
        i, part, kind = m.groups()
        table = {**_BLOCK, **(_GEMMA_BLOCK if arch.startswith("gemma") else {})}
        if part not in table:
            raise UserError(f"unknown GGUF tensor {gguf_name!r} for {arch}")
        return f"model.layers.{i}.{table[part]}.{kind}"
    m = re.fullmatch(r"(\w+)\.(weight|bias)", gguf_name)
    if m and m.group(1) in _TOP:
        return f"{_TOP[m.group(1)]}.{m.group(2)}"
    raise UserError(f"unknown GGUF tensor {gguf_name!r} for {arch}")


def unpermute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's permute: rows (head, 2, d/2) were stored as (head, d/2, 2)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(path: Path, arch: str, n_head: int, n_kv: int, *, quiet: bool = False):
    """(HF name -> shape) of every tensor, read from the GGUF's metadata alone, and an iterator
    that dequantizes them one at a time, in that order, to fp32 (name, array).

    One at a time because a 1.5 B model is 6.2 GB in fp32: a dict of all of them, then
    safetensors' own serialisation (a bytes copy of each), held it twice."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(path))
    tensors = reader.tensors
    shapes = {hf_name(t.name, arch): tuple(int(x) for x in reversed(t.shape)) for t in tensors}  # GGUF dims: [in, out]

    def arrays():
        iterator = tensors
        if not quiet:
            from tqdm import tqdm

            iterator = tqdm(tensors, desc="dequantizing", unit="tensor", file=sys.stderr)
        for t in iterator:
            name = hf_name(t.name, arch)
            w = np.asarray(dequantize(t.data, t.tensor_type), np.float32).reshape(shapes[name])
            if arch == "llama" and ".q_proj." in name:
                w = unpermute_rope(w, n_head)
            elif arch == "llama" and ".k_proj." in name:
                w = unpermute_rope(w, n_kv)
            elif arch.startswith("gemma") and name.endswith("norm.weight"):
                w = w - 1.0
            yield name, np.ascontiguousarray(w)

    return shapes, arrays()


def write_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], arrays, metadata: dict[str, str]) -> None:
    """An fp32 safetensors file written tensor by tensor: the header (8-byte little-endian
    length, then JSON of dtype, shape and [begin, end) byte offsets, padded to 8 bytes) comes
    from `shapes`, then each array of `arrays` (name, np.ndarray, in the order of `shapes`) is
    appended as it arrives; nothing keeps more than the one array in hand."""
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name, shape in shapes.items():
        nbytes = 4 * int(np.prod(shape, dtype=np.int64))
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    order = iter(shapes)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name, w in arrays:
            if name != next(order, None) or w.shape != shapes[name] or w.dtype != np.float32:
                raise UserError(f"GGUF tensor {name!r} does not match its metadata ({w.shape}, {w.dtype})")
            f.write(memoryview(np.ascontiguousarray(w)).cast("B"))
        if next(order, None) is not None:
            raise UserError(f"{path.name}: fewer tensors than the GGUF's metadata lists")


def gguf_to_hf(gguf_path: Path, out_dir: Path, *, quiet: bool = False) -> None:
    """Write config.json, model.safetensors and the tokenizer files into out_dir."""
    import transformers

    transformers.logging.set_verbosity_error()
    try:  # transformers reads GGUF only with torch installed (a core dependency, but check)
        import torch  # noqa: F401
    except ImportError:
        raise UserError("converting a GGUF checkpoint needs torch: pip install torch==2.13.0") from None
    folder, fname = str(gguf_path.parent), gguf_path.name
    config = transformers.AutoConfig.from_pretrained(folder, gguf_file=fname)
    hf = config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        hf.pop(key, None)
    hf["architectures"] = [type(config).__name__.replace("Config", "ForCausalLM").replace("TextFor", "For")]
    if hf.get("model_type") == "gemma3_text":
        hf["architectures"] = ["Gemma3ForCausalLM"]
    arch = "gemma3" if hf["model_type"].startswith("gemma3") else hf["model_type"]
    n_head = int(hf["num_attention_heads"])
    n_kv = int(hf.get("num_key_value_heads") or n_head)
    shapes, arrays = gguf_tensors(gguf_path, arch, n_head, n_kv, quiet=quiet)
    if hf.get("tie_word_embeddings") and "lm_head.weight" in shapes:
        hf["tie_word_embeddings"] = False
    (out_dir / "config.json").write_text(json.dumps(hf, indent=2, default=str))
    write_safetensors(out_dir / "model.safetensors", shapes, arrays, {"format": "pt"})
    if not quiet:
        print("[hemorrhage] rebuilding the tokenizer from GGUF metadata", file=sys.stderr)
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    tok.save_pretrained(str(out_dir))
