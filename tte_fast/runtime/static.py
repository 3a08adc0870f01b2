"""Static batches: a left-padded batch decodes together until its last row stops.

Left-padded prefill, then a shape-static decode step (``tte_fast.runtime.runner``) that feeds one
token per row over a preallocated KV cache. Rows stop on their own by the one stop rule
(``tte_fast.runtime.stop``); a stopped row's later columns are masked out of the attention and its
positions stay contiguous, so what a static batch decodes after the stop never reaches that row.

With ``embed_token_id`` set, each row feeds its embedding token on the step right after it stops
(if its budget ran out, its last sampled token is fed first) and the final-norm hidden state there
is the row's embedding: no prefix is encoded again. A row that stops without sampling its
embedding token may embed by its fallback instead (``tte_fast.runtime.stop``): at its last sampled
token, fed, or at the last token it fed, read from the step that just ran.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from transformers import DynamicCache, StaticCache

from tte_fast.profiling import stage
from tte_fast.runtime.options import DecodeOptions
from tte_fast.runtime.positions import decode_position_ids, prefill_position_ids
from tte_fast.runtime.runner import Runner, model_inputs
from tte_fast.runtime.sampling import SeenTokens, pick_tokens, row_generators
from tte_fast.runtime.static_cache import CachePool, compiled_batch
from tte_fast.runtime.stop import RowBook

# Static caches kept allocated between eager decodes (alternating batch shapes reuse them).
EAGER_CACHES = 2
# Per-row processor outputs that padding rows extend (media tensors are per image, not per row).
_ROW_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


@dataclass
class DecodeOutput:
    """What a batch decode produced; row order is the batch's."""

    prompt_ids: list[torch.Tensor]  # per row, the prompt without padding
    generated: list[torch.Tensor]  # per row, every sampled token (a final stop token included)
    kept: list[torch.Tensor]  # per row, the generated tokens that are part of the sequence
    stop_reasons: list[str]  # "eos", "stop_string", "think_budget" or "answer_budget"
    attention_mask: torch.Tensor  # [B, T_total] over every position fed, 1 where it is the row's token
    embed_hidden: torch.Tensor | None = None  # [B, D] final-norm hidden state at the embedding token
    tails: list[int] | None = None  # per row, the token embedded at after the kept ones (-1: none)
    embedded: list[int] | None = None  # per row, kept tokens inside the sequence embedded
    steps: int = 0

    def first_rows(self, n: int) -> DecodeOutput:
        """The output of the first ``n`` rows (drops rows that only padded a compiled batch)."""
        if n == len(self.prompt_ids):
            return self
        embed = None if self.embed_hidden is None else self.embed_hidden[:n]
        return DecodeOutput(
            self.prompt_ids[:n],
            self.generated[:n],
            self.kept[:n],
            self.stop_reasons[:n],
            self.attention_mask[:n],
            embed,
            None if self.tails is None else self.tails[:n],
            None if self.embedded is None else self.embedded[:n],
            self.steps,
        )

    @property
    def sequences(self) -> list[torch.Tensor]:
        """Per row, the tokens its embedding was read at the end of: prompt, kept tokens (those fed),
        then the token embedded at when it is not the last kept one."""
        tails = self.tails or [-1] * len(self.kept)
        lengths = self.embedded or [len(k) for k in self.kept]
        return [
            torch.cat(
                [p, k[:n].to(p.device), torch.tensor([t] if t >= 0 else [], dtype=p.dtype, device=p.device)]
            )
            for p, k, t, n in zip(self.prompt_ids, self.kept, tails, lengths)
        ]


