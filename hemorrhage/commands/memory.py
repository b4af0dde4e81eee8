"""hemorrhage memory --model NAME|FOLDER|config.json --dtype bfloat16 [--mesh data=D,model=M]
[--device-memory 80GB] [--command measure|predict|compress] [--json] [--fail-if-not-fits]

Will it fit?  The per-device memory plan of a command, from the model's config alone (a
folder with only config.json is enough): resident weights, XLA's analysis of every program
the command compiles (arguments, outputs, temporaries), the peak and whether it fits.
Nothing is allocated (hemorrhage.sim.memory_plan's docstring says how and what is counted).
"""

from __future__ import annotations

import sys

from hemorrhage.errors import UserError

_SHAPE_FLAGS = ("windows", "seqlen", "prompts", "prompt_len", "new_tokens", "calib_samples", "calib_seqlen")


def add_arguments(p) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="registry name, a checkpoint folder (config.json alone is enough) or a config.json file",
    )
    # spelled here so `-h` imports no JAX: sim.memory_plan.DTYPES / COMMANDS / TARGETS (checked there too)
    p.add_argument("--dtype", default="bfloat16", help="float32, bfloat16 or float16 (default bfloat16)")
    p.add_argument(
        "--mesh",
        metavar="AXIS=N[,AXIS=N]",
        help="plan for a device mesh, e.g. model=8 or data=2,model=4 "
        "(weights tensor-parallel over 'model', as --mesh runs)",
    )
    p.add_argument("--device-memory", help="memory of one device, e.g. 80GB or 24GiB: say whether the plan fits")
    p.add_argument(
        "--command", default="measure", help="the command planned: measure, predict or compress (default measure)"
    )
    p.add_argument(
        "--target",
        default="accelerator",
        help="accelerator (default: a GPU/TPU's programs, from any machine) or this (as this backend "
        "compiles them: what bench/bench_memory_plan.py compares with a measured peak)",
    )
    p.add_argument("--programs", help="comma-separated subset of the command's programs (default all)")
    g = p.add_argument_group("shapes (default: the planned command's own defaults)")
    for flag in _SHAPE_FLAGS:
        g.add_argument("--" + flag.replace("_", "-"), type=int)
    p.add_argument(
        "--fail-if-not-fits",
        action="store_true",
        help="exit 2 with the one-line reason when the plan does not fit --device-memory",
    )
    p.add_argument("--json", action="store_true", help="print the whole plan as JSON")


def request(args):
    """The PlanRequest of the command line, every flag checked (one-line UserError)."""
    from dataclasses import replace

    from hemorrhage.sim.memory_plan import PREDICT_SHAPES, PlanRequest, Shapes, check_request, parse_bytes
    from hemorrhage.sim.shard import parse_mesh

    mesh = parse_mesh(args.mesh) or {}
    memory = None if args.device_memory is None else parse_bytes(args.device_memory)
    if args.fail_if_not_fits and memory is None:
        raise UserError("--fail-if-not-fits needs --device-memory")
    shapes = PREDICT_SHAPES if args.command == "predict" else Shapes()
    given = {f: getattr(args, f) for f in _SHAPE_FLAGS if getattr(args, f) is not None}
    bad = [f for f, v in given.items() if v < (0 if f == "prompts" else 1)]
    if bad:
        raise UserError(f"--{bad[0].replace('_', '-')} must be a positive integer, got {given[bad[0]]}")
    programs = tuple(p.strip() for p in args.programs.split(",") if p.strip()) if args.programs else None
    req = PlanRequest(
        model=args.model,
        dtype=args.dtype,
        mesh=mesh,
        device_memory=memory,
        command=args.command,
        shapes=replace(shapes, **given),
        target=args.target,
        programs=programs,
    )
    check_request(req)
    return req


def _gb(n) -> str:
    return "n/a" if n is None else f"{n / 1e9:.2f} GB"


def summary(plan: dict) -> str:
    mesh = plan["mesh"]
    lines = [
        f"{plan['model']} ({plan['model_type']}, {plan['parameters'] / 1e9:.2f} B parameters) in {plan['dtype']}, "
        f"`{plan['command']}` on {mesh['data'] * mesh['model']} device(s) (data={mesh['data']}, "
        f"model={mesh['model']}), target {plan['target']}",
        f"  weights {_gb(plan['weight_bytes'])} in all, {_gb(plan['weight_bytes_per_device'])} per device"
        + (
            f" + compressed copy of the block linears {_gb(plan['compressed_copy_bytes_per_device'])}"
            if plan["compressed_copy_bytes_per_device"]
            else ""
        ),
    ]
    for name, p in plan["programs"].items():
        lines.append(
            f"  {name:12s} args {_gb(p['argument_bytes'])}  out {_gb(p['output_bytes'])}  "
            f"temp {_gb(p['temp_bytes'])}  -> peak {_gb(p['peak_bytes'])}"
        )
    verdict = (
        ""
        if plan["fits"] is None
        else (" FITS" if plan["fits"] else " DOES NOT FIT") + f" in {_gb(plan['device_memory'])}"
    )
    lines.append(f"  peak per device {_gb(plan['peak_bytes_per_device'])} ({plan['peak_program']}){verdict}")
    lines.append(f"  method: {plan['method']}")
    return "\n".join(lines)


def run(args) -> int:
    from hemorrhage.commands.common import print_json
    from hemorrhage.sim.memory_plan import make_plan

    req = request(args)
    import jax

    # abstract programs are compiled once to be measured, never run: nothing to keep on disk
    jax.config.update("jax_enable_compilation_cache", False)
    plan = make_plan(req)
    if args.json:
        print_json(plan)
    else:
        print(summary(plan))
    if args.fail_if_not_fits and not plan["fits"]:
        raise UserError(
            f"the plan does not fit: peak {_gb(plan['peak_bytes_per_device'])} per device "
            f"({plan['peak_program']}) > --device-memory {_gb(plan['device_memory'])}"
        )
    sys.stdout.flush()
    return 0
