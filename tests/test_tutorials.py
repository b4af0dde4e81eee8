"""The students' path: every tutorials/*.py runs with --quick (offline, SmolLM2-135M, tiny
settings) in its own process, exits 0 and writes a PNG under --out.  The three run side by
side to keep the wall time down on a small machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("*.py"))


@pytest.mark.real
@pytest.mark.slow
def test_every_tutorial_runs_quick_and_draws(tmp_path):
    assert len(TUTORIALS) >= 3, TUTORIALS
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    failures = []
    for t in TUTORIALS:  # one at a time: each loads a real model (~2 GB)
        out = tmp_path / t.stem
        with open(tmp_path / f"{t.stem}.log", "w") as log:
            try:
                rc = subprocess.run([sys.executable, str(t), "--quick", "--out", str(out)], cwd=tmp_path,
                                    env=env, stdout=log, stderr=subprocess.STDOUT, timeout=900).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        pngs = list(out.rglob("*.png"))
        if rc != 0 or not pngs:
            failures.append(f"{t.stem}: exit {rc}, {len(pngs)} PNG\n" + (tmp_path / f"{t.stem}.log").read_text()[-3000:])
    assert not failures, "\n\n".join(failures)

    # end to end on a real sweep: every experiment reads what tutorial 1's run_sweep wrote
    sweep = tmp_path / "why_does_a_pruned_model_still_answer_multiple_choice" / "sweep_mc.jsonl"
    res = subprocess.run([sys.executable, "-m", "hemorrhage", "experiment", "all", "--sweep", str(sweep),
                          "--results", str(tmp_path / "r"), "--figures", str(tmp_path / "f"), "--json"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    verdicts = json.loads(res.stdout)
    assert set(verdicts) >= {"hierarchy", "mc_vs_generation", "compounding", "thresholds", "ppl_not_enough",
                             "seed000", "decoding"}
    assert verdicts["mc_vs_generation"]["settings"] == 2
    for name in ("mc_vs_generation", "compounding", "seed000"):  # real rows carry what these read
        v = verdicts[name]
        assert v["holds"] in (True, False, None) and Path(v["figure"]).is_file(), (name, v["summary"])
    assert verdicts["compounding"]["evidence"]["identity_match_mean"] >= 0.5  # KV-cache decode = full forward