class StaticBatches:
    """Batched greedy or sampled decoding over one :class:`Runner`.

    Compiled decoding (a compiled runner) pads batches and cache lengths to powers of two, so the
    number of graphs stays bounded; its static caches stay allocated for replay, eager decoding keeps
    the last ``EAGER_CACHES``. ``release()`` frees them. One decode runs at a time (a lock): the
    caches are shared state.
    """

    def __init__(self, runner: Runner, static_cache: bool | None = None):
        self.runner = runner
        hf_model = runner.hf_model
        attn = getattr(hf_model.config, "_attn_implementation", "sdpa")
        # SDPA/eager take a preallocated cache and a full static-length mask, which keeps every decode
        # step's shapes fixed. flash-attn unpads by a 2D mask as long as the keys seen so far, which a
        # static cache's tail would break: it gets a growing cache and mask, as in HF generate.
        self.static_mask = attn != "flash_attention_2" if static_cache is None else static_cache
        self.caches = CachePool(hf_model.config, capacity=None if runner.compiled else EAGER_CACHES)
        self._lock = threading.RLock()

    @classmethod
    def of(cls, hf_model, compile=False, static_cache: bool | None = None) -> StaticBatches:
        """Static batches over a new runner of ``hf_model``."""
        return cls(Runner(hf_model, compile=compile), static_cache=static_cache)

    def release(self) -> None:
        """Free the static KV caches (the next decode allocates what it needs)."""
        with self._lock:
            self.caches.release()

    def new_cache(self, batch_size: int, length: int) -> StaticCache | DynamicCache:
        if not self.static_mask:
            return DynamicCache(config=self.runner.hf_model.config)
        return self.caches.get(batch_size, length)

    def visible_mask(self, mask: torch.Tensor, end: int) -> torch.Tensor:
        """What a forward that ends at column ``end`` sees: the whole static mask, or the columns so far."""
        return mask if self.static_mask else mask[:, :end]

    def mask_width(self, total: int, padded: bool = False) -> int:
        """Columns of the 2D attention mask for ``total`` positions: the static cache's, or exact."""
        return self.runner.cache_length(total, padded) if self.static_mask else total

    @torch.inference_mode()
    def decode(
        self, batch: dict, options: DecodeOptions, embed_token_id: int | None = None, compiled: bool = True
    ) -> DecodeOutput:
        """Decode a left-padded prompt batch (processor output); see the module docstring.

        ``compiled=False`` runs the eager step even when compiling was asked for (forward hooks,
        such as the TTE_u head's capture, do not run inside CUDA-graph replays)."""
        prompt_mask = batch["attention_mask"]
        if bool((prompt_mask[:, -1] == 0).any()):
            raise ValueError("decode needs left-padded prompts (the last column of attention_mask must be 1)")
        with self._lock:
            use_compiled = compiled and self.runner.compiled
            rows = batch["input_ids"].shape[0]
            padded = _pad_rows(batch, compiled_batch(rows), options.pad_token_id) if use_compiled else batch
            generators = row_generators(batch, options)
            out = self._decode(padded, options, embed_token_id, use_compiled, rows, generators)
            return out.first_rows(rows)

    def _decode(self, batch, options, embed_token_id, use_compiled, real_rows, generators) -> DecodeOutput:
        runner = self.runner
        input_ids, prompt_mask = batch["input_ids"], batch["attention_mask"]
        device = input_ids.device
        bsz, prompt_len = input_ids.shape
        max_new = options.max_new_tokens
        # The last sampled token is fed only before an embedding token; then comes that token.
        total = prompt_len + max_new + (1 if embed_token_id is not None else 0)
        length = runner.cache_length(total, padded=use_compiled)
        cache = self.new_cache(bsz, length)
        mask = torch.zeros(bsz, self.mask_width(total, use_compiled), dtype=prompt_mask.dtype, device=device)
        mask[:, :prompt_len] = prompt_mask
        position_ids, deltas = prefill_position_ids(runner.hf_model, batch)

        with stage("prefill"):
            extra = model_inputs(runner.backbone, batch)
            prefill_mask = self.visible_mask(mask, prompt_len)
            cache_position = runner.cache_positions(0, prompt_len, device)
            hidden = runner.forward(input_ids, position_ids, prefill_mask, cache, cache_position, **extra)
            logits = runner.lm_head(hidden)

        # Rows past real_rows only pad a compiled step's batch: they stay DONE and never feed a token.
        book = RowBook(bsz, max_new, options, device)
        book.start(slice(0, real_rows), options, embed_token_id)
        seen = _seen_tokens(batch, options, logits.shape[-1])
        embed_hidden = torch.zeros_like(hidden) if embed_token_id is not None else None
        run_step = runner.step if use_compiled else runner.decode_step
        if use_compiled:
            runner.shapes.record((bsz, length))
        text_pos = prompt_mask.long().sum(-1)
        step, column, any_sampling = 0, prompt_len, real_rows > 0
        with stage("decode"):
            while True:
                book.advance(pick_tokens(logits, options, generators, seen) if any_sampling else None)
                if embed_hidden is not None:  # rows embedded at the last token they fed: this state
                    embed_hidden = torch.where(book.read_now.view(-1, 1), hidden, embed_hidden)
                # One host sync per step: is any row left, and does any row still need logits?
                any_left, any_sampling = torch.stack([book.feeds.any(), book.sampling.any()]).tolist()
                if not any_left:
                    break
                feeds = book.feeds
                mask[:, column] = feeds.to(mask.dtype)
                step_mask = self.visible_mask(mask, column + 1)
                tokens = book.next_feed.view(bsz, 1)
                with stage("decode_step"):
                    positions = decode_position_ids(text_pos, deltas)
                    slot = runner.cache_positions(column, 1, device)
                    if any_sampling:
                        hidden, logits = run_step(tokens, positions, step_mask, cache, slot)
                    else:  # only embedding tokens left: no LM head
                        hidden = runner.forward(tokens, positions, step_mask, cache, slot)
                if embed_hidden is not None:
                    embed_hidden = torch.where(book.embedding.view(-1, 1), hidden, embed_hidden)
                text_pos += feeds.long()
                book.fed()
                column += 1
                step += 1

        prompt_ids = [input_ids[b][prompt_mask[b].bool()] for b in range(bsz)]
        n_kept, n_generated = book.n_kept.tolist(), book.n_generated().tolist()
        return DecodeOutput(
            prompt_ids=prompt_ids,
            generated=[book.tokens[b, : n_generated[b]] for b in range(bsz)],
            kept=[book.tokens[b, : n_kept[b]] for b in range(bsz)],
            stop_reasons=book.stop_reasons(),
            attention_mask=mask[:, :column].clone(),
            embed_hidden=embed_hidden,
            tails=None if embed_token_id is None else book.tail.tolist(),
            embedded=None if embed_token_id is None else book.embedded_length().tolist(),
            steps=step,
        )


def _seen_tokens(batch: dict, options: DecodeOptions, vocab: int) -> SeenTokens | None:
    """The rows' prompt tokens for the repetition penalty; None (and no work) without one."""
    if options.repetition_penalty == 1.0:
        return None
    input_ids = batch["input_ids"]
    seen = SeenTokens(input_ids.shape[0], vocab, input_ids.device)
    seen.start(
        list(range(input_ids.shape[0])), input_ids, batch["attention_mask"], options.repetition_penalty
    )
    return seen


def _pad_rows(batch: dict, size: int, pad_token_id: int) -> dict:
    """``batch`` with rows appended up to ``size``: one real pad token each (last column), so their
    attention is never empty; media tensors are per image and stay as they are."""
    extra = size - batch["input_ids"].shape[0]
    if extra == 0:
        return batch
    out = dict(batch)
    for key in _ROW_KEYS:
        value = batch.get(key)
        if value is None:
            continue
        fill = torch.zeros(extra, *value.shape[1:], dtype=value.dtype, device=value.device)
        if key == "input_ids":
            fill.fill_(pad_token_id)
        elif key == "attention_mask":
            fill[:, -1] = 1
        out[key] = torch.cat([value, fill])
    return out
