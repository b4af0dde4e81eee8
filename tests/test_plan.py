"""`hemorrhage plan` (sim.plan*): the solver is exact and meets its constraint, the Fisher shares
are unbiased for the whole response, a plan round-trips through `compress --plan`, bad input is
one line and exit 2.  A tiny random Llama with SmolLM2's tokenizer (tiny_ckpt)."""

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_one_line_error
from hemorrhage.sim.plan_solve import solve

from hemorrhage.cli import main
from hemorrhage.errors import UserError

FAST = [
    "--fisher-windows",
    "2",
    "--draws",
    "1",
    "--windows",
    "1",
    "--seqlen",
    "32",
    "--prompts",
    "0",
    "--calib-samples",
    "2",
    "--regime-tokens",
    "0",
    "--estimate",
    "linear",
]


def _synthetic(seed, tensors=6, options=3):
    rng = np.random.default_rng(seed)
    n = rng.integers(1, 5, tensors) * 64  # weight counts sharing a divisor, as real layers do
    bits = np.array([2, 4, 8])[:options]
    costs = [ni * bits for ni in n]
    # more bits, less KL, at a tensor-specific sensitivity
    kls = [rng.uniform(0.1, 3) * 4.0**-bits * ni / 64 * rng.uniform(0.5, 1.5, options) for ni in n]
    return n, costs, kls


def _brute(costs, kls, max_cost=None, max_kl=None):
    best = None
    for choice in itertools.product(*[range(len(c)) for c in costs]):
        c = sum(costs[t][j] for t, j in enumerate(choice))
        k = sum(kls[t][j] for t, j in enumerate(choice))
        if max_cost is not None and c <= max_cost and (best is None or k < best[1] - 1e-15):
            best = (c, k)
        if max_kl is not None and k <= max_kl and (best is None or c < best[0]):
            best = (c, k)
    return best


