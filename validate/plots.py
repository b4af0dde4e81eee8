"""Figures a student can read: seaborn, one message per figure, drawn from tidy tables."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window


def save(fig, path: Path) -> Path:
    """Atomic: a killed run never leaves a half-written PNG."""
    from hemorrhage.sim.outputs import atomic_file

    path = Path(path)
    with atomic_file(path) as tmp:  # fsynced, umask permissions (not mkstemp's 0600)
        fig.savefig(tmp, dpi=130, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def hierarchy_figure(df, path: Path, title: str) -> Path:
    """Left: damage per layer in h, z, p (1 − cos) and KL.  Right: ½Var_p vs KL."""
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    long = pd.concat(
        [
            pd.DataFrame({"layer": df.layer, "value": 1 - df.cos_h, "quantity": "1 − cos(h)  hidden"}),
            pd.DataFrame({"layer": df.layer, "value": 1 - df.cos_z, "quantity": "1 − cos(z)  logits"}),
            pd.DataFrame({"layer": df.layer, "value": 1 - df.cos_p, "quantity": "1 − cos(p)  probabilities"}),
            pd.DataFrame({"layer": df.layer, "value": df.kl, "quantity": "KL(p ‖ q)"}),
        ]
    )
    long = long[np.isfinite(long.value) & (long.value > 0)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8), layout="constrained")
    sns.lineplot(long, x="layer", y="value", hue="quantity", marker="o", ax=ax1)
    ax1.set_yscale("log")
    ax1.set_xlabel("layer l (logit lens of h_l; last = the model's output)")
    ax1.set_ylabel("damage, base vs compressed (token mean)")
    ax1.set_title("The hierarchy: damage in h, z and p per layer", fontsize=11)
    ax1.legend(fontsize=8)

    ok = df[np.isfinite(df.kl) & (df.kl > 0) & (df.kl_pred > 0)]
    sns.scatterplot(ok, x="kl", y="kl_pred", hue="layer", palette="viridis", ax=ax2, legend=False)
    if len(ok):
        lo = float(min(ok.kl.min(), ok.kl_pred.min()))
        hi = float(max(ok.kl.max(), ok.kl_pred.max()))
        ax2.plot([lo, hi], [lo, hi], "k--", lw=1, label="prediction = measurement")
        ax2.set_xscale("log")
        ax2.set_yscale("log")
        ax2.legend(fontsize=8)
    ax2.set_xlabel("measured KL(p ‖ q)")
    ax2.set_ylabel("predicted ½ Var_p(Δz)  (Theorem 3)")
    ax2.set_title("Does ½Var_p(Δz) predict the KL?  (colour = layer)", fontsize=11)
    fig.suptitle(title, fontsize=11)
    return save(fig, path)


def diagnose_figure(layers: list[dict], path: Path, title: str) -> Path:
    """Per block: what restoring the base activation recovers, and whether the block still computes."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    df = pd.DataFrame(layers)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8), layout="constrained")
    rec = df.melt(
        id_vars="block",
        value_vars=["restore_h", "restore_attn", "restore_mlp"],
        var_name="put back the base's",
        value_name="share of final KL removed",
    )
    rec["put back the base's"] = rec["put back the base's"].map(
        {"restore_h": "residual h after block", "restore_attn": "attention output", "restore_mlp": "MLP output"}
    )
    sns.lineplot(rec, x="block", y="share of final KL removed", hue="put back the base's", marker="o", ax=ax1)
    ax1.set_title("Restoration patching: KL removed by\nputting back one base activation", fontsize=11)
    ax1.set_ylim(-0.1, 1.05)
    health = df.melt(
        id_vars=["block", "label"],
        value_vars=["cka", "gate_flip", "entropy_shift"],
        var_name="evidence",
        value_name="value",
    )
    sns.lineplot(health, x="block", y="value", hue="evidence", marker="o", ax=ax2)
    for _, row in df[df.label == "collapse"].iterrows():
        ax2.axvspan(row.block - 0.5, row.block + 0.5, color="red", alpha=0.12, lw=0)
    ax2.set_title("Does each block still compute?\n(red band = block labelled collapse)", fontsize=11)
    fig.suptitle(title, fontsize=11)
    return save(fig, path)
