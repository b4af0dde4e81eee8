"""The per-token statistics `measure` reports as llama.cpp's --kl-divergence prints them
(validate/token_stats.py): against closed forms, against an independent numpy reference on
random logits, and end to end through `measure --json` and `sweep` on a tiny checkpoint."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hemorrhage.cli import main

PCT = {"p999": 99.9, "p99": 99, "p95": 95, "p90": 90, "median": 50, "p10": 10, "p05": 5, "p01": 1, "p001": 0.1}
ORDER = ["min", "p001", "p01", "p05", "p10", "median", "p90", "p95", "p99", "p999", "max"]


# ------------------------------------------------------------------ an independent reference --


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def _per_token(z, z_c, targets):
    """KL both ways, top-1 and the target's NLL, per row, straight from the definitions."""
    lp, lq = _log_softmax(z), _log_softmax(z_c)
    p, q = np.exp(lp), np.exp(lq)
    rows = np.arange(len(targets))
    return {
        "kl": (p * (lp - lq)).sum(-1),
        "kl_reverse": (q * (lq - lp)).sum(-1),
        "top1": (z.argmax(-1) == z_c.argmax(-1)).astype(np.float64),
        "nll_base": -lp[rows, targets],
        "nll": -lq[rows, targets],
    }


def _implementation(z, z_c, targets):
    """The per-token arrays as measure computes them (validate.metrics.compare_final, fp32),
    with the NLLs from the reference (measure takes them from its own NLL pass)."""
    import jax.numpy as jnp

    from hemorrhage.validate.metrics import compare_final

    got = {k: np.asarray(v, np.float64) for k, v in compare_final(jnp.asarray(z), jnp.asarray(z_c)).items()}
    ref = _per_token(z, z_c, targets)
    return {
        "kl": got["kl"],
        "kl_reverse": got["kl_reverse"],
        "top1": got["top1"],
        "nll_base": ref["nll_base"],
        "nll": ref["nll"],
    }, got


def _stats(t):
    from hemorrhage.validate.token_stats import token_statistics

    return token_statistics(t["kl"], t["kl_reverse"], t["top1"], t["nll_base"], t["nll"])


# ------------------------------------------------------------------ synthetic p, q ------------


def test_identical_q_gives_zero_with_zero_error():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(64, 40)).astype(np.float32) * 3
    t, _ = _implementation(z, z.copy(), rng.integers(0, 40, 64))
    s = _stats(t)
    for k in (
        "kl_stderr",
        "kl_max",
        "kl_min",
        "kl_median",
        "kl_reverse",
        "kl_reverse_max",
        "top1_stderr",
        "delta_p_mean",
        "delta_p_stderr",
        "delta_p_rms",
        "delta_p_rms_stderr",
        "ln_ppl_ratio",
        "ln_ppl_ratio_stderr",
    ):
        assert s[k] == 0.0, k
    assert t["top1"].min() == 1.0


