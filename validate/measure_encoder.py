"""`measure` for a sentence encoder (sim/models/bert.py): retrieval and embedding_cos only; every
language-model metric null, with its reason under not_computable (validate/measure.py measures
causal models).
"""

from __future__ import annotations

import dataclasses

from hemorrhage.validate.computable import KEY as NC
from hemorrhage.validate.measure import TOKEN_KEYS, MeasureConfig, retrieval_metrics


# the language-model metrics an encoder has no head for (measure_encoder)
LM_KEYS = TOKEN_KEYS + (
    "mc_agreement",
    "mc_acc_base",
    "mc_acc",
    "mc_kl_choices",
    "mc_kl_full",
    "first_divergence_mean",
    "gen_prefix_agreement",
    "gen_token_agreement",
    "gen_identical",
)


def measure_encoder(loaded, comp_model, config: MeasureConfig, record: dict | None = None) -> dict:
    """`measure` for a sentence encoder (sim/models/bert.py): retrieval (config.retrieval
    documents, 1000 when 0) and embedding_cos; every language-model metric null with its reason."""
    from hemorrhage.sim.timings import without_timings

    out: dict = {"model": str(loaded.name), "base_note": getattr(loaded, "base_note", "")}
    if record is not None:
        out.update(method=record.get("method"), settings=record.get("settings"), record=without_timings(record))
    config = dataclasses.replace(config, retrieval=config.retrieval or 1000)
    out["config"] = {"retrieval": config.retrieval}
    why = "the model is an encoder: no language-model head, so no next-token distribution, MC scores or generation"
    out.update({k: None for k in LM_KEYS})
    out.update(retrieval_metrics(loaded, comp_model, config))
    out[NC] = {**{k: why for k in LM_KEYS}, **out.pop(NC, {})}
    out["notes"], out["collapsed"] = [], bool(out.get("retrieval_nonfinite_queries"))
    return out