@pytest.mark.parametrize("seed", range(4))
def test_solver_is_optimal_and_meets_the_average(seed):
    n, costs, kls = _synthetic(seed)
    for avg in (2.5, 3.0, 5.5):
        limit = int(avg * n.sum())
        sol = solve(costs, kls, max_cost=limit)
        assert sol.exact and sol.cost <= limit  # the average as specified, never above
        assert sol.kl == pytest.approx(_brute(costs, kls, max_cost=limit)[1], rel=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_solver_is_optimal_under_a_kl_budget(seed):
    _, costs, kls = _synthetic(seed)
    lo, hi = sum(k.min() for k in kls), sum(k.max() for k in kls)
    for budget in (lo * 1.5, np.sqrt(lo * hi), hi * 0.5):
        sol = solve(costs, kls, max_kl=budget)
        assert sol.kl <= budget
        assert sol.cost == _brute(costs, kls, max_kl=budget)[0]


def test_solver_coarse_table_still_meets_the_constraint():
    n, costs, kls = _synthetic(7, tensors=8)
    limit = int(3.0 * n.sum())
    sol = solve(costs, kls, max_cost=limit, max_cells=10)  # forces the rounded table / greedy path
    assert not sol.exact and sol.cost <= limit
    with pytest.raises(UserError, match="KL budget"):
        solve(costs, kls, max_kl=0.5 * sum(k.min() for k in kls))


def test_rtn_error_is_the_compressors():
    from hemorrhage.sim.compress.quantizer import rtn_dequant
    from hemorrhage.sim.plan_sensitivity import tensor_error

    w = jax.random.normal(jax.random.key(0), (8, 64)) * jnp.linspace(0.1, 3, 64)
    for bits, gs, sym in ((2, None, False), (3, 32, False), (4, None, True), (8, 16, True)):
        want = rtn_dequant(w, bits, gs, sym) - w
        np.testing.assert_allclose(tensor_error("rtn", bits, w, group_size=gs, symmetric=sym), want, atol=1e-6)


@pytest.fixture(scope="module")
def tiny(tiny_ckpt):
    from hemorrhage.sim import load

    return load(str(tiny_ckpt), quiet=True)


def test_fisher_share_is_unbiased_for_the_whole_response(tiny):
    """E_ε ½Var_p(J(ε⊙a)) over random signs ε = ½Σ_i F_ii a_i² (cross terms vanish), and the
    sampled diagonal Fisher is unbiased for F: the per-tensor share and the linear response
    of that tensor's perturbation agree on average, within the sampling noise."""
    from hemorrhage.sim.predict import Linearization, base_logits, logit_metrics
    from hemorrhage.sim.windows import eval_windows
    from hemorrhage.sim.plan_sensitivity import fisher_diag

    toks = eval_windows(tiny.tokenizer, "wiki", seqlen=16, stride=16, max_windows=1)
    lr = Linearization(tiny.model, {"eval": toks})
    fisher = fisher_diag(lr, toks, draws=16, seed=1)
    h = lr.h["eval"][:, :-1].reshape(-1, lr.h["eval"].shape[-1])
    z = base_logits(tiny.model, h)
    t = lr.paths.index("layers.0.mlp.down")
    amp = 0.02 * jnp.abs(lr.weights[t]) + 1e-3
    share = float(0.5 * jnp.sum(fisher[t] * amp**2))
    resp = []
    for k in range(6):
        eps = jnp.sign(jax.random.normal(jax.random.key(k), amp.shape))
        dws = [jnp.zeros_like(w) for w in lr.weights]
        dws[t] = eps * amp
        dh = lr.respond(dws)["eval"][:, :-1].reshape(h.shape)
        met = logit_metrics(tiny.model, h, z, dh[None], jnp.zeros(1, jnp.int32), jnp.ones(1))
        resp.append(float(jnp.mean(met["half_var_p"])))
    assert 0.7 < share / np.mean(resp) < 1.4, (share, np.mean(resp))


def _cli(capsys, *argv):
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def rtn_plan(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("plan") / "plan.json"
    assert (
        main(
            [
                "plan",
                "--model",
                str(tiny_ckpt),
                "--method",
                "rtn",
                "--bits",
                "2,4,8",
                "--budget-kl",
                "0.05",
                "--out",
                str(out),
                *FAST,
            ]
        )
        == 0
    )
    return out


def test_plan_meets_budget_and_states_its_whole_prediction(rtn_plan):
    plan = json.loads(rtn_plan.read_text())
    assert plan["predicted_kl"] <= 0.05
    # the stated KL is the whole plan's response; the shares are scaled to add up to it
    assert sum(t["predicted_kl_share"] for t in plan["tensors"]) == pytest.approx(plan["predicted_kl"], rel=1e-9)
    add = plan["additivity"]
    assert add["whole_over_sum"] == pytest.approx(plan["predicted_kl"] / add["sum_of_shares"], rel=1e-9)
    assert add["sum_of_shares"] == pytest.approx(sum(t["kl_share_raw"] for t in plan["tensors"]), rel=1e-9)
    assert plan["bytes"] == sum(t["bytes"] for t in plan["tensors"])
    assert 2 <= plan["avg_bits"] <= 8 and 0 <= plan["predicted_top1"] <= 1


def test_plan_round_trips_through_compress(rtn_plan, tiny_ckpt, tmp_path, capsys):
    from hemorrhage.sim import load
    from hemorrhage.sim.compress import PackedLinear, linears

    plan = json.loads(rtn_plan.read_text())
    # a mixed plan, whatever the solver chose: every tensor's own setting must land
    for i, t in enumerate(plan["tensors"]):
        t["bits"] = (2, 4, 8)[i % 3]
    rtn_plan.write_text(json.dumps(plan))
    code, _, err = _cli(
        capsys, "compress", "--model", str(tiny_ckpt), "--plan", str(rtn_plan), "--out", str(tmp_path / "c")
    )
    assert code == 0, err
    rec = json.loads((tmp_path / "c" / "hemorrhage_compression.json").read_text())
    want = {t["path"]: t["bits"] for t in plan["tensors"]}
    assert rec["tensor_settings"] == want
    from hemorrhage.sim.compress.per_tensor import compress_plan

    model, _ = compress_plan(load(str(tiny_ckpt), quiet=True), plan)
    got = {p: layer.bits for p, _, _, layer in linears(model) if isinstance(layer, PackedLinear)}
    assert got == want


def test_sparsity_plan_round_trips(tiny, tiny_ckpt, tmp_path):
    from hemorrhage.sim.compress import MaskedLinear, linears
    from hemorrhage.sim.compress.per_tensor import compress_plan
    from hemorrhage.sim.plan import fingerprint

    paths = [p for p, _, _, _ in linears(tiny.model)]
    levels = {p: (0.3, 0.5, 0.7)[i % 3] for i, p in enumerate(paths)}
    plan = {
        "format": "hemorrhage-plan-1",
        "method": "magnitude",
        "axis": "sparsity",
        "fingerprint": fingerprint(tiny),
        "tensors": [{"path": p, "sparsity": s} for p, s in levels.items()],
    }
    model, _ = compress_plan(tiny, plan)
    for p, _, _, layer in linears(model):
        assert isinstance(layer, MaskedLinear)
        assert 1 - float(jnp.mean(layer.keep())) == pytest.approx(levels[p], abs=1e-3)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--method", "rtn", "--bits", "2,4,8", "--budget-kl", "0"], "floor"),
        (["--method", "rtn", "--bits", "2,4,8", "--budget-kl", "-1"], "floor"),
        (["--method", "rtn", "--bits", "3,4", "--avg-bits", "2.5"], "outside"),
        (["--method", "rtn", "--bits", "3,4", "--avg-bits", "5"], "outside"),
        (["--method", "magnitude", "--sparsity", "0.5", "--levels", "0.6,0.7"], "outside"),
        (["--method", "rtn", "--bits", "2,4", "--avg-bits", "3", "--budget-kl", "0.1"], "exactly one"),
    ],
)
def test_bad_plan_input_exits_2_before_loading(capsys, tmp_path, argv, needle):
    code, _, err = _cli(
        capsys, "plan", "--model", str(tmp_path / "never-read"), *argv, "--out", str(tmp_path / "p.json")
    )
    assert code == 2
    assert_one_line_error(code, err, needle)


def test_foreign_or_wrong_plan_exits_2(rtn_plan, tiny_ckpt, tmp_path, capsys):
    good = json.loads(rtn_plan.read_text())
    other = dict(good, fingerprint="0" * 16, model="another")
    lacks = dict(good, tensors=[*good["tensors"][:-1], {**good["tensors"][-1], "path": "layers.99.mlp.up"}])
    for name, plan, needle in (("other", other, "another model"), ("lacks", lacks, "lacks")):
        f = tmp_path / f"{name}.json"
        f.write_text(json.dumps(plan))
        for cmd in ("compress", "measure"):
            extra = ["--out", str(tmp_path / f"o-{name}")] if cmd == "compress" else ["--windows", "1"]
            code, _, err = _cli(capsys, cmd, "--model", str(tiny_ckpt), "--plan", str(f), *extra)
            assert code == 2, err
            assert_one_line_error(code, err, needle)
    user = tmp_path / "mine.json"
    user.write_text("{}")
    code, _, err = _cli(
        capsys, "plan", "--model", str(tiny_ckpt), "--method", "rtn", "--avg-bits", "3", "--out", str(user), *FAST
    )
    assert code == 2 and user.read_text() == "{}"  # a file of the user's is never overwritten
    assert_one_line_error(code, err, "not a hemorrhage plan")
