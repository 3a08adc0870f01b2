"""Batched decoding over a HF model's own modules, with a preallocated KV cache.

One ``Decoder`` drives the backbone (``hf_model.base_model``, whose output is the final-norm hidden
state) and the LM head directly: left-padded prefill, then a shape-static decode step that feeds
one token per row. Rows stop on their own (EOS, think budget, answer budget after ``</think>``);
a stopped row's later columns are masked out of the attention and its positions stay contiguous,
so what a static batch decodes after the stop never reaches that row.

With ``embed_token_id`` set, each row feeds its embedding token on the step right after it stops
(if its budget ran out, its last sampled token is fed first) and the final-norm hidden state there
is the row's embedding: no prefix is encoded again.

Positions follow HF ``generate``: text positions are ``cumsum(mask) - 1``; Qwen-VL models use
M-RoPE, ``position_ids`` of shape ``[4, B, L]`` (text row, then three rows from ``get_rope_index``);
a decode step's three M-RoPE rows are the text position plus the row's ``rope_deltas``.
"""

from __future__ import annotations

import hashlib
import inspect
import threading
from dataclasses import dataclass

import torch
from transformers import DynamicCache, StaticCache

from tte_fast.chunking import split_inputs
from tte_fast.decode_cache import CachePool, CompiledShapes, compiled_batch, compiled_length, eager_length
from tte_fast.profiling import stage

# Row states of the decode loop.
ALIVE, KEEP_LAST, EMBED, DONE = 0, 1, 2, 3
# Static caches kept allocated between eager decodes (alternating batch shapes reuse them).
EAGER_CACHES = 2
# Per-row processor outputs that padding rows extend (media tensors are per image, not per row).
_ROW_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


@dataclass(frozen=True)
class DecodeOptions:
    """When rows stop and how tokens are picked.

    A row stops when it samples one of ``eos_token_ids`` (the stop token is not kept), when it has
    sampled ``max_think_tokens`` tokens without closing ``think_end_token_id``, or when it has
    sampled ``max_answer_tokens`` tokens after closing it.
    """

    max_think_tokens: int = 256
    max_answer_tokens: int = 32
    eos_token_ids: tuple[int, ...] = ()
    think_end_token_id: int | None = None
    pad_token_id: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if not isinstance(self.max_think_tokens, int) or self.max_think_tokens < 1:
            raise ValueError(f"max_think_tokens must be a positive int, got {self.max_think_tokens!r}")
        if not isinstance(self.max_answer_tokens, int) or self.max_answer_tokens < 0:
            raise ValueError(f"max_answer_tokens must be a non-negative int, got {self.max_answer_tokens!r}")
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be a non-negative int (0: off), got {self.top_k!r}")

    @property
    def max_new_tokens(self) -> int:
        extra = self.max_answer_tokens if self.think_end_token_id is not None else 0
        return self.max_think_tokens + extra


@dataclass
class DecodeOutput:
    """What a batch decode produced; row order is the batch's."""

    prompt_ids: list[torch.Tensor]  # per row, the prompt without padding
    generated: list[torch.Tensor]  # per row, every sampled token (a final stop token included)
    kept: list[torch.Tensor]  # per row, the generated tokens that are part of the sequence
    stop_reasons: list[str]  # "eos", "think_budget" or "answer_budget"
    attention_mask: torch.Tensor  # [B, T_total] over every position fed, 1 where it is the row's token
    embed_hidden: torch.Tensor | None = None  # [B, D] final-norm hidden state at the embedding token
    embed_token_id: int | None = None
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
            self.embed_token_id,
            self.steps,
        )

    @property
    def sequences(self) -> list[torch.Tensor]:
        """Per row: prompt, kept tokens, then the embedding token (when one was fed)."""
        tail = [] if self.embed_token_id is None else [self.embed_token_id]
        return [
            torch.cat([p, k.to(p.device), torch.tensor(tail, dtype=p.dtype, device=p.device)])
            for p, k in zip(self.prompt_ids, self.kept)
        ]


