"""Settings: encode parameters (``EncodeParams``), the typed config builder and its one
``ConfigError``, YAML config files with ``key=value`` overrides, and the integer checks."""
