r"""The prediction of a grid of settings: families of grid points, the held-out sets, and
`predict`, which prices every family and summarises it (the models: sim.predict's package
docstring).
"""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np

from hemorrhage.errors import UserError
from hemorrhage.sim.predict.config import PREDICTABLE, QUANT, PredictConfig
from hemorrhage.sim.predict.context import base_context
from hemorrhage.sim.predict.pricing import price_prune, price_quant
from hemorrhage.sim.predict.summary import summarise


# ------------------------------------------------------------------ plans --------------


def _family_key(method: str, settings: dict) -> tuple:
    level = "bits" if method in QUANT else ("sparsity" if settings.get("pattern") is None else None)
    rest = tuple(sorted((k, v) for k, v in settings.items() if k != level))
    return method, level, rest


def plan_families(model, grid: list[tuple[str, dict]]) -> list[dict]:
    """Group grid points into families priced by one set of JVPs: same method and settings
    but the level (bits, or sparsity of an unstructured mask)."""
    from hemorrhage.sim.compress import make_method
    from hemorrhage.sim.compress.registry import CALIB_SETTINGS

    fams: dict[tuple, dict] = {}
    for i, (method, settings) in enumerate(grid):
        if method not in PREDICTABLE:
            raise UserError(f"predict covers {', '.join(PREDICTABLE)}; got {method!r}")
        if any(k in CALIB_SETTINGS for k in settings):
            raise UserError("predict: set calibration with --calib-samples/--calib-seqlen/--seed, not in the grid")
        m = make_method(method, **settings)
        if hasattr(m, "check"):
            m.check(model)
        key = _family_key(method, asdict(m))
        fam = fams.setdefault(key, {"method": method, "axis": key[1], "fixed": dict(key[2]), "points": []})
        fam["points"].append((i, m))
    for fam in fams.values():
        lv = fam["axis"]
        fam["points"].sort(key=lambda p: -getattr(p[1], lv) if lv == "bits" else (getattr(p[1], lv) if lv else 0))
    return list(fams.values())


# ------------------------------------------------------------------ the prediction -----


def held_out_sets(loaded, cfg: PredictConfig):
    """({"eval": held-out windows, "gen": prompts + the base's greedy continuations}, prompts, gen)."""
    from hemorrhage.sim.windows import eval_windows
    from hemorrhage.sim.generate import generate

    ev = eval_windows(loaded.tokenizer, cfg.source, seqlen=cfg.seqlen, stride=cfg.seqlen, max_windows=cfg.windows)
    sets, prompts, gen = {"eval": ev}, None, None
    if cfg.prompts:
        w = eval_windows(
            loaded.tokenizer,
            cfg.source,
            seqlen=cfg.prompt_len,
            stride=cfg.seqlen,
            max_windows=cfg.windows + cfg.prompts,
        )
        prompts = w[cfg.windows :]
        if len(prompts) == 0:
            raise UserError("the held-out text has no room for prompts after the scored windows")
        gen = np.asarray(generate(loaded.model, prompts, cfg.new_tokens), np.int32)
        sets["gen"] = np.concatenate([prompts, gen[:, :-1]], axis=1)
    return sets, prompts, gen


def predict(loaded, grid: list[tuple[str, dict]], cfg: PredictConfig = PredictConfig(), *, log=None) -> dict:
    """Predicted kl, top1_agreement, first_divergence_mean, regime per grid point; cliffs
    per family (module docstring)."""
    t0 = time.perf_counter()
    say = (lambda m: log(f"{time.perf_counter() - t0:7.1f} s  {m}")) if log else (lambda m: None)
    model = loaded.model
    fams = plan_families(model, grid)
    say("base generation")
    sets, prompts, gen = held_out_sets(loaded, cfg)
    stats = None
    if any(f["method"] in ("gptq", "wanda", "sparsegpt") for f in fams):
        from hemorrhage.sim.compress.calib import layer_hessians
        from hemorrhage.sim.windows import calibration_tokens

        say("calibration statistics")
        stats = layer_hessians(
            model,
            calibration_tokens(loaded.tokenizer, cfg.calib_source, cfg.calib_samples, cfg.calib_seqlen, cfg.calib_seed),
        )
    say("linearising the base")
    ctx = base_context(model, sets, cfg, stats, say)
    points: list = [None] * len(grid)
    cliffs = []
    for fam in fams:
        say(f"{fam['method']} {fam['fixed']} × {len(fam['points'])} level(s)")
        methods = [m for _, m in fam["points"]]
        res = (price_quant if fam["method"] in QUANT else price_prune)(ctx, methods)
        summ = summarise(res, fam, cfg)
        for (i, _), pt in zip(fam["points"], summ["points"]):
            points[i] = {"method": grid[i][0], "settings": grid[i][1], **pt}
        if summ["cliff"] is not None:
            cliffs.append(summ["cliff"])
    from hemorrhage.sim.windows import adds_bos

    out = {
        "model": str(getattr(loaded, "name", "")),
        "config": asdict(cfg),
        "bos": adds_bos(loaded.tokenizer),
        "points": points,
        "cliffs": cliffs,
        "timings": {"seconds": round(time.perf_counter() - t0, 2)},
    }  # sim.timings: --json drops it
    if len(points) == 1:
        out.update({k: points[0][k] for k in ("kl", "top1_agreement", "first_divergence_mean") if k in points[0]})
    return out
