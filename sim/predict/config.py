r"""The predictor's settings (`PredictConfig`) and the methods and grid it covers."""

from __future__ import annotations

from dataclasses import dataclass

from hemorrhage.errors import UserError

QUANT, PRUNE = ("rtn", "gptq"), ("magnitude", "wanda", "sparsegpt")
PREDICTABLE = QUANT + PRUNE
_BITS, _SPARSITY = "2,3,4,5,6,7,8", "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"
FULL_GRID = (
    f"rtn:bits={_BITS};rtn:bits={_BITS},group_size=64;gptq:bits={_BITS};magnitude:sparsity={_SPARSITY};"
    f"wanda:sparsity={_SPARSITY};sparsegpt:sparsity={_SPARSITY};"
    "magnitude:pattern=2:4;wanda:pattern=2:4;sparsegpt:pattern=2:4"
)
# the point estimate's weight of the dephased closure (`blend`): the linear response keeps the
# logit velocity coherent, the dephased closure lets it decorrelate at its initial turning rate
ESTIMATES = {"linear": 0.0, "centre": 0.5, "dephased": 1.0}


@dataclass(frozen=True)
class PredictConfig:
    windows: int = 2  # held-out windows (validate.measure's first ones) for KL / top-1
    seqlen: int = 128
    source: str = "wiki"
    prompts: int = 4  # generation prompts for the first divergence (0: none)
    prompt_len: int = 16
    new_tokens: int = 32
    probes: int = 2  # noise probes per quantization family
    prune_anchors: int = 3  # exact JVPs per pruning family (pricing); the grid's size: every level exact
    seed: int = 0
    calib_samples: int = 16  # calibration batch (as compress_from_args' default)
    calib_seqlen: int = 128
    calib_seed: int = 0
    calib_source: str = "wiki"  # the text the calibration statistics come from (sim.data.TEXT_SOURCES)
    regime_tokens: int = 32  # tokens of the nonlinearity check (0: skip it)
    kl_threshold: float = 1.0  # the cliff: KL crosses this many nats
    nonlinearity_max: float = 0.3  # linear_regime_ok: r ≤ this
    kl_check_min: float = 0.45  # kl_prediction_ok: KL(W+ΔW)/KL_lin on the regime tokens in [this, 1/this]
    bootstrap: int = 200
    estimate: str = "centre"  # the point estimate: 'centre' of the two closures, 'dephased' or 'linear' (`blend`)

    def __post_init__(self):
        for name in ("windows", "probes", "prune_anchors", "calib_samples", "bootstrap", "new_tokens", "prompt_len"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1")
        if self.seqlen < 2 or self.calib_seqlen < 2:
            raise UserError("--seqlen and --calib-seqlen must be >= 2")
        if self.prompts < 0 or self.regime_tokens < 0:
            raise UserError("--prompts and --regime-tokens must be >= 0")
        object.__setattr__(self, "regime_tokens", min(int(self.regime_tokens), self.seqlen - 1))  # one window
        if not self.kl_threshold > 0 or not self.nonlinearity_max > 0:
            raise UserError("--kl-threshold and the nonlinearity threshold must be > 0")
        if self.estimate not in ESTIMATES:
            raise UserError(f"--estimate must be one of {', '.join(ESTIMATES)}; got {self.estimate!r}")
        from hemorrhage.sim.compress.registry import check_calibration

        check_calibration(calib_source=self.calib_source)

    @property
    def dephased_weight(self) -> float:
        """w of `blend`: the weight of the dephased closure in the point estimate."""
        return ESTIMATES[self.estimate]

    @property
    def dephasing(self) -> bool:
        """Whether the Taylor-mode pass (the dephased closure) runs at all."""
        return self.estimate != "linear"
