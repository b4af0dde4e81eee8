"""Flags and helpers shared by the commands."""

from __future__ import annotations

import json
import sys

from hemorrhage.sim.registry import DEFAULT_MODEL


def add_model(parser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"registry name or a local HF checkpoint folder (default {DEFAULT_MODEL})")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow loading pickle (.bin) weights; pickle can run arbitrary code")


def load_model(args):
    from hemorrhage.sim import load

    return load(args.model, allow_pickle=getattr(args, "allow_pickle", False))


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, allow_nan=True, default=_jsonable)
    sys.stdout.write("\n")


def _jsonable(x):
    try:
        import numpy as np

        if isinstance(x, np.generic):
            return x.item()
        if hasattr(x, "tolist"):
            return x.tolist()
    except ImportError:
        pass
    return str(x)


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


def compression_settings(args) -> dict:
    keys = ("sparsity", "pattern", "bits", "group_size")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def compress_loaded(loaded, args):
    """(compressed model, record) for the plan on the command line."""
    from hemorrhage.sim.compress import compress_from_args

    return compress_from_args(loaded, args.method, calib_samples=args.calib_samples,
                              calib_seqlen=args.calib_seqlen, seed=args.seed, **compression_settings(args))
