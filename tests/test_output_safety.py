"""Nothing the user owns is deleted or overwritten (sim/outputs.py, validate/sweep_file.py).

A folder with the user's files survives `compress --out` it; `--overwrite` writes only our
files there; a re-export into our own folder replaces only what we wrote; an output path
below a file is one line before any model loads; a text file survives `sweep --out` byte
for byte; atomic_dir is a swap that keeps the old folder when the build fails; written
files get the umask's permissions."""

import json
import os
import shutil
from pathlib import Path

import pytest
from helpers import assert_one_line_error, save_tiny_hf

import hemorrhage.sim
from hemorrhage.cli import main
from hemorrhage.errors import UserError
from hemorrhage.sim import outputs


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every entry below `root`: a file's bytes, None for a folder."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def users_folder(root: Path) -> Path:
    (root / "thesis").mkdir(parents=True)
    (root / "notes.txt").write_text("ideas for chapter 3\n")
    (root / "thesis" / "chapter1.tex").write_text("\\section{Intro}\n")
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Llama with SmolLM2's tokenizer files (a checkpoint the CLI loads)."""
    from hemorrhage.sim.hub.registry import fetch_model

    src = fetch_model("smollm2-135m", quiet=True)
    path = save_tiny_hf("llama", tmp_path_factory.mktemp("tiny") / "llama", vocab_size=49152)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f, path / f)
    return path


def compress(capsys, tiny, out, *extra):
    capsys.readouterr()
    code = main(
        ["compress", "--model", str(tiny), "--method", "magnitude", "--sparsity", "0.5", "--out", str(out), *extra]
    )
    return code, *capsys.readouterr()


@pytest.fixture
def no_load(monkeypatch):
    """Loading a model fails loudly: a check that passes it runs before any load."""

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the output path was checked")

    monkeypatch.setattr(hemorrhage.sim, "load", boom)


# ------------------------------------------------------------------ compress --out -----


def test_users_folder_survives_compress_out(capsys, tmp_path, no_load):
    folder = users_folder(tmp_path / "scratch")
    before = snapshot(folder)
    code, _, err = compress(capsys, "unused-model", folder)
    assert code == 2
    assert_one_line_error(code, err, str(folder), "--overwrite")
    assert snapshot(folder) == before


def test_overwrite_writes_ours_and_keeps_the_users(capsys, tmp_path, tiny):
    folder = users_folder(tmp_path / "scratch")
    before = snapshot(folder)
    code, _, err = compress(capsys, tiny, folder, "--overwrite")
    assert code == 0, err
    after = snapshot(folder)
    assert {k: after[k] for k in before} == before  # the user's files, byte for byte
    listed = json.loads((folder / outputs.MARKER).read_text())["files"]
    assert {"config.json", "model.safetensors", "hemorrhage_compression.json"} <= set(listed)
    assert set(after) - set(before) == set(listed) | {outputs.MARKER}  # nothing else appeared
    assert not any(n.startswith(".hemorrhage-tmp") for n in os.listdir(folder))


def test_reexport_replaces_only_what_we_wrote(capsys, tmp_path, tiny):
    out = tmp_path / "small"
    code, _, err = compress(capsys, tiny, out)
    assert code == 0, err
    marker = json.loads((out / outputs.MARKER).read_text())
    # an earlier export wrote a file this one no longer writes; the user added notes since
    (out / "old_weights.bin").write_bytes(b"ours, from before")
    marker["files"].append("old_weights.bin")
    (out / outputs.MARKER).write_text(json.dumps(marker))
    (out / "notes.txt").write_text("the user's\n")
    first = (out / "hemorrhage_compression.json").read_bytes()
    code, _, err = compress(capsys, tiny, out)  # no --overwrite: the folder is ours
    assert code == 0, err
    assert not (out / "old_weights.bin").exists()
    assert (out / "notes.txt").read_text() == "the user's\n"
    assert (out / "hemorrhage_compression.json").read_bytes() == first  # same command, same bytes
    assert "old_weights.bin" not in json.loads((out / outputs.MARKER).read_text())["files"]


# ------------------------------------------------------------------ paths below a file --


@pytest.mark.parametrize(
    "argv",
    [
        ["compress", "--model", "{m}", "--method", "magnitude", "--sparsity", "0.5", "--out", "{f}/small"],
        ["recover", "--model", "{m}", "--method", "magnitude", "--sparsity", "0.5", "--steps", "1", "--out", "{f}/s"],
        ["sweep", "--model", "{m}", "--grid", "magnitude:sparsity=0.5", "--out", "{f}/s.jsonl"],
        ["hierarchy", "--model", "{m}", "--sparsity", "0.5", "--results", "{f}/r"],
        ["diagnose", "--model", "{m}", "--bits", "2", "--figures", "{f}/fig"],
        ["train-control", "--quick", "--out", "{f}/control"],  # before training, not after
    ],
)
def test_output_below_a_file_fails_before_the_model_loads(capsys, tmp_path, no_load, argv):
    f = tmp_path / "a-file.txt"
    f.write_text("not a folder\n")
    capsys.readouterr()
    code = main([a.replace("{f}", str(f)).replace("{m}", str(tmp_path / "never-loaded")) for a in argv])
    _, err = capsys.readouterr()
    assert code == 2
    assert_one_line_error(code, err, str(f), "is a file")
    assert f.read_text() == "not a folder\n"


