"""The plan's figure: per-layer bits (or sparsity) coloured by predicted KL share beside the
uniform setting of equal size, and the size–KL frontier (plan vs uniform, predicted and measured).

    draw_plan(plan, frontier_rows, "plan.png")      # rows: validate.plan_check.frontier
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _block(path: str) -> int:
    return int(path.split(".")[1])


def draw_plan(plan: dict, rows: list[dict], path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from hemorrhage.validate.plots import save

    ax_name = plan["axis"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    ts = plan["tensors"]
    names = sorted({t["path"].split(".", 2)[2] for t in ts})
    share = np.array([t["predicted_kl_share"] for t in ts])
    frac = share / share.sum() if share.sum() > 0 else share
    for k, name in enumerate(names):
        sel = [i for i, t in enumerate(ts) if t["path"].split(".", 2)[2] == name]
        x = np.array([_block(ts[i]["path"]) for i in sel]) + (k - len(names) / 2) * 0.8 / max(len(names), 1)
        sc = a.scatter(
            x,
            [ts[i][ax_name] for i in sel],
            c=frac[sel],
            cmap="viridis",
            vmin=0,
            vmax=max(frac.max(), 1e-12),
            s=18,
            marker="os^v<>Dp"[k % 8],
            label=name,
        )
    a.axhline(
        plan[f"avg_{ax_name}"], color="0.4", ls="--", lw=1, label=f"uniform, equal size ({plan[f'avg_{ax_name}']:.3g})"
    )
    a.set_xlabel("block")
    a.set_ylabel(ax_name)
    a.set_title(f"{plan['model']}: {plan['method']} plan (colour: share of predicted KL)")
    a.legend(fontsize=7, ncol=2)
    fig.colorbar(sc, ax=a, label="share of predicted KL")
    if rows:
        # equal average = equal size for quantization (same group size: same scales); a pruned layer is
        # stored dense with a mask, so for pruning the average sparsity is the size that matters
        px, ux = [r["plan_avg"] for r in rows], [r["level"] for r in rows]
        b.plot(px, [r["plan_predicted_kl"] for r in rows], "o-", color="C0", label="plan, predicted")
        b.plot(ux, [r["uniform_predicted_kl"] for r in rows], "s-", color="C1", label="uniform, predicted")
        if "plan_measured_kl" in rows[0]:
            b.plot(px, [r["plan_measured_kl"] for r in rows], "o:", color="C0", mfc="none", label="plan, measured")
            b.plot(
                ux, [r["uniform_measured_kl"] for r in rows], "s:", color="C1", mfc="none", label="uniform, measured"
            )
        b.set_yscale("log")
        b.set_xlabel(f"average {ax_name} (equal size)")
        b.set_ylabel("KL to the base (nats)")
        b.set_title("size–KL frontier")
        b.legend(fontsize=8)
    return save(fig, Path(path))
