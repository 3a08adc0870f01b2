"""The output folder of a corpus encoding: parquet shards and a manifest.

```
OUTPUT/
  _manifest.json                      model fingerprint, settings, schema, counts
  part-0000000000-<token>.parquet     id, embedding, trace, error (one row per input)
  part-0000000256-<token>.parquet     ...
```

Each shard is written to a hidden temporary file in the folder, flushed to disk, then renamed into
place, so a shard is either whole or absent: a killed job loses at most the shards it had not
finished. The name holds the input position of the shard's first row (the folder lists in input
order) and a token of the process that wrote it (no two writers ever pick the same name). Names that
start with ``_`` or ``.`` are skipped by ``pyarrow.dataset``, so
``pyarrow.dataset.dataset(OUTPUT, format="parquet").to_table()`` reads all shards as one table.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

MANIFEST = "_manifest.json"
FORMAT = "tte_fast.corpus/1"
SHARD_GLOB = "part-*.parquet"
EMBEDDING_DTYPES = {"float32": pa.float32(), "float16": pa.float16()}
ID_TYPES = {"int64": pa.int64(), "string": pa.string()}


def shard_schema(id_type: str, dim: int, embedding_dtype: str) -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", ID_TYPES[id_type], nullable=False),
            pa.field("embedding", pa.list_(EMBEDDING_DTYPES[embedding_dtype], dim)),  # null on failure
            pa.field("trace", pa.string()),
            pa.field("error", pa.string()),  # null on success
        ]
    )


def shard_table(schema: pa.Schema, ids: list, embeddings: np.ndarray, traces: list, errors: list) -> pa.Table:
    """One shard's rows: ``embeddings`` [N, D] (rows of failed inputs are stored as null)."""
    value_type = schema.field("embedding").type.value_type
    dim = schema.field("embedding").type.list_size
    values = pa.array(np.ascontiguousarray(embeddings, dtype=value_type.to_pandas_dtype()).reshape(-1))
    mask = pa.array([e is not None for e in errors])
    embedding = pa.FixedSizeListArray.from_arrays(values, dim, mask=mask)
    return pa.table(
        [
            pa.array(ids, schema.field("id").type),
            embedding,
            pa.array(traces, pa.string()),
            pa.array(errors, pa.string()),
        ],
        schema=schema,
    )


def write_atomic(path: str, write) -> None:
    """``write(tmp_path)``, flush to disk, then rename onto ``path``."""
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class OutputFolder:
    def __init__(self, path: str):
        self.path = path
        self.manifest_path = os.path.join(path, MANIFEST)

    def shards(self) -> list[str]:
        return sorted(glob.glob(os.path.join(self.path, SHARD_GLOB)))

    def is_empty(self) -> bool:
        return not os.path.exists(self.manifest_path) and not self.shards()

    def read_manifest(self) -> dict | None:
        if not os.path.exists(self.manifest_path):
            return None
        try:
            with open(self.manifest_path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{self.manifest_path}: not a readable manifest ({err})") from None

    def write_manifest(self, manifest: dict) -> None:
        os.makedirs(self.path, exist_ok=True)

        def write(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=2, ensure_ascii=False)
                f.write("\n")

        write_atomic(self.manifest_path, write)

    def remove_stale_temporaries(self) -> int:
        """Delete temporary files that killed writers left behind; how many there were."""
        stale = glob.glob(os.path.join(self.path, ".part-*.tmp-*")) + glob.glob(
            os.path.join(self.path, f".{MANIFEST}.tmp-*")
        )
        for path in stale:
            os.remove(path)
        return len(stale)

    def write_shard(self, name: str, table: pa.Table) -> str:
        path = os.path.join(self.path, name)
        write_atomic(path, lambda tmp: pq.write_table(table, tmp))
        return path

    def done_ids(self) -> set:
        """Ids of every row already written (failed rows included: they are not retried)."""
        done: set = set()
        for path in self.shards():
            done.update(pq.read_table(path, columns=["id"]).column(0).to_pylist())
        return done

    def counts(self) -> dict:
        """Rows, successes, failures and shards of the whole folder."""
        rows = failed = 0
        shards = self.shards()
        for path in shards:
            errors = pq.read_table(path, columns=["error"]).column(0)
            rows += len(errors)
            failed += len(errors) - errors.null_count
        return {"rows": rows, "succeeded": rows - failed, "failed": failed, "shards": len(shards)}


def read_table(path: str) -> pa.Table:
    """All shards of an output folder as one table (no merge step: this is pyarrow.dataset)."""
    return ds.dataset(path, format="parquet").to_table()


def manifest_differences(saved: dict, current: dict, keys=("model", "settings", "schema")) -> list[str]:
    """``key.path: saved vs current`` for every leaf of ``keys`` that differs."""
    out: list[str] = []

    def walk(a, b, where: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k), b.get(k), f"{where}.{k}" if where else k)
        elif a != b:
            out.append(f"{where}: {json.dumps(a)} (in the folder) vs {json.dumps(b)} (now)")

    for key in keys:
        walk(saved.get(key), json.loads(json.dumps(current.get(key))), key)
    return out
