"""Write a compressed model as a standard Hugging Face safetensors folder.

    export_hf(model, src_dir, out_dir, record, overwrite=False)

model.safetensors holds `export_state(model)`: every linear's *effective* dense weight
(dequantized codes, masked/N:M-scattered values, zeros for dropped branches), so
transformers runs what hemorrhage runs (W8A8's activation quantization excepted: the
record says so).  config.json and the tokenizer files come from the source checkpoint
folder; hemorrhage_compression.json records what was done.  A new folder appears at once (built
in a temporary folder, then renamed); an existing one must be an earlier export (its
marker, sim/outputs.py) or the user's with `overwrite`, and then only the files written
here are replaced: nothing else in it is touched (sim.outputs.owned_dir).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from hemorrhage.errors import UserError
from hemorrhage.sim.outputs import jsonable

_SKIP = {"model.safetensors.index.json", "hemorrhage_compression.json", "hemorrhage.json"}
_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".gguf", ".pth", ".ckpt", ".h5", ".msgpack"}


def check_export_out(src_dir, out_dir, *, overwrite: bool = False) -> Path:
    """The checks export_hf makes, callable before the model loads (UserError: one line);
    `src_dir` None where the source folder is not known yet (a registry name)."""
    from hemorrhage.sim.outputs import check_output_dir

    out = check_output_dir(out_dir, overwrite=overwrite)
    if src_dir is not None and out.resolve() == Path(src_dir).resolve():
        raise UserError("--out must differ from the source checkpoint folder")
    return out


def export_hf(model, src_dir, out_dir, record: dict, *, overwrite: bool = False) -> Path:
    from safetensors.numpy import save_file

    from hemorrhage.sim.models import export_state
    from hemorrhage.sim.outputs import owned_dir

    src = Path(src_dir)
    if not (src / "config.json").is_file():
        raise UserError(f"{src} has no config.json to copy into the exported folder")
    out = check_export_out(src, out_dir, overwrite=overwrite)
    if record.get("export_refusal"):  # shapes a transformers config cannot describe: refused before writing
        raise UserError(f"cannot export: {record['export_refusal']}")
    tensors = export_state(model)
    with owned_dir(out, command="export_hf", overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for f in sorted(src.iterdir()):
            if f.is_file() and f.suffix not in _WEIGHT_SUFFIXES and f.name not in _SKIP and f.name != "config.json":
                shutil.copy2(f, tmp / f.name)
        cfg = json.loads((src / "config.json").read_text())
        cfg.pop("quantization_config", None)
        # a method that changes the shape (expand) says which fields change; in Gemma 3's text_config where nested
        (cfg["text_config"] if isinstance(cfg.get("text_config"), dict) else cfg).update(record.get("hf_config") or {})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        prov = {}
        if (src / "hemorrhage.json").is_file():
            prov = json.loads((src / "hemorrhage.json").read_text())
        base_note = prov.get("base_note") or record.get("base_note") or "base precision as stored"
        summary = record.get("method", "?")
        prov.update(
            {
                "base_note": f"{base_note}; then compressed by hemorrhage ({summary}, see hemorrhage_compression.json)",
                "compressed_from": str(src),
            }
        )
        (tmp / "hemorrhage.json").write_text(json.dumps(prov, indent=2, default=jsonable) + "\n")
        from hemorrhage.sim.timings import without_timings  # the file is the same bytes for the same plan

        full = {
            **without_timings(record),
            "source": str(src),
            "weights": "dense fp32 effective weights (dequantized / masked)",
        }
        (tmp / "hemorrhage_compression.json").write_text(
            json.dumps(full, indent=2, sort_keys=True, default=jsonable, allow_nan=True) + "\n"
        )
    return out
