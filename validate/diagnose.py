"""Experiment 5: Signal Degradation or Computation Collapse?  (arXiv 2604.19884)

The seed names two failure modes but publishes no decision rule; this is ours.
Evidence, per block l, base vs compressed on the same real tokens:

    kl_lens[l]        KL(p_base,l ‖ p_comp,l) at the logit lens of h_l
    traj_base[l]      KL(p_base,L ‖ p_base,l): how far the base's lens is from its answer
    traj_comp[l]      KL(p_base,L ‖ p_comp,l): the same for the compressed model
    restore_h[l]      share of the final KL removed by putting back the base h_l
                      (then running the compressed blocks l+1..L)
    restore_attn[l], restore_mlp[l]   the same for one block's attention / MLP output
    cka[l]            linear CKA(h_base,l, h_comp,l): is the representation's geometry kept?
    entropy_shift[l]  mean normalised attention entropy, compressed − base
    gate_flip[l]      share of SwiGLU/GeGLU gate units whose sign flips
    attn_entropy_base_nats[l], attn_entropy_comp_nats[l]   mean attention-row entropy (nats)
    attn_tv[l], attn_js[l]   attention-pattern change: mean TV / JS between base and
                      compressed rows on the same tokens, over heads (validate/attention.py)
    base_layer[l]     the base block block l is compared with (expand: the block it copies;
                      its residual with the base's h_{h_map[l]}, sim/compress/expand.py)

Rule (thresholds are ours; every number behind a verdict is printed with it):
  a block *collapses* when its computation stops working: CKA < 0.7, or more than
  25 % of its gates flip, or its attention entropy rises by more than 0.15 (attention
  spreads toward uniform).  Otherwise it *degrades* if the KL at its lens exceeds 0.01.
  The model is in **Computation Collapse** if a block in the first half collapses and
  the final top-1 agreement with the base is below 0.5 (the signal is destroyed early
  and does not come back); in **Signal Degradation** if the final KL exceeds 0.01
  otherwise; **intact** below that.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from hemorrhage.sim.jit import jit
from hemorrhage.sim.models.base import ENTROPY_SHIFT_MAX, GATE_FLIP_MAX, traced_layers

CKA_MIN, KL_DAMAGE = 0.7, 0.01


def linear_cka(x, y) -> float:
    """Linear CKA = ‖XᵀY‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) on centred [N d] activations."""
    x = x - x.mean(0, keepdims=True)
    y = y - y.mean(0, keepdims=True)
    num = jnp.sum(jnp.square(x.T @ y))
    den = jnp.sqrt(jnp.sum(jnp.square(x.T @ x)) * jnp.sum(jnp.square(y.T @ y)))
    return num / jnp.maximum(den, 1e-30)


def _kl_rows(z_ref, z):
    logp, logq = jax.nn.log_softmax(z_ref), jax.nn.log_softmax(z)
    return jnp.sum(jnp.exp(logp) * (logp - logq), -1)


@partial(jit, static_argnames=("site",))
def _final_kl_patched(comp, tokens, z_base, site: str, layers, values):
    """Mean final KL for each l in `layers` [n] when `values[l]` replaces the compressed model's
    `site` at l: one program and one dispatch for all of them (lax.map keeps one forward live)."""

    def one(layer):
        @traced_layers  # `l` may be the scan's traced layer index: one body, not a switch over layers
        def patch(s, l, x):
            if s != site:
                return x
            return jnp.where(layer == l, values[jnp.minimum(l, values.shape[0] - 1)], x)

        z = comp(tokens, perturb=patch)[0]
        return jnp.mean(_kl_rows(z_base, z))

    return jax.lax.map(one, layers)


@jit
def _lens(base, comp, h_b, h_c, z_final):
    """Per-layer KLs of the logit lens ([N d] per layer) against each other and the base's answer."""

    def one(args):
        hb, hc = args
        zb, zc = base.unembed(hb), comp.unembed(hc)
        return (jnp.mean(_kl_rows(zb, zc)), jnp.mean(_kl_rows(z_final, zb)), jnp.mean(_kl_rows(z_final, zc)))

    return jax.lax.map(one, (h_b, h_c))


