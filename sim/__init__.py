"""The simulator: real checkpoints in JAX, compression, noise injection.

load(name_or_path)   -> Loaded(model, cfg, tokenizer, path, base_note)
"""

from hemorrhage.sim.xla_flags import prefer_memory_first_schedule

prefer_memory_first_schedule()  # HEMORRHAGE_XLA_SCHEDULE=memory, before XLA's backend starts

from hemorrhage.sim.hub.loading import Loaded, load, load_tokenizer  # noqa: E402

__all__ = ["Loaded", "load", "load_tokenizer"]
