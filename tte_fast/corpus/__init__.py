"""Corpus encoding: inputs (``reader``) to a folder of parquet shards (``store``), resumable and
shared across torchrun processes (``world``); ``job`` runs it and ``cli`` is ``tte-fast encode``."""

from tte_fast.corpus.job import (
    CorpusJobError,
    EncodeSettings,
    embeddings_of,
    encode_corpus,
    model_description,
)

__all__ = [
    "CorpusJobError",
    "EncodeSettings",
    "embeddings_of",
    "encode_corpus",
    "model_description",
]
