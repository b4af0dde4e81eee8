"""GPT-NeoX / Pythia, OPT, Mixtral and Qwen3-MoE against transformers, on tiny random configs.

Per variant: full-sequence logits (fp32, max |Δz| ≤ 1e-5) and KV-cache greedy tokens equal
transformers'.  Per family: every compression method runs, its Hugging Face export loads in
transformers and gives our compressed logits.  For the mixtures of experts: calibration of an
expert sees exactly its routed tokens, an expert that gets none falls back to its method's
calibration-free form (and is recorded), and the router stays dense unless asked.
"""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from helpers import assert_one_line_error
from hemorrhage.sim.generate import generate
from hemorrhage.sim.models import ModelConfig, forward, load_checkpoint

from hemorrhage.errors import UserError

_BASE = {
    "vocab_size": 61,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 48,
}
VARIANTS = {
    # Pythia: parallel residual, rotary on a quarter of each head (2 of 8 dims), untied head
    "gpt_neox": {**_BASE, "model_type": "gpt_neox", "intermediate_size": 48},
    "gpt_neox_sequential": {
        **_BASE,
        "model_type": "gpt_neox",
        "intermediate_size": 48,
        "use_parallel_residual": False,
        "rotary_pct": 0.5,
        "tie_word_embeddings": True,
    },
    "opt": {**_BASE, "model_type": "opt", "ffn_dim": 48},
    # opt-350m's shape: post-LN, no final norm, embeddings projected 16 <-> 32
    "opt_post_ln": {
        **_BASE,
        "model_type": "opt",
        "ffn_dim": 48,
        "do_layer_norm_before": False,
        "word_embed_proj_dim": 16,
        "_scale": 12.0,
    },
    # sliding-window attention over 6 positions (the sequences below are longer)
    "mixtral": {
        **_BASE,
        "model_type": "mixtral",
        "num_key_value_heads": 2,
        "intermediate_size": 24,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "sliding_window": 6,
    },
    # layer 1 dense (mlp_only_layers), top-k weights not renormalised, q/k norms, attention biases
    "qwen3_moe": {
        **_BASE,
        "model_type": "qwen3_moe",
        "num_key_value_heads": 2,
        "head_dim": 8,
        "intermediate_size": 24,
        "moe_intermediate_size": 16,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "mlp_only_layers": [1],
        "norm_topk_prob": False,
        "attention_bias": True,
    },
}
FAMILIES = ["gpt_neox", "opt", "mixtral", "qwen3_moe"]
METHODS = [
    ("magnitude", {"sparsity": 0.5}),
    ("wanda", {"sparsity": 0.5}),
    ("sparsegpt", {"sparsity": 0.5}),
    ("owl", {"sparsity": 0.5}),
    ("drop", {"part": "mlp", "n_drop": 1}),
    ("rtn", {"bits": 4}),
    ("gptq", {"bits": 4}),
    ("awq", {"bits": 4, "n_grid": 4}),
    ("w8a8", {}),
]


def _save(hf: dict, out, seed: int = 0):
    """A random transformers model of config `hf`, weights scaled so logits are O(1) and norms
    and biases moved off their init (a wrong convention then shows), saved by transformers."""
    from transformers import AutoConfig, AutoModelForCausalLM

    hf = dict(hf)
    scale = hf.pop("_scale", 4.0)  # larger where the default init leaves the logits ≪ 1 (post-LN OPT)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**hf)).float().eval()
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.ndim >= 2:
                p.mul_(scale)
            else:
                p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(str(out))
    return model


