"""Layer expansion and attention: "layer expansion disrupts attention mechanisms" (seed 004).

Settings (sim/compress/expand.py), each measured against its base like any compressed model
(the sweep's rows, validate/measure.py): identity insertion (`expand --at`, zeroed o/down
projections: LLaMA Pro's initialisation) and SOLAR duplication of a span (`expand --span a:b`,
the copies run untrained, as right after depth up-scaling).

Evidence per setting: KL, top-1 agreement, MC agreement, generation prefix agreement (rows);
the hierarchy theory's estimate kl_pred = ½ Var_p(Δz) (Theorem 3, /work/shared/SEEDS.md; the
rows' kl_pred) against the measured KL; per expanded block, attention-row entropy (nats) of
base and expanded model and the pattern change (mean TV and JS over heads and positions,
validate/attention.py), through the layer map of sim/compress/expand.py (block j against the base
block it copies).  The attention numbers need the models: `python -m hemorrhage.validate.exp_expand
--model M --sweep results/sweep_expand_M.jsonl` computes them on the sweep's own held-out windows and
writes results/expand/attention_<model>.json beside the rows; this experiment reads both.

Rules (ours; the seed states the claim without a measure):
  * check: identity insertion is exactly harmless: KL ≤ IDENTITY_KL (fp32 rounding) and top-1
    agreement 1; a failed check makes the verdict NOT TESTED (the instrument is broken).
  * a setting disrupts attention when some active block's mean TV against its base block is
    ≥ TV_DISRUPT (a tenth of the attention mass moved, averaged over rows and heads); an identity
    block is not active (its zero o projection discards whatever its attention does).
  * the claim holds when every duplication setting disrupts attention; identity insertion, which
    cannot (its blocks add nothing, and every later block sees the base's own input), is
    reported beside it as the form of expansion the claim does not cover.
  * the hierarchy theory describes a setting when KL / kl_pred is within [1/THEORY_BAND, THEORY_BAND].
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

IDENTITY_KL, TV_DISRUPT, THEORY_BAND = 1e-6, 0.1, 2.0


def _attention_file(results, model: str) -> Path:
    return Path(results) / "expand" / f"attention_{Path(model).name}.json"


def _label(settings: dict) -> str:
    s = settings or {}
    if s.get("span") is not None:
        a, b = s["span"]
        return f"span={a}:{b}"
    return "at=" + "+".join(str(i) for i in s.get("at") or ())


def output_change(z_base, z_comp) -> dict:
    """Token means over every position: KL(p_base ‖ p_comp), ½ Var_p(Δz) (Theorem 3's estimate, Δz =
    z_comp − z_base, variance under p_base) and top-1 agreement; the rows' fields where a sweep
    has not measured the setting yet (same windows, all positions rather than the scored ones)."""
    import jax
    import jax.numpy as jnp

    lp, lq = jax.nn.log_softmax(z_base, -1), jax.nn.log_softmax(z_comp, -1)
    p, dz = jnp.exp(lp), z_comp - z_base
    kl = jnp.sum(p * (lp - lq), -1)
    var = jnp.sum(p * dz**2, -1) - jnp.sum(p * dz, -1) ** 2
    top1 = jnp.argmax(z_base, -1) == jnp.argmax(z_comp, -1)
    return {"kl": float(kl.mean()), "kl_pred": float(0.5 * var.mean()), "top1_agreement": float(top1.mean())}


def attention_evidence(model_name: str, settings: list[dict], cfg: dict, results) -> Path:
    """Per expand setting: attention statistics per expanded block on the held-out windows of
    measurement config `cfg` (a sweep row's "config": source, seqlen, windows)."""
    from hemorrhage.sim.compress import compress_from_args
    from hemorrhage.sim.hub.loading import load
    from hemorrhage.sim.outputs import atomic_write_text
    from hemorrhage.sim.windows import eval_windows
    from hemorrhage.validate.attention import attention_change

    import jax.numpy as jnp

    from hemorrhage.sim.models import forward

    loaded = load(model_name, quiet=True)
    tokens = eval_windows(
        loaded.tokenizer, cfg["source"], seqlen=cfg["seqlen"], stride=cfg["seqlen"], max_windows=cfg["windows"]
    )
    out = {"model": str(loaded.name), "windows": int(tokens.shape[0]), "seqlen": int(tokens.shape[1]), "settings": {}}
    path = _attention_file(results, loaded.name)
    if path.is_file():  # settings computed before on the same windows are kept
        old = json.loads(path.read_text())
        if (old.get("windows"), old.get("seqlen")) == (out["windows"], out["seqlen"]):
            out["settings"] = old.get("settings", {})
    z_base = forward(loaded.model, jnp.asarray(tokens))
    for st in settings:
        comp, rec = compress_from_args(loaded, "expand", span=st.get("span"), at=st.get("at"))
        att = attention_change(loaded.model, comp, tokens, rec["layer_map"])
        out["settings"][_label(st)] = {
            **att,
            "added_layers": rec["added_layers"],
            "identity_layers": rec["identity_layers"],
            "outputs": output_change(z_base, forward(comp, jnp.asarray(tokens))),
        }
        # written after every setting: a run stopped midway keeps what it finished
        path = _attention_file(results, loaded.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(out, indent=1, allow_nan=True) + "\n")
    return path


def expand(rows, results="results", figures="figures", stem="sweep") -> dict:
    import pandas as pd

    from hemorrhage.validate.exp_common import records, verdict, write_table

    rows = [r for r in records(rows) if r.get("method") == "expand"]
    claim = "layer expansion disrupts attention mechanisms (seed 004)"
    rules = {
        "identity_kl_max": IDENTITY_KL,
        "tv_disrupt": TV_DISRUPT,
        "theory_band": THEORY_BAND,
        "rule": "validate/exp_expand.py's docstring",
    }
    if not rows:
        return verdict("expand", claim, None, "no expand rows in this sweep", {}, rules, "", "", 0)
    for model in sorted({str(r.get("model", "")) for r in rows}):  # attention evidence of settings not measured yet
        att_path = _attention_file(results, model)
        done = {_label(r.get("settings")) for r in rows if str(r.get("model", "")) == model}
        for label in json.loads(att_path.read_text()).get("settings", {}) if att_path.is_file() else {}:
            if label not in done:
                key, _, val = label.partition("=")
                sep = ":" if key == "span" else "+"
                rows.append(
                    {
                        "model": model,
                        "method": "expand",
                        "unmeasured": True,
                        "settings": {key: [int(v) for v in val.split(sep)]},
                    }
                )
    per_setting, per_layer = [], []
    for r in rows:
        model, label = str(r.get("model", "")), _label(r.get("settings"))
        att_path = _attention_file(results, model)
        att = json.loads(att_path.read_text()).get("settings", {}).get(label) if att_path.is_file() else None
        kind = "identity" if (r.get("settings") or {}).get("at") is not None else "duplication"
        if r.get("unmeasured") and att is not None and "outputs" in att:  # the evidence run's own KL, top-1
            r = {**r, **att["outputs"]}
        kl, kl_pred = float(r.get("kl", math.nan)), float(r.get("kl_pred", math.nan))
        row = {
            "model": model,
            "setting": label,
            "kind": kind,
            "measured": not r.get("unmeasured", False),
            "layers": len(att["attn_tv"]) if att else len((r.get("record") or {}).get("layer_map", [])),
            "kl": kl,
            "kl_pred": kl_pred,
            "kl_over_pred": kl / kl_pred if kl_pred > 0 else math.nan,
            "top1_agreement": r.get("top1_agreement"),
            "mc_agreement": r.get("mc_agreement"),
            "mc_acc": r.get("mc_acc"),
            "mc_acc_base": r.get("mc_acc_base"),
            "gen_prefix_agreement": r.get("gen_prefix_agreement"),
            "ppl": r.get("ppl"),
            "ppl_base": r.get("ppl_base"),
        }
        if att is not None:
            tv = np.asarray(att["attn_tv"], float)
            shift = np.asarray(att["attn_entropy_comp_nats"], float) - np.asarray(att["attn_entropy_base_nats"], float)
            # an identity block's attention acts on nothing (its o projection is zero): not counted
            active = np.asarray([j not in att["identity_layers"] for j in range(len(tv))])
            original = np.asarray([j not in att["added_layers"] for j in range(len(tv))])
            row.update(
                attn_tv_max=float(np.nanmax(tv[active])),
                attn_tv_mean=float(np.nanmean(tv[active])),
                attn_tv_max_original_blocks=float(np.nanmax(tv[original])),
                attn_tv_max_added_blocks=float(np.nanmax(tv[~original])) if (~original).any() else math.nan,
                attn_js_max=float(np.nanmax(np.asarray(att["attn_js"], float)[active])),
                entropy_shift_mean_nats=float(np.nanmean(shift[active])),
                entropy_shift_max_abs_nats=float(np.nanmax(np.abs(shift[active]))),
                disrupts=bool(np.nanmax(tv[active]) >= TV_DISRUPT),
            )
            kls = ((r.get("per_layer") or {}).get("kl") or [math.nan] * (len(tv) + 1))[1:]
            for j in range(len(tv)):
                per_layer.append(
                    {
                        "model": model,
                        "setting": label,
                        "block": j,
                        "base_layer": att["base_layer"][j],
                        "added": j in att["added_layers"],
                        "attn_tv": tv[j],
                        "attn_js": att["attn_js"][j],
                        "entropy_base_nats": att["attn_entropy_base_nats"][j],
                        "entropy_comp_nats": att["attn_entropy_comp_nats"][j],
                        "kl_lens": kls[j] if j < len(kls) else math.nan,
                    }
                )
        else:
            row.update(disrupts=None)
        lo, hi = 1 / THEORY_BAND, THEORY_BAND
        row["theory_describes"] = bool(lo <= row["kl_over_pred"] <= hi) if np.isfinite(row["kl_over_pred"]) else None
        per_setting.append(row)
    table = write_table(pd.DataFrame(per_setting), results, f"expand_{stem}")
    write_table(pd.DataFrame(per_layer), results, f"expand_layers_{stem}")
    ident = [s for s in per_setting if s["kind"] == "identity"]
    dup = [s for s in per_setting if s["kind"] == "duplication" and s["disrupts"] is not None]
    check = all(
        (not s["measured"] or (s["kl"] <= IDENTITY_KL and s["top1_agreement"] == 1.0))
        and not s.get("attn_tv_max", 0.0) > IDENTITY_KL
        for s in ident
    )
    if not check:
        holds, why = (
            None,
            (
                "identity insertion is not harmless ("
                + "; ".join(f"{s['setting']}: KL {s['kl']:.3g}" for s in ident)
                + "): the instrument is broken"
            ),
        )
    elif not dup:
        holds, why = (
            None,
            "no duplication setting with attention evidence (run `python -m hemorrhage.validate.exp_expand`)",
        )
    else:
        holds = all(s["disrupts"] for s in dup)
        why = (
            "identity insertion ("
            + ", ".join(f"{s['setting']}: KL {s['kl']:.2g}" for s in ident)
            + ") changes nothing, attention included; duplication: "
            + "; ".join(
                f"{s['setting']}: max attention TV {s['attn_tv_max']:.3f} (original blocks "
                f"{s['attn_tv_max_original_blocks']:.3f}, copies {s['attn_tv_max_added_blocks']:.3f}), "
                f"mean entropy shift {s['entropy_shift_mean_nats']:+.3f} nats, "
                + (
                    f"KL {s['kl']:.3g} (½Var_p(Δz) {s['kl_pred']:.3g}), top-1 {_f(s['top1_agreement'])}, MC "
                    f"agreement {_f(s['mc_agreement'])}, generation prefix {_f(s['gen_prefix_agreement'])}"
                    if s["measured"]
                    else f"KL {s['kl']:.3g} (½Var_p(Δz) {s['kl_pred']:.3g}), top-1 "
                    f"{_f(s['top1_agreement'])} on the evidence run's windows; MC and generation not measured yet "
                    "(sweep unfinished)"
                )
                for s in dup
            )
            + f" → {'every' if holds else 'not every'} duplication moves ≥ {TV_DISRUPT} of some block's "
            "attention mass"
        )
    figure = _figure(per_setting, per_layer, Path(figures) / f"expand_{stem}.png", stem)
    return verdict(
        "expand",
        claim,
        holds,
        why,
        {"settings": per_setting, "identity_check_passed": check},
        rules,
        table,
        figure,
        len(rows),
    )


def _f(x) -> str:
    return "n/a" if x is None or not np.isfinite(float(x)) else f"{float(x):.3f}"


def _figure(per_setting, per_layer, path: Path, stem: str) -> Path:
    import matplotlib.pyplot as plt
    import seaborn as sns

    from hemorrhage.validate.exp_common import theme
    from hemorrhage.validate.plots import save

    theme()
    labels = [s["setting"] for s in per_setting]
    pal = dict(zip(labels, sns.color_palette("tab10", max(1, len(labels)))))
    fig, axs = plt.subplots(2, 2, figsize=(13, 8.5), layout="constrained")
    for s in labels:
        pts = [p for p in per_layer if p["setting"] == s]
        if not pts:
            continue
        j = [p["block"] for p in pts]
        axs[0][0].plot(j, [p["attn_tv"] for p in pts], "-o", ms=3, color=pal[s], label=s)
        axs[0][1].plot(
            j, [p["entropy_comp_nats"] - p["entropy_base_nats"] for p in pts], "-o", ms=3, color=pal[s], label=s
        )
        added = [p for p in pts if p["added"]]
        axs[0][0].plot([p["block"] for p in added], [p["attn_tv"] for p in added], "s", mfc="none", ms=7, color=pal[s])
    axs[0][0].axhline(TV_DISRUPT, color="k", ls=":", lw=1, label=f"TV = {TV_DISRUPT} (our 'disrupted')")
    axs[0][0].set(
        xlabel="block of the expanded model (□: added)",
        ylabel="attention TV vs its base block",
        title="Attention-pattern change per block",
    )
    axs[0][1].axhline(0, color="k", lw=0.8)
    axs[0][1].set(
        xlabel="block of the expanded model",
        ylabel="Δ entropy (nats), expanded − base",
        title="Attention entropy shift per block",
    )
    for ax in axs[0]:
        ax.legend(fontsize=7)
    x = np.arange(len(labels))
    kl = [max(s["kl"], 1e-12) for s in per_setting]
    pred = [max(s["kl_pred"], 1e-12) if np.isfinite(s["kl_pred"]) else np.nan for s in per_setting]
    axs[1][0].bar(x - 0.2, kl, 0.4, label="KL measured")
    axs[1][0].bar(x + 0.2, pred, 0.4, label="½ Var_p(Δz) (Theorem 3)")
    axs[1][0].set_yscale("log")
    axs[1][0].set_xticks(x, labels, rotation=20, fontsize=8)
    axs[1][0].set(ylabel="nats per token (floored at 1e-12)", title="KL and the hierarchy theory's estimate")
    axs[1][0].legend(fontsize=8)
    for k, key in enumerate(("top1_agreement", "mc_agreement", "gen_prefix_agreement")):
        vals = [float(s[key]) if s.get(key) is not None else np.nan for s in per_setting]
        axs[1][1].bar(x + (k - 1) * 0.27, vals, 0.27, label=key.replace("_", " "))
    axs[1][1].set_xticks(x, labels, rotation=20, fontsize=8)
    axs[1][1].set(ylim=(0, 1.05), ylabel="agreement with the base", title="Outputs: top-1, MC, generation")
    axs[1][1].legend(fontsize=8)
    fig.suptitle(f"Layer expansion, {stem}: identity insertion vs SOLAR duplication", fontsize=11)
    return save(fig, path)


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="attention evidence for the expand rows of a sweep, then the verdict")
    p.add_argument("--model", required=True)
    p.add_argument("--sweep", required=True, help="a sweep file holding expand rows")
    p.add_argument("--results", default="results")
    p.add_argument("--figures", default="figures")
    args = p.parse_args(argv)
    from hemorrhage.validate.sweep import read_rows

    rows = [r for r in read_rows(Path(args.sweep), repair=False) if r.get("method") == "expand"]
    if not rows:
        raise SystemExit(f"{args.sweep} holds no expand rows")
    print(attention_evidence(args.model, [r["settings"] for r in rows], rows[0]["config"], args.results))
    v = expand(rows, args.results, args.figures, Path(args.sweep).stem)
    print(v["summary"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
