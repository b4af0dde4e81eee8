"""A compression method with one setting per tensor: a plan of `hemorrhage plan` applied.

    method = PerTensor.from_plan(plan)                 # plan: sim.plan.read_plan's dict
    small, record = compress(model, method, calib_tokens)
    record["tensor_settings"] == {"layers.0.attn.q": 4, ...}

The base method (rtn, gptq, magnitude, wanda, sparsegpt) runs as it always does, with its
level (bits or sparsity) looked up per tensor path: RTN/GPTQ's `tensor_bits`, the pruning
methods' `tensor_sparsity`.  Not in the registry (a plan is not a CLI setting): `compress
--plan` builds it.
"""

from __future__ import annotations

from dataclasses import dataclass

from hemorrhage.sim.compress.registry import linears, make_method

from hemorrhage.errors import UserError


@dataclass(frozen=True)
class PerTensor:
    """base: the method with its shared settings (its own level unused where a tensor has
    one); levels: ((path, bits or sparsity), ...) sorted by path."""

    base: object
    levels: tuple

    @property
    def name(self) -> str:
        return self.base.name

    @property
    def needs_calibration(self) -> bool:
        return bool(getattr(self.base, "needs_calibration", False))

    @property
    def axis(self) -> str:
        return "bits" if self.base.name in ("rtn", "gptq") else "sparsity"

    @classmethod
    def from_plan(cls, plan: dict) -> PerTensor:
        """Each level validated by building the base method at it (bad bits, a sparsity
        outside [0, 1): UserError before any model work)."""
        axis, method = plan["axis"], plan["method"]
        shared = {k: v for k, v in (plan.get("settings") or {}).items() if v is not None}
        levels = {}
        for t in plan["tensors"]:
            lv = t[axis]
            make_method(method, **shared, **{axis: lv})
            levels[t["path"]] = int(lv) if axis == "bits" else float(lv)
        top = max(levels.values()) if levels else None
        base = make_method(method, **shared, **({axis: top} if top is not None else {}))
        return cls(base=base, levels=tuple(sorted(levels.items())))

    def check(self, model) -> None:
        if hasattr(self.base, "check"):
            self.base.check(model)
        have = {p for p, _, _, _ in linears(model)}
        lacks = sorted(set(dict(self.levels)) - have)
        if lacks:
            raise UserError(f"the plan names a tensor the model lacks: {lacks[0]}")

    def apply(self, model, calib_tokens=None) -> dict:
        levels = dict(self.levels)
        kw = {"tensor_bits" if self.axis == "bits" else "tensor_sparsity": levels}
        rec = self.base.apply(model, calib_tokens, **kw) or {}
        rec["tensor_settings"] = {p: v for p, v in self.levels}
        return rec


def compress_plan(loaded, plan: dict, *, calib_samples: int = 16, calib_seqlen: int = 128, seed: int = 0, mesh=None):
    """(compressed model, record) of a plan (sim.plan.read_plan's dict) on `loaded`: the
    plan checked against the model first (sim.plan.check_plan: fingerprint, tensors), then
    calibration text drawn if the method needs it (as compress_from_args)."""
    from hemorrhage.sim.compress.registry import calibration_tokens_for, compress
    from hemorrhage.sim.plan import check_plan

    check_plan(plan, loaded)
    method = PerTensor.from_plan(plan)
    method.check(loaded.model)
    tokens = None
    if method.needs_calibration:
        tokens = calibration_tokens_for(loaded, calib_samples=calib_samples, calib_seqlen=calib_seqlen, seed=seed)
    model, record = compress(loaded.model, method, tokens, mesh=mesh)
    if tokens is not None:
        record["calibration"] = {
            "source": "wiki",
            "samples": int(tokens.shape[0]),
            "seqlen": int(tokens.shape[1]),
            "seed": int(seed),
        }
    record["plan"] = {
        k: plan.get(k)
        for k in ("model", "fingerprint", "method", "axis", "constraint", "predicted_kl", "predicted_top1", "bytes")
    }
    record["model"] = getattr(loaded, "name", "")
    record["base_note"] = getattr(loaded, "base_note", "")
    return model, record
