"""A TTE model as an mteb (version 2) encoder: ``pip install 'tte_fast[mteb]'``.

```python
import mteb
from tte_fast.integrations.mteb import TTEEncoder, tte_model_meta

encoder = TTEEncoder("path/to/checkpoint", max_think_tokens=256, dtype="bfloat16")  # or a loaded model
results = mteb.evaluate(encoder, tasks=mteb.get_tasks(tasks=["..."]))
# or by metadata: mteb.evaluate(tte_model_meta("path/to/checkpoint", max_think_tokens=256), ...)
```

mteb's ``ModelMeta.load_model`` asks for its ``[image]`` extra (torchvision) for any image model;
this adapter does not use it (images go through the model's own processor), so on a CPU build of
torch, where torchvision must not be installed, pass a ``TTEEncoder`` to ``mteb.evaluate``.

``encode`` takes mteb's batches (``text`` and / or ``image`` columns, optionally ``instruction``):
queries (``prompt_type`` query) think and documents do not, unless told otherwise. A query's
instruction is mteb's for the task (its prompt, else a generic one for the task type), else the
row's, else the model's own; a document's is the row's, else the model's target instruction.
Embeddings are unit norm; similarity is cosine.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

try:
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ModelMeta
    from mteb.types import PromptType
except ImportError as err:  # pragma: no cover - exercised only without mteb
    raise ImportError("tte_fast.integrations.mteb needs mteb>=2: pip install 'tte_fast[mteb]'") from err

from tte_fast.checkpoint.load import load_tte
from tte_fast.settings.params import EncodeParams


class TTEEncoder(AbsEncoder):
    """mteb encoder over a loaded UnifiedTTE / TwoModelTTE, or a checkpoint path (loaded here)."""

    def __init__(
        self,
        model_name: Any,
        revision: str | None = None,
        *,
        device: str | None = None,
        dtype: str | None = None,
        reasoner: str | None = None,
        max_think_tokens: int | None = None,
        batch_size: int = 8,
        think_queries: bool | None = None,
        think_documents: bool | None = None,
        use_task_instructions: bool = True,
        model_meta: ModelMeta | None = None,
        **load_kwargs: Any,
    ):
        if isinstance(model_name, (str, os.PathLike)):
            self.model = load_tte(str(model_name), reasoner, device=device, dtype=dtype, **load_kwargs)
        else:
            self.model = model_name
        self.params = {
            side: EncodeParams(
                side=side, think=think, max_think_tokens=max_think_tokens, batch_size=batch_size
            )
            for side, think in (("query", think_queries), ("target", think_documents))
        }
        self.use_task_instructions = use_task_instructions
        self.mteb_model_meta = model_meta or tte_model_meta(
            getattr(self.model, "name_or_path", None) or "tte_fast/model", loader=None, embed_dim=None
        )

    @property
    def max_think_tokens(self) -> int | None:
        return self.params["query"].max_think_tokens

    def _items(self, inputs, instruction: str | None) -> list:
        items = []
        for batch in inputs:
            columns = [c for c in ("text", "image", "instruction") if c in batch]
            if not columns:
                raise ValueError(f"an mteb batch without text or image columns (keys: {sorted(batch)})")
            n = len(batch[columns[0]])
            for i in range(n):
                item = {}
                text = batch["text"][i] if "text" in batch else None
                if text:
                    item["text"] = text
                image = batch["image"][i] if "image" in batch else None
                if image is not None:
                    item["image"] = image
                row_instruction = batch["instruction"][i] if "instruction" in batch else None
                if instruction or row_instruction:
                    item["instruction"] = instruction or row_instruction
                if "text" not in item and "image" not in item:
                    item["text"] = ""
                items.append(item)
        return items

    def encode(
        self,
        inputs,
        *,
        task_metadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        side = "query" if prompt_type in (PromptType.query, "query") else "target"
        instruction = None
        if self.use_task_instructions and side == "query":
            # mteb falls back to a generic retrieval instruction for every side: documents keep
            # the model's own target instruction instead.
            instruction = self.get_instruction(task_metadata, prompt_type) or None
        items = self._items(inputs, instruction)
        result = self.model.encode(
            items, progress=kwargs.get("show_progress_bar"), **self.params[side].encode_kwargs()
        )
        return result.embeddings.float().numpy()


def _load(name: str, revision: str | None = None, path: str | None = None, **kwargs) -> TTEEncoder:
    """mteb calls a ModelMeta's loader with the model's name; the checkpoint path rides in ``path``."""
    return TTEEncoder(path or name, revision, **kwargs)


def tte_model_meta(
    path: str, name: str | None = None, embed_dim: int | None = None, loader=_load, **loader_kwargs
) -> ModelMeta:
    """An mteb ``ModelMeta`` whose loader builds a :class:`TTEEncoder` from ``path`` with
    ``loader_kwargs`` (``device``, ``dtype``, ``max_think_tokens``, ``batch_size``, ...)."""
    if loader is _load:
        loader_kwargs = {"path": path, **loader_kwargs}
    return ModelMeta(
        loader=loader,
        loader_kwargs=loader_kwargs,
        name=name or _meta_name(path),
        revision=None,
        release_date=None,
        languages=None,
        n_parameters=None,
        memory_usage_mb=None,
        max_tokens=None,
        embed_dim=embed_dim,
        license=None,
        open_weights=True,
        public_training_code=None,
        public_training_data=None,
        framework=["PyTorch"],
        similarity_fn_name="cosine",
        use_instructions=True,
        training_datasets=None,
        modalities=["image", "text"],
    )


def _meta_name(path: str) -> str:
    """mteb names are ``organization/model``: the checkpoint folder and its parent."""
    parts = [p for p in os.path.normpath(str(path)).split(os.sep) if p and p != "."]
    return "/".join(parts[-2:]) if len(parts) >= 2 else f"tte_fast/{parts[-1] if parts else 'model'}"