def text_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """HF's text positions for a left-padded batch: ``cumsum(mask) - 1``, 0 on padding."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


def uses_mrope(hf_model) -> bool:
    return hasattr(getattr(hf_model, "model", None), "get_rope_index")


def prefill_position_ids(hf_model, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Position ids for a left-padded prompt batch and the per-row M-RoPE deltas (None without M-RoPE)."""
    mask = batch["attention_mask"]
    text = text_position_ids(mask)
    if not uses_mrope(hf_model):
        return text, None
    has_vision = batch.get("image_grid_thw") is not None or batch.get("video_grid_thw") is not None
    if has_vision:
        get_rope_index = hf_model.model.get_rope_index
        accepted = inspect.signature(get_rope_index).parameters
        kwargs = {
            k: batch[k]
            for k in ("mm_token_type_ids", "image_grid_thw", "video_grid_thw", "second_per_grid_ts")
            if k in accepted and batch.get(k) is not None
        }
        vision, deltas = get_rope_index(batch["input_ids"], attention_mask=mask, **kwargs)
    else:
        vision = text.unsqueeze(0).expand(3, -1, -1)
        deltas = torch.zeros(mask.shape[0], 1, dtype=torch.long, device=mask.device)
    return torch.cat([text.unsqueeze(0), vision.to(text.device)], dim=0), deltas.to(text.device)


def decode_position_ids(text_pos: torch.Tensor, deltas: torch.Tensor | None) -> torch.Tensor:
    """``[B, 1]`` positions, or ``[4, B, 1]`` (text, then text + rope delta three times) with M-RoPE."""
    pos = text_pos.view(-1, 1)
    if deltas is None:
        return pos
    return torch.stack([pos, pos + deltas, pos + deltas, pos + deltas], dim=0)


def model_inputs(backbone, batch: dict) -> dict:
    """The processor outputs the backbone's forward accepts (pixel values, grids, token types)."""
    accepted = inspect.signature(backbone.forward).parameters
    skip = {"input_ids", "attention_mask", "position_ids"}
    return {k: v for k, v in batch.items() if k in accepted and k not in skip and v is not None}


def cache_argument(backbone) -> str:
    """The KV cache keyword of the installed transformers (``cache`` in 5.24, ``past_key_values`` before)."""
    return "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"


