"""Activation capture and storage.

* :mod:`.cache`: the on-disk shard format (generic: any producer of vectors, LM or vision).
* :mod:`.text`: text sources, packing into context windows, train/held-out split by document.
* :mod:`.lm`: loading Hugging Face causal LMs (presets, offline GGUF) and truncating them.
* :mod:`.capture`: the capture loop (LM hidden states → cache).
* :mod:`.splice`: CE-loss recovered, ΔLM loss and KL score with an SAE spliced into the LM.

Only the cache is imported here, so that using it does not import ``transformers``.
"""

from softsae_lib.activations.cache import (
    ActivationCache,
    CacheCorruptError,
    CacheError,
    CacheMismatchError,
    CacheWriter,
    ShuffledBatches,
    is_complete,
    read_manifest,
)

__all__ = ["ActivationCache", "CacheWriter", "ShuffledBatches", "CacheError", "CacheCorruptError",
           "CacheMismatchError", "is_complete", "read_manifest"]