def test_two_point_distribution_has_known_answers():
    """Half the tokens with q = p, half with p = (½, ½), q = (¾, ¼): KL c = ½ ln(4/3) there.
    mean c/2, stderr c / (2 √(N−1)), median c/2 (even N: the mean of the middle two), p10 0,
    p90 c; KL(q‖p) = ¾ ln(3/2) + ¼ ln(1/2); top-1 (ties go to index 0) all agree."""
    n = 50
    z = np.zeros((n, 2), np.float32)
    z_c = z.copy()
    z_c[n // 2 :, 0] = np.log(3.0)
    t, _ = _implementation(z, z_c, np.zeros(n, int))
    s = _stats(t)
    c = 0.5 * math.log(4 / 3)
    rev = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert s["kl_stderr"] == pytest.approx(c / (2 * math.sqrt(n - 1)), rel=1e-5)
    assert s["kl_median"] == pytest.approx(c / 2, rel=1e-5)
    assert s["kl_p10"] == pytest.approx(0, abs=1e-7) and s["kl_p90"] == pytest.approx(c, rel=1e-5)
    assert s["kl_max"] == pytest.approx(c, rel=1e-5) and s["kl_reverse"] == pytest.approx(rev / 2, rel=1e-5)
    assert s["top1_stderr"] == 0.0
    # target 0: p(y) = ½, q(y) = ¾ on the changed half: Δp = ¼ there
    assert s["delta_p_mean"] == pytest.approx(0.125, rel=1e-5)
    assert s["delta_p_rms"] == pytest.approx(math.sqrt(0.0625 / 2), rel=1e-5)


def test_random_logits_match_a_numpy_reference():
    rng = np.random.default_rng(1)
    n, v = 301, 64
    z = (rng.normal(size=(n, v)) * 2).astype(np.float32)
    z_c = (z + rng.normal(size=(n, v)) * rng.uniform(0.05, 1.5, (n, 1))).astype(np.float32)
    targets = rng.integers(0, v, n)
    t, got = _implementation(z, z_c, targets)
    ref = _per_token(z, z_c, targets)
    for k in ("kl", "kl_reverse"):  # the fp32 per-token arrays against float64 definitions
        np.testing.assert_allclose(got[k], ref[k], rtol=2e-4, atol=2e-6)
    np.testing.assert_array_equal(got["top1"], ref["top1"])
    s = _stats(t)
    se = lambda x: np.std(x, ddof=1) / np.sqrt(len(x))  # noqa: E731
    for name, x in (("kl", t["kl"]), ("kl_reverse", t["kl_reverse"])):
        assert s[f"{name}_stderr"] == pytest.approx(se(x), rel=1e-12)
        for key, q in PCT.items():
            assert s[f"{name}_{key}"] == pytest.approx(np.percentile(x, q), rel=1e-12, abs=1e-15), key
        assert s[f"{name}_max"] == x.max() and s[f"{name}_min"] == x.min()
    assert s["kl_reverse"] == pytest.approx(t["kl_reverse"].mean(), rel=1e-12)
    top = t["top1"].mean()
    assert 0.2 < top < 0.95  # a rate with an error worth checking
    assert s["top1_stderr"] == pytest.approx(math.sqrt(top * (1 - top) / (n - 1)), rel=1e-12)
    dp = np.exp(-t["nll"]) - np.exp(-t["nll_base"])
    assert s["delta_p_mean"] == pytest.approx(dp.mean(), rel=1e-12)
    assert s["delta_p_median"] == pytest.approx(np.median(dp), rel=1e-12)
    assert s["delta_p_p25"] == pytest.approx(np.percentile(dp, 25), rel=1e-12)
    assert s["delta_p_rms"] == pytest.approx(np.sqrt((dp**2).mean()), rel=1e-12)
    # llama.cpp's form of the ln(PPL ratio) error: sqrt(se_q² + se_p² − 2 cov), cov of the means
    a, b = t["nll"], t["nll_base"]
    cov = ((a * b).mean() - a.mean() * b.mean()) / (n - 1)
    assert s["ln_ppl_ratio"] == pytest.approx(a.mean() - b.mean(), rel=1e-12)
    assert s["ln_ppl_ratio_stderr"] == pytest.approx(math.sqrt(se(a) ** 2 + se(b) ** 2 - 2 * cov), rel=1e-9)
    assert s["ppl_stderr"] == pytest.approx(math.exp(a.mean()) * se(a), rel=1e-12)


def test_per_token_arrays_are_fp32_for_a_bf16_model():
    """A model run in bf16 still gets its per-token KL in fp32 (bf16 would round a KL of 1e-3
    to 3 significant bits): the logits are cast before the softmax."""
    import jax.numpy as jnp

    from hemorrhage.validate.metrics import compare_final

    rng = np.random.default_rng(4)
    z = jnp.asarray(rng.normal(size=(8, 32)), jnp.bfloat16)
    z_c = z + jnp.asarray(0.03 * rng.normal(size=(8, 32)), jnp.bfloat16)
    got = compare_final(z, z_c)
    assert got["kl"].dtype == jnp.float32 and got["kl_reverse"].dtype == jnp.float32
    ref = _per_token(np.asarray(z, np.float32), np.asarray(z_c, np.float32), np.zeros(8, int))
    np.testing.assert_allclose(np.asarray(got["kl"]), ref["kl"], rtol=1e-3)


def test_statistics_do_not_depend_on_token_order():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(40, 16)).astype(np.float32)
    z_c = (z + rng.normal(size=z.shape)).astype(np.float32)
    t, _ = _implementation(z, z_c, rng.integers(0, 16, 40))
    perm = rng.permutation(40)
    a, b = _stats(t), _stats({k: v[perm] for k, v in t.items()})
    assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-12, abs=1e-15) for k in a)