class Decoder:
    """Greedy or sampled batched decoding for one HF model (Qwen-VL or a text-only causal LM).

    ``compile=True`` wraps the decode step in ``torch.compile`` (CUDA graphs on GPU via
    ``mode="reduce-overhead"``); a string (or a backend callable) names the compile backend.
    Compiled decoding pads batches and cache lengths to powers of two, so the number of graphs stays
    bounded (see ``tte_fast.decode_cache``); its static caches stay allocated for replay, eager
    decoding keeps the last ``EAGER_CACHES``. ``release()`` frees them.

    One decode runs at a time per decoder (a lock): the caches are shared state.
    """

    def __init__(self, hf_model, compile=False, static_cache: bool | None = None):
        self.hf_model = hf_model
        self.backbone = hf_model.base_model
        self.lm_head = hf_model.get_output_embeddings()
        self.cache_kw = cache_argument(self.backbone)
        self.pass_cache_position = "cache_position" in inspect.signature(self.backbone.forward).parameters
        attn = getattr(hf_model.config, "_attn_implementation", "sdpa")
        # SDPA/eager take a preallocated cache and a full static-length mask, which keeps every decode
        # step's shapes fixed. flash-attn unpads by a 2D mask as long as the keys seen so far, which a
        # static cache's tail would break: it gets a growing cache and mask, as in HF generate.
        self.static_mask = attn != "flash_attention_2" if static_cache is None else static_cache
        self.compiled = bool(compile)
        self.caches = CachePool(hf_model.config, capacity=None if self.compiled else EAGER_CACHES)
        self._lock = threading.RLock()
        self.step = self.decode_step
        if compile:
            backend = "inductor" if compile is True else compile
            graphs = backend == "inductor" and self._device().type == "cuda"
            compiled = torch.compile(
                self.decode_step, backend=backend, mode="reduce-overhead" if graphs else None, dynamic=False
            )
            self.step = _graph_step(compiled) if graphs else compiled
            context = getattr(hf_model.config.get_text_config(), "max_position_embeddings", 32768)
            self.shapes = CompiledShapes(max_length=context)

    def _device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    def release(self) -> None:
        """Free the static KV caches (the next decode allocates what it needs)."""
        with self._lock:
            self.caches.release()

    def cache_length(self, total: int, padded: bool) -> int:
        """Columns of the static cache and the 2D mask for ``total`` positions."""
        return compiled_length(total) if padded else eager_length(total)

    def new_cache(self, batch_size: int, length: int) -> StaticCache | DynamicCache:
        if not self.static_mask:
            return DynamicCache(config=self.hf_model.config)
        return self.caches.get(batch_size, length)

    def visible_mask(self, mask: torch.Tensor, end: int) -> torch.Tensor:
        """What a forward that ends at column ``end`` sees: the whole static mask, or the columns so far."""
        return mask if self.static_mask else mask[:, :end]

    def hidden_states(self, input_ids, position_ids, mask, cache, cache_position=None, **extra):
        """Backbone forward of new tokens onto ``cache`` (None: no cache); their final-norm hidden
        states ``[B, L, D]``.

        ``cache_position`` (the new tokens' cache slots) is passed only to transformers versions
        that still take it; newer ones track the slot inside the cache."""
        kwargs = {self.cache_kw: cache, "use_cache": cache is not None, **extra}
        if self.pass_cache_position:
            kwargs["cache_position"] = cache_position
        out = self.backbone(input_ids=input_ids, position_ids=position_ids, attention_mask=mask, **kwargs)
        return out.last_hidden_state

    def forward(self, input_ids, position_ids, mask, cache, cache_position=None, **extra) -> torch.Tensor:
        """The final-norm hidden state of the last new token of each row, ``[B, D]``."""
        return self.hidden_states(input_ids, position_ids, mask, cache, cache_position, **extra)[:, -1]

    def decode_step(self, input_ids, position_ids, mask, cache, cache_position=None):
        """One shape-static step: ``[B, 1]`` tokens -> (final-norm hidden ``[B, D]``, logits ``[B, V]``)."""
        hidden = self.forward(input_ids, position_ids, mask, cache, cache_position)
        return hidden, self.lm_head(hidden).float()

    def cache_positions(self, start: int, length: int, device) -> torch.Tensor | None:
        if not self.pass_cache_position:
            return None
        return torch.arange(start, start + length, device=device)

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
            use_compiled = compiled and self.compiled
            rows = batch["input_ids"].shape[0]
            padded = _pad_rows(batch, compiled_batch(rows), options.pad_token_id) if use_compiled else batch
            generators = _row_generators(batch, options)
            out = self._decode(padded, options, embed_token_id, use_compiled, rows, generators)
            return out.first_rows(rows)

    def mask_width(self, total: int, padded: bool = False) -> int:
        """Columns of the 2D attention mask for ``total`` positions: the static cache's, or exact."""
        return self.cache_length(total, padded) if self.static_mask else total

    def _decode(self, batch, options, embed_token_id, use_compiled, real_rows, generators) -> DecodeOutput:
        input_ids, prompt_mask = batch["input_ids"], batch["attention_mask"]
        device = input_ids.device
        bsz, prompt_len = input_ids.shape
        max_new = options.max_new_tokens
        # The last sampled token is fed only before an embedding token; then comes that token.
        total = prompt_len + max_new + (1 if embed_token_id is not None else 0)
        length = self.cache_length(total, padded=use_compiled)
        cache = self.new_cache(bsz, length)
        mask = torch.zeros(bsz, self.mask_width(total, use_compiled), dtype=prompt_mask.dtype, device=device)
        mask[:, :prompt_len] = prompt_mask
        position_ids, deltas = prefill_position_ids(self.hf_model, batch)

        with stage("prefill"):
            extra = model_inputs(self.backbone, batch)
            prefill_mask = self.visible_mask(mask, prompt_len)
            cache_position = self.cache_positions(0, prompt_len, device)
            hidden = self.forward(input_ids, position_ids, prefill_mask, cache, cache_position, **extra)
            logits = self.lm_head(hidden).float()

        rows = _Rows(bsz, options, embed_token_id, device, real_rows)
        embed_hidden = torch.zeros_like(hidden) if embed_token_id is not None else None
        run_step = self.step if use_compiled else self.decode_step
        if use_compiled:
            self.shapes.record((bsz, length))
        text_pos = prompt_mask.long().sum(-1)
        step, column = 0, prompt_len
        with stage("decode"):
            while True:
                token = _pick(logits, options, generators) if step < max_new else None
                next_token = rows.advance(token, step)
                # One host sync per step: is any row left, and does any row still need logits?
                any_left, any_sampling = torch.stack([rows.feed.any(), rows.sampling.any()]).tolist()
                if not any_left:
                    break
                mask[:, column] = rows.feed.to(mask.dtype)
                step_mask = self.visible_mask(mask, column + 1)
                with stage("decode_step"):
                    positions = decode_position_ids(text_pos, deltas)
                    slot = self.cache_positions(column, 1, device)
                    if any_sampling:
                        hidden, logits = run_step(next_token.view(bsz, 1), positions, step_mask, cache, slot)
                    else:  # only embedding tokens left: no LM head
                        hidden = self.forward(next_token.view(bsz, 1), positions, step_mask, cache, slot)
                if embed_hidden is not None:
                    embed_hidden = torch.where(rows.embedding.view(-1, 1), hidden, embed_hidden)
                text_pos += rows.feed.long()
                rows.fed()
                column += 1
                step += 1

        prompt_ids = [input_ids[b][prompt_mask[b].bool()] for b in range(bsz)]
        n_kept, n_generated = rows.n_kept.tolist(), rows.n_generated().tolist()
        return DecodeOutput(
            prompt_ids=prompt_ids,
            generated=[rows.tokens[b, : n_generated[b]] for b in range(bsz)],
            kept=[rows.tokens[b, : n_kept[b]] for b in range(bsz)],
            stop_reasons=rows.stop_reasons(),
            attention_mask=mask[:, :column].clone(),
            embed_hidden=embed_hidden,
            embed_token_id=embed_token_id,
            steps=step,
        )


