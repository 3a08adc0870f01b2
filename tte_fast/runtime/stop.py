"""The one stop rule of both schedulers: when a row stops, what it feeds next, why it stopped.

A row samples while ``ALIVE``. It stops when it samples an EOS token (the token is dropped), when the
text of its generated tokens completes a stop string (its tokens are kept), when it has sampled
``max_think_tokens`` tokens without closing ``</think>``, when it has sampled ``max_answer_tokens``
tokens after closing it (counted from the closing token itself, so 0 stops right at ``</think>``),
or at ``max_new_tokens``. A row that embeds then feeds its embedding token on its own cache: at once
after an EOS (``EMBED``), or after feeding its last sampled token otherwise (``KEEP_LAST``, then
``EMBED``). A row that does not embed is ``DONE`` at once.

``</think>`` closes on a token id compare where it is one token (Qwen3); where it is several tokens
(Qwen2-VL, Qwen2.5-VL) it is matched on the generated text, as stop strings are (:class:`StopStrings`).

:class:`RowBook` holds these states for a batch of rows on the device and moves them all in a few
tensor ops, without a host round trip per row: the static decoder keeps one book per batch, the
continuous engine one row per slot. The enums are the tensor values.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import InitVar, dataclass
from enum import IntEnum

import numpy as np
import torch

from tte_fast.runtime.options import DecodeOptions


class RowState(IntEnum):
    ALIVE = 0  # samples a token each step
    KEEP_LAST = 1  # out of budget: feeds its last sampled token, then its embedding token
    EMBED = 2  # feeds its embedding token this step; its hidden state there is its embedding
    DONE = 3  # feeds nothing (finished, a free slot, or a row that only pads a compiled batch)


class StopReason(IntEnum):
    NONE = 0  # never sampled (a padding row), or still running
    EOS = 1
    THINK_BUDGET = 2
    ANSWER_BUDGET = 3
    STOP_STRING = 4

    @property
    def label(self) -> str:
        return "padding" if self is StopReason.NONE else self.name.lower()


# What a string that ends inside a token does: the low bits of a StopStrings table entry.
CLOSES, STOPS = 1, 2
_KIND_BITS = 2
_RESET = 256  # the automaton's symbol for a token of unknown text: every match breaks there


@dataclass(frozen=True, eq=False)
class StopStrings:
    """Strings matched on the text of a row's generated tokens, as HF's ``stop_strings`` are: a string
    counts at the token whose text completes it, whatever tokens spell it, even when it ends inside
    that token (the prompt is not part of the text). ``think_end`` closes the think section (a
    ``</think>`` of several tokens); each of ``strings`` stops the row as an EOS does, its tokens kept.
    ``vocab[id]`` is a token's bytes (None: unknown, matches nothing).

    One Aho-Corasick automaton over the strings' bytes, stepped a whole token at a time:
    ``table[state, token]``, precomputed once over the vocabulary, is the state after the token's
    bytes and which strings ended in them. A step is one gather per row on the device, exact for any
    overlap, with no token tail to decode or compare. ``repr`` and ``dataclasses.asdict`` show the
    strings alone (the table is no field); equality is identity: one object per tokenizer."""

    think_end: str | None
    strings: tuple[str, ...]
    vocab: InitVar[Sequence[bytes | None]]

    def __post_init__(self, vocab):
        kinds = ([CLOSES] if self.think_end is not None else []) + [STOPS] * len(self.strings)
        texts = ([self.think_end] if self.think_end is not None else []) + list(self.strings)
        if not all(isinstance(t, str) and t for t in texts):
            raise ValueError(f"stop strings must be non-empty strings, got {texts!r}")
        delta, ends = _automaton([t.encode() for t in texts], kinds)
        object.__setattr__(self, "_tables", {"cpu": _token_table(delta, ends, vocab)})

    @classmethod
    def of(cls, tokenizer, think_end: str | None = None, strings: Sequence[str] = ()) -> StopStrings:
        """The strings over ``tokenizer``'s vocabulary (one pass over it: build once per tokenizer)."""
        return cls(think_end, tuple(strings), token_bytes(tokenizer))

    def table(self, device) -> torch.Tensor:
        """``[states, vocab + 1]`` int32, next state << 2 | kinds ended; the last column stands for
        every id past the vocabulary (an LM head wider than the tokenizer). Kept per device."""
        key = str(torch.device(device))
        if key not in self._tables:
            self._tables[key] = self._tables["cpu"].to(device)
        return self._tables[key]


