"""JAX (flax.nnx) models of real architectures, loaded from Hugging Face checkpoints.

build(cfg, seed)            a randomly initialised model of cfg's family
load_checkpoint(path, dtype) (model, cfg) from a local HF safetensors folder: built from
                            shapes (no random init), filled tensor by tensor from the shards
                            the index names, held in dtype (auto = as stored; weights.py)
load_state / export_state   HF tensor dict <-> model parameters
"""

from hemorrhage.sim.models.base import CausalLM, Trace, forward
from hemorrhage.sim.models.config import ModelConfig
from hemorrhage.sim.models.tiny_configs import tiny
from hemorrhage.sim.models.loader import build, export_state, load_checkpoint, load_state

__all__ = [
    "CausalLM",
    "ModelConfig",
    "Trace",
    "build",
    "export_state",
    "forward",
    "load_checkpoint",
    "load_state",
    "tiny",
]
