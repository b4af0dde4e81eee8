"""Flags and helpers shared by the commands."""

from __future__ import annotations

import json
import sys

from hemorrhage.sim.outputs import jsonable
from hemorrhage.sim.hub.registry import DEFAULT_MODEL


def add_model(parser) -> None:
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"registry name or a local HF checkpoint folder (default {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--allow-pickle", action="store_true", help="allow loading pickle (.bin) weights; pickle can run arbitrary code"
    )
    # the names of sim.models.weights.DTYPES, spelled here so `-h` imports no JAX
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="weights and activations in this dtype (default auto: as the checkpoint stores "
        "them; the packaged models are fp32); softmax, KL, norms' statistics and every "
        "compression method's arithmetic stay fp32",
    )


def load_model(args):
    from hemorrhage.sim import load

    return load(args.model, allow_pickle=getattr(args, "allow_pickle", False), dtype=getattr(args, "dtype", "auto"))


def schedule_for_held_dtype(args) -> bool:
    """Before any JAX computation: XLA:CPU's memory-first scheduler when the model will be
    held in bf16/fp16 (sim/xla_flags.py says why).  The dtype is read from the flag, or for
    `--dtype auto` from a local folder's safetensors headers (registry models are fp32); a
    folder that cannot be read is left to the command, which reports it."""
    from pathlib import Path

    from hemorrhage.errors import UserError
    from hemorrhage.sim.models.weights import held_dtype
    from hemorrhage.sim.xla_flags import prefer_memory_first_schedule

    dtype = getattr(args, "dtype", None)
    if dtype is None:
        return False
    held = dtype
    if dtype == "auto":
        path = Path(str(getattr(args, "model", "") or "")).expanduser()
        try:
            held = held_dtype(path, "auto") if path.is_dir() else None
        except (UserError, OSError, ValueError):
            held = None
    return prefer_memory_first_schedule(held)


def add_overwrite(parser) -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a folder that holds files hemorrhage did not write: the files of the "
        "names hemorrhage writes (config.json, model.safetensors, ...) are replaced there, "
        "nothing else is touched",
    )


def check_export_out(args) -> None:
    """--out of an exported checkpoint, checked before the model loads (sim.outputs): a
    folder of the user's needs --overwrite; --out must not be the --model folder itself."""
    from pathlib import Path

    from hemorrhage.sim.compress.export import check_export_out as check

    src = Path(args.model).expanduser()
    check(src if src.is_dir() else None, args.out, overwrite=getattr(args, "overwrite", False))


def check_dirs(args, *flags: str) -> None:
    """Folders the command writes files into by name (--results, --figures): usable
    (not below a file, not a file, writable), checked before any model loads.  An empty
    value means "do not write" and is skipped."""
    from hemorrhage.sim.outputs import check_path

    for flag in flags:
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value:
            check_path(value, want="dir", flag=flag)


def add_mesh(parser) -> None:
    parser.add_argument(
        "--mesh",
        metavar="AXIS=N[,AXIS=N]",
        help="run on a device mesh, e.g. data=8 or data=2,model=4: calibration and batches "
        "split over 'data', weights tensor-parallel over 'model' (hemorrhage.sim.shard)",
    )


def mesh_shape(args) -> dict | None:
    """The --mesh shape, validated (one-line UserError: syntax, enough devices) before anything loads."""
    from hemorrhage.sim.shard import make_mesh, parse_mesh

    shape = parse_mesh(getattr(args, "mesh", None))
    if shape:
        make_mesh(shape)
    return shape


def place_on_mesh(loaded, shape: dict | None):
    """(loaded with its model's weights placed on the mesh, the mesh) or (loaded, None)."""
    if not shape:
        return loaded, None
    from hemorrhage.sim.shard import make_mesh, shard_model

    mesh = make_mesh(shape)
    shard_model(loaded.model, mesh)
    return loaded, mesh


def print_json(obj, *, timings: bool = False) -> None:
    """obj as sorted JSON on stdout; wall-clock `timings` (sim.timings) only when asked, so the
    same command prints the same bytes."""
    if not timings:
        from hemorrhage.sim.timings import without_timings

        obj = without_timings(obj)
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, allow_nan=True, default=jsonable)
    sys.stdout.write("\n")


_SETTINGS = (
    "sparsity",
    "pattern",
    "bits",
    "group_size",
    "symmetric",
    "act_order",
    "damp",
    "n_drop",
    "part",
    "rank",
    "layers",
    "span",
    "at",
    "share",
    "schedule",
    "variant",
    "rank_ratio",
    "param_ratio",
)
_OWL = {"owl_base": "base", "owl_lambda": "lam", "owl_m": "m"}