def _automaton(patterns: list[bytes], kinds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Aho-Corasick over bytes: next state ``[states, 257]`` (per byte, and ``_RESET``) and the
    kinds of pattern ending at each state ``[states]`` (through failure links)."""
    children: list[dict[int, int]] = [{}]
    ends = [0]
    for text, kind in zip(patterns, kinds):
        node = 0
        for byte in text:
            if byte not in children[node]:
                children[node][byte] = len(children)
                children.append({})
                ends.append(0)
            node = children[node][byte]
        ends[node] |= kind
    delta = [[0] * (_RESET + 1) for _ in children]
    fail = [0] * len(children)
    queue = deque([0])
    while queue:  # breadth first: a state's failure link is settled before the state
        node = queue.popleft()
        ends[node] |= ends[fail[node]]
        if node:
            delta[node] = list(delta[fail[node]])
        for byte, child in children[node].items():
            fail[child] = delta[fail[node]][byte] if node else 0
            delta[node][byte] = child
            queue.append(child)
    return torch.tensor(delta), torch.tensor(ends)


def _token_table(delta: torch.Tensor, ends: torch.Tensor, vocab: Sequence[bytes | None]) -> torch.Tensor:
    """Run the automaton over every token's bytes from every state at once. Tokens go longest
    first, so the tokens still running at byte k are the first ``running[k]`` columns."""
    texts = [b"\0" if t is None else t for t in vocab] + [b"\0"]  # the last: ids past the vocabulary
    lengths = torch.tensor([len(t) for t in texts])
    flat = torch.from_numpy(np.frombuffer(b"".join(texts) + b"\0", dtype=np.uint8).astype(np.int64))
    starts = lengths.cumsum(0) - lengths
    unknown = torch.tensor([i for i, t in enumerate(vocab) if t is None] + [len(vocab)])
    flat[starts[unknown]] = _RESET
    order = torch.argsort(lengths, descending=True, stable=True)
    lengths, starts = lengths[order], starts[order]
    running = [int(n) for n in (lengths.view(1, -1) > torch.arange(int(lengths[0])).view(-1, 1)).sum(1)]
    states, symbols = delta.shape
    state = torch.arange(states).view(-1, 1).repeat(1, len(texts))
    hit = torch.zeros_like(state)
    for k, n in enumerate(running):
        step = delta.view(-1)[state[:, :n] * symbols + flat[starts[:n] + k]]
        state[:, :n] = step
        hit[:, :n] |= ends[step]
    table = torch.empty_like(state, dtype=torch.int32)
    table[:, order] = (state << _KIND_BITS | hit).to(torch.int32)
    return table


def token_bytes(tokenizer) -> list[bytes | None]:
    """Each token id's bytes in generated text, read as HF's ``StopStringCriteria`` reads them:
    byte-level tokens through the byte decoder, ``<0xNN>`` byte-fallback tokens as that byte, any
    other token as the text it adds after a fixed prefix (alone where the prefix does not survive)."""
    vocab = tokenizer.get_vocab()
    decoder = _decoder_json(tokenizer)
    byte_of = _byte_decoder() if '"ByteLevel"' in decoder else {}
    fallback = '"ByteFallback"' in decoder
    prefix = "abcdef"
    base = tokenizer.convert_ids_to_tokens(tokenizer(prefix, add_special_tokens=False)["input_ids"])
    out: list[bytes | None] = [None] * (max(vocab.values(), default=-1) + 1)
    for token, i in vocab.items():
        if byte_of and all(c in byte_of for c in token):
            out[i] = bytes(byte_of[c] for c in token)
        elif fallback and len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            out[i] = bytes([int(token[3:5], 16)])
        else:
            text = tokenizer.convert_tokens_to_string(base + [token])
            at = text.find(prefix)
            text = text[at + len(prefix) :] if at >= 0 else tokenizer.convert_tokens_to_string([token])
            out[i] = text.encode()
    return out


def _decoder_json(tokenizer) -> str:
    """The backend decoder's JSON and class name: which byte scheme its tokens are written in."""
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    state = getattr(decoder, "__getstate__", lambda: b"")() or b""
    text = state.decode() if isinstance(state, bytes) else str(state)
    return text + (f'"{type(decoder).__name__}"' if decoder is not None else "")


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character -> byte (the inverse of ``bytes_to_unicode``)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    chars, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in chars:
            chars[b], extra = chr(256 + extra), extra + 1
    return {c: b for b, c in chars.items()}


class RowBook:
    """Per-row decode state of ``rows`` rows, each with its own budgets, on ``device``.

    ``tokens[r, :n_kept[r]]`` are the row's kept tokens; ``n_generated()`` adds a dropped EOS.
    ``next_feed`` is what each row feeds at the next step (meaningful where ``feeds``)."""

    def __init__(self, rows: int, width: int, options: DecodeOptions, device):
        self.eos_token_ids, self.think_end_token_id = options.eos_token_ids, options.think_end_token_id
        self.stop_strings, self.pad_token_id = options.stop_strings, options.pad_token_id
        zeros = torch.zeros(rows, dtype=torch.long, device=device)
        self.state = torch.full((rows,), RowState.DONE, dtype=torch.long, device=device)
        self.tokens = torch.full((rows, width), options.pad_token_id, dtype=torch.long, device=device)
        self.n_sampled, self.n_kept, self.n_answer, self.reason = (zeros.clone() for _ in range(4))
        self.max_think, self.max_answer, self.max_new = (zeros.clone() for _ in range(3))
        self.closed = torch.zeros(rows, dtype=torch.bool, device=device)
        self.embeds = torch.zeros(rows, dtype=torch.bool, device=device)
        self.next_feed = zeros.clone()
        self.eos_ids = torch.tensor(options.eos_token_ids or [-1], dtype=torch.long, device=device)
        self.embed_id = torch.tensor(options.pad_token_id, device=device)
        # Text matching (StopStrings): each row's automaton state, and the table it steps through.
        self.text_state = zeros.clone()
        self.text_table = None if self.stop_strings is None else self.stop_strings.table(device)

    # ---------------------------------------------------------------------------------- rows
    def start(self, rows, options: DecodeOptions, embed_token_id: int | None) -> None:
        """Rows ``rows`` (an index, a list or a slice) begin a request with ``options``; they embed at
        ``embed_token_id`` (None: they stop without embedding)."""
        mine = (self.eos_token_ids, self.think_end_token_id, self.stop_strings)
        if (options.eos_token_ids, options.think_end_token_id, options.stop_strings) != mine:
            raise ValueError("every row of one book must stop on the same EOS, think end and stop strings")
        if options.max_new_tokens > self.tokens.shape[1]:
            self.widen(options.max_new_tokens)
        if embed_token_id is not None:
            self.embed_id.fill_(embed_token_id)
        self.state[rows] = RowState.ALIVE
        self.tokens[rows] = self.pad_token_id
        for counter in (self.n_sampled, self.n_kept, self.n_answer, self.reason, self.text_state):
            counter[rows] = 0
        self.closed[rows] = False
        self.embeds[rows] = embed_token_id is not None
        self.max_think[rows] = options.max_think_tokens
        self.max_answer[rows] = options.max_answer_tokens
        self.max_new[rows] = options.max_new_tokens

    def widen(self, width: int) -> None:
        extra = torch.full(
            (self.tokens.shape[0], width - self.tokens.shape[1]), self.pad_token_id, dtype=torch.long
        )
        self.tokens = torch.cat([self.tokens, extra.to(self.tokens.device)], dim=1)

    def release(self, rows) -> None:
        self.state[rows] = RowState.DONE

    # ------------------------------------------------------------------------------ the rule
    def advance(self, token: torch.Tensor | None, only: torch.Tensor | None = None) -> None:
        """One step of the rule for every row: ``token [rows]`` holds a sampled token for each ``ALIVE``
        row (None: nothing was sampled); rows out of budget move on to feeding their embedding token.
        ``only`` (a bool mask) takes the tokens of those ``ALIVE`` rows alone and leaves every other
        row as it is (the engine's first token of newly admitted slots)."""
        alive = self.state == RowState.ALIVE
        if token is None:
            token, sampling = self.next_feed, torch.zeros_like(alive)
        else:
            sampling = alive if only is None else alive & only
        is_eos, stop = self._record(token, sampling)
        stopped = torch.where(
            self.embeds,
            torch.where(is_eos, RowState.EMBED, RowState.KEEP_LAST),
            torch.full_like(self.state, RowState.DONE),
        )
        # A row out of budget has fed its last token: its embedding token comes next.
        moved_on = torch.where(self.state == RowState.KEEP_LAST, RowState.EMBED, self.state)
        others = moved_on if only is None else self.state
        self.state = torch.where(sampling, torch.where(stop, stopped, RowState.ALIVE), others)
        feed = torch.where(sampling, token, self.next_feed)
        feed = torch.where(self.state == RowState.EMBED, self.embed_id, feed)
        self.next_feed = torch.where(self.state == RowState.DONE, self.pad_token_id, feed)

    def _record(self, token: torch.Tensor, sampling: torch.Tensor):
        """Store the sampled tokens; which rows hit EOS, which stop (EOS or a budget)."""
        column = self.n_sampled.clamp(max=self.tokens.shape[1] - 1).view(-1, 1)
        current = self.tokens.gather(1, column).view(-1)
        self.tokens.scatter_(1, column, torch.where(sampling, token, current).view(-1, 1))
        self.n_sampled += sampling.long()
        is_eos = sampling & torch.isin(token, self.eos_ids)
        closes, text_stop = self._match_text(token, sampling)
        was_closed = self.closed.clone()
        if self.think_end_token_id is not None:  # one token: a compare on the device
            closes = closes | (sampling & (token == self.think_end_token_id))
        self.closed |= closes
        self.n_answer += (sampling & was_closed).long()
        think_out = ~self.closed & (self.n_sampled >= self.max_think)
        answer_out = self.closed & (self.n_answer >= self.max_answer)
        text_stop = text_stop & ~is_eos
        budget = sampling & ~is_eos & (think_out | answer_out | (self.n_sampled >= self.max_new))
        self.n_kept = torch.where(sampling & ~is_eos, self.n_sampled, self.n_kept)
        reason = torch.where(answer_out, StopReason.ANSWER_BUDGET, StopReason.THINK_BUDGET)
        reason = torch.where(text_stop, StopReason.STOP_STRING, torch.where(budget, reason, self.reason))
        self.reason = torch.where(is_eos, StopReason.EOS, reason)
        return is_eos, is_eos | text_stop | budget

    def _match_text(self, token: torch.Tensor, sampling: torch.Tensor):
        """Step each sampling row's automaton by its token: which rows' text just completed the think
        end, which a stop string (no stop strings: neither, and no work)."""
        if self.text_table is None:
            return torch.zeros_like(sampling), torch.zeros_like(sampling)
        column = token.clamp(0, self.text_table.shape[1] - 1)
        entry = self.text_table[self.text_state, column].long()
        self.text_state = torch.where(sampling, entry >> _KIND_BITS, self.text_state)
        return sampling & (entry & CLOSES > 0), sampling & (entry & STOPS > 0)

    def fed(self) -> None:
        """After a step: rows that just fed their embedding token are done."""
        self.state = torch.where(self.state == RowState.EMBED, RowState.DONE, self.state)

    # ------------------------------------------------------------------------------- reading
    @property
    def sampling(self) -> torch.Tensor:
        """Rows that need logits: they sample at the next step."""
        return self.state == RowState.ALIVE

    @property
    def embedding(self) -> torch.Tensor:
        """Rows that feed their embedding token at the next step."""
        return self.state == RowState.EMBED

    @property
    def feeds(self) -> torch.Tensor:
        """Rows whose next token is part of their sequence."""
        return self.state != RowState.DONE

    def n_generated(self) -> torch.Tensor:
        """Sampled tokens per row: the kept ones plus a dropped EOS."""
        return self.n_kept + (self.reason == StopReason.EOS).long()

    def stop_reasons(self) -> list[str]:
        return [StopReason(r).label for r in self.reason.tolist()]
