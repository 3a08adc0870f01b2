"""Continuous batching for thinking: requests enter free slots as soon as slots free up.

``Engine`` keeps ``slots`` rows of one preallocated :class:`~tte_fast.slot_cache.SlotCache`. Each
step (1) admits waiting requests into free slots with one left-padded prefill whose keys and values
are copied into those slots, and embeds requests that do not think straight from that prefill;
(2) decodes one token for every busy slot (with ``compile=True``, for every slot: one shape-static
step the compiled graph replays). A slot that stops feeds its embedding token on its own cache rows,
its embedding is read there, and the slot is free for the next request on the following step.

With ``prefill_attention`` other than ``padded`` (``tte_fast.packed_prefill``: flash-attn varlen or
xformers on GPU, chosen automatically) the admitted prompts are packed into one row without padding
and each prompt's keys and values are copied from its span of that row.

Every slot has its own length, text position, M-RoPE delta, decode options and sampling generator,
and stops by the same rules as the static decoder (``tte_fast.generate``), so a request's greedy
trace and embedding do not depend on the other requests, their order or the slot count.

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

from tte_fast.batching import normalize, unpadded
from tte_fast.chunking import split_inputs
from tte_fast.generate import (
    DecodeOptions,
    _row_generators,
    decode_position_ids,
    model_inputs,
    prefill_position_ids,
    sampling_probs,
    uses_mrope,
)
from tte_fast.inputs import EmbedInput, InputError, load_input
from tte_fast.packed_prefill import IMPLEMENTATION, choose_prefill_attention, pack_prompts, text_attention
from tte_fast.profiling import stage
from tte_fast.slot_cache import SlotCache

ALIVE, KEEP_LAST, EMBED = "alive", "keep_last", "embed"


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
    """Host bookkeeping of one busy slot, mirroring the static decoder's row states."""

    def __init__(self, request: _Request, prompt_ids: torch.Tensor, generator, admitted_step: int):
        self.request, self.prompt_ids, self.generator = request, prompt_ids, generator
        self.admitted_step = admitted_step
        self.generated: list[int] = []  # every sampled token (a final EOS included)
        self.kept: list[int] = []
        self.closed, self.n_answer = False, 0
        self.state, self.reason, self.feed = ALIVE, None, None

    def take(self, token: int, embed_id: int) -> bool:
        """Record a sampled token; return True when the request is finished without another feed."""
        opts, step = self.request.options, len(self.generated)
        self.generated.append(token)
        if token in opts.eos_token_ids:
            self.reason = "eos"
            self.state, self.feed = EMBED, embed_id
            return not self.request.embed
        was_closed = self.closed
        self.closed |= opts.think_end_token_id is not None and token == opts.think_end_token_id
        self.n_answer += int(was_closed)
        self.kept.append(token)
        think_out = not self.closed and step + 1 >= opts.max_think_tokens
        # Counted from the closing token itself, so max_answer_tokens=0 stops right at ``</think>``.
        answer_out = self.closed and self.n_answer >= opts.max_answer_tokens
        self.feed = token
        if think_out or answer_out or step + 1 >= opts.max_new_tokens:
            self.reason = "answer_budget" if answer_out else "think_budget"
            self.state = KEEP_LAST
            return not self.request.embed
        return False


