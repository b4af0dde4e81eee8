"""Figures a student can read: seaborn, one message per figure, drawn from tidy tables."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window


def save(fig, path: Path) -> Path:
    """Atomic: a killed run never leaves a half-written PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    fig.savefig(tmp, dpi=130, bbox_inches="tight")
    os.replace(tmp, path)
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
    long = pd.concat([
        pd.DataFrame({"layer": df.layer, "value": 1 - df.cos_h, "quantity": "1 − cos(h)  hidden"}),
        pd.DataFrame({"layer": df.layer, "value": 1 - df.cos_z, "quantity": "1 − cos(z)  logits"}),
        pd.DataFrame({"layer": df.layer, "value": 1 - df.cos_p, "quantity": "1 − cos(p)  probabilities"}),
        pd.DataFrame({"layer": df.layer, "value": df.kl, "quantity": "KL(p ‖ q)"}),
    ])
    long = long[np.isfinite(long.value) & (long.value > 0)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    sns.lineplot(long, x="layer", y="value", hue="quantity", marker="o", ax=ax1)
    ax1.set_yscale("log")
    ax1.set_xlabel("layer l (logit lens of h_l; last = the model's output)")
    ax1.set_ylabel("damage, base vs compressed (token mean)")
    ax1.set_title("The hierarchy: damage in h, z and p per layer")
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
    ax2.set_title("Does ½Var_p(Δz) predict the KL?  (colour = layer)")
    fig.suptitle(title, fontsize=11)
    return save(fig, path)
