"""A plan (sim.plan) compressed for real and measured beside its prediction; the size–KL frontier.

    measure_plan(loaded, plan, cfg)        validate.measure's kl, top-1, first divergence of the plan
    frontier(planner, measure=True)        plan and uniform setting at each level of the grid:
                                           bytes, predicted KL (and measured)

The measurement is the project's own (`hemorrhage measure`'s validate.measure) on exactly the
prediction's held-out windows and prompts (cfg: the sim.predict.PredictConfig the plan used),
so predicted and measured KL are read on the same tokens.
"""

from __future__ import annotations

from hemorrhage.sim.compress.per_tensor import compress_plan

MEASURED = ("kl", "top1_agreement", "first_divergence_mean", "gen_identical", "ppl")


class PlanMeasurer:
    """The base phase once; then any plan or uniform setting compressed and measured."""

    def __init__(self, loaded, cfg):
        from hemorrhage.validate.measure import MeasureConfig
        from hemorrhage.validate.base_phase import base_cache

        self.loaded, self.cfg = loaded, cfg
        self.config = MeasureConfig(
            windows=cfg.windows,
            seqlen=cfg.seqlen,
            source=cfg.source,
            mc_items=0,
            prompts=cfg.prompts,
            prompt_len=cfg.prompt_len,
            new_tokens=cfg.new_tokens,
            per_layer=False,
            strata_bins=0,
            steps=False,
        )
        self.base = base_cache(loaded, self.config)

    def _row(self, comp, record) -> dict:
        from hemorrhage.validate.measure import measure

        res = measure(self.loaded, comp, self.base, record)
        return {k: res.get(k) for k in MEASURED} | {"bytes": record["memory"]["bytes"]}

    def plan(self, plan: dict) -> dict:
        c = self.cfg
        comp, record = compress_plan(
            self.loaded, plan, calib_samples=c.calib_samples, calib_seqlen=c.calib_seqlen, seed=c.calib_seed
        )
        return self._row(comp, record)

    def uniform(self, method: str, settings: dict) -> dict:
        from hemorrhage.sim.compress import compress_from_args

        c = self.cfg
        comp, record = compress_from_args(
            self.loaded,
            method,
            calib_samples=c.calib_samples,
            calib_seqlen=c.calib_seqlen,
            seed=c.calib_seed,
            **settings,
        )
        return self._row(comp, record)


def measure_plan(loaded, plan: dict, cfg, *, log=None) -> dict:
    """The plan compressed and measured (module docstring)."""
    (log or (lambda m: None))("measuring the plan")
    return PlanMeasurer(loaded, cfg).plan(plan)


def frontier(planner, *, measure: bool = False, log=None) -> list[dict]:
    """At each level L of the planner's grid: the uniform setting L and the plan at average L
    (equal size), with bytes and predicted KL, measured too when asked."""
    say = log or (lambda m: None)
    spec = planner.spec
    meas = PlanMeasurer(planner.loaded, planner.cfg) if measure else None
    rows = []
    for lv in spec.levels:
        say(f"frontier: {spec.axis} {lv}")
        plan = planner.plan(avg=lv)
        uni = planner.uniform(lv)
        row = {
            "level": lv,
            "plan_avg": plan[f"avg_{spec.axis}"],
            "plan_bytes": plan["bytes"],
            "plan_predicted_kl": plan["predicted_kl"],
            "uniform_bytes": uni["bytes"],
            "uniform_predicted_kl": uni["predicted_kl"],
        }
        if meas is not None:
            settings = {spec.axis: lv}
            if spec.axis == "bits":
                settings.update(group_size=spec.group_size, symmetric=spec.symmetric)
            row["plan_measured_kl"] = meas.plan(plan)["kl"]
            row["uniform_measured_kl"] = meas.uniform(spec.method, settings)["kl"]
        rows.append(row)
    return rows
