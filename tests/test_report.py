"""`hemorrhage report` (validate/report.py): one static page per study, from a small sweep
built here with the real row schema; checked for its sections, its refusal of a user's
folder, its bytes on a second run, and in a real headless browser (images load, no errors)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from browser_probe import browser, probe
from test_experiments import synthetic_rows

from hemorrhage.cli import main
from hemorrhage.validate.experiments import EXPERIMENTS
from hemorrhage.validate.sweep import append_row


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Two sweeps of two models (so a `models` study too), a predictor's bench file beside
    them, and the report written once."""
    root = tmp_path_factory.mktemp("study")
    for r in synthetic_rows():
        append_row(root / "sweep_synth.jsonl", r)
    for r in synthetic_rows()[:2]:  # a second model, two settings: the `models` study compares both
        append_row(root / "sweep_b.jsonl", {**r, "model": "synthetic-b"})
    (root / "bench").mkdir()
    pts = [
        {
            "method": "rtn",
            "settings": {"bits": b},
            "level": b,
            "kl": 2.0**-b,
            "kl_interval": [0.1, 0.3],
            "kl_linear": 0.3,
            "kl_dephased": 0.1,
        }
        for b in (3, 4)
    ]
    (root / "bench" / "bench_predict_synthetic.json").write_text(
        json.dumps(
            {
                "model": "synthetic",
                "predicted": {"model": "synthetic", "points": pts},
                "measured": {"points": [{"method": "rtn", "settings": {"bits": 3}, "kl": 0.123456}]},
                "cliffs": [
                    {"family": "rtn", "axis": "bits", "cliff": 3.5, "model_interval": [3.4, 3.6], "measured": 3.55}
                ],
            }
        )
    )
    out = root / "report"
    argv = [
        "report",
        "--sweep",
        str(root / "sweep_synth.jsonl"),
        "--sweep",
        str(root / "sweep_b.jsonl"),
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    return root, out, argv


def test_report_has_every_section(study):
    root, out, _ = study
    page = (out / "index.html").read_text()
    for anchor in ("bases", "verdicts", "sweep_synth", "sweep_b", "models", "predictor", "notation", "reproduce"):
        assert f"id='{anchor}'" in page, anchor
    for name in EXPERIMENTS:
        assert f"id='sweep_synth-{name}'" in page and f"hemorrhage experiment {name} --sweep" in page, name
    verdicts = re.findall(r"<span class='(holds|fails|untested)'>", page)
    assert len(verdicts) == 3 * len(EXPERIMENTS) and "holds" in verdicts  # 2 sweeps + models
    assert page.count("Study models: 17 settings") == 1
    assert "½Var_p(Δz)" in page and "hemorrhage sweep --model synthetic --grid" in page
    assert "magnitude:sparsity=0.1,0.2,0.3" in page  # the grid, compacted, as `sweep --grid` reads it
    assert "0.1235" in page and "3.55" in page  # the bench file's measured KL and cliff beside the prediction
    srcs = re.findall(r"<img src='([^']+)'", page)
    assert srcs and all((out / s).is_file() and "/" not in s for s in srcs)  # beside the page
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page)  # nothing from another host
    assert "hemorrhage-report." not in page  # no scratch folder leaks into it


def test_report_same_command_same_bytes(study, tmp_path):
    root, out, argv = study
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(argv) == 0  # our own folder: rewritten without --overwrite
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_report_refuses_a_users_folder(study, tmp_path, capsys):
    root, _, _ = study
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    argv = ["report", "--sweep", str(root / "sweep_b.jsonl"), "--out", str(mine)]  # two rows: fast
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert main(argv + ["--overwrite"]) == 0
    assert (mine / "notes.txt").read_text() == "mine" and (mine / "index.html").is_file()
    assert main(["report", "--sweep", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r").exists()


def test_report_in_a_headless_browser(study, tmp_path):
    exe = browser()
    if exe is None:
        pytest.skip("no headless browser installed (Debian package chromium; .ci/run installs it)")
    _, out, _ = study
    page = tmp_path / "page"
    shutil.copytree(out, page)  # elsewhere: the folder alone is the page
    got = probe(page / "index.html", tmp_path / "report.png", exe)
    assert got["images"] >= len(EXPERIMENTS) and not got["broken"] and not got["errors"], got
    assert (tmp_path / "report.png").stat().st_size > 10_000
