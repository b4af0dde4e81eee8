"""Counterfactual sublayer damage and the lens without the final norm: the seed's own views.

    df = counterfactual_table(base, comp, tokens)         # one row per (layer, attn | mlp)
    m = lens_layers(base, comp, tokens, norm=False)      # cumulative lens, head on the raw residual

The representation-hierarchy paper's scripts (CASE-Lab-UMD/Pruning-on-Representations,
/work/shared/SEEDS.md § 7) differ from `hemorrhage hierarchy`'s cumulative logit lens in two ways:

Counterfactual.  Each compressed sublayer is fed the dense model's input, so a row measures the
damage that sublayer adds on its own, not what it inherits.  With the dense model's residual
h_l entering block l, its dense branch outputs a_l (attention) and f_l (MLP), and the
compressed branches a'_l, f'_l applied to the *same* dense inputs:

    attention  x = h_l + a_l              x' = h_l + a'_l(h_l)
    MLP        x = h_l + a_l + f_l        x' = h_l + a_l + f'_l(h_l + a_l)

(for a parallel block, attention and MLP read the same h_l and the formula is the same), and
x, x' are compared in h (cos_h, rel_dh = ‖x' − x‖/‖x‖), in z = lens(x) and in p = softmax(z):
cos_z, cos_p, KL(p ‖ p'), top-1 agreement (validate/metrics.py).  Both passes run through one
program (the model's forward with the residual and the attention branch put back to the dense
ones at every block, sim.models.base `perturb`), the dense one with the dense weights: an
uncompressed model's counterfactual damage is exactly zero, not float noise.

Raw lens (`norm=False`).  z = W_U h, the head on the raw residual without the final norm
(the seed's per-layer logits), where `hemorrhage hierarchy` reads z = W_U norm(h) (the lens the
model itself applies at its last layer).  The two agree at no layer in scale: the final norm
divides by ‖h‖, which grows with depth, so raw-lens logits (and their KL) grow with ‖h‖.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hemorrhage.sim.jit import jit
from hemorrhage.sim.models.base import traced_layers
from hemorrhage.validate.metrics import compare_hidden, compare_logits

PARTS = ("attn", "mlp")
KEYS = ("cos_h", "rel_dh", "cos_z", "cos_p", "kl", "top1")


def lens(model, h, norm: bool = True):
    """Logits read off a residual: model.unembed (final norm, head, the model's divisor and
    soft-cap) or, norm=False, the same without the final norm."""
    if norm:
        return model.unembed(h)
    z = model.embed.attend(h) if model.lm_head is None else model.lm_head(h)
    div, cap = getattr(model.cfg, "logit_divisor", 1.0), getattr(model.cfg, "final_softcap", None)
    z = z / div if div != 1.0 else z
    return (z if cap is None else jnp.tanh(z / cap) * cap).astype(jnp.float32)


@jit
def _fed_dense(model, tokens, h_ref, attn_ref):
    """Branch outputs [L B T d] of `model` with every block fed the dense residual h_ref[l] and
    its MLP fed h_ref[l] + attn_ref[l]."""

    def put_back(site, layer, x):
        if site == "h":
            return h_ref[layer]
        if site == "attn":
            return attn_ref[layer]
        return x

    _, _, _, sown = model.run(tokens, perturb=traced_layers(put_back), trace=True)
    return sown["attn_out"], sown["mlp_out"]


def _metrics(model_b, model_c, x, x_c, norm: bool) -> dict:
    out = {**compare_hidden(x, x_c), **compare_logits(lens(model_b, x, norm), lens(model_c, x_c, norm))}
    dh = jnp.sqrt(jnp.sum((x_c - x) ** 2, -1)) / jnp.sqrt(jnp.sum(x**2, -1))
    return {k: jnp.mean(v) for k, v in {**out, "rel_dh": dh}.items() if k in KEYS}


@jit(static_argnames=("norm",))
def _sublayer_metrics(base, comp, h, a, f, a_c, f_c, norm: bool):
    """Token means per (layer, part) over h [L+1 B T d] and branch outputs [L B T d]."""
    d = h.shape[-1]
    flat = lambda x: x.reshape(-1, d)  # noqa: E731

    def one(args):
        hl, al, fl, acl, fcl = (flat(x) for x in args)
        attn = _metrics(base, comp, hl + al, hl + acl, norm)
        mlp = _metrics(base, comp, hl + al + fl, hl + al + fcl, norm)
        return attn, mlp

    return jax.lax.map(one, (h[:-1], a, f, a_c, f_c))


def counterfactual_table(base, comp, tokens, *, norm: bool = True):
    """One row per (layer, part): the module docstring's counterfactual damage, token means."""
    import pandas as pd

    tokens = jnp.asarray(tokens)
    tr = base.trace(tokens)
    a_ref = tr.attn_out
    a_d, f_d = _fed_dense(base, tokens, tr.h, a_ref)
    a_c, f_c = _fed_dense(comp, tokens, tr.h, a_ref)
    attn, mlp = _sublayer_metrics(base, comp, tr.h, a_d, f_d, a_c, f_c, norm=norm)
    rows = []
    L = int(tr.h.shape[0]) - 1
    for layer in range(L):
        for part, res in (("attn", attn), ("mlp", mlp)):
            rows.append(
                {"layer": layer, "part": part, **{k: float(np.asarray(res[k][layer], np.float64)) for k in KEYS}}
            )
    return pd.DataFrame(rows)