def add_compression(parser, default_method: str = "magnitude") -> None:
    """The compression plan: method and its settings (each method takes its own subset)."""
    g = parser.add_argument_group("compression")
    g.add_argument("--method", default=default_method, help="compression method (see `hemorrhage compress -h`)")
    g.add_argument("--sparsity", type=float, help="pruning: share of weights removed, in [0, 1)")
    g.add_argument("--pattern", help="pruning: N:M semi-structured pattern, e.g. 2:4")
    g.add_argument("--bits", type=int, help="quantization: bits per weight")
    g.add_argument("--group-size", type=int, help="quantization: weights per scale (default per channel)")
    g.add_argument("--calib-samples", type=int, default=16, help="calibration windows of real text")
    g.add_argument("--calib-seqlen", type=int, default=128, help="tokens per calibration window")
    g.add_argument("--seed", type=int, default=0)
    sym = g.add_mutually_exclusive_group()
    sym.add_argument(
        "--symmetric",
        dest="symmetric",
        action="store_const",
        const=True,
        default=None,
        help="quantization: symmetric grid, no zero point",
    )
    sym.add_argument(
        "--asymmetric",
        dest="symmetric",
        action="store_const",
        const=False,
        help="quantization: min/max grid with a zero point (default)",
    )
    g.add_argument(
        "--act-order",
        action="store_const",
        const=True,
        default=None,
        help="gptq: quantize columns in order of decreasing activation energy",
    )
    g.add_argument("--damp", type=float, help="gptq/sparsegpt: Hessian dampening, share of mean diag (0.01)")
    g.add_argument("--n-drop", type=int, help="drop: how many blocks/branches to remove (default 1)")
    g.add_argument("--part", help="drop: block | attn | mlp (default block)")
    g.add_argument("--rank", help="drop: cos | shortgpt | angular | list (default cos; list with --layers)")
    g.add_argument("--layers", help="drop: 0-based layers to remove, e.g. 3,5,7-9")
    g.add_argument("--span", help="expand: duplicate blocks a..b-1 after block b-1 (SOLAR), e.g. 8:16")
    g.add_argument("--at", help="expand: insert identity blocks (zeroed o/down) at these depths, e.g. 3,7")
    g.add_argument("--share", type=float, help="heads/channels: share of KV groups / MLP channels removed, in [0, 1)")
    g.add_argument("--schedule", help="heads/channels: per-layer shares uniform | global | owl (default uniform)")
    g.add_argument("--variant", help="lowrank: plain | asvd (activation-aware SVD, default)")
    g.add_argument("--rank-ratio", type=float, help="lowrank: rank = rank_ratio · min(out, in), in (0, 1]")
    g.add_argument("--param-ratio", type=float, help="lowrank: kept share of each linear's weights, in (0, 1] (0.8)")
    g.add_argument("--owl-base", help="owl: wanda | magnitude (default wanda)")
    g.add_argument("--owl-lambda", type=float, help="owl: density spread λ (0.08)")
    g.add_argument("--owl-m", type=float, help="owl: outlier threshold M × mean (5)")


def compression_settings(args) -> dict:
    """The method settings given on the command line (each method validates its own)."""
    s = {k: getattr(args, k) for k in _SETTINGS if getattr(args, k, None) is not None}
    s.update({field: getattr(args, flag) for flag, field in _OWL.items() if getattr(args, flag, None) is not None})
    return s


def check_compression(args, model=None) -> None:
    """Build the method and check the calibration flags before a model loads, so a bad
    setting is one line in a second rather than after loading the model; given the loaded
    `model`, also what depends on it (a group size that divides, blocks that exist), before
    any work on it."""
    from hemorrhage.sim.compress import make_method
    from hemorrhage.sim.compress.registry import check_calibration

    check_calibration(calib_samples=args.calib_samples, calib_seqlen=args.calib_seqlen, seed=args.seed)
    method = make_method(args.method, **compression_settings(args))
    if model is not None and hasattr(method, "check"):
        method.check(model)


def compress_loaded(loaded, args, mesh=None):
    """(compressed model, record) for the plan on the command line (calibration
    data-parallel over `mesh`'s "data" axis when given)."""
    from hemorrhage.sim.compress import compress_from_args

    return compress_from_args(
        loaded,
        args.method,
        calib_samples=args.calib_samples,
        calib_seqlen=args.calib_seqlen,
        seed=args.seed,
        mesh=mesh,
        **compression_settings(args),
    )