def test_experiment_and_figures_check_their_folders(capsys, tmp_path):
    f = tmp_path / "a-file.txt"
    f.write_text("x\n")
    sweep = tmp_path / "s.jsonl"
    sweep.write_text("")
    for argv in (
        ["experiment", "hierarchy", "--sweep", str(sweep), "--results", str(f / "r")],
        ["figures", "--results", str(tmp_path), "--figures", str(f)],
    ):
        capsys.readouterr()
        code = main(argv)
        assert_one_line_error(code, capsys.readouterr()[1], str(f))
        assert code == 2


def test_kinds_are_checked():
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        folder, file = Path(d), Path(d) / "f"
        file.write_text("x")
        with pytest.raises(UserError, match="a folder is needed"):
            outputs.check_output_dir(file)
        with pytest.raises(UserError, match="a file is needed"):
            outputs.check_output_file(folder)
        assert outputs.check_output_dir(folder / "new" / "deeper") == folder / "new" / "deeper"
        with outputs.owned_dir(folder / "new" / "deeper", command="test") as tmp:  # parents are made
            (tmp / "a").write_text("x")
        assert (folder / "new" / "deeper" / "a").read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_location_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(UserError, match="not writable"):
            outputs.check_output_dir(ro / "out")
    finally:
        ro.chmod(0o755)


def test_a_marker_never_reaches_outside_its_folder(tmp_path):
    """A marker is data: names with a path in them are not ours to remove."""
    outside = tmp_path / "precious.txt"
    outside.write_text("keep\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / outputs.MARKER).write_text(json.dumps({"written_by": "hemorrhage", "files": ["../precious.txt"]}))
    with outputs.owned_dir(out, command="test") as tmp:
        (tmp / "a.txt").write_text("new\n")
    assert outside.read_text() == "keep\n" and (out / "a.txt").read_text() == "new\n"


# ------------------------------------------------------------------ sweep --out ---------


@pytest.mark.parametrize(
    "content",
    [
        b"my notes\nsecond line without newline",  # looks torn: must not be cut
        b'{"a": 1}\n{"b": 2}\n',  # JSON lines, not sweep rows: must not be appended to
        b'{"key": "x", "grid": {}}\n{"unfinished',
    ],
)
def test_text_file_survives_sweep_out(capsys, tmp_path, no_load, content):
    f = tmp_path / "notes.jsonl"
    f.write_bytes(content)
    capsys.readouterr()
    code = main(
        ["sweep", "--model", str(tmp_path / "never-loaded"), "--grid", "magnitude:sparsity=0.5", "--out", str(f)]
    )
    assert_one_line_error(code, capsys.readouterr()[1], str(f), "untouched")
    assert code == 2
    assert f.read_bytes() == content


def test_torn_line_repair_only_on_a_sweep_file(tmp_path):
    """The layer under the command: read_rows itself cuts a torn line only from a proven
    sweep file."""
    from hemorrhage.validate.sweep import read_rows, row_key

    f = tmp_path / "notes.txt"
    f.write_bytes(b"line one\nline two, torn")
    with pytest.raises(UserError, match="untouched"):
        read_rows(f)
    assert f.read_bytes() == b"line one\nline two, torn"
    row = json.dumps({"key": row_key("m", "rtn", {"bits": 4}), "grid": {"method": "rtn"}}).encode()
    f.write_bytes(row + b"\n" + row[:9])
    assert len(read_rows(f)) == 1 and f.read_bytes() == row + b"\n"


def test_foreign_base_cache_beside_the_sweep_is_refused(capsys, tmp_path, no_load):
    base = tmp_path / "s.base.npz"
    base.write_bytes(b"someone's archive")
    capsys.readouterr()
    code = main(["sweep", "--model", "x", "--grid", "rtn:bits=4", "--out", str(tmp_path / "s.jsonl")])
    assert_one_line_error(code, capsys.readouterr()[1], str(base))
    assert base.read_bytes() == b"someone's archive" and not (tmp_path / "s.jsonl").exists()


# ------------------------------------------------------------------ atomicity, modes -----


def test_atomic_dir_keeps_the_old_folder_when_the_build_fails(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "w").write_text("old")
    with pytest.raises(RuntimeError), outputs.atomic_dir(final) as tmp:
        (tmp / "w").write_text("half")
        raise RuntimeError("killed mid-build")
    assert (final / "w").read_text() == "old" and sorted(os.listdir(tmp_path)) == ["model"]
    with outputs.atomic_dir(final) as tmp:
        (tmp / "w").write_text("new")
    assert (final / "w").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["model"]


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_written_files_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        text = outputs.atomic_write_text(tmp_path / "t.csv", "a,b\n")
        with outputs.atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("x")
        with outputs.owned_dir(tmp_path / "e", command="test") as tmp:
            (tmp / "f").write_text("x")
            os.close(os.open(tmp / "g", os.O_CREAT | os.O_WRONLY, 0o600))  # as mkstemp or a 0600 source's copy
    finally:
        os.umask(old)
    assert text.stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~mask
    assert (tmp_path / "e").stat().st_mode & 0o777 == 0o777 & ~mask
    assert (tmp_path / "e" / outputs.MARKER).stat().st_mode & 0o777 == 0o666 & ~mask
    assert (
        (tmp_path / "e" / "f").stat().st_mode & 0o777 == (tmp_path / "e" / "g").stat().st_mode & 0o777 == 0o666 & ~mask
    )
