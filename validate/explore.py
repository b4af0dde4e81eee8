"""The tutorials' knob: compress the base one way, see every level of the damage at once.

    ex = Explorer(load("smollm2-135m"))          # the base's side is computed once, here
    d = ex.damage("magnitude", 0.5)              # cached per (method, level)
    d.per_layer["cos_p"][layer], d.mc_compressed, d.text_compressed, d.seconds

One held-out window, a few cloze questions and one greedy generation: small enough that
turning a slider in a notebook (tutorials/*.py under `marimo edit`) answers in seconds on a
CPU.  The numbers are the project's own (validate/metrics.per_layer at every layer's logit
lens, validate/mc.choice_scores, sim/generate), on less text than a sweep uses.

Notation (SEEDS.md): h the residual after a layer, z = W·norm(h) its logit lens, p =
softmax(z), q the compressed model's; per layer
    1 − cos(h), 1 − cos(z), 1 − cos(p)          the damage hierarchy (Theorems 1–2)
    KL(p‖q) ≈ ½Var_p(Δz)   (kl, kl_pred)        Theorem 3, arXiv 2603.24652
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from jaxtyping import Float, Int

#: what a slider offers: method -> (the setting it turns, its values)
KNOBS: dict[str, tuple[str, tuple]] = {
    "magnitude": ("sparsity", (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)),
    "wanda": ("sparsity", (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)),
    "rtn": ("bits", (8, 6, 5, 4, 3, 2)),
}


@dataclass
class Damage:
    """One compressed model against the base.

    per_layer: metric -> [L+1] array over the window's tokens (cos_h, cos_z, cos_p, kl,
      kl_pred = ½Var_p(Δz), top1), layer 0 the embeddings' lens;
    mc_base, mc_compressed: the chosen answer index per question; mc_answer: the right one;
    text_base, text_compressed: the greedy continuations of the prompt; first_divergence:
      the first generated step where they differ (new_tokens if never);
    seconds: wall time of compressing and measuring (not cached); parts: its split (compress,
      hierarchy, mc, generate)."""

    method: str
    level: float
    per_layer: dict[str, Float[np.ndarray, " L1"]]
    mc_base: Int[np.ndarray, " I"]
    mc_compressed: Int[np.ndarray, " I"]
    mc_answer: Int[np.ndarray, " I"]
    text_base: str
    text_compressed: str
    first_divergence: int
    seconds: float
    parts: dict[str, float]


_JIT: dict = {}


def _hierarchy_impl(base, comp, tokens, h_base):
    """validate.metrics.per_layer of the compressed model's trace against the base's h."""
    from hemorrhage.validate.metrics import per_layer

    h = comp.trace(tokens).h
    return per_layer(base, comp, h_base, h.reshape(h.shape[0], -1, h.shape[-1]))


def hierarchy_jit():
    """One compiled program per model structure (the jit keys on the graph, not the weights):
    every sparsity of a pruning method reuses it."""
    if not _JIT:
        from hemorrhage.sim.jit import jit

        _JIT["hierarchy"] = jit(_hierarchy_impl)
    return _JIT["hierarchy"]


class Explorer:
    """The base's hidden states, MC choices and generation, computed once; `damage` does
    the compressed side (and caches it, so going back to a setting is instant)."""

    def __init__(
        self,
        loaded,
        *,
        seqlen: int = 64,
        mc_items: int = 4,
        prompt: str = "The capital of France is",
        new_tokens: int = 16,
        calib_samples: int = 4,
        calib_seqlen: int = 64,
    ):
        import jax.numpy as jnp

        from hemorrhage.sim.windows import eval_windows
        from hemorrhage.sim.generate import generate
        from hemorrhage.validate.mc import choice_scores, mc_inputs
        from hemorrhage.validate.measure import MeasureConfig

        self.loaded, self.new_tokens = loaded, new_tokens
        self.calib = {"calib_samples": calib_samples, "calib_seqlen": calib_seqlen}
        self.tokens = jnp.asarray(eval_windows(loaded.tokenizer, "wiki", seqlen=seqlen, stride=seqlen, max_windows=1))
        h = loaded.model.trace(self.tokens).h
        self.h_base = h.reshape(h.shape[0], -1, h.shape[-1])
        self.mc = mc_inputs(loaded, MeasureConfig(mc_items=mc_items, mc_tasks=("cloze",)))
        self.questions = [str(q) for q in self._question_texts()]
        self.mc_base = choice_scores(loaded.model, self.mc)[0].argmax(-1) if self.mc else np.zeros(0, int)
        ids = list(loaded.tokenizer(prompt, add_special_tokens=True)["input_ids"])
        self.prompt, self.prompt_ids = prompt, jnp.asarray([ids], jnp.int32)
        self.gen_base = np.asarray(generate(loaded.model, self.prompt_ids, new_tokens))[0]
        self._cache: dict[tuple[str, float], Damage] = {}

    def _question_texts(self):
        if not self.mc:
            return []
        tok = self.loaded.tokenizer
        return [tok.decode(q[:n][-24:]) for q, n in zip(self.mc["q_tok"], self.mc["q_len"])]

    def damage(self, method: str, level: float) -> Damage:
        """Compress with `method` at `level` (its KNOBS setting) and measure it."""
        import jax

        from hemorrhage.sim.compress import compress_from_args
        from hemorrhage.sim.generate import generate
        from hemorrhage.validate.mc import choice_scores

        key = (method, float(level))
        if key in self._cache:
            return self._cache[key]
        t0 = time.perf_counter()
        setting = KNOBS[method][0]
        comp, _ = compress_from_args(self.loaded, method, **{setting: level}, **self.calib)
        t1 = time.perf_counter()
        res = jax.device_get(hierarchy_jit()(self.loaded.model, comp, self.tokens, self.h_base))
        t2 = time.perf_counter()
        mc_c = choice_scores(comp, self.mc)[0].argmax(-1) if self.mc else np.zeros(0, int)
        t3 = time.perf_counter()
        gen_c = np.asarray(generate(comp, self.prompt_ids, self.new_tokens))[0]
        t4 = time.perf_counter()
        differ = np.flatnonzero(gen_c != self.gen_base)
        tok = self.loaded.tokenizer
        d = Damage(
            method,
            float(level),
            {k: np.asarray(v, np.float64) for k, v in res.items()},
            np.asarray(self.mc_base),
            np.asarray(mc_c),
            np.asarray(self.mc.get("answer", np.zeros(0, int))),
            tok.decode(self.gen_base),
            tok.decode(gen_c),
            int(differ[0]) if differ.size else self.new_tokens,
            time.perf_counter() - t0,
            {"compress": t1 - t0, "hierarchy": t2 - t1, "mc": t3 - t2, "generate": t4 - t3},
        )
        self._cache[key] = d
        return d


def hierarchy_figure(d: Damage, layer: int):
    """Left: 1 − cos of h, z, p per layer (log scale) with the chosen layer marked.  Right:
    KL(p‖q) against ½Var_p(Δz) per layer (Theorem 3: on the diagonal while Δz is small)."""
    import matplotlib.pyplot as plt

    pl = d.per_layer
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    x = np.arange(len(pl["kl"]))
    for k, name in (("cos_h", "h"), ("cos_z", "z"), ("cos_p", "p")):
        a1.plot(x, np.clip(1 - pl[k], 1e-9, None), "o-", ms=3, label=f"1 − cos({name})")
    a1.plot(x, np.clip(pl["kl"], 1e-9, None), "k--", lw=1, label="KL(p ‖ q)")
    a1.axvline(layer, color="grey", lw=1)
    a1.set(yscale="log", xlabel="layer (logit lens)", title=f"{d.method} {KNOBS[d.method][0]}={d.level:g}")
    a1.legend(fontsize=8)
    ok = (pl["kl"] > 0) & np.isfinite(pl["kl"]) & (pl["kl_pred"] > 0)
    a2.loglog(pl["kl"][ok], pl["kl_pred"][ok], "o", ms=4)
    if ok[layer]:
        a2.loglog([pl["kl"][layer]], [pl["kl_pred"][layer]], "r*", ms=14, label=f"layer {layer}")
    if ok.any():
        lo, hi = pl["kl"][ok].min(), pl["kl"][ok].max()
        a2.plot([lo, hi], [lo, hi], "k:", lw=1, label="KL = ½Var_p(Δz)")
    a2.set(xlabel="KL(p ‖ q)", ylabel="½Var_p(Δz)", title="Theorem 3 per layer")
    a2.legend(fontsize=8)
    return fig


def summary_markdown(d: Damage, layer: int, questions=()) -> str:
    """The numbers beside the figure: the chosen layer's hierarchy and Theorem 3, the MC
    answers and the two generations (markdown; `questions` the MC prompts' tails)."""
    pl = d.per_layer
    lines = [
        f"**{d.method} {KNOBS[d.method][0]}={d.level:g}**, layer {layer} of {len(pl['kl']) - 1} "
        f"(computed in {d.seconds:.1f} s: "
        + ", ".join(f"{k} {v:.1f}" for k, v in d.parts.items())
        + "; a setting seen before is cached)",
        "",
        "| 1 − cos(h) | 1 − cos(z) | 1 − cos(p) | KL(p‖q) | ½Var_p(Δz) | top-1 agreement |",
        "|---|---|---|---|---|---|",
        "| "
        + " | ".join(
            f"{v:.3g}"
            for v in (
                1 - pl["cos_h"][layer],
                1 - pl["cos_z"][layer],
                1 - pl["cos_p"][layer],
                pl["kl"][layer],
                pl["kl_pred"][layer],
                pl["top1"][layer],
            )
        )
        + " |",
        "",
    ]
    if len(d.mc_base):
        same = float(np.mean(d.mc_base == d.mc_compressed))
        lines += [
            f"**Multiple choice**: the compressed model picks the base's answer on {same:.0%} of "
            f"{len(d.mc_base)} cloze questions.",
            "",
            "| question (end) | base | compressed | right |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| …{q.replace('|', '/')} | {b} | {c} | {a} |"
            for q, b, c, a in zip(questions, d.mc_base, d.mc_compressed, d.mc_answer)
        ]
        lines.append("")
    lines += [
        f"**Generation** (greedy, {len(d.text_base) and 'same prompt'}): first differs at step {d.first_divergence}.",
        "",
        f"- base: `{d.text_base!r}`",
        f"- compressed: `{d.text_compressed!r}`",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- the notebooks' knob cells
# One definition of the knob for the four tutorials (tutorials/*.py): each marimo cell calls one
# of these, so the cells' dependencies (method -> level, explorer -> layer) stay marimo's own.
def method_dropdown(mo, value: str):
    """The method picker: one of KNOBS."""
    return mo.ui.dropdown(options=list(KNOBS), value=value, label="method")


def level_slider(mo, method: str):
    """The setting `method` turns (sparsity or bits), started at its fourth value."""
    name, values = KNOBS[method]
    return mo.ui.slider(steps=list(values), value=values[3], label=name)


def layer_slider(mo, explorer: "Explorer"):
    """Which layer's logit lens to show, from 0 (the embeddings) to L (the output)."""
    n = explorer.h_base.shape[0] - 1
    return mo.ui.slider(0, n, value=n, label="layer (logit lens; 0 = embeddings)")


def knob_view(mo, explorer: "Explorer", method: str, level, layer_ui):
    """The damage of (method, level) at the layer the slider names: the layer slider, the
    hierarchy figure and the summary (MC answers, both generations, the time it took)."""
    d = explorer.damage(method, level)
    layer = min(layer_ui.value, len(d.per_layer["kl"]) - 1)
    return mo.vstack([layer_ui, hierarchy_figure(d, layer), mo.md(summary_markdown(d, layer, explorer.questions))])
