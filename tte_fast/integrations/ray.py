"""Encoding a Ray Data dataset on a pool of actors, one model each: ``pip install 'tte_fast[ray]'``.

```python
import ray
from tte_fast.integrations.ray import encode_dataset

ds = ray.data.read_parquet("corpus/")  # columns id, text, image (path or bytes), instruction
out = encode_dataset(ds, "path/to/checkpoint", actors=8, gpus_per_actor=1, max_think_tokens=256,
                     dtype="bfloat16")
out.write_parquet("embeddings/")
```

or, with Ray's own arguments, ``ds.map_batches(TTEEncoder, fn_constructor_kwargs={"model": PATH, ...},
compute=ray.data.ActorPoolStrategy(size=8), num_gpus=1, batch_size=64)``.

Each actor loads the model once (on the GPU Ray gives it when ``num_gpus`` > 0, else on the CPU) and
encodes the batches it is sent. Rows come back with their input columns (the image column left out
unless ``keep_image=True``) plus ``embedding`` (float32 or float16 [D]), ``trace`` and ``error``. A bad
input (missing or corrupt image, prompt too long) does not fail the job: its ``error`` holds the
message and its embedding is NaN. Columns are read as :func:`tte_fast.corpus.reader.to_input` reads a
corpus record (renamed with ``columns``, relative image paths joined to ``image_root``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

try:
    import ray.data
except ImportError as err:  # pragma: no cover - exercised only without ray
    raise ImportError("tte_fast.integrations.ray needs Ray Data: pip install 'tte_fast[ray]'") from err

from tte_fast.checkpoint.load import load_tte
from tte_fast.corpus.reader import Columns, to_input
from tte_fast.settings.params import EncodeParams

EMBEDDING_DTYPES = {"float32": np.float32, "float16": np.float16}


class TTEEncoder:
    """A callable class for ``Dataset.map_batches``: loads one model, encodes numpy batches.

    ``model`` is a checkpoint path (a UnifiedTTE; a TwoModelTTE with ``reasoner`` or a folder holding
    ``reasoner/`` and ``embedder/``) or a loaded model; the other arguments are
    :class:`~tte_fast.settings.params.EncodeParams` (``encode_batch_size`` is its ``batch_size``)."""

    def __init__(
        self,
        model: Any,
        *,
        reasoner: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        side: str = "query",
        think: bool | None = None,
        max_think_tokens: int | None = None,
        encode_batch_size: int = 8,
        embedding_dtype: str = "float32",
        columns: Columns | dict | None = None,
        image_root: str | None = None,
        keep_image: bool = False,
        **params: Any,
    ):
        if embedding_dtype not in EMBEDDING_DTYPES:
            raise ValueError(
                f"embedding_dtype must be one of {sorted(EMBEDDING_DTYPES)}, got {embedding_dtype!r}"
            )
        self.params = EncodeParams(
            side=side, think=think, max_think_tokens=max_think_tokens, batch_size=encode_batch_size, **params
        )
        if isinstance(model, str):
            model = load_tte(model, reasoner, device=device, dtype=dtype, **self.params.load_kwargs())
        self.model = model
        self.columns = Columns(**columns) if isinstance(columns, dict) else (columns or Columns())
        self.image_root, self.keep_image = image_root, keep_image
        self.embedding_dtype = EMBEDDING_DTYPES[embedding_dtype]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(next(iter(batch.values()))) if batch else 0
        names = list(batch)
        records = [{k: _plain(batch[k][i]) for k in names} for i in range(n)]
        inputs = [to_input(r, self.columns, self.image_root) for r in records]
        result = self.model.encode(inputs, progress=False, on_error="skip", **self.params.encode_kwargs())
        embeddings = result.embeddings.numpy().astype(self.embedding_dtype)
        errors = [None] * n
        for i, message in result.errors.items():
            errors[i] = message.removeprefix(f"input {i}: ")
            embeddings[i] = np.nan
        traces = result.traces or [None] * n
        out = {k: v for k, v in batch.items() if self.keep_image or k != self.columns.image}
        out["embedding"] = embeddings
        out["trace"] = np.array([None if e else t for t, e in zip(traces, errors)], dtype=object)
        out["error"] = np.array(errors, dtype=object)
        return out


def _plain(value):
    """A numpy cell as the Python value a corpus record holds (None for a missing value)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def encode_dataset(
    dataset: ray.data.Dataset,
    model: str,
    *,
    actors: int = 1,
    gpus_per_actor: float = 0,
    cpus_per_actor: float = 1,
    batch_size: int = 64,
    **encoder_options: Any,
) -> ray.data.Dataset:
    """``dataset`` with ``embedding``, ``trace`` and ``error`` columns, encoded by ``actors`` actors
    (one model each, ``gpus_per_actor`` GPUs each) that take ``batch_size`` rows a call;
    ``encoder_options`` go to :class:`TTEEncoder` (``max_think_tokens``, ``dtype``,
    ``encode_batch_size``, ...)."""
    return dataset.map_batches(
        TTEEncoder,
        fn_constructor_kwargs={"model": model, **encoder_options},
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=gpus_per_actor,
        num_cpus=cpus_per_actor,
        batch_size=batch_size,
        batch_format="numpy",
    )
