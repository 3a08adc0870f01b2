"""The decode core: everything between a tokenized batch and its traces and embeddings.

- ``options``: ``DecodeOptions`` (budgets, sampling, repetition penalty, stop tokens and strings);
- ``stop``: the one stop rule (``RowState``, ``StopReason``, ``RowBook``) both schedulers follow;
  ``stop_strings``: stop strings and a several-token ``</think>`` matched on the generated text;
- ``positions``: text and M-RoPE position ids; ``sampling``: greedy or HF-warped draws, per-row seeds;
- ``runner``: ``Runner``, the prefill and decode steps of one model over a KV cache it is handed;
- ``static_cache`` / ``slot_cache``: the static batches' caches (and compiled shapes), the engine's slots;
- ``static``: ``StaticBatches``, a left-padded batch decoded until its last row stops;
- ``engine``: ``Engine``, continuous batching over slots (requests enter as others finish);
- ``packed_prefill`` / ``varlen_attention``: padding-free admission prefill.
"""
