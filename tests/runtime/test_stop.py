"""The one stop rule (``tte_fast.runtime.stop.RowBook``) against a plain-Python reference on random
token streams, rows started together (static batches) and at different steps (engine slots), and
both schedulers following the rule when it changes."""

from __future__ import annotations

import random

import pytest
import torch
from helpers import engine_inputs

from tte_fast.runtime.options import DecodeOptions
from tte_fast.runtime.stop import RowBook, RowState

EOS, THINK_END, EMBED, PAD = 9, 7, 5, 0


def reference(stream, options: DecodeOptions, embed: bool):
    """What one row feeds after its prefill, its kept tokens, its stop reason and how many tokens it
    sampled, written from the rule's description."""
    kept, feeds, closed, n_answer = [], [], False, 0
    for n, token in enumerate(stream, start=1):
        n_answer += closed
        if token in options.eos_token_ids:
            out = (not closed and n >= options.max_think_tokens) or n >= options.max_new_tokens
            out |= closed and n_answer >= options.max_answer_tokens
            return kept, "eos", feeds + embed_feeds(token, options, embed, out), n
        closed |= token == options.think_end_token_id
        kept.append(token)
        answer_out = closed and n_answer >= options.max_answer_tokens
        if (not closed and n >= options.max_think_tokens) or answer_out or n >= options.max_new_tokens:
            reason = "answer_budget" if answer_out else "think_budget"
            tail = [token, EMBED] if options.embed_fallback == "force" else embed_feeds(token, options, embed)
            return kept, reason, feeds + tail * embed, n
        feeds.append(token)
    raise AssertionError("the stream ran out before the row stopped")


def embed_feeds(last: int, options: DecodeOptions, embed: bool, budget_out: bool = False) -> list[int]:
    """What a row that stops at ``last`` still feeds: its embedding token (sampled, or forced), its
    last token (``"last_sampled"``), or nothing (``"last_fed"``: read at what it fed already, also
    when the embedding token it sampled is the last one its budget allows, ``budget_out``)."""
    if not embed:
        return []
    if options.embed_fallback == "last_fed" and (last != EMBED or budget_out):
        return []
    if last == EMBED or options.embed_fallback == "force":
        return [EMBED]
    return [last]


def random_row(rng: random.Random, fallback: str = "force"):
    options = DecodeOptions(
        max_think_tokens=rng.randint(1, 6),
        max_answer_tokens=rng.randint(0, 3),
        eos_token_ids=(EOS, EMBED),  # a model that generates its embedding token stops there
        think_end_token_id=THINK_END,
        pad_token_id=PAD,
        embed_fallback=fallback,
    )
    # Mostly ordinary tokens, with </think>, EOS and the embedding token often enough for every branch.
    choices = [1, 2, 3, THINK_END, THINK_END, EOS, EMBED]
    stream = [rng.choice(choices) for _ in range(options.max_new_tokens)]
    return stream, options, rng.random() < 0.75


def run_book(rows, starts):
    """Drive a RowBook as a scheduler does: row r starts at step ``starts[r]`` (its first token from
    its prefill, ``only`` that row), then every step feeds, ``fed``, samples the ALIVE rows."""
    book = RowBook(len(rows), 0, rows[0][1], "cpu")
    feeds = [[] for _ in rows]
    book.reads = [[] for _ in rows]  # per row, the steps at which it was read in place (read_now)
    for step in range(max(starts) + 40):
        for r, (stream, options, embed) in enumerate(rows):
            if starts[r] == step:
                book.start(r, options, EMBED if embed else None)
                only = torch.zeros(len(rows), dtype=torch.bool)
                only[r] = True
                book.advance(torch.full((len(rows),), stream[0]), only)
                note_reads(book, step)
        if step >= min(starts):
            for r in book.feeds.nonzero().view(-1).tolist():
                feeds[r].append(int(book.next_feed[r]))
            book.fed()
            token = [s[min(int(book.n_sampled[r]), len(s) - 1)] for r, (s, _, _) in enumerate(rows)]
            book.advance(torch.tensor(token))
            note_reads(book, step)
        if step > max(starts) and not bool(book.feeds.any()):
            break
    return book, feeds


def note_reads(book: RowBook, step: int) -> None:
    for r in book.read_now.nonzero().view(-1).tolist():
        book.reads[r].append(step)


@pytest.mark.parametrize("fallback", ["force", "last_sampled", "last_fed"])
@pytest.mark.parametrize("staggered", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_row_book_follows_the_reference(seed, staggered, fallback):
    rng = random.Random(seed)
    rows = [random_row(rng, fallback) for _ in range(8)]
    starts = [rng.randint(0, 5) if staggered else 0 for _ in rows]
    book, feeds = run_book(rows, starts)
    assert (book.state == RowState.DONE).all()
    for r, (stream, options, embed) in enumerate(rows):
        kept, reason, want_feeds, n_sampled = reference(stream, options, embed)
        assert book.tokens[r, : int(book.n_kept[r])].tolist() == kept
        assert book.stop_reasons()[r] == reason
        assert int(book.n_generated()[r]) == n_sampled
        assert feeds[r] == want_feeds, (r, stream, options, embed)
        # "last_fed" rows that do not feed their embedding token are read in place, once.
        in_place = embed and fallback == "last_fed" and want_feeds[-1:] != [EMBED]
        assert len(book.reads[r]) == int(in_place), (r, stream)
        if embed:  # the sequence embedded: the kept tokens it fed, then a token fed apart from them
            tail = int(book.tail[r])
            assert kept[: int(book.embedded_length()[r])] + ([tail] if tail >= 0 else []) == feeds[r], r


def test_answer_budgets_count_from_the_closing_token():
    """0: stop at ``</think>``; 1 and 2: that many tokens after it."""
    for budget in (0, 1, 2):
        options = DecodeOptions(4, budget, (EOS,), THINK_END, PAD)
        book, _ = run_book([([1, THINK_END, 2, 3, 4, 1, 2], options, True)], [0])
        assert book.tokens[0, : int(book.n_kept[0])].tolist() == [1, THINK_END, 2, 3][: 2 + budget]
        assert book.stop_reasons() == ["answer_budget"]


def test_rows_of_one_book_share_their_stop_tokens():
    book = RowBook(2, 4, DecodeOptions(eos_token_ids=(EOS,)), "cpu")
    with pytest.raises(ValueError, match="same EOS"):
        book.start(0, DecodeOptions(eos_token_ids=(EOS + 1,)), None)


def test_both_schedulers_follow_a_changed_rule(vl_model, monkeypatch):
    """Change the rule in its one place (every row stops after two sampled tokens): static batches and
    the engine both decode what an unchanged rule decodes with a think budget of two."""
    inputs = engine_inputs(vl_model)
    want = vl_model.encode(inputs, think=True, max_think_tokens=2, scheduler="static")
    original = RowBook._record

    def stop_after_two(self, token, sampling):
        is_eos, stop, exhausted = original(self, token, sampling)
        return is_eos, stop | (sampling & (self.n_sampled >= 2)), exhausted

    monkeypatch.setattr(RowBook, "_record", stop_after_two)
    for scheduler in ("static", "continuous"):
        got = vl_model.encode(inputs, think=True, max_think_tokens=6, batch_size=2, scheduler=scheduler)
        assert [s.tolist() for s in got.sequences] == [s.tolist() for s in want.sequences], scheduler
        assert got.traces == want.traces
