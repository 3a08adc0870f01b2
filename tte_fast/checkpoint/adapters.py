"""PEFT (LoRA) adapter checkpoints: the base model loaded, the adapter merged into it at load.

Some published embedders ship only an adapter (VLM2Vec-V1's Qwen2-VL models): a folder or hub id
with ``adapter_config.json`` naming its base. The adapter's keys may follow the Qwen-VL layout of
transformers before 4.52 (``model.layers``, ``visual``); they are mapped onto today's
(``model.language_model.layers``, ``model.visual``). A key that still matches nothing is an error,
never a silently unmerged adapter.
"""

from __future__ import annotations

import json
import os
import warnings

ADAPTER_CONFIG_FILE = "adapter_config.json"
# Pre-4.52 Qwen-VL module paths -> today's (applied by peft to the adapter's keys before loading).
LEGACY_QWEN_VL_KEYS = {
    r"^model\.(?!language_model\.|visual\.)": "model.language_model.",
    r"^visual\.": "model.visual.",
}


def checkpoint_file(path_or_id: str, name: str) -> str | None:
    """The path of file ``name`` in a checkpoint folder or hub id (from the local cache or the
    hub), or None when the checkpoint has none."""
    if os.path.isdir(path_or_id):
        path = os.path.join(path_or_id, name)
        return path if os.path.isfile(path) else None
    from transformers.utils import cached_file

    try:
        return cached_file(path_or_id, name, _raise_exceptions_for_missing_entries=False)
    except OSError:
        return None


def adapter_base(path_or_id: str) -> str | None:
    """The base model an adapter checkpoint names (``base_model_name_or_path``); None when
    ``path_or_id`` is not an adapter."""
    config_path = checkpoint_file(path_or_id, ADAPTER_CONFIG_FILE)
    if config_path is None:
        return None
    with open(config_path, encoding="utf-8") as f:
        base = json.load(f).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{config_path} names no base_model_name_or_path; pass base_model")
    return base


def merge_adapter(hf_model, path_or_id: str):
    """``hf_model`` with the adapter at ``path_or_id`` merged into its weights (a plain HF model)."""
    try:
        from peft import PeftModel
    except ImportError as e:
        raise ImportError(
            f"{path_or_id!r} is a PEFT adapter; loading it needs the 'peft' package: pip install peft"
        ) from e
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adapted = PeftModel.from_pretrained(hf_model, path_or_id, key_mapping=LEGACY_QWEN_VL_KEYS)
    missing = [str(w.message) for w in caught if "missing adapter keys" in str(w.message)]
    if missing:
        raise ValueError(f"the adapter {path_or_id!r} does not fit its base model: {missing[0][:500]}")
    return adapted.merge_and_unload()
