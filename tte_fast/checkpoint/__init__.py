"""Checkpoints: the supported model types, loading a backbone, its processor and chat template,
the runtime's own ``tte_config.json``, and ``load_tte`` for a path, a two-model spec or ``tiny:``."""