@jit(static_argnames=("norm",))
def _lens_layers(base, comp, hs, hs_c, norm: bool):
    def layer(args):
        hb, hc = args
        out = {**compare_hidden(hb, hc), **compare_logits(lens(base, hb, norm), lens(comp, hc, norm))}
        return {k: jnp.mean(v) for k, v in out.items() if k in KEYS}

    return jax.lax.map(layer, (hs, hs_c))


def lens_layers(base, comp, tokens, *, norm: bool = True) -> dict[str, np.ndarray]:
    """The cumulative lens per layer (as validate.hierarchy), optionally without the final
    norm: {cos_h, cos_z, cos_p, kl, top1: [L+1]} token means."""
    tokens = jnp.asarray(tokens)
    hb, hc = base.trace(tokens).h, comp.trace(tokens).h
    L1, d = hb.shape[0], hb.shape[-1]
    res = _lens_layers(base, comp, hb.reshape(L1, -1, d), hc.reshape(L1, -1, d), norm=norm)
    return {k: np.asarray(v, np.float64) for k, v in res.items()}


def disagreement(cum_kl: np.ndarray, cf: "pd.DataFrame") -> dict:  # noqa: F821
    """Where the cumulative lens and the counterfactual disagree: per block l, the KL the
    cumulative lens gains across it (kl[l+1] − kl[l]) against the counterfactual KL of its two
    sublayers; their Spearman correlation over blocks, and the block each ranks most damaging."""
    import pandas as pd

    gain = np.diff(np.asarray(cum_kl, np.float64))
    own = cf.groupby("layer").kl.sum().sort_index().to_numpy()
    ok = np.isfinite(gain) & np.isfinite(own)
    rho = float(pd.Series(gain[ok]).rank().corr(pd.Series(own[ok]).rank())) if ok.sum() >= 4 else float("nan")
    part = cf.pivot(index="layer", columns="part", values="kl")
    return {
        "spearman_gain_vs_counterfactual": rho,
        "block_max_gain": int(np.nanargmax(gain)) if ok.any() else None,
        "block_max_counterfactual": int(np.nanargmax(own)) if ok.any() else None,
        "share_of_gain_in_last_quarter": float(gain[-max(1, len(gain) // 4) :].sum() / gain.sum()),
        "share_of_counterfactual_in_last_quarter": float(own[-max(1, len(own) // 4) :].sum() / own.sum()),
        "mlp_over_attn_counterfactual": float(part["mlp"].sum() / part["attn"].sum()),
    }


def views_figure(cum: dict, cf: "pd.DataFrame | None", raw: dict | None, path, title: str):  # noqa: F821
    """Left: KL per layer, the cumulative lens (with and without the final norm) beside each
    sublayer's counterfactual KL.  Right: the same in h (1 − cos)."""
    import matplotlib.pyplot as plt

    from hemorrhage.validate.exp_common import theme
    from hemorrhage.validate.plots import save

    theme()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), layout="constrained")
    for ax, key, name in ((axes[0], "kl", "KL(p ‖ q)"), (axes[1], "cos_h", "1 − cos(h)")):
        val = (lambda d: d[key]) if key == "kl" else (lambda d: 1.0 - np.asarray(d[key]))  # noqa: E731
        layers = np.arange(len(cum[key]))
        ax.plot(layers, val(cum), "o-", color="k", label="cumulative lens (final norm), layer l = after block l")
        if raw is not None:
            ax.plot(layers, val(raw), "o--", color="grey", label="cumulative lens without the final norm")
        for part, marker in (("attn", "^"), ("mlp", "s")) if cf is not None else ():
            g = cf[cf.part == part].sort_values("layer")
            ax.plot(
                g.layer + 1,
                val(g) if key == "kl" else 1.0 - g[key],
                marker,
                ls=":",
                label=f"counterfactual {part} of block l − 1 (dense input)",
            )
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_ylabel(name)
        ax.legend(fontsize=7)
    axes[0].set_title("Cumulative vs counterfactual damage in p", fontsize=11)
    axes[1].set_title("… and in h", fontsize=11)
    fig.suptitle(title, fontsize=11)
    return save(fig, path)