class Engine:
    """Continuous batching over ``slots`` rows for one :class:`~tte_fast.model.UnifiedTTE`."""

    def __init__(
        self,
        model,
        slots: int = 8,
        length: int = 256,
        admit_at: int | None = None,
        prefill_attention: str | None = None,
    ):
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ValueError(f"slots must be a positive int, got {slots!r}")
        self.model = model
        # Unless told otherwise, prefill as the model was loaded to (``from_pretrained(prefill_attention=)``).
        requested = model.prefill_attention if prefill_attention is None else prefill_attention
        self.prefill_attention = choose_prefill_attention(requested, model.hf_model)
        # Decode steps attend through the slot cache's 4-D bias, which flash-attn cannot take.
        loaded = model.hf_model.config.get_text_config()._attn_implementation or ""
        self._decode_attention = "sdpa" if loaded.startswith("flash") else None
        # Free slots that trigger an admission prefill while others decode (a quarter by default).
        self.admit_at = max(1, slots // 4) if admit_at is None else admit_at
        self.cache = SlotCache.for_model(model.hf_model, slots, self._length(length))
        self.slots: list[_Slot | None] = [None] * slots
        self.waiting: deque[_Request] = deque()
        self._queue_lock = threading.Lock()
        device = self.cache.positions.device
        self.text_pos = torch.zeros(slots, dtype=torch.long, device=device)
        self.deltas = torch.zeros(slots, 1, dtype=torch.long, device=device)
        self.mrope = uses_mrope(model.hf_model)
        self.steps = 0  # decode steps run
        self.prefills = 0  # admission prefills run
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._work = threading.Event()

    def _length(self, columns: int) -> int:
        """Slot length for ``columns``: the compiled decoder's power-of-two buckets, else multiples of 64."""
        return self.model.decoder.cache_length(columns, padded=self.model.decoder.compiled)

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

    def start(self) -> None:
        """Run steps in a background thread until ``close`` (for serving)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="tte-fast-engine", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._work.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.busy:
                self._work.wait(0.05)
                self._work.clear()
                continue
            try:
                self.step()
            except Exception as error:  # fail the requests in flight, keep serving the next ones
                self._fail_all(error)

    # -------------------------------------------------------------------------------------- step
    @torch.inference_mode()
    def step(self) -> int:
        """Admit waiting requests into free slots, then decode one token for every slot; the number
        of requests finished."""
        with self.model._lock:
            self._drop_cancelled()
            finished = self._admit()
            if any(s is not None for s in self.slots):
                with stage("decode"):
                    finished += self._decode()
            return finished

    def _drop_cancelled(self) -> None:
        for i, slot in enumerate(self.slots):
            if slot is not None and slot.request.future.cancelled():
                self.slots[i] = None

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
            self._prefill([r for r in loaded if r.think], free)
        except BaseException as error:  # they left the queue and hold no slot yet: settle them here
            for request in taken:
                _resolve(request.future, error=error)
            raise
        return done + len(taken) - len(loaded)

    @staticmethod
    def _load(request: _Request) -> bool:
        try:
            request.item = load_input(request.index, request.item)
            return True
        except InputError as error:
            _resolve(request.future, error=error)
            return False

    def _batch(self, requests: list[_Request], think: bool) -> tuple[dict | None, list[_Request]]:
        """The processor batch of ``requests``; a request the batch rejects (a prompt too long)
        fails alone and the rest are batched again."""
        while requests:
            try:
                batch = self.model._batch(
                    [r.item for r in requests],
                    [r.index for r in requests],
                    [r.side for r in requests],
                    think,
                    None if think else {r.index: r.trace for r in requests},
                    [r.options for r in requests],
                )
                return batch, requests
            except InputError as error:
                bad = [r for r in requests if r.index == error.index][:1] or requests[:1]
                _resolve(bad[0].future, error=error)
                requests = [r for r in requests if r is not bad[0]]
        return None, []

    def _embed_without_thinking(self, requests: list[_Request]) -> int:
        batch, requests = self._batch(requests, think=False)
        if batch is None:
            return 0
        if self.prefill_attention == "padded" or self.model.head is not None:
            embeddings = self.model._embed_prefill(batch)
        else:  # packed like thinking admissions: one forward without a cache, read at each last token
            positions, _ = prefill_position_ids(self.model.hf_model, batch)
            with stage("prefill"):
                hidden, _ = self._prefill_forward(batch, positions, None)
            with stage("embed"):
                embeddings = normalize(hidden).float().cpu()
        for request, emb, ids in zip(requests, embeddings, unpadded(batch)):
            result = EngineResult(emb.float(), request.trace, ids.cpu(), len(ids), 0)
            _resolve(request.future, result)
        return len(requests)

    def _prefill(self, requests: list[_Request], free: list[int]) -> None:
        batch, requests = self._batch(requests, think=True)
        if batch is None:
            return  # every one of them failed (their futures hold the errors)
        lengths = batch["attention_mask"].sum(-1).tolist()
        need = max(n + r.options.max_new_tokens + 1 for n, r in zip(lengths, requests))
        if need > self.cache.length:
            self.cache.grow(self._length(max(need, 2 * self.cache.length)))
        positions, deltas = prefill_position_ids(self.model.hf_model, batch)
        prefill_cache = DynamicCache(config=self.model.hf_model.config)
        self.prefills += 1
        with stage("prefill"):
            hidden, spans = self._prefill_forward(batch, positions, prefill_cache)
            logits = self.model.decoder.lm_head(hidden).float()
        for row, (request, n) in enumerate(zip(requests, lengths)):
            slot_index = free[row]
            self.cache.write_prompt(slot_index, prefill_cache, *spans[row])
            self.text_pos[slot_index] = n
            if deltas is not None:
                self.deltas[slot_index] = deltas[row]
            prompt = batch["input_ids"][row, -n:].cpu()
            generator = _slot_generator(batch, row, request.options)
            slot = _Slot(request, prompt, generator, self.steps)
            self.slots[slot_index] = slot
            self._sample(slot, logits[row])
            if request.future.done():  # think-only request stopped at its first token
                self.slots[slot_index] = None

    def _prefill_forward(self, batch: dict, positions: torch.Tensor, cache) -> tuple[torch.Tensor, list]:
        """Prefill the prompts of ``batch`` onto ``cache`` (None: embed only): the hidden state of each
        prompt's last token ``[B, D]``, and where each prompt's keys and values sit in ``cache`` (row,
        columns)."""
        decoder, backbone = self.model.decoder, self.model.hf_model.base_model
        if self.prefill_attention == "padded":
            ids, mask = batch["input_ids"], batch["attention_mask"]
            width = ids.shape[1]
            where = decoder.cache_positions(0, width, ids.device)
            hidden = decoder.forward(ids, positions, mask, cache, where, **model_inputs(backbone, batch))
            return hidden, [(row, slice(width - n, width)) for row, n in enumerate(mask.sum(-1).tolist())]
        packed = pack_prompts(batch, positions)
        ids = packed.inputs["input_ids"]
        with text_attention(self.model.hf_model, IMPLEMENTATION[self.prefill_attention]):
            states = decoder.hidden_states(
                ids,
                packed.position_ids,
                None,
                cache,
                decoder.cache_positions(0, ids.shape[1], ids.device),
                **model_inputs(backbone, packed.inputs),
            )
        return states[0, packed.last_tokens], [(0, packed.columns(i)) for i in range(len(packed.last_tokens))]

    def _sample(self, slot: _Slot, logits: torch.Tensor) -> None:
        options = slot.request.options
        if options.do_sample:
            probs = sampling_probs(logits[None], options)[0]
            token = int(torch.multinomial(probs, 1, generator=slot.generator)[0])
        else:
            token = int(logits.argmax())
        if slot.take(token, self.model.embed_token_id):
            self._finish_think_only(slot)

    def _decode(self) -> int:
        """One token for every busy slot. Compiled steps always run all slots (one fixed shape); eager
        steps run only the busy ones, so a lightly loaded engine does not pay for empty slots."""
        model = self.model
        device = self.cache.positions.device
        busy = [i for i, s in enumerate(self.slots) if s is not None]
        rows = None if model.decoder.compiled or len(busy) == len(self.slots) else busy
        self.cache.select(rows)
        order = list(range(len(self.slots))) if rows is None else rows
        feed = [self.slots[i].feed if self.slots[i] is not None else model.pad_token_id for i in order]
        tokens = torch.tensor(feed, dtype=torch.long, device=device).view(len(order), 1)
        index = None if rows is None else torch.tensor(rows, device=device)
        text_pos = self.text_pos if index is None else self.text_pos[index]
        deltas = None if not self.mrope else (self.deltas if index is None else self.deltas[index])
        positions = decode_position_ids(text_pos, deltas)
        bias = self.cache.attention_bias(next(model.hf_model.parameters()).dtype)
        needs_logits = any(self.slots[i].state == ALIVE for i in busy)
        if model.decoder.compiled:
            model.decoder.shapes.record((len(self.slots), self.cache.length))
        try:
            with stage("decode_step"), text_attention(model.hf_model, self._decode_attention):
                if needs_logits:
                    hidden, logits = model.decoder.step(tokens, positions, bias, self.cache, None)
                else:
                    hidden, logits = model.decoder.forward(tokens, positions, bias, self.cache, None), None
        finally:
            self.cache.select(None)
        self.steps += 1
        advanced = torch.zeros(len(self.slots), dtype=torch.long, device=device)
        advanced[busy] = 1
        self.cache.positions += advanced
        self.text_pos += advanced
        finished = 0
        for row, i in enumerate(order):
            slot = self.slots[i]
            if slot is None:
                continue
            if slot.state == EMBED:
                self._finish_embedded(i, slot, hidden[row])
                finished += 1
            elif slot.state == KEEP_LAST:
                slot.state, slot.feed = EMBED, model.embed_token_id
            else:
                self._sample(slot, logits[row])
                if slot.request.future.done():
                    self.slots[i] = None
                    finished += 1
        return finished

    def _finish_embedded(self, index: int, slot: _Slot, hidden: torch.Tensor) -> None:
        with stage("embed"):
            embedding = normalize(hidden[None])[0].float().cpu()
        kept = torch.tensor(slot.kept, dtype=slot.prompt_ids.dtype)
        sequence = torch.cat([slot.prompt_ids, kept, torch.tensor([self.model.embed_token_id])])
        result = EngineResult(
            embedding,
            self.model._traces([kept])[0],
            sequence,
            len(slot.prompt_ids),
            len(slot.generated),
            slot.reason,
            slot.admitted_step,
            self.steps,
        )
        _resolve(slot.request.future, result)
        self.slots[index] = None

    def _finish_think_only(self, slot: _Slot) -> None:
        kept = torch.tensor(slot.kept, dtype=slot.prompt_ids.dtype)
        sequence = torch.cat([slot.prompt_ids, kept])
        trace = self.model._traces([kept])[0]
        n_prompt, n_generated = len(slot.prompt_ids), len(slot.generated)
        result = EngineResult(
            None, trace, sequence, n_prompt, n_generated, slot.reason, slot.admitted_step, self.steps
        )
        _resolve(slot.request.future, result)

    def _fail_all(self, error: BaseException) -> None:
        with self._queue_lock:
            waiting, self.waiting = list(self.waiting), deque()
        requests = [s.request for s in self.slots if s is not None] + waiting
        self.slots = [None] * len(self.slots)
        for request in requests:
            _resolve(request.future, error=error)


def _resolve(future: Future, result=None, error: BaseException | None = None) -> None:
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
    return _row_generators(split_inputs(batch, 1)[row], options)[0]


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
