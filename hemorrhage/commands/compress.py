"""hemorrhage compress --model M --method METHOD [settings] --out DIR

Compress a model with one method, print what was done (achieved sparsity or bits,
memory of the linear weights vs fp32, a warning when the requested grid coincides with
the GGUF grid the base already lies on) and write a Hugging Face safetensors folder
(dense effective weights + config + tokenizer + hemorrhage_compression.json) that
transformers loads and runs.

Methods and their settings:
  magnitude  --sparsity | --pattern N:M
  wanda      --sparsity | --pattern N:M                    (calibrated)
  sparsegpt  --sparsity | --pattern N:M  [--damp]          (calibrated)
  owl        --sparsity [--owl-base wanda|magnitude] [--owl-lambda] [--owl-m]   (calibrated)
  drop       --part block|attn|mlp  --n-drop N  --rank cos|shortgpt|angular  | --layers 3,5,7-9
  expand     --span a:b (duplicate blocks a..b-1)  | --at 3,7 (identity blocks at these depths)
  heads      --share S [--schedule uniform|global|owl]   remove KV groups (GQA) / heads   (calibrated)
  channels   --share S [--schedule uniform|global|owl]   remove MLP intermediate channels (calibrated)
  lowrank    --param-ratio P | --rank-ratio R  [--variant plain|asvd]   two thin matrices per linear
  rtn        --bits [--group-size G] [--symmetric|--asymmetric]
  gptq       --bits [--group-size G] [--symmetric|--asymmetric] [--act-order] [--damp]  (calibrated)
  awq        --bits [--group-size G] [--symmetric|--asymmetric]                        (calibrated)
  w8a8       (int8 weights per channel, int8 activations per token)
Calibration: --calib-samples windows of --calib-seqlen tokens of the packaged Wikipedia
text, drawn with --seed (same seed, same result).
"""

from __future__ import annotations

import argparse

from hemorrhage.commands.common import (
    add_compression,
    add_mesh,
    add_model,
    add_overwrite,
    check_compression,
    check_export_out,
    compression_settings,
    load_model,
    mesh_shape,
    place_on_mesh,
    print_json,
)
from hemorrhage.commands.plan import add_plan_flag, compress_with_plan, read_plan_arg


def add_arguments(p) -> None:
    p.description = __doc__.split("\n\n")[1]
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__[__doc__.index("Methods and") :]
    add_model(p)
    add_compression(p)
    p.add_argument(
        "--out", required=True, help="folder to write: new, empty, or an earlier export (only its files are replaced)"
    )
    add_overwrite(p)
    add_mesh(p)
    add_plan_flag(p)
    p.add_argument("--json", action="store_true", help="print the full record as JSON")
    p.add_argument(
        "--timings",
        action="store_true",
        help="with --json: include the wall-clock seconds (`timings`; without it the same command "
        "prints the same bytes)",
    )


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def summary_lines(record: dict) -> list[str]:
    mem = record.get("memory", {})
    lines = [
        f"method     {record['method']}  "
        + ", ".join(f"{k}={v}" for k, v in record.get("settings", {}).items() if v is not None)
    ]
    if "achieved_sparsity" in record:
        lines.append(f"sparsity   {record['achieved_sparsity']:.4f} of the blocks' linear weights")
    if "bits" in record:
        lines.append(
            f"bits       {record['bits']} per weight stored, "
            f"{8 * mem.get('bytes', 0) / max(record.get('n_weights', 1), 1):.3f} with scales/zeros"
        )
    if "param_share_removed" in record:
        lines.append(f"removed    {record['param_share_removed']:.4f} of the blocks' linear weights (parameters)")
    if "dropped" in record:
        lines.append(f"dropped    {record['part']} {record['dropped']} (ranked by {record['rank']})")
    if mem:
        lines.append(
            f"memory     linear weights {_mb(mem['bytes'])} vs {_mb(mem['fp32_bytes'])} fp32 "
            f"= {mem['ratio']:.4f} (codes/values {mem['value_ratio']:.4f} + scales/indices/masks "
            f"{(mem['bytes'] - mem['value_bytes']) / max(mem['fp32_bytes'], 1):.4f})"
        )
    if "calibration" in record:
        c = record["calibration"]
        lines.append(f"calib      {c['samples']} × {c['seqlen']} tokens of {c['source']}, seed {c['seed']}")
    from hemorrhage.sim.timings import seconds

    lines.append(f"time       {seconds(record):.1f} s")
    for w in record.get("warnings", []):
        lines.append(f"warning    {w}")
    if record.get("export_note"):
        lines.append(f"note       {record['export_note']}")
    if record.get("base_note"):
        lines.append(f"base       {record['base_note']}")
    return lines


def run(args) -> int:
    import sys

    from hemorrhage.sim.compress import compress_from_args, export_hf

    settings = compression_settings(args)
    plan = read_plan_arg(args)
    if plan is None:
        check_compression(args)  # bad names, settings and calibration flags fail here, before loading anything
        from hemorrhage.errors import UserError
        from hemorrhage.sim.compress import make_method

        refusal = getattr(make_method(args.method, **settings), "export_refusal", None)
        if refusal:  # compress writes an HF folder: shapes its config cannot describe are refused before loading
            raise UserError(f"cannot export: {refusal}")
    shape = mesh_shape(args)
    check_export_out(args)  # a folder the user owns, a path below a file: refused before the model loads
    loaded, mesh = place_on_mesh(load_model(args), shape)
    if plan is not None:
        model, record = compress_with_plan(loaded, plan, args, mesh)
    else:
        model, record = compress_from_args(
            loaded,
            args.method,
            calib_samples=args.calib_samples,
            calib_seqlen=args.calib_seqlen,
            seed=args.seed,
            mesh=mesh,
            **settings,
        )
    out = export_hf(model, loaded.path, args.out, record, overwrite=args.overwrite)
    if args.json:
        for w in record.get("warnings", []):
            print(f"hemorrhage: warning: {w}", file=sys.stderr)
        print_json({**record, "out": str(out)}, timings=args.timings)
        return 0
    for line in summary_lines(record):
        print(line)
    print(f"wrote      {out}")
    return 0