def test_nan_and_inf_tokens():
    from hemorrhage.validate.token_stats import stderr

    rng = np.random.default_rng(3)
    kl = rng.exponential(size=20)
    nan = kl.copy()
    nan[4] = np.nan
    s = _stats({"kl": nan, "kl_reverse": kl, "top1": np.ones(20), "nll_base": kl, "nll": kl})
    assert all(math.isnan(s[f"kl_{k}"]) for k in [*PCT, "stderr", "max", "min"])
    inf = kl.copy()
    inf[4] = np.inf
    s = _stats({"kl": inf, "kl_reverse": kl, "top1": np.ones(20), "nll_base": kl, "nll": kl})
    assert s["kl_max"] == math.inf and s["kl_stderr"] == math.inf and math.isfinite(s["kl_median"])
    assert math.isnan(stderr([1.0]))  # one token has no standard error (not 0)


# ------------------------------------------------------------------ end to end -----------------

TINY = ["--windows", "2", "--seqlen", "32", "--mc-items", "0", "--prompts", "0", "--strata-bins", "0"]


def _check_row(r: dict) -> None:
    from hemorrhage.validate.measure import STAT_KEYS

    missing = [k for k in STAT_KEYS if k not in r]
    assert not missing, missing
    assert all(isinstance(r[k], float) and math.isfinite(r[k]) for k in STAT_KEYS), r.get("not_computable")
    for name in ("kl", "kl_reverse"):
        vals = [r[f"{name}_{k}"] for k in ORDER]
        assert vals == sorted(vals), (name, vals)
        assert r[f"{name}_stderr"] > 0 and r[f"{name}_min"] >= 0
    assert r["top1_stderr"] > 0 and r["delta_p_rms"] >= abs(r["delta_p_mean"])
    assert r["ln_ppl_ratio"] == pytest.approx(math.log(r["ppl"] / r["ppl_base"]), rel=1e-6)


def test_measure_json_and_table_carry_the_statistics(tiny_ckpt, capsys):
    argv = ["measure", "--model", str(tiny_ckpt), "--method", "magnitude", "--sparsity", "0.5", *TINY, "--no-per-layer"]
    assert main([*argv, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["config"]["scored_tokens"] == 62
    _check_row(r)
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert f"KL(p‖q) {r['kl']:.4g} ± {r['kl_stderr']:.4g}" in table
    assert f"same top p {r['top1_agreement']:.4f} ± {r['top1_stderr']:.4f}" in table


def test_nan_logits_give_null_with_a_reason(tiny_ckpt, monkeypatch, capsys):
    import jax.numpy as jnp
    from flax import nnx

    import hemorrhage.sim.compress as C
    from hemorrhage.validate.measure import STAT_KEYS

    real = C.compress_from_args

    def nan_model(loaded, method, **settings):
        model, record = real(loaded, method, **settings)
        model = nnx.clone(loaded.model)
        w = model.layers[0].mlp.down.w
        w.set_value(jnp.full_like(w.get_value(), jnp.nan))
        return model, record

    monkeypatch.setattr(C, "compress_from_args", nan_model)
    argv = ["measure", "--model", str(tiny_ckpt), "--method", "magnitude", "--sparsity", "0.5", *TINY, "--no-per-layer"]
    assert main([*argv, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["collapsed"] is True
    # nothing from the compressed model's distribution is a number; the base's own is
    for k in STAT_KEYS:
        if k == "ppl_base_stderr":
            assert math.isfinite(r[k]) and r[k] > 0
            continue
        if k == "top1_stderr":  # NaN logits are no prediction: every token disagrees, a rate of 0 ± 0
            assert r["top1_agreement"] == 0.0 and r[k] == 0.0
            continue
        assert r[k] is None, (k, r[k])
        assert "not finite" in r["not_computable"][k], k
    assert main(argv) == 0
    assert "KL(p‖q) not computable (logits not finite) ± not computable" in capsys.readouterr().out


def test_sweep_rows_carry_the_statistics(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    assert (
        main(
            [
                "sweep",
                "--model",
                str(tiny_ckpt),
                "--grid",
                "magnitude:sparsity=0.5",
                "--out",
                str(out),
                *TINY,
                "--no-progress",
                "--calib-samples",
                "2",
                "--calib-seqlen",
                "32",
            ]
        )
        == 0
    )
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 1
    _check_row(rows[0])
    table = capsys.readouterr().out
    assert f"{rows[0]['kl_stderr']:.2g}" in table and f"{rows[0]['kl_p99']:.4g}" in table
