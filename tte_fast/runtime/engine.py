"""Continuous batching for thinking: requests enter free slots as soon as slots free up.

``Engine`` keeps ``slots`` rows of one preallocated :class:`~tte_fast.runtime.slot_cache.SlotCache`. Each
step (1) admits waiting requests into free slots with one left-padded prefill whose keys and values
are copied into those slots, and embeds requests that do not think straight from that prefill;
(2) decodes one token for every busy slot (with ``compile=True``, for every slot: one shape-static
step the compiled graph replays). A slot that stops feeds its embedding token on its own cache rows,
its embedding is read there, and the slot is free for the next request on the following step.

With ``prefill_attention`` other than ``padded`` (``tte_fast.runtime.packed_prefill``: flash-attn varlen or
xformers on GPU, chosen automatically) the admitted prompts are packed into one row without padding
and each prompt's keys and values are copied from its span of that row. A padded admission whose
prompts begin alike (a system prompt, an instruction) prefills the shared tokens once
(``tte_fast.runtime.shared_prefix``; ``share_prefix=False`` turns it off).

Every slot has its own length, text position, M-RoPE delta, decode options and sampling generator;
its decode state is its row of one ``RowBook``, moved by the same stop rule as static batches
(``tte_fast.runtime.stop``), so a request's greedy trace and embedding do not depend on the other
requests, their order or the slot count. The engine reads the book's states to the host once per
step, not once per slot.

Submitting is thread-safe; ``run_until_done`` drives the steps in the calling thread and ``start``
in a background thread (serving). A cancelled future frees its slot at the next step.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from tte_fast.inputs import EmbedInput, InputError, load_input
from tte_fast.profiling import stage
from tte_fast.prompting.batching import normalize, unpadded
from tte_fast.prompting.chunking import split_inputs
from tte_fast.runtime import slot_attention
from tte_fast.runtime.background import BackgroundSteps
from tte_fast.runtime.options import DecodeOptions
from tte_fast.runtime.packed_prefill import (
    IMPLEMENTATION,
    choose_prefill_attention,
    pack_prompts,
    text_attention,
)
from tte_fast.runtime.positions import decode_position_ids, prefill_position_ids, uses_mrope
from tte_fast.runtime.runner import model_inputs
from tte_fast.runtime.sampling import (
    SeenTokens,
    draws_argmax,
    greedy_tokens,
    row_generators,
    sampling_probs,
)
from tte_fast.runtime.shared_prefix import shared_prefix_length, split_batch, vision_token_ids
from tte_fast.runtime.slot_attention import SLOT_ATTENTION
from tte_fast.runtime.slot_cache import SlotCache
from tte_fast.runtime.stop import RowBook, RowState, StopReason
from tte_fast.settings.checks import positive_int

# Busy share of the slots from which a compiled engine runs its compiled step over every slot.
COMPILED_SHARE = 0.75


@dataclass
class EngineResult:
    """One request's outcome: the embedding (float32 [D], unit norm; None for think-only requests),
    the trace (None without thinking) and the token ids the embedding was read at."""

    embedding: torch.Tensor | None
    trace: str | None
    sequence: torch.Tensor
    prompt_tokens: int
    generated_tokens: int
    stop_reason: str | None = None
    admitted_step: int = 0  # engine decode steps run before it entered a slot
    finished_step: int = 0  # engine decode steps run when it finished


@dataclass
class _Request:
    item: EmbedInput
    index: int
    side: str
    think: bool
    trace: str | None
    options: DecodeOptions
    embed: bool
    future: Future


class _Slot:
    """Host bookkeeping of one busy slot; its decode state is its row of the engine's ``RowBook``."""

    def __init__(self, request: _Request, prompt_ids: torch.Tensor, generator, admitted_step: int):
        self.request, self.prompt_ids, self.generator = request, prompt_ids, generator
        self.admitted_step = admitted_step