class _Rows:
    """Per-row decode bookkeeping, all on the device (the loop syncs once per step, elsewhere).

    States: ALIVE rows sample; a row that stops on EOS goes to EMBED (the stop token is dropped and
    the embedding token fed instead); a row out of budget goes to KEEP_LAST (its last token is fed,
    then the embedding token). Without an embedding token a stopping row is DONE at once.
    """

    REASONS = {0: "padding", 1: "eos", 2: "think_budget", 3: "answer_budget"}  # 0: never sampled

    def __init__(self, bsz: int, options: DecodeOptions, embed_token_id: int | None, device, real_rows: int):
        self.options = options
        self.max_new = options.max_new_tokens
        self.embedding_on = embed_token_id is not None
        zeros = torch.zeros(bsz, dtype=torch.long, device=device)
        # Rows past real_rows only pad a compiled step's batch: they never feed a token.
        self.state = torch.where(torch.arange(bsz, device=device) < real_rows, ALIVE, DONE)
        self.tokens = torch.full((bsz, self.max_new), options.pad_token_id, dtype=torch.long, device=device)
        self.n_kept, self.n_answer, self.reason = zeros.clone(), zeros.clone(), zeros.clone()
        self.closed = torch.zeros(bsz, dtype=torch.bool, device=device)
        self.eos_ids = torch.tensor(options.eos_token_ids or [-1], dtype=torch.long, device=device)
        self.pad_id = torch.tensor(options.pad_token_id, device=device)
        self.embed_id = self.pad_id if embed_token_id is None else torch.tensor(embed_token_id, device=device)

    @property
    def sampling(self) -> torch.Tensor:
        return self.state == ALIVE

    @property
    def embedding(self) -> torch.Tensor:
        return self.state == EMBED

    @property
    def feed(self) -> torch.Tensor:
        """Rows whose token this step is part of their sequence."""
        return self.state != DONE

    def advance(self, token: torch.Tensor | None, step: int) -> torch.Tensor:
        """Take step ``step``'s sampled tokens (None past the budget); return the tokens to feed next."""
        sampling = self.sampling
        if token is None:  # every row has stopped sampling; only last-token and embedding feeds remain
            token, is_eos, stop = self.pad_id.expand_as(self.state), sampling, sampling
        else:
            is_eos, stop = self._record(token, step, sampling)
        stopped = torch.where(is_eos, EMBED, KEEP_LAST) if self.embedding_on else DONE
        after = torch.where(self.state == KEEP_LAST, EMBED, DONE)
        self.state = torch.where(sampling, torch.where(stop, stopped, ALIVE), after)
        return torch.where(self.embedding, self.embed_id, torch.where(sampling, token, self.pad_id))

    def _record(self, token: torch.Tensor, step: int, sampling: torch.Tensor):
        """Store the sampled tokens of ALIVE rows; which rows hit EOS, which stop (EOS or budget)."""
        opts = self.options
        self.tokens[:, step] = torch.where(sampling, token, self.tokens[:, step])
        is_eos = sampling & torch.isin(token, self.eos_ids)
        was_closed = self.closed.clone()
        if opts.think_end_token_id is not None:
            self.closed |= sampling & (token == opts.think_end_token_id)
        self.n_answer += (sampling & was_closed).long()
        think_out = ~self.closed & (step + 1 >= opts.max_think_tokens)
        # Counted from the closing token itself, so max_answer_tokens=0 stops right at ``</think>``.
        answer_out = self.closed & (self.n_answer >= opts.max_answer_tokens)
        budget = sampling & ~is_eos & (think_out | answer_out | (step + 1 >= self.max_new))
        self.n_kept = torch.where(sampling & ~is_eos, step + 1, self.n_kept)
        self.reason = torch.where(is_eos, 1, torch.where(budget, torch.where(answer_out, 3, 2), self.reason))
        return is_eos, is_eos | budget

    def fed(self) -> None:
        """After a step: rows that just fed their embedding token are done."""
        self.state = torch.where(self.embedding, DONE, self.state)

    def n_generated(self) -> torch.Tensor:
        """Sampled tokens per row: the kept ones plus a dropped EOS."""
        return self.n_kept + (self.reason == 1).long()

    def stop_reasons(self) -> list[str]:
        return [self.REASONS[r] for r in self.reason.tolist()]


