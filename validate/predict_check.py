"""The grid of a prediction compressed and measured for real: what `hemorrhage predict
--validate` and bench/bench_predict.py put beside the prediction (sim.predict).

    meas = measure_grid(loaded, grid, cfg)           # one row per setting, validate.measure's numbers
    measured_cliffs(pred, meas)                      # each predicted family's fitted measured cliff
"""

from __future__ import annotations

import time

from hemorrhage.sim.predict import PredictConfig, cliff_crossing


class Measurer:
    """Compress a setting for real and measure it with the project's own measurement
    (`validate.measure`, what `hemorrhage measure` / `sweep` run) on exactly the
    prediction's data: its first `windows` held-out windows and its `prompts` prompts (the
    windows after them), greedy generation of `new_tokens`, plus the cloze multiple-choice
    items (the measured MC-vs-generation gap).  The base phase is computed once."""

    def __init__(self, loaded, cfg: PredictConfig = PredictConfig(), mc_items: int = 24):
        from hemorrhage.validate.measure import MeasureConfig
        from hemorrhage.validate.base_phase import base_cache

        self.loaded, self.cfg = loaded, cfg
        self.config = MeasureConfig(
            windows=cfg.windows,
            seqlen=cfg.seqlen,
            source=cfg.source,
            mc_items=mc_items,
            prompts=cfg.prompts,
            prompt_len=cfg.prompt_len,
            new_tokens=cfg.new_tokens,
            per_layer=False,
            strata_bins=0,
        )
        self.base = base_cache(loaded, self.config)

    def __call__(self, method: str, settings: dict) -> dict:
        from hemorrhage.sim.compress import compress_from_args
        from hemorrhage.validate.measure import measure

        cfg, t0 = self.cfg, time.perf_counter()
        comp, record = compress_from_args(
            self.loaded,
            method,
            calib_samples=cfg.calib_samples,
            calib_seqlen=cfg.calib_seqlen,
            seed=cfg.calib_seed,
            **settings,
        )
        res = measure(self.loaded, comp, self.base, record)
        row = {
            "method": method,
            "settings": settings,
            **{
                k: res[k]
                for k in (
                    "kl",
                    "top1_agreement",
                    "ppl",
                    "mc_agreement",
                    "first_divergence_mean",
                    "gen_identical",
                    "collapsed",
                )
                if k in res
            },
        }
        if "mc_agreement" in row and "gen_identical" in row:  # null where either is not computable
            a, g = row["mc_agreement"], row["gen_identical"]
            row["mc_vs_gen_gap"] = None if a is None or g is None else a - g
        if res.get("not_computable"):
            row["not_computable"] = {k: v for k, v in res["not_computable"].items() if k in row}
        row["timings"] = {"seconds": round(time.perf_counter() - t0, 2)}  # sim.timings
        return row


def measure_grid(
    loaded, grid: list[tuple[str, dict]], cfg: PredictConfig = PredictConfig(), *, log=None, mc_items: int = 24
) -> dict:
    """Every setting of `grid` compressed and measured (`Measurer`; mc_items = 0: no MC)."""
    from hemorrhage.validate.resident import bound_memory

    say = log or (lambda m: None)
    t0 = time.perf_counter()
    meas = Measurer(loaded, cfg, mc_items=mc_items)
    rows = []
    for method, settings in grid:
        say(f"measuring {method} {settings}")
        rows.append(meas(method, settings))
        bound_memory(say)  # every setting compiles its own programs: drop them past the limit, as a sweep
    return {"points": rows, "timings": {"seconds": round(time.perf_counter() - t0, 2)}}


def measured_cliffs(pred: dict, meas: dict, threshold: float = 1.0) -> list[dict]:
    """The measured cliff of each predicted family, fitted with `cliff_crossing`."""
    out = []
    for c in pred["cliffs"]:
        idx = [i for i, p in enumerate(pred["points"]) if p["method"] == c["method"] and p["family"] == c["family"]]
        lv = [pred["points"][i]["level"] for i in idx]
        kl = [meas["points"][i]["kl"] for i in idx]
        value, status = cliff_crossing(lv, [float("nan") if k is None else k for k in kl], threshold, c["axis"])
        out.append({**c, "measured": value, "measured_status": status})
    return out