def _hf_logits(path, tokens):
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        return ref(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> (folder, transformers model, our model, our config), built on first use."""
    cache = {}

    def get(name):
        if name not in cache:
            path = tmp_path_factory.mktemp(name)
            ref = _save(VARIANTS[name], path)
            model, cfg = load_checkpoint(path)
            cache[name] = (path, ref, model, cfg)
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(VARIANTS))
def test_logits_and_greedy_tokens_equal_transformers(saved, name):
    _, ref, model, cfg = saved(name)
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 20))
    with torch.no_grad():
        z_ref = ref(torch.as_tensor(tokens)).logits.numpy()
    z = np.asarray(forward(model, jnp.asarray(tokens)))
    assert np.abs(z_ref).max() > 1.0, "logits too small for a meaningful comparison"
    assert np.abs(z - z_ref).max() <= 1e-5
    prompt = tokens[:1, :5]
    with torch.no_grad():
        out = ref.generate(
            torch.as_tensor(prompt), max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=0
        )
    np.testing.assert_array_equal(np.asarray(generate(model, jnp.asarray(prompt), 10))[0], out[0, 5:].numpy())


def test_configs_are_what_they_claim(saved):
    neox, seq = saved("gpt_neox")[3], saved("gpt_neox_sequential")[3]
    assert neox.parallel_residual and neox.rope.rotary_dim == 2 < neox.head_dim
    assert not seq.parallel_residual and seq.rope.rotary_dim == 4 and seq.tie_embeddings
    post = saved("opt_post_ln")[3]
    assert not post.norm_before and not post.final_norm and post.embed_dim == 16
    mix, qwen = saved("mixtral")[3], saved("qwen3_moe")[3]
    assert mix.moe_layers == (True, True) and mix.norm_topk_prob and mix.n_experts == 4
    assert set(mix.layer_types) == {"sliding"} and mix.sliding_window == 6
    assert qwen.moe_layers == (True, False) and not qwen.norm_topk_prob and qwen.qk_norm == "head"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method,settings", METHODS, ids=[m for m, _ in METHODS])
def test_every_method_exports_to_transformers(saved, tmp_path, family, method, settings):
    from hemorrhage.sim.compress import compress, export_hf, make_method

    path, _, model, cfg = saved(family)
    calib = np.random.default_rng(3).integers(0, cfg.vocab_size, (4, 16))
    small, record = compress(model, make_method(method, **settings), calib)
    out = export_hf(small, path, tmp_path / "out", record)
    tokens = np.random.default_rng(4).integers(0, cfg.vocab_size, (2, 12))
    z_ref = _hf_logits(out, tokens)
    # eager forwards (no jit): one compile per compressed graph would cost more than the run
    if method == "w8a8":  # the export holds the int8 weights dequantized; activations are not quantized there
        z = np.asarray(load_checkpoint(out)[0](jnp.asarray(tokens))[0])
    else:
        z = np.asarray(small(jnp.asarray(tokens))[0])
    assert np.abs(z - z_ref).max() <= 1e-5
    assert np.abs(z - np.asarray(model(jnp.asarray(tokens))[0])).max() > 1e-4, "compression changed nothing"
    if cfg.n_experts:
        assert record["moe"]["router"] == "dense (not compressed)"


# ------------------------------------------------------------------ mixtures of experts
def _mlp_input(model, tokens, layer: int):
    """The MoE layer's input x = rmsnorm₂(h_l + attn_l), from the model's own trace."""
    tr = model.trace(jnp.asarray(tokens))
    block = model.layers[layer]
    return block.norm2(tr.h[layer] + tr.attn_out[layer])


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe"])
def test_expert_calibration_sees_only_its_routed_tokens(saved, family):
    from hemorrhage.sim.compress.calib import Sequential, input_groups
    from hemorrhage.sim.models.moe import route

    _, _, model, cfg = saved(family)
    tokens = np.random.default_rng(5).integers(0, cfg.vocab_size, (3, 16))
    x = np.asarray(_mlp_input(model, tokens, 0)).reshape(-1, cfg.d_model)
    moe = model.layers[0].mlp
    _, routed = route(moe.router(jnp.asarray(x)), cfg.experts_per_token, cfg.norm_topk_prob)
    routed = np.asarray(routed)
    runner = Sequential(model, tokens)
    groups = [g for g in input_groups(model.layers[0]) if g.routed and "gate" in g.attrs]
    stats = runner.stats(model.layers[0], groups)
    assert len(groups) == cfg.n_experts
    counts = [stats[g.key].count for g in groups]
    assert sum(counts) == cfg.experts_per_token * x.shape[0] and min(counts) < x.shape[0]
    for e, g in enumerate(groups):
        xe = x[routed[:, e]].astype(np.float64)
        assert stats[g.key].count == routed[:, e].sum()
        # an expert no token reaches gets the isotropic fallback (tested below)
        want = xe.T @ xe if len(xe) else np.eye(cfg.d_model)
        np.testing.assert_allclose(np.asarray(stats[g.key].xtx), want, rtol=1e-4, atol=1e-4)


def test_expert_without_tokens_falls_back_and_is_recorded(saved):
    """Expert 3 is never routed (its router logit is -1e9 through a bias, in every layer, so the
    blocks keep one structure): Wanda then prunes it by |W| per row, GPTQ rounds it as RTN, and
    the record names it."""
    from flax import nnx
    from hemorrhage.sim.compress import compress, make_method
    from hemorrhage.sim.compress.pruning import row_mask
    from hemorrhage.sim.models.layers import Linear

    _, _, model, cfg = saved("mixtral")
    model = nnx.clone(model)
    for block in model.layers:
        router = Linear(cfg.d_model, cfg.n_experts, bias=True, rngs=nnx.Rngs(0))
        router.w.set_value(block.mlp.router.w[...].at[3].set(0.0))
        router.b.set_value(jnp.zeros(cfg.n_experts).at[3].set(-1e9))
        block.mlp.router = router
    moe = model.layers[0].mlp
    calib = np.random.default_rng(3).integers(0, cfg.vocab_size, (4, 16))
    w = {a: getattr(moe.experts[3], a).weight() for a in ("gate", "up", "down")}
    wanda, rec = compress(model, make_method("wanda", sparsity=0.5), calib)
    assert rec["moe"]["uncalibrated_experts"] == ["layers.0.mlp.experts.3", "layers.1.mlp.experts.3"]
    for a, wa in w.items():
        keep = np.asarray(getattr(wanda.layers[0].mlp.experts[3], a).keep())
        np.testing.assert_array_equal(keep, np.asarray(row_mask(jnp.abs(wa), 0.5)))
    gptq, rec = compress(model, make_method("gptq", bits=3), calib)
    rtn, _ = compress(model, make_method("rtn", bits=3))
    assert rec["moe"]["uncalibrated_experts"] == ["layers.0.mlp.experts.3", "layers.1.mlp.experts.3"]
    for a in w:
        np.testing.assert_array_equal(
            np.asarray(getattr(gptq.layers[0].mlp.experts[3], a).weight()),
            np.asarray(getattr(rtn.layers[0].mlp.experts[3], a).weight()),
        )
    # a routed expert is calibrated: GPTQ differs from RTN there
    assert not np.array_equal(
        np.asarray(gptq.layers[0].mlp.experts[0].gate.weight()), np.asarray(rtn.layers[0].mlp.experts[0].gate.weight())
    )


def test_router_is_dense_unless_asked(saved):
    from flax import nnx
    from hemorrhage.sim.compress import compress, linears, make_method
    from hemorrhage.sim.models.layers import Linear
    from hemorrhage.sim.models.moe import compress_router

    _, _, model, cfg = saved("mixtral")
    paths = [p for p, *_ in linears(model)]
    assert "layers.0.mlp.experts.3.down" in paths and not any(p.endswith("router") for p in paths)
    small, rec = compress(model, make_method("magnitude", sparsity=0.5))
    for before, after in zip(model.layers, small.layers):
        assert type(after.mlp.router) is Linear
        np.testing.assert_array_equal(np.asarray(after.mlp.router.w[...]), np.asarray(before.mlp.router.w[...]))
    assert rec["moe"]["router"] == "dense (not compressed)"
    asked = nnx.clone(model)
    assert compress_router(asked) == cfg.n_layers
    small, rec = compress(asked, make_method("magnitude", sparsity=0.5))
    assert type(small.layers[0].mlp.router) is not Linear and rec["moe"]["router"] == "compressed"


def test_hierarchy_diagnosis_and_predictor_paths_work_on_experts(saved):
    """The per-layer hierarchy, the diagnosis and the predictor's linearisation need nothing
    MoE-specific: the same final KL from both, every expert projection a tangent path."""
    from types import SimpleNamespace

    from hemorrhage.sim.compress import compress, make_method
    from hemorrhage.sim.predict import block_linear_paths
    from hemorrhage.validate.diagnose import diagnose
    from hemorrhage.validate.hierarchy import measure_hierarchy

    _, _, model, cfg = saved("mixtral")
    tokens = np.random.default_rng(6).integers(0, cfg.vocab_size, (2, 12))
    small, _ = compress(model, make_method("magnitude", sparsity=0.5))
    d = diagnose(model, small, tokens)
    h = measure_hierarchy(SimpleNamespace(model=model), small, tokens)
    assert d["final_kl"] > 0 and np.isclose(h["kl"][-1], d["final_kl"], rtol=1e-4)
    assert len(d["layers"]) == cfg.n_layers
    paths = block_linear_paths(model)
    assert sum(".experts." in p for p in paths) == cfg.n_layers * cfg.n_experts * 3


def test_predict_runs_on_a_mixture_of_experts(tmp_path, capsys):
    """`hemorrhage predict` end to end on Mixtral: its Taylor-mode pass goes through the router,
    whose top-k choice is piecewise constant (jet has no rule for top_k itself)."""
    import json
    import shutil

    from hemorrhage.cli import main
    from hemorrhage.sim.hub.registry import fetch_model

    out = tmp_path / "mixtral"
    _save({**VARIANTS["mixtral"], "vocab_size": 49152}, out)  # SmolLM2's tokenizer: real text applies
    src = fetch_model("smollm2-135m", quiet=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, out / name)
    capsys.readouterr()
    assert main(["predict", "--model", str(out), "--grid", "rtn:bits=8,4", "--json"]) == 0
    points = json.loads(capsys.readouterr().out)["points"]
    kl = [p["kl"] for p in points]
    assert len(kl) == 2 and all(np.isfinite(kl)) and 0 < kl[0] < kl[1], kl


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize(
    "family,key,value",
    [
        ("opt", "layer_norm_elementwise_affine", False),
        ("qwen3_moe", "use_sliding_window", True),
        ("mixtral", "partial_rotary_factor", 0.5),
        ("gpt_neox", "head_dim", 4),
        ("gpt_neox", "rope_parameters", {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}),
    ],
)
def test_unimplemented_config_key_is_refused_naming_it(family, key, value):
    hf = {**VARIANTS[family], key: value}
    with pytest.raises(UserError) as err:
        ModelConfig.from_hf(hf)
    msg = str(err.value)
    assert "\n" not in msg and (key in msg or "dynamic" in msg)


def test_refusal_on_the_command_line_before_loading_weights(saved, tmp_path, capsys):
    from hemorrhage.cli import main

    src = saved("opt")[0]
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["layer_norm_elementwise_affine"] = False
    (bad / "config.json").write_text(json.dumps(cfg))
    (bad / "model.safetensors").write_bytes(b"")  # would fail to read: the config is refused first
    capsys.readouterr()
    code = main(["generate", "--model", str(bad), "--prompt", "hi"])
    _, err = capsys.readouterr()
    assert code == 2
    assert_one_line_error(code, err, "layer_norm_elementwise_affine")
