"""Encoding a task's queries or candidates through the caches, sharded under torchrun.

For each input, in order of preference: its cached embedding; else its cached trace, embedded in
one prefill; else think and embed (``UnifiedTTE`` reads the embedding from the generation cache;
``TwoModelTTE``'s reasoner thinks and its embedder embeds). Traces are keyed by what they depend
on (the reasoner's weights, prompts and decode options), embeddings by that and the embedder, so a
changed embedder (or TTE_u head) over the same reasoner reuses the traces and thinks no more.

Under torch.distributed, the inputs left to encode are split across processes (rank r takes every
world-th one), and embeddings and traces are gathered back so every process holds all of them;
process 0 writes the caches.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
import torch.distributed as dist

from tte_fast.distributed import gather_rows, world
from tte_fast.eval.cache import EmbeddingCache, TraceCache
from tte_fast.eval.config import EncodeConfig
from tte_fast.eval.data import EvalDataError
from tte_fast.eval.fingerprint import digest, input_fingerprint, module_fingerprint, unified_parts

# TTEConfig fields that shape traces (they enter through the trace fingerprint instead).
_BUDGETS = ("max_think_tokens", "max_answer_tokens")
# TTEConfig settings a trace depends on beyond the prompts and the resolved decode options.
_TRACE_SETTINGS = ("positions", "min_pixels", "max_pixels", "recipe")


@dataclass
class EncodeStats:
    """How a side's inputs were served: ``cached`` embeddings, ``reused_traces`` (embedded from a
    cached trace), ``thought`` (thought and embedded) and ``embedded`` (no thinking)."""

    cached: int = 0
    reused_traces: int = 0
    thought: int = 0
    embedded: int = 0
    seconds: float = field(default=0.0, compare=False)

    def to_dict(self) -> dict:
        return {
            "cached": self.cached,
            "reused_traces": self.reused_traces,
            "thought": self.thought,
            "embedded": self.embedded,
        }


class ModelRunner:
    """A UnifiedTTE or TwoModelTTE with its fingerprints, encoding through the caches."""

    def __init__(self, model, options: EncodeConfig | None = None, cache_root: str | None = None):
        self.model = model
        self.options = options or EncodeConfig()
        self.cache_root = cache_root
        self.two_model = hasattr(model, "reasoner") and hasattr(model, "embedder")
        self.reasoner = model.reasoner if self.two_model else model
        self.embedder = model.embedder if self.two_model else model
        self.reasoner_parts = unified_parts(self.reasoner)
        self.embedder_parts = unified_parts(self.embedder) if self.two_model else self.reasoner_parts
        self.head = module_fingerprint(getattr(self.embedder, "head", None))

    # ------------------------------------------------------------------------------ fingerprints
    def thinks(self, side: str) -> bool:
        setting = self.options.params(side).think
        return self.reasoner.config.prompts.thinks(side) if setting is None else bool(setting)

    def decode_options(self) -> dict:
        """How the reasoner decodes, resolved (budgets, sampling from its generation source, stop and
        embedding tokens, fallback): what its traces depend on besides the prompts."""
        opts = self.options
        resolved = self.reasoner.decode_options(
            max_think_tokens=opts.max_think_tokens, max_answer_tokens=opts.max_answer_tokens
        )
        return {f.name: getattr(resolved, f.name) for f in fields(resolved) if f.name != "stop_strings"}

    def trace_fingerprint(self, side: str) -> str:
        config = self.reasoner.config
        return digest(
            "traces",
            self.reasoner_parts,
            config.prompts.to_dict(),
            config.think_end_token,
            list(config.stop_strings),  # they end traces too
            {k: v for k, v in config.to_dict().items() if k in _TRACE_SETTINGS},
            side,
            self.decode_options(),
        )

    def embed_fingerprint(self, side: str) -> str:
        config = {k: v for k, v in self.embedder.config.to_dict().items() if k not in _BUDGETS}
        think = self.thinks(side)
        return digest(
            "embeddings",
            self.embedder_parts,
            config,
            self.embedder.embed_token,
            self.head,
            side,
            think,
            self.trace_fingerprint(side) if think else None,
        )

    def describe(self) -> dict:
        """The fingerprints, for the results file."""
        return {
            "kind": "TwoModelTTE" if self.two_model else "UnifiedTTE",
            "reasoner_weights": self.reasoner_parts["backbone"],
            "embedder_weights": self.embedder_parts["backbone"],
            "head": self.head,
            "query": {"think": self.thinks("query"), "embeddings": self.embed_fingerprint("query")},
            "target": {"think": self.thinks("target"), "embeddings": self.embed_fingerprint("target")},
            "decode": self.decode_options(),
        }

    # ---------------------------------------------------------------------------------- encoding
    def encode(self, task: str, side: str, items: list, ids: list[str]) -> tuple[torch.Tensor, EncodeStats]:
        """Embeddings [N, D] of ``items`` (ids name them in errors) and how they were obtained."""
        keys = [input_fingerprint(x) for x in items]
        use_cache = self.cache_root is not None
        emb_cache = (
            EmbeddingCache(self.cache_root, task, side, self.embed_fingerprint(side)) if use_cache else None
        )
        rows = emb_cache.load() if use_cache else {}
        stats = EncodeStats(cached=sum(k in rows for k in keys))
        first = {}
        for i, k in enumerate(keys):
            if k not in rows:
                first.setdefault(k, i)
        todo = list(first.values())  # one index per distinct input not cached
        if todo:
            new_rows, new_traces = self._encode_missing(task, side, items, ids, keys, todo, stats)
            rows.update(new_rows)
            if use_cache and world()[0] == 0:
                emb_cache.save(rows)
                if new_traces:
                    trace_cache = TraceCache(self.cache_root, task, side, self.trace_fingerprint(side))
                    trace_cache.save({**trace_cache.load(), **new_traces})
            if world()[1] > 1:
                dist.barrier()
        return torch.stack([rows[k] for k in keys]).float(), stats

    def _encode_missing(self, task, side, items, ids, keys, todo, stats):
        thinking = self.thinks(side)
        cached_traces = {}
        if thinking and self.cache_root is not None:
            cached_traces = TraceCache(self.cache_root, task, side, self.trace_fingerprint(side)).load()
        with_trace = [i for i in todo if keys[i] in cached_traces]
        fresh = [i for i in todo if keys[i] not in cached_traces]
        rows, new_traces = {}, {}
        if with_trace:
            traces = [cached_traces[keys[i]] for i in with_trace]
            emb, _ = self._sharded(task, side, items, ids, with_trace, traces)
            rows.update({keys[i]: e for i, e in zip(with_trace, emb)})
            stats.reused_traces += len(with_trace)
        if fresh:
            emb, traces = self._sharded(task, side, items, ids, fresh, None, think=thinking)
            rows.update({keys[i]: e for i, e in zip(fresh, emb)})
            if thinking:
                new_traces = {keys[i]: t for i, t in zip(fresh, traces)}
                stats.thought += len(fresh)
            else:
                stats.embedded += len(fresh)
        return rows, new_traces

    def _sharded(self, task, side, items, ids, indices, traces, think=False):
        rank, size = world()
        mine = list(range(rank, len(indices), size))
        part = [items[indices[j]] for j in mine]
        part_traces = None if traces is None else [traces[j] for j in mine]
        try:
            emb, out_traces = self._run(side, part, part_traces, think)
        except ValueError as err:
            index = getattr(err, "index", None)
            if index is None:
                raise
            record = ids[indices[mine[index]]]
            raise EvalDataError(f"task {task!r}: {side} {record!r}: {err}") from err
        if size == 1:
            return emb, out_traces
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        gathered, counts = gather_rows(emb.to(device))
        all_traces = [None] * size
        dist.all_gather_object(all_traces, out_traces)
        emb_out = [None] * len(indices)
        trace_out = [None] * len(indices)
        offset = 0
        for r, count in enumerate(counts):
            for n, j in enumerate(range(r, len(indices), size)):
                emb_out[j] = gathered[offset + n].cpu()
                if all_traces[r] is not None:
                    trace_out[j] = all_traces[r][n]
            offset += count
        return torch.stack(emb_out), trace_out if think else None

    def _run(self, side, part, traces, think):
        """(embeddings [n, D] on CPU, traces or None) for this process's inputs."""
        decode = self.decode_options()
        params = replace(self.options.params(side), think=think, **{k: decode[k] for k in _BUDGETS})
        progress = self.options.progress
        common = {"batch_size": params.batch_size, "side": side, "progress": progress}
        if traces is not None:
            result = self.embedder.encode(part, traces=traces, **common)
            return result.embeddings.float(), None
        if not think:
            return self.embedder.encode(part, think=False, **common).embeddings.float(), None
        if self.two_model:
            budget = params.max_think_tokens
            new = (
                self.reasoner.think(part, max_think_tokens=budget, **common, **params.decode_kwargs())
                if part
                else []
            )
            result = self.embedder.encode(part, traces=new, **common)
            return result.embeddings.float(), list(new)
        result = self.embedder.encode(part, progress=progress, **params.encode_kwargs())
        return result.embeddings.float(), list(result.traces or [])