def _graph_step(compiled):
    """Mark each call as a new CUDA-graph iteration: the previous step's outputs are consumed by then."""

    def step(*args):
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(*args)

    return step


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


def _row_generators(batch: dict, options: DecodeOptions) -> list[torch.Generator] | None:
    """With a seed, one generator per row seeded from (seed, the row's prompt and pixels): a row
    draws the same tokens whatever batch it lands in and wherever it sits."""
    if not (options.do_sample and options.seed is not None):
        return None
    device = batch["input_ids"].device
    generators = []
    for row in split_inputs(batch, 1):
        digest = hashlib.blake2b(str(options.seed).encode(), digest_size=8)
        digest.update(row["input_ids"][row["attention_mask"].bool()].cpu().numpy().tobytes())
        for key in ("pixel_values", "pixel_values_videos"):
            if row.get(key) is not None:
                digest.update(row[key].float().cpu().numpy().tobytes())
        seed = int.from_bytes(digest.digest(), "little") & (2**63 - 1)
        generators.append(torch.Generator(device=device).manual_seed(seed))
    return generators


def sampling_probs(logits: torch.Tensor, options: DecodeOptions) -> torch.Tensor:
    """[B, V] probabilities a sampled token is drawn from: temperature, then top-k, then top-p
    (the order of HF's logits warpers)."""
    scores = logits / options.temperature
    if options.top_k:
        kth = torch.topk(scores, min(options.top_k, scores.shape[-1]), dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if options.top_p < 1:
        sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
        cumulative = sorted_scores.softmax(-1).cumsum(-1)
        # Drop a token once the mass before it already reaches top_p (the top token always stays).
        drop_sorted = cumulative - sorted_scores.softmax(-1) >= options.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores.softmax(-1)


def _pick(logits: torch.Tensor, options: DecodeOptions, generators) -> torch.Tensor:
    """Greedy argmax, or a sample from ``sampling_probs`` (one generator per real row when seeded;
    padding rows past them take the argmax)."""
    if not options.do_sample:
        return logits.argmax(-1)
    probs = sampling_probs(logits, options)
    if generators is None:
        return torch.multinomial(probs, 1).squeeze(-1)
    tokens = probs.argmax(-1)
    for row, generator in enumerate(generators):
        tokens[row] = torch.multinomial(probs[row], 1, generator=generator)[0]
    return tokens
