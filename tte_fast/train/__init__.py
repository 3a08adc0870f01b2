"""Training jobs: reasoner SFT, contrastive embedder (GradCache) and the TTE_u head.

``tte-fast train CONFIG.yaml [key=value ...]`` runs one; in Python::

    from tte_fast.train import load_run_config, train
    train(load_run_config("run.yaml", ["train.steps=10"]))
"""

from __future__ import annotations

from tte_fast.settings.yaml_config import load_config
from tte_fast.train.config import RunConfig, parse_config
from tte_fast.train.loop import train


def load_run_config(path: str, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """A checked run config from a YAML file and ``key=value`` overrides."""
    return parse_config(load_config(path, overrides))


__all__ = ["RunConfig", "load_run_config", "parse_config", "train"]