class Engine(BackgroundSteps):
    """Continuous batching over ``slots`` rows for one :class:`~tte_fast.model.UnifiedTTE`."""

    thread_name = "tte-fast-engine"

    def __init__(
        self,
        model,
        slots: int = 8,
        length: int = 256,
        admit_at: int | None = None,
        prefill_attention: str | None = None,
        share_prefix: bool = True,
    ):
        super().__init__()
        positive_int("slots", slots)
        self.model = model
        # Unless told otherwise, prefill as the model was loaded to (``from_pretrained(prefill_attention=)``).
        requested = model.prefill_attention if prefill_attention is None else prefill_attention
        self.prefill_attention = choose_prefill_attention(requested, model.hf_model)
        # Token ids a shared prefix stops before (None: no prefix sharing).
        self.prefix_stops = vision_token_ids(model.hf_model.config) if share_prefix else None
        # Compiled decode steps attend through the slot cache's 4-D bias, which flash-attn cannot
        # take; eager steps through the slot attention, in place.
        loaded = model.hf_model.config.get_text_config()._attn_implementation or ""
        self._compiled_attention = "sdpa" if loaded.startswith("flash") else None
        slot_attention.register()
        # Free slots that trigger an admission prefill while others decode (a quarter by default).
        self.admit_at = max(1, slots // 4) if admit_at is None else admit_at
        self.runner = model.runner
        self.cache = SlotCache.for_model(model.hf_model, slots, self._length(length))
        self.slots: list[_Slot | None] = [None] * slots
        # Every slot's decode state, moved by the same stop rule as static batches.
        self.book = RowBook(slots, 0, model.decode_options(), self.cache.positions.device)
        self._states = [RowState.DONE] * slots  # the book's states as last read to the host
        self.waiting: deque[_Request] = deque()
        self._queue_lock = threading.Lock()
        device = self.cache.positions.device
        self.text_pos = torch.zeros(slots, dtype=torch.long, device=device)
        self.deltas = torch.zeros(slots, 1, dtype=torch.long, device=device)
        self.mrope = uses_mrope(model.hf_model)
        self.seen: SeenTokens | None = None  # made at the first request with a repetition penalty
        self.steps = 0  # decode steps run
        self.prefills = 0  # admission prefills run
        self.prefill_tokens = 0  # prompt tokens (padding included) the admission prefills computed

    def _length(self, columns: int) -> int:
        """Slot length for ``columns``: the compiled decoder's power-of-two buckets, else multiples of 64."""
        return self.model.runner.cache_length(columns)

    # ------------------------------------------------------------------------------------ submit
    def submit(
        self,
        item: EmbedInput,
        options: DecodeOptions,
        *,
        think: bool = True,
        side: str = "query",
        trace: str | None = None,
        embed: bool = True,
        index: int = 0,
    ) -> Future:
        """Queue one checked input (``UnifiedTTE`` checks raw inputs); the future gets an
        ``EngineResult`` or the input's ``InputError``. ``index`` names it in errors. Embedding
        after thinking reads the last-token head (a TTE_u model embeds in static batches)."""
        if embed and think and trace is None and self.model.head is not None:
            raise ValueError(
                "the engine embeds with the last-token head; encode a TTE_u model with scheduler='static'"
            )
        future: Future = Future()
        with self._queue_lock:
            self.waiting.append(
                _Request(item, index, side, think and trace is None, trace, options, embed, future)
            )
        self._work.set()
        return future

    @property
    def busy(self) -> bool:
        return any(s is not None for s in self.slots) or bool(self.waiting)

    def run_until_done(self, on_finish=None) -> None:
        """Step until nothing waits or runs; ``on_finish(n)`` after each step that finished n
        requests. An error fails every request in flight or waiting, then propagates."""
        while self.busy:
            try:
                finished = self.step()
            except BaseException as error:
                self._fail_all(error)
                raise
            if on_finish is not None and finished:
                on_finish(finished)

    # -------------------------------------------------------------------------------------- step
    @torch.inference_mode()
    def step(self) -> int:
        """Admit waiting requests into free slots, then decode one token for every slot; the number
        of requests finished."""
        with self.model.lock:
            self._drop_cancelled()
            finished = self._admit()
            if any(s is not None for s in self.slots):
                with stage("decode"):
                    finished += self._decode()
            return finished

    def _drop_cancelled(self) -> None:
        for i, slot in enumerate(self.slots):
            if slot is not None and slot.request.future.cancelled():
                self._free(i)

    def _admit(self) -> int:
        """Take waiting requests in arrival order while slots are free (a request that does not
        think needs none: it is embedded by the admission prefill). Returns how many finished.

        Thinking requests wait until ``admit_at`` slots are free (or as many as are waiting, or
        nothing runs): one prefill of several prompts costs far less than several of one."""
        free = [i for i, s in enumerate(self.slots) if s is None]
        running = len(free) < len(self.slots)
        if running and len(free) < min(self.admit_at, len(self.waiting)):
            free = []  # not yet: non-thinking requests still pass below
        thinking: list[_Request] = []
        embed_only: list[_Request] = []
        with self._queue_lock:
            while self.waiting and (len(thinking) < len(free) or not self.waiting[0].think):
                request = self.waiting.popleft()
                if not request.future.cancelled():
                    (thinking if request.think else embed_only).append(request)
        taken = thinking + embed_only
        try:
            loaded = [r for r in taken if self._load(r)]
            done = self._embed_without_thinking([r for r in loaded if not r.think])
            done += self._prefill([r for r in loaded if r.think], free)
        except BaseException as error:  # they left the queue and hold no slot yet: settle them here
            for request in taken:
                settle(request.future, error=error)
            raise
        return done + len(taken) - len(loaded)

    @staticmethod
    def _load(request: _Request) -> bool:
        try:
            request.item = load_input(request.index, request.item)
            return True
        except InputError as error:
            settle(request.future, error=error)
            return False

    def _batch(self, requests: list[_Request], think: bool) -> tuple[dict | None, list[_Request]]:
        """The processor batch of ``requests``; a request the batch rejects (a prompt too long)
        fails alone and the rest are batched again. The batch names its inputs by position: the
        requests of different callers may share an ``index``."""
        while requests:
            try:
                batch = self.model.batch_inputs(
                    [r.item for r in requests],
                    range(len(requests)),
                    [r.side for r in requests],
                    think,
                    None if think else [r.trace for r in requests],
                    [r.options for r in requests],
                )
                return batch, requests
            except InputError as error:
                bad = requests[error.index] if 0 <= error.index < len(requests) else requests[0]
                message = str(error).split(": ", 1)[-1]
                settle(bad.future, error=type(error)(bad.index, message))
                requests = [r for r in requests if r is not bad]
        return None, []

    def _embed_without_thinking(self, requests: list[_Request]) -> int:
        batch, requests = self._batch(requests, think=False)
        if batch is None:
            return 0
        if self.prefill_attention == "padded" or self.model.head is not None:
            embeddings = self.model.embed_prefill(batch)
        else:  # packed like thinking admissions: one forward without a cache, read at each last token
            positions, _ = prefill_position_ids(self.model.hf_model, batch)
            with stage("prefill"):
                hidden, _ = self._prefill_forward(batch, positions, None)
            with stage("embed"):
                embeddings = normalize(hidden).float().cpu()
        for request, emb, ids in zip(requests, embeddings, unpadded(batch)):
            result = EngineResult(emb.float(), request.trace, ids.cpu(), len(ids), 0)
            settle(request.future, result)
        return len(requests)

    def _prefill(self, requests: list[_Request], free: list[int]) -> int:
        """Admit thinking requests into ``free`` slots; how many finished at their first token."""
        batch, requests = self._batch(requests, think=True)
        if batch is None:
            return 0  # every one of them failed (their futures hold the errors)
        lengths = batch["attention_mask"].sum(-1).tolist()
        need = max(n + r.options.max_new_tokens + 1 for n, r in zip(lengths, requests))
        if need > self.cache.length:
            self.cache.grow(self._length(max(need, 2 * self.cache.length)))
        positions, deltas = prefill_position_ids(self.model.hf_model, batch)
        prefill_cache = DynamicCache(config=self.model.hf_model.config)
        self.prefills += 1
        with stage("prefill"):
            hidden, spans = self._prefill_forward(batch, positions, prefill_cache)
            logits = self.runner.lm_head(hidden)
        admitted = []
        for row, (request, n) in enumerate(zip(requests, lengths)):
            slot_index = free[row]
            self.cache.write_prompt(slot_index, prefill_cache, *spans[row])
            self.text_pos[slot_index] = n
            if deltas is not None:
                self.deltas[slot_index] = deltas[row]
            prompt = batch["input_ids"][row, -n:].cpu()
            generator = _slot_generator(batch, row, request.options)
            self.slots[slot_index] = _Slot(request, prompt, generator, self.steps)
            embed_id = self.model.embed_token_id if request.embed else None
            self.book.start(slot_index, request.options, embed_id)
            self._start_seen(slot_index, batch, row, request.options, logits.shape[-1])
            admitted.append(slot_index)
        # Their first tokens, from the prefill's logits; a request may stop right here.
        return self._advance(self._sample(admitted, logits), only=admitted, hidden=hidden)

    def _prefill_forward(self, batch: dict, positions: torch.Tensor, cache) -> tuple[torch.Tensor, list]:
        """Prefill the prompts of ``batch`` onto ``cache`` (None: embed only): the hidden state of each
        prompt's last token ``[B, D]``, and where each prompt's keys and values sit in ``cache`` (row,
        columns)."""
        runner, backbone = self.runner, self.model.hf_model.base_model
        if self.prefill_attention == "padded":
            ids, mask = batch["input_ids"], batch["attention_mask"]
            shared = 0
            if cache is not None and self.prefix_stops is not None:
                shared = shared_prefix_length(ids, mask, self.prefix_stops)
            if shared:
                return self._prefill_shared(batch, positions, cache, shared)
            width = ids.shape[1]
            self.prefill_tokens += ids.numel()
            where = runner.cache_positions(0, width, ids.device)
            hidden = runner.forward(ids, positions, mask, cache, where, **model_inputs(backbone, batch))
            return hidden, [(row, slice(width - n, width)) for row, n in enumerate(mask.sum(-1).tolist())]
        packed = pack_prompts(batch, positions)
        ids = packed.inputs["input_ids"]
        self.prefill_tokens += ids.numel()
        with text_attention(self.model.hf_model, IMPLEMENTATION[self.prefill_attention]):
            states = runner.hidden_states(
                ids,
                packed.position_ids,
                None,
                cache,
                runner.cache_positions(0, ids.shape[1], ids.device),
                **model_inputs(backbone, packed.inputs),
            )
        return states[0, packed.last_tokens], [(0, packed.columns(i)) for i in range(len(packed.last_tokens))]

    def _prefill_shared(self, batch: dict, positions: torch.Tensor, cache, shared: int) -> tuple:
        """``_prefill_forward``'s padded prefill when every prompt begins with the same ``shared``
        tokens: those once, then each prompt's tail onto a copy of their cache per row."""
        runner, backbone = self.runner, self.model.hf_model.base_model
        ids, mask = batch["input_ids"], batch["attention_mask"]
        prefix_ids, prefix_positions, tail_ids, tail_mask, tail_positions, columns = split_batch(
            ids, mask, positions, shared
        )
        self.prefill_tokens += prefix_ids.numel() + tail_ids.numel()
        where = runner.cache_positions(0, shared, ids.device)
        runner.forward(prefix_ids, prefix_positions, mask.new_ones(prefix_ids.shape), cache, where)
        cache.batch_repeat_interleave(ids.shape[0])
        where = runner.cache_positions(shared, tail_ids.shape[1], ids.device)
        extra = model_inputs(backbone, batch)
        hidden = runner.forward(tail_ids, tail_positions, tail_mask, cache, where, **extra)
        return hidden, list(enumerate(columns))

    def _start_seen(self, slot_index: int, batch: dict, row: int, options: DecodeOptions, vocab: int):
        """Give the slot its prompt's tokens for the repetition penalty (from the first request that
        has one on: until then there is no mask and no work)."""
        penalty = options.repetition_penalty
        if self.seen is None and penalty == 1.0:
            return
        if self.seen is None:
            self.seen = SeenTokens(len(self.slots), vocab, self.cache.positions.device)
        ids, mask = batch["input_ids"][row : row + 1], batch["attention_mask"][row : row + 1]
        self.seen.start([slot_index], ids, mask, penalty)

    def _sample(self, slot_indices: list[int], logits: torch.Tensor) -> torch.Tensor:
        """A token for each slot in ``slot_indices`` (the rows of ``logits``), as a ``[slots]`` tensor:
        greedy slots by one argmax, sampling slots each from its own generator, after the slots'
        repetition penalties."""
        if self.seen is not None:
            logits = self.seen.apply(logits, slot_indices)
        tokens = torch.full(
            (len(self.slots),), self.model.pad_token_id, dtype=torch.long, device=logits.device
        )
        index = torch.tensor(slot_indices, dtype=torch.long, device=logits.device)
        tokens[index] = greedy_tokens(logits)
        for row, i in enumerate(slot_indices):
            options = self.slots[i].request.options
            if not draws_argmax(options):
                probs = sampling_probs(logits[row : row + 1], options)[0]
                tokens[i] = torch.multinomial(probs, 1, generator=self.slots[i].generator)[0]
        if self.seen is not None:
            self.seen.record(tokens, slot_indices)
        return tokens

    def _advance(
        self, tokens: torch.Tensor | None, only: list[int] | None = None, hidden=None, order=None
    ) -> int:
        """Move the book by the stop rule (``only``: just these slots took a token) and finish the
        requests that stopped: think-only ones, and those embedded at the last token they fed, from
        ``hidden`` (the step's states, row ``r`` for slot ``(order or only)[r]``); one host read of the
        states. How many finished."""
        mask = None
        if only is not None:
            mask = torch.zeros(len(self.slots), dtype=torch.bool, device=self.book.state.device)
            mask[only] = True
        self.book.advance(tokens, mask)
        states, read_now = torch.stack([self.book.state, self.book.read_now.long()]).tolist()
        self._states = [RowState(s) for s in states]
        row_of = {i: row for row, i in enumerate(order or only or ())}
        finished = 0
        for i in range(len(self.slots)) if only is None else only:
            slot = self.slots[i]
            if slot is None or self._states[i] != RowState.DONE:
                continue
            if not slot.request.embed:
                self._finish(i, slot, None)
            elif read_now[i]:
                self._finish(i, slot, hidden[row_of[i]])
            else:
                continue
            finished += 1
        return finished

    def _decode(self) -> int:
        """One token for every busy slot. Compiled steps always run all slots over the whole slot
        length (one fixed shape); eager steps run only the busy ones, over the columns they use,
        attending over the cache in place (``tte_fast.runtime.slot_attention``), so a lightly
        loaded engine pays neither for empty slots nor for columns nobody has written. A compiled
        engine steps eagerly while fewer than ``COMPILED_SHARE`` of its slots are busy (a run's tail),
        where the busy rows alone cost less than the compiled step over every slot."""
        model, runner = self.model, self.runner
        device = self.cache.positions.device
        busy = [i for i, s in enumerate(self.slots) if s is not None]
        compiled = runner.compiled and len(busy) >= COMPILED_SHARE * len(self.slots)
        rows = None if compiled or len(busy) == len(self.slots) else busy
        self.cache.select(rows, windowed=not compiled)
        order = list(range(len(self.slots))) if rows is None else rows
        index = None if rows is None else torch.tensor(rows, device=device)
        tokens = (self.book.next_feed if index is None else self.book.next_feed[index]).view(len(order), 1)
        text_pos = self.text_pos if index is None else self.text_pos[index]
        deltas = None if not self.mrope else (self.deltas if index is None else self.deltas[index])
        positions = decode_position_ids(text_pos, deltas)
        bias = self.cache.attention_bias(next(model.hf_model.parameters()).dtype)
        alive = [i for i in busy if self._states[i] == RowState.ALIVE]
        if compiled:
            runner.shapes.record((len(self.slots), self.cache.length))
        attention = self._compiled_attention if compiled else SLOT_ATTENTION
        try:
            with stage("decode_step"), text_attention(model.hf_model, attention):
                if alive:
                    step = runner.decode_step if runner.compiled and not compiled else runner.step
                    hidden, logits = step(tokens, positions, bias, self.cache, None)
                else:
                    hidden, logits = runner.decode_hidden(tokens, positions, bias, self.cache, None), None
        finally:
            self.cache.select(None)
        self.steps += 1
        advanced = torch.zeros(len(self.slots), dtype=torch.long, device=device)
        advanced[busy] = 1
        self.cache.advance(busy)
        self.text_pos += advanced
        finished = 0
        for row, i in enumerate(order):
            if self.slots[i] is not None and self._states[i] == RowState.EMBED:
                self._finish(i, self.slots[i], hidden[row])
                finished += 1
        self.book.fed()
        row_of = {i: row for row, i in enumerate(order)}
        picked = [row_of[i] for i in alive]
        if logits is not None and picked != list(range(len(order))):
            logits = logits[picked]  # a copy of the rows that sample, only when some do not
        sampled = None if logits is None else self._sample(alive, logits)
        return finished + self._advance(sampled, hidden=hidden, order=order)

    def _finish(self, index: int, slot: _Slot, hidden: torch.Tensor | None) -> None:
        """Resolve a slot's request from its row of the book (and its embedding's hidden state), and
        free the slot."""
        book = self.book
        n_kept, n_generated, reason, last, n_embedded = torch.stack(
            [
                book.n_kept[index],
                book.n_generated()[index],
                book.reason[index],
                book.tail[index],
                book.embedded_length()[index],
            ]
        ).tolist()
        kept = book.tokens[index, :n_kept].cpu().to(slot.prompt_ids.dtype)
        tail = [] if hidden is None or last < 0 else [last]
        inside = kept if hidden is None else kept[:n_embedded]
        sequence = torch.cat([slot.prompt_ids, inside, torch.tensor(tail, dtype=kept.dtype)])
        embedding = None
        if hidden is not None:
            with stage("embed"):
                embedding = normalize(hidden[None])[0].float().cpu()
        result = EngineResult(
            embedding,
            self.model.decode_traces([kept])[0],
            sequence,
            len(slot.prompt_ids),
            n_generated,
            StopReason(reason).label,
            slot.admitted_step,
            self.steps,
        )
        settle(slot.request.future, result)
        self._free(index)

    def _free(self, index: int) -> None:
        self.slots[index] = None
        self.book.release(index)
        self._states[index] = RowState.DONE

    @torch.inference_mode()  # the book's tensors are inference tensors (made inside steps)
    def _fail_all(self, error: BaseException) -> None:
        with self._queue_lock:
            waiting, self.waiting = list(self.waiting), deque()
        requests = [s.request for s in self.slots if s is not None] + waiting
        for i in range(len(self.slots)):
            self._free(i)
        for request in requests:
            settle(request.future, error=error)


def settle(future: Future, result=None, error: BaseException | None = None) -> None:
    """Settle a request's future unless its caller cancelled it meanwhile (futures stay pending
    while they run, so ``future.cancel()`` works until the result is in)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


def _slot_generator(batch: dict, row: int, options: DecodeOptions):
    """The row's sampling generator, seeded from (seed, prompt, pixels) as in static decoding; None
    without a seed (the global generator then draws)."""
    if not (options.do_sample and options.seed is not None):
        return None
    return row_generators(split_inputs(batch, 1)[row], options)[0]


def run_requests(
    engine: Engine, items: list, order: list[int], options, *, side, embed, on_error, errors, bar
):
    """Submit ``items[i]`` for ``i`` in ``order`` and step until all finish: {index: EngineResult}.
    Failed inputs go to ``errors`` (``on_error="skip"``) or the lowest failing index is raised."""
    futures = {i: engine.submit(items[i], options, side=side, embed=embed, index=i) for i in order}
    engine.run_until_done(on_finish=bar.update)
    results, failed = {}, {}
    for i, future in futures.items():
        error = future.exception()
        if error is None:
            results[i] = future.result()
        elif isinstance(error, InputError):
            failed[i] = error
        else:
            raise error
    if failed and on_error == "raise":
        raise failed[min(failed)]
    errors.update({i: str(e) for i, e in failed.items()})
    return results
