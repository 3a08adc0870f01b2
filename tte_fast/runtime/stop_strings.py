"""Stop strings matched on the text of generated tokens, one table lookup per row and step.

HF's ``stop_strings`` count a string at the token whose text completes it, whatever tokens spell it,
even when it ends inside a token. The strings' bytes make one Aho-Corasick automaton; running it over
the whole vocabulary once per tokenizer gives a ``[states, vocab + 1]`` table (the state after each
token, and which strings ended inside it), so the decode step advances every row's match state by a
lookup on the device. Token text comes from HF-style token bytes (:func:`token_bytes`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import InitVar, dataclass

import numpy as np
import torch

# What a string that ends inside a token does: the low bits of a StopStrings table entry.
CLOSES, STOPS = 1, 2
KIND_BITS = 2
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
    table[:, order] = (state << KIND_BITS | hit).to(torch.int32)
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
