"""Experiment 5 on the real model: 4-bit degrades, 2-bit collapses (seed 2604.19884)."""

import json

import pytest

from hemorrhage.cli import main


def run_json(capsys, *argv):
    capsys.readouterr()
    code = main(list(argv))
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("bits,expected", [(4, "signal_degradation"), (2, "computation_collapse")])
def test_diagnose_rtn(capsys, tmp_path, smollm2, bits, expected):
    """RTN g64 on SmolLM2 (README: exp 5 agrees): at 4 bits the output is damaged (final KL above
    the rule's 0.01) while no block's computation collapses; at 2 bits early blocks collapse and
    top-1 agreement falls below ½."""
    from hemorrhage.validate.diagnose import KL_DAMAGE

    code, res = run_json(
        capsys,
        "diagnose",
        "--model",
        "smollm2-135m",
        "--method",
        "rtn",
        "--bits",
        str(bits),
        "--group-size",
        "64",
        "--windows",
        "1",
        "--seqlen",
        "48",
        "--figures",
        str(tmp_path),
        "--results",
        str(tmp_path / "r"),
        "--json",
    )
    assert code == 0
    assert res["verdict"] == expected, {k: res[k] for k in ("verdict", "final_kl", "top1_agreement")}
    assert res["final_kl"] > KL_DAMAGE
    if bits == 4:  # degradation: the computation is kept everywhere, the signal is not
        assert res["collapsed_blocks"] == []
    else:
        assert res["early_collapsed_blocks"] and res["top1_agreement"] < 0.5
    layers = res["layers"]
    assert len(layers) == smollm2.cfg.n_layers
    # putting back the base residual after the last block restores the base output exactly
    assert layers[-1]["restore_h"] == pytest.approx(1.0, abs=1e-3)
    for x in layers:
        assert 0.0 <= x["gate_flip"] <= 1.0 and -1.0 <= x["entropy_shift"] <= 1.0
    assert open(res["figure"], "rb").read(4) == b"\x89PNG"
    stored = json.loads(open(res["table"]).read())  # what `hemorrhage figures` redraws from
    assert stored["verdict"] == res["verdict"] and stored["title"] and len(stored["layers"]) == len(layers)
