"""Is the JAX model the model?  Compare with transformers' PyTorch forward (fp32).

max_abs_logit_diff   max |z_jax − z_torch| over real held-out Wikipedia windows
greedy_match         the same greedy continuation, token for token
"""

from __future__ import annotations

import numpy as np

from hemorrhage.errors import UserError

DEFAULT_PROMPT = "The capital of France is"
TOLERANCE = 1e-3


def torch_reference(path):
    """transformers' PyTorch model of the same folder, fp32, eval mode."""
    try:
        import torch
        import transformers
    except ImportError:
        raise UserError("the reference forward needs torch: pip install 'hemorrhage[ref]' (torch==2.13.0)") from None
    transformers.logging.set_verbosity_error()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return model.eval()


def torch_side(
    path, tokenizer, *, windows: int = 2, seqlen: int = 128, n_greedy: int = 20, prompt: str = DEFAULT_PROMPT
) -> dict:
    """transformers' logits on the held-out windows and its greedy continuation of `prompt`,
    with the PyTorch model dropped before returning: `hemorrhage check` takes these before it
    loads the JAX model, so the two fp32 copies of the weights never coexist (a 1.5 B model
    is 7.1 GB in fp32)."""
    import gc

    import torch

    from hemorrhage.sim.windows import eval_windows

    ref = torch_reference(path)
    tokens = eval_windows(tokenizer, "wiki", seqlen=seqlen, stride=seqlen, max_windows=windows)
    ids = tokenizer(prompt).input_ids
    with torch.no_grad():
        z_ref = ref(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()
        out = ref.generate(
            torch.tensor([ids]),
            max_new_tokens=n_greedy,
            do_sample=False,
            min_new_tokens=n_greedy,
            pad_token_id=tokenizer.eos_token_id,
        )
    del ref
    gc.collect()
    return {"tokens": np.asarray(tokens), "z_ref": z_ref, "ids": ids, "theirs": out[0, len(ids) :].tolist()}


def check_against_torch(
    loaded,
    *,
    windows: int = 2,
    seqlen: int = 128,
    n_greedy: int = 20,
    prompt: str = DEFAULT_PROMPT,
    reference: dict | None = None,
) -> dict:
    """`loaded` against transformers on the same folder; `reference` is torch_side's result
    when it was taken already (same windows, seqlen, n_greedy and prompt)."""
    import jax.numpy as jnp

    from hemorrhage.sim.generate import generate
    from hemorrhage.sim.models import forward

    ref = reference or torch_side(
        loaded.path, loaded.tokenizer, windows=windows, seqlen=seqlen, n_greedy=n_greedy, prompt=prompt
    )
    tokens, z_ref, ids, theirs = ref["tokens"], ref["z_ref"], ref["ids"], ref["theirs"]
    z_jax = np.asarray(forward(loaded.model, jnp.asarray(tokens)))
    diff = float(np.abs(z_jax - z_ref).max())
    ours = np.asarray(generate(loaded.model, jnp.asarray([ids]), n_greedy))[0].tolist()
    return {
        "model": loaded.name,
        "dtype": "float32",
        "tokens_compared": int(np.prod(tokens.shape)),
        "max_abs_logit_diff": diff,
        "max_abs_logit": float(np.abs(z_ref).max()),
        "greedy_match": ours == theirs,
        "greedy_tokens": n_greedy,
        "prompt": prompt,
        "continuation_jax": loaded.tokenizer.decode(ours),
        "continuation_torch": loaded.tokenizer.decode(theirs),
        "tolerance": TOLERANCE,
        "passed": bool(diff <= TOLERANCE and ours == theirs),
        "base_note": loaded.base_note,
    }
