"""The one stop rule of both schedulers: when a row stops, what it feeds next, why it stopped.

A row samples while ``ALIVE``. It stops when it samples an EOS token (the token is dropped), when the
text of its generated tokens completes a stop string (its tokens are kept), when it has sampled
``max_think_tokens`` tokens without closing ``</think>``, when it has sampled ``max_answer_tokens``
tokens after closing it (counted from the closing token itself, so 0 stops right at ``</think>``),
or at ``max_new_tokens``. A row that embeds then feeds its embedding token on its own cache: at once
after an EOS (``EMBED``; a model that generates its embedding token stops there, the token is an EOS),
or after feeding its last sampled token otherwise (``KEEP_LAST``, then ``EMBED``). That is the
fallback ``"force"``; a row that stops without sampling its embedding token may instead embed at its
last sampled token, fed as the one it embeds at (``"last_sampled"``, RGE's rule: ``EMBED`` with that
token, a dropped EOS included), or at the last token it has already fed, whose state the step that
sampled the stopping token computed (``"last_fed"``, UME-R1's rule: ``DONE`` at once, ``read_now``;
also where the embedding token is the last token the budget allows, which that rule never feeds).
A row that does not embed is ``DONE`` at once.

``</think>`` closes on a token id compare where it is one token (Qwen3); where it is several tokens
(Qwen2-VL, Qwen2.5-VL) it is matched on the generated text, as stop strings are
(``tte_fast.runtime.stop_strings``).

:class:`RowBook` holds these states for a batch of rows on the device and moves them all in a few
tensor ops, without a host round trip per row: the static decoder keeps one book per batch, the
continuous engine one row per slot. The enums are the tensor values.
"""

from __future__ import annotations

from enum import IntEnum

import torch

from tte_fast.runtime.options import EMBED_FALLBACKS, DecodeOptions
from tte_fast.runtime.stop_strings import CLOSES, KIND_BITS, STOPS

FORCE, LAST_SAMPLED, LAST_FED = range(len(EMBED_FALLBACKS))


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


class RowBook:
    """Per-row decode state of ``rows`` rows, each with its own budgets, on ``device``.

    ``tokens[r, :n_kept[r]]`` are the row's kept tokens; ``n_generated()`` adds a dropped EOS.
    ``next_feed`` is what each row feeds at the next step (meaningful where ``feeds``); ``tail`` is
    the token a row embeds at when it is not the last kept one (-1: it is, or the row embeds nowhere);
    ``read_now`` marks the rows whose embedding is the state the last step computed (``"last_fed"``),
    and ``unfed_last`` those whose last kept token is not part of the sequence embedded."""

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
        self.fallback = zeros.clone()  # index into EMBED_FALLBACKS
        self.read_now = torch.zeros(rows, dtype=torch.bool, device=device)
        self.unfed_last = torch.zeros(rows, dtype=torch.bool, device=device)
        self.next_feed = zeros.clone()
        self.tail = torch.full((rows,), -1, dtype=torch.long, device=device)
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
        self.fallback[rows] = EMBED_FALLBACKS.index(options.embed_fallback)
        self.tail[rows] = -1
        self.read_now[rows] = False
        self.unfed_last[rows] = False
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
        is_eos, stop, exhausted = self._record(token, sampling)
        # Rows that stop without sampling their embedding token, and embed by a fallback of their own;
        # under "last_fed" also a row whose embedding token is its last budgeted one (UME-R1's index
        # rule then reads the step before: that token is never fed).
        last_budgeted = (self.fallback == LAST_FED) & (token == self.embed_id) & exhausted
        own = self.embeds & (self.fallback != FORCE) & ((token != self.embed_id) | last_budgeted)
        last_fed = own & (self.fallback == LAST_FED)
        done = torch.full_like(self.state, RowState.DONE)
        stopped = torch.where(is_eos | own, RowState.EMBED, RowState.KEEP_LAST)
        stopped = torch.where(self.embeds & ~last_fed, stopped, done)
        self.read_now = sampling & stop & last_fed
        # A stop token is dropped; any other last token is kept, though "last_fed" never fed it.
        self.unfed_last = torch.where(self.read_now, ~is_eos, self.unfed_last)
        # A row out of budget has fed its last token: its embedding token comes next.
        moved_on = torch.where(self.state == RowState.KEEP_LAST, RowState.EMBED, self.state)
        others = moved_on if only is None else self.state
        before = self.state
        self.state = torch.where(sampling, torch.where(stop, stopped, RowState.ALIVE), others)
        embeds_own = sampling & stop & own
        # What rows entering EMBED feed is set once (rows already there keep theirs).
        entered = (self.state == RowState.EMBED) & (before != RowState.EMBED)
        feed = torch.where(sampling, token, self.next_feed)
        feed = torch.where(entered & ~embeds_own, self.embed_id, feed)
        self.next_feed = torch.where(self.state == RowState.DONE, self.pad_token_id, feed)
        # The token embedded at joins the sequence unless it is already its last kept token.
        fed_apart = entered & ~(embeds_own & ~is_eos)
        self.tail = torch.where(fed_apart, self.next_feed, self.tail)

    def _record(self, token: torch.Tensor, sampling: torch.Tensor):
        """Store the sampled tokens; which rows hit EOS, which stop (EOS or a budget), and which have
        sampled the last token their budget allows (whatever it is)."""
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
        exhausted = sampling & (think_out | answer_out | (self.n_sampled >= self.max_new))
        budget = exhausted & ~is_eos
        self.n_kept = torch.where(sampling & ~is_eos, self.n_sampled, self.n_kept)
        reason = torch.where(answer_out, StopReason.ANSWER_BUDGET, StopReason.THINK_BUDGET)
        reason = torch.where(text_stop, StopReason.STOP_STRING, torch.where(budget, reason, self.reason))
        self.reason = torch.where(is_eos, StopReason.EOS, reason)
        return is_eos, is_eos | text_stop | budget, exhausted

    def _match_text(self, token: torch.Tensor, sampling: torch.Tensor):
        """Step each sampling row's automaton by its token: which rows' text just completed the think
        end, which a stop string (no stop strings: neither, and no work)."""
        if self.text_table is None:
            return torch.zeros_like(sampling), torch.zeros_like(sampling)
        column = token.clamp(0, self.text_table.shape[1] - 1)
        entry = self.text_table[self.text_state, column].long()
        self.text_state = torch.where(sampling, entry >> KIND_BITS, self.text_state)
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

    def embedded_length(self) -> torch.Tensor:
        """Kept tokens per row inside the sequence its embedding was read at."""
        return self.n_kept - self.unfed_last.long()

    def stop_reasons(self) -> list[str]:
        return [StopReason(r).label for r in self.reason.tolist()]