def diagnose(base, comp, tokens, record: dict | None = None) -> dict:
    """All the evidence and the verdict for one compressed model (see module docstring).

    A deeper model (`expand`, its `record`): the compressed model's block j is compared with
    the base block record["layer_map"][j] (the block it copies); an added block has no attention
    or MLP output of its own in the base, so its restore_attn / restore_mlp are NaN."""
    from hemorrhage.sim.compress.expand import layer_map
    from hemorrhage.validate.attention import attention_change

    tokens = jnp.asarray(tokens)
    tb, tc = base.trace(tokens), comp.trace(tokens)
    n_blocks = tc.h.shape[0] - 1
    lmap, h_map = layer_map(record, tb.h.shape[0] - 1, n_blocks)
    sel, blk = np.asarray([0] + h_map), np.asarray(lmap)  # base h / block compared with the compressed one's
    tb = type(tb)(
        **{
            k: (None if v is None else (v[sel] if k == "h" else v if k == "logits" else v[blk]))
            for k, v in vars(tb).items()
        }
    )
    L1, B, T, d = tb.h.shape
    added = set((record or {}).get("added_layers", ()))
    h_b, h_c = tb.h.reshape(L1, B * T, d), tc.h.reshape(L1, B * T, d)
    z_final = tb.logits.reshape(B * T, -1)
    kl_lens, traj_base, traj_comp = (np.asarray(a, np.float64) for a in _lens(base, comp, h_b, h_c, z_final))
    final_kl = float(np.mean(np.asarray(_kl_rows(z_final, tc.logits.reshape(B * T, -1)))))
    top1 = float(np.mean(np.asarray(jnp.argmax(tb.logits, -1) == jnp.argmax(tc.logits, -1))))

    def restored(site, values, layers):
        kls = np.asarray(_final_kl_patched(comp, tokens, tb.logits, site, jnp.asarray(list(layers), jnp.int32), values))
        return [1.0 - float(kl) / final_kl if final_kl > 0 and np.isfinite(final_kl) else float("nan") for kl in kls]

    restore_h = restored("h", tb.h, range(1, n_blocks + 1))
    restore_attn = [np.nan if j in added else r for j, r in enumerate(restored("attn", tb.attn_out, range(n_blocks)))]
    restore_mlp = [np.nan if j in added else r for j, r in enumerate(restored("mlp", tb.mlp_out, range(n_blocks)))]
    att = attention_change(base, comp, tokens, lmap)
    cka = [float(linear_cka(h_b[l], h_c[l])) for l in range(1, L1)]
    ent_b = np.asarray(tb.attn_entropy).mean(axis=(1, 2))
    ent_c = np.asarray(tc.attn_entropy).mean(axis=(1, 2))
    gate = (
        np.asarray(tb.gate_pos != tc.gate_pos).mean(axis=(1, 2, 3))
        if tb.gate_pos is not None and tc.gate_pos is not None
        else np.full(n_blocks, np.nan)
    )
    layers = []
    for l in range(n_blocks):
        shift = float(ent_c[l] - ent_b[l])
        broken = (
            cka[l] < CKA_MIN
            or (np.isfinite(gate[l]) and gate[l] > GATE_FLIP_MAX)
            or shift > ENTROPY_SHIFT_MAX
            or not np.isfinite(cka[l])
        )
        label = "collapse" if broken else ("degradation" if kl_lens[l + 1] > KL_DAMAGE else "intact")
        layers.append(
            {
                "block": l,
                "label": label,
                "kl_lens": kl_lens[l + 1],
                "cka": cka[l],
                "gate_flip": float(gate[l]),
                "attn_entropy_base": float(ent_b[l]),
                "attn_entropy_comp": float(ent_c[l]),
                "entropy_shift": shift,
                "restore_h": restore_h[l],
                "restore_attn": restore_attn[l],
                "restore_mlp": restore_mlp[l],
                "traj_base": traj_base[l + 1],
                "traj_comp": traj_comp[l + 1],
                "base_layer": lmap[l],
                "attn_entropy_base_nats": att["attn_entropy_base_nats"][l],
                "attn_entropy_comp_nats": att["attn_entropy_comp_nats"][l],
                "attn_tv": att["attn_tv"][l],
                "attn_js": att["attn_js"][l],
                "attn_pattern_heads": att["pattern_heads"][l],
            }
        )
    early_collapse = [x["block"] for x in layers[: max(1, n_blocks // 2)] if x["label"] == "collapse"]
    if early_collapse and top1 < 0.5:
        verdict = "computation_collapse"
    elif final_kl > KL_DAMAGE or not np.isfinite(final_kl):
        verdict = "signal_degradation"
    else:
        verdict = "intact"
    return {
        "verdict": verdict,
        "final_kl": final_kl,
        "top1_agreement": top1,
        "collapsed_blocks": [x["block"] for x in layers if x["label"] == "collapse"],
        "early_collapsed_blocks": early_collapse,
        "tokens": int(B * T),
        "rule": {
            "cka_min": CKA_MIN,
            "gate_flip_max": GATE_FLIP_MAX,
            "entropy_shift_max": ENTROPY_SHIFT_MAX,
            "kl_damage": KL_DAMAGE,
            "collapse_needs_top1_below": 0.5,
        },
        "layers": layers,
        "layer_map": lmap,
        "h_map": h_map,
    }


def stored_verdict(folder) -> dict | None:
    """Exp 5 over the stored diagnoses (results/diagnose/*.json, `hemorrhage diagnose`): the
    seed's claim (arXiv 2604.19884) is that 4-bit quantization degrades the signal while 2-bit
    collapses the computation.  Per model with both an RTN 4-bit and an RTN 2-bit diagnosis:
    agrees when 4-bit is not computation_collapse and 2-bit is.  Verdict format of
    validate/exp_common.py; None without such a pair."""
    import json
    from pathlib import Path

    from hemorrhage.validate.exp_common import verdict

    rows = []
    for js in sorted(Path(folder).glob("*.json")):
        try:
            r = json.loads(js.read_text())
            st = r["record"]["settings"]
            rows.append(
                {
                    "model": r["model"],
                    "method": r["record"]["method"],
                    "bits": st.get("bits"),
                    "setting": r["title"].split(": ")[0],
                    "verdict": r["verdict"],
                    "final_kl": r["final_kl"],
                    "top1_agreement": r["top1_agreement"],
                    "early_collapsed_blocks": r["early_collapsed_blocks"],
                }
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if not rows:
        return None
    per_model = {}
    for m in dict.fromkeys(r["model"] for r in rows):
        got = {r["bits"]: r["verdict"] for r in rows if r["model"] == m and r["method"] == "rtn"}
        if 4 in got and 2 in got:
            per_model[m] = bool(got[4] != "computation_collapse" and got[2] == "computation_collapse")
    holds = all(per_model.values()) if per_model else None
    why = (
        "; ".join(
            f"{m}: RTN 4-bit {next(r['verdict'] for r in rows if r['model'] == m and r['bits'] == 4)}, "
            f"2-bit {next(r['verdict'] for r in rows if r['model'] == m and r['bits'] == 2)} → "
            f"{'agrees' if ok else 'disagrees'}"
            for m, ok in per_model.items()
        )
        or "no model has both an RTN 4-bit and a 2-bit diagnosis"
    )
    return verdict(
        "diagnose",
        "4-bit quantization is Signal Degradation, 2-bit is Computation Collapse (seed 001)",
        holds,
        why,
        {"diagnoses": rows, "agrees_by_model": per_model},
        {"rule": "validate/diagnose.py's docstring"},
        "",
        "",
        len(rows),
    )
