"""Per-task caches of embeddings (safetensors) and reasoning traces (JSON).

A file is named by the task, the side (``query`` / ``target``) and the first 16 hex digits of a
fingerprint of everything its contents depend on (model weights and config, prompts, decode options);
inside, rows are keyed by a fingerprint of each input. A different model or setting reads a different
file, so a stale entry is never used; the same setting over a changed input set encodes only the new
inputs. Writes go through a temporary file and a rename, so an interrupted run leaves no torn file.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT = 1


def safe_name(task: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in task)


def _replace(path: str, write) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)


class EmbeddingCache:
    """Embeddings of one task side under one fingerprint: input key -> float32 row."""

    def __init__(self, root: str, task: str, side: str, fingerprint: str):
        self.path = os.path.join(root, safe_name(task), f"{side}-emb-{fingerprint[:16]}.safetensors")
        self.fingerprint = fingerprint

    def load(self) -> dict[str, torch.Tensor]:
        if not os.path.exists(self.path):
            return {}
        with safe_open(self.path, framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("fingerprint") != self.fingerprint or meta.get("format") != str(FORMAT):
                return {}  # a 16-digit prefix collision, or an older format: start over
            keys = json.loads(meta["keys"])
            rows = f.get_tensor("embeddings")
        return dict(zip(keys, rows))

    def save(self, rows: dict[str, torch.Tensor]) -> None:
        if not rows:
            return
        keys = list(rows)
        tensor = torch.stack([rows[k] for k in keys]).float().contiguous()
        meta = {"fingerprint": self.fingerprint, "format": str(FORMAT), "keys": json.dumps(keys)}
        _replace(self.path, lambda tmp: save_file({"embeddings": tensor}, tmp, metadata=meta))


class TraceCache:
    """Reasoning traces of one task side under one fingerprint: input key -> trace."""

    def __init__(self, root: str, task: str, side: str, fingerprint: str):
        self.path = os.path.join(root, safe_name(task), f"{side}-traces-{fingerprint[:16]}.json")
        self.fingerprint = fingerprint

    def load(self) -> dict[str, str]:
        if not os.path.exists(self.path):
            return {}
        with open(self.path, encoding="utf-8") as f:
            data = json.load(f)
        if data.get("fingerprint") != self.fingerprint or data.get("format") != FORMAT:
            return {}
        return data["traces"]

    def save(self, traces: dict[str, str]) -> None:
        if not traces:
            return
        data = {"fingerprint": self.fingerprint, "format": FORMAT, "traces": traces}

        def write(tmp):
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f, ensure_ascii=False, indent=0)

        _replace(self.path, write)
