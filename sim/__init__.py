"""The simulator: real checkpoints in JAX, compression, noise injection.

    load(name_or_path)   -> Loaded(model, cfg, tokenizer, path, base_note)
"""

from hemorrhage.sim.loading import Loaded, load, load_tokenizer

__all__ = ["Loaded", "load", "load_tokenizer"]
