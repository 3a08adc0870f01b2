"""Stop strings and a ``</think>`` of several tokens (Qwen2-VL's and Qwen2.5-VL's tokenizers spell it in
pieces), matched on the text of the generated tokens as HF's ``stop_strings`` are.

- The stop rule (``RowBook`` with ``StopStrings``) against a plain-Python rule over the concatenated
  token bytes, on random vocabularies whose strings overlap token edges (rows reused, as engine slots).
- Both schedulers against HF ``generate(stop_strings=..., tokenizer=...)`` on the tiny Qwen2-VL.
- The answer budget (0, 1, 2) after a think end of three tokens that an LM head hook spells at chosen
  steps, both schedulers, against HF ``generate`` under the same hooks and a plain-Python rule.
- A one-token ``</think>`` stays an id compare on the device: no text table, no host read.
"""

from __future__ import annotations

import random

import pytest
import torch
from helpers import check_schedulers_agree, engine_inputs, generated, hf_greedy, run_engine

from tte_fast.model import UnifiedTTE
from tte_fast.runtime.options import DecodeOptions
from tte_fast.runtime.stop import RowBook, RowState, StopReason
from tte_fast.runtime.stop_strings import StopStrings, token_bytes

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-5  # float32 tiny model
THINK = 6
EOS, EMBED, PAD = 50, 51, 52  # past every test vocabulary
UNKNOWN = b"\xff"  # what the reference reads for a token without text (no string holds that byte)


# ------------------------------------------------------------------------------ the rule itself
def reference(stream, vocab, options: DecodeOptions, embed: bool):
    """One row by the rule's description, on the text (bytes) its tokens spell: kept tokens, stop
    reason, tokens sampled, what it feeds after its prefill."""
    stops = options.stop_strings
    think_end = None if stops.think_end is None else stops.think_end.encode()
    kept, feeds, text, closed, n_answer = [], [], b"", False, 0
    for n, token in enumerate(stream, start=1):
        if token in options.eos_token_ids:
            return kept, "eos", n, feeds + [EMBED] * embed
        piece = vocab[token] if token < len(vocab) else None
        text += UNKNOWN if piece is None else piece
        n_answer += closed
        closed |= think_end is not None and think_end in text
        kept.append(token)
        answer_out = closed and n_answer >= options.max_answer_tokens
        if any(s.encode() in text for s in stops.strings):
            reason = "stop_string"
        elif (not closed and n >= options.max_think_tokens) or answer_out or n >= options.max_new_tokens:
            reason = "answer_budget" if answer_out else "think_budget"
        else:
            feeds.append(token)
            continue
        return kept, reason, n, feeds + [token, EMBED] * embed
    raise AssertionError("the stream ran out before the row stopped")


def random_case(rng: random.Random):
    """A vocabulary of short pieces over a few bytes (an empty token, an unknown one), a think end
    and stop strings over the same bytes, so they start and end inside tokens all the time."""
    alphabet = "ab</"
    vocab = [b"", None] + [rng.choice(alphabet).encode() for _ in range(3)]
    vocab += ["".join(rng.choices(alphabet, k=rng.randint(2, 4))).encode() for _ in range(20)]
    word = lambda: "".join(rng.choices(alphabet, k=rng.randint(2, 5)))  # noqa: E731
    think_end = word() if rng.random() < 0.7 else None
    stops = StopStrings(think_end, tuple(word() for _ in range(rng.randint(0 if think_end else 1, 2))), vocab)
    return vocab, stops


def random_request(rng: random.Random, vocab, stops: StopStrings):
    options = DecodeOptions(rng.randint(1, 10), rng.randint(0, 3), (EOS,), None, PAD, stop_strings=stops)
    # Ids past the vocabulary stand for an LM head wider than the tokenizer; EOS now and then.
    tokens = list(range(len(vocab) + 2)) * 4 + [EOS]
    return [rng.choice(tokens) for _ in range(options.max_new_tokens)], options, rng.random() < 0.75


def drive(book: RowBook, queues):
    """Run each row's requests one after another on that row, as the engine runs a slot: a request
    starts on a free row with its first token (``only`` that row), then every step feeds, ``fed``,
    samples the ALIVE rows. Returns per row, per request: (kept, reason, sampled, feeds)."""
    rows = len(queues)
    queues = [list(q) for q in queues]
    active, results = [None] * rows, [[] for _ in range(rows)]
    for _ in range(1000):
        for r in range(rows):
            if active[r] is None and queues[r]:
                active[r] = (queues[r].pop(0), [])
                (stream, options, embed), _ = active[r]
                book.start(r, options, EMBED if embed else None)
                only = torch.zeros(rows, dtype=torch.bool)
                only[r] = True
                book.advance(torch.full((rows,), stream[0]), only)
        for r in range(rows):
            if active[r] is not None and book.state[r] == RowState.DONE:
                kept = book.tokens[r, : int(book.n_kept[r])].tolist()
                results[r].append((kept, book.stop_reasons()[r], int(book.n_generated()[r]), active[r][1]))
                active[r] = None
        if not any(active) and not any(queues):
            return results
        for r in book.feeds.nonzero().view(-1).tolist():
            active[r][1].append(int(book.next_feed[r]))
        book.fed()
        sampled = [
            0 if a is None else a[0][0][min(int(book.n_sampled[r]), len(a[0][0]) - 1)]
            for r, a in enumerate(active)
        ]
        book.advance(torch.tensor(sampled))
    raise AssertionError("the rows never finished")


@pytest.mark.parametrize("seed", range(12))
def test_row_book_matches_strings_on_the_generated_text(seed):
    rng = random.Random(seed)
    vocab, stops = random_case(rng)
    queues = [[random_request(rng, vocab, stops) for _ in range(3)] for _ in range(5)]
    book = RowBook(5, 0, queues[0][0][1], "cpu")
    for r, results in enumerate(drive(book, queues)):
        for (stream, options, embed), got in zip(queues[r], results, strict=True):
            assert got == reference(stream, vocab, options, embed), (r, stream, options, embed)


def test_a_row_reused_starts_its_text_afresh():
    """A request that ended half way through a string leaves no partial match to the next one."""
    vocab = [b"a", b"b"]
    stops = StopStrings(None, ("ab",), vocab)
    options = DecodeOptions(2, 0, (EOS,), None, PAD, stop_strings=stops)
    results = drive(RowBook(1, 0, options, "cpu"), [[([1, 0], options, False), ([1, 1], options, False)]])
    assert [reason for _, reason, _, _ in results[0]] == ["think_budget", "think_budget"]


def test_token_bytes_spell_the_decoded_text(vl_model):
    """Concatenated token bytes are the tokenizer's decoding of the ids (where that is valid UTF-8)."""
    pieces, rng = token_bytes(vl_model.tokenizer), random.Random(0)
    for _ in range(20):
        ids = [rng.randrange(len(pieces)) for _ in range(12)]
        text = b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")
        assert text == vl_model.tokenizer.decode(ids)


# --------------------------------------------------------------------- both schedulers, real model


def stop_string_cases(model, plain: list[list[int]], prompts: list[str]) -> dict[int, tuple[str, int]]:
    """Input -> (stop string, tokens up to where it ends), from the plain traces: two whole tokens of
    input 0, a token and the first character of the next of input 2 (it ends inside a token), the
    last character of a token and the next token of input 3 (it starts inside one). Only pieces
    that decode cleanly, and no string whose start the prompt's end could spell (HF matches across
    the prompt; this rule reads the generated text alone)."""
    text = lambda t: model.tokenizer.decode([t])  # noqa: E731
    cases = {}
    for i, cut in ((0, None), (2, "end"), (3, "start")):
        for k in range(1, THINK - 1):
            first, second = text(plain[i][k]), text(plain[i][k + 1])
            s = {None: first + second, "end": first + second[:1], "start": first[-1:] + second}[cut]
            clean = "\ufffd" not in first + second and min(len(first), len(second)) > 1
            if clean and not any(p.endswith(s[:j]) for p in prompts for j in range(1, len(s))):
                cases[i] = (s, k + 2)
                break
    assert sorted(cases) == [0, 2, 3], cases
    return cases


@pytest.fixture(scope="module")
def plain(tiny_checkpoints):
    """The tiny Qwen2-VL's greedy tokens per input (THINK + 2 of them) and prompts' text, from HF."""
    model = UnifiedTTE.from_pretrained(tiny_checkpoints["qwen2_vl"], device="cpu")
    runs = [hf_greedy(model, i, x, THINK + 2) for i, x in enumerate(engine_inputs(model))]
    return [tokens for tokens, _ in runs], [model.tokenizer.decode(prompt) for _, prompt in runs]


@pytest.mark.parametrize("slots", [1, 4])
def test_both_schedulers_stop_where_hf_stop_strings_stop(tiny_checkpoints, plain, slots):
    tokens, prompts = plain
    base = UnifiedTTE.from_pretrained(tiny_checkpoints["qwen2_vl"], device="cpu")
    cases = stop_string_cases(base, tokens, prompts)
    strings = [string for string, _ in cases.values()]
    model = UnifiedTTE.from_pretrained(tiny_checkpoints["qwen2_vl"], device="cpu", stop_strings=strings)
    assert model.think_end_token_id is not None  # </think> is one token here: only the strings are text
    inputs = engine_inputs(model)
    hf = [
        hf_greedy(model, i, x, THINK, stop_strings=strings, tokenizer=model.tokenizer)[0]
        for i, x in enumerate(inputs)
    ]
    assert [len(h) for h in hf] == [cases.get(i, (None, THINK))[1] for i in range(len(inputs))]
    for embed in (False, True):
        results = run_engine(model, inputs, slots, embed, max_think_tokens=THINK)
        assert [generated(r) for r in results] == hf
        want = ["stop_string" if len(h) < THINK else "think_budget" for h in hf]
        assert [r.stop_reason for r in results] == want
        assert [r.generated_tokens for r in results] == [len(h) for h in hf]
    check_schedulers_agree(model, inputs, results, slots, max_think_tokens=THINK)
    assert model.think(inputs, batch_size=4, scheduler="static", max_think_tokens=THINK) == [
        r.trace for r in results
    ]


# ------------------------------------------------------------------ a think end of several tokens
PIECES = "@@done##"  # three tokens in Qwen's vocabulary: "@@", "done", "##"
THINK_END = "@done#"  # starts inside the first and ends inside the last: several tokens, none alone
CLOSE_AT = {0: 0, 1: 3, 2: 1, 3: 2}  # input -> the step it starts spelling; inputs 4 and 5 never do


class SpellThinkEnd:
    """Forward hooks: a row whose greedy token is one of ``triggers`` emits the first piece instead,
    and a row that was just fed a piece emits the next one. The triggers are tokens the plain model
    samples, so a row spells the think end where it would have sampled one, in any batch or slot."""

    def __init__(self, model, pieces: list[int], triggers: set[int]):
        self.next_piece = dict(zip(pieces[:-1], pieces[1:]))
        self.first, self.triggers, self.fed = pieces[0], torch.tensor(sorted(triggers)), None
        self.handles = [
            model.hf_model.get_input_embeddings().register_forward_pre_hook(self.record),
            model.hf_model.get_output_embeddings().register_forward_hook(self.force),
        ]

    def record(self, module, args):
        self.fed = args[0][:, -1]  # each row's last token fed (the LM head's rows are the same rows)

    def force(self, module, args, logits):
        fed = self.fed.view(-1, *[1] * (logits.dim() - 2))
        want = torch.where(torch.isin(logits.argmax(-1), self.triggers), self.first, -1)
        for piece, following in self.next_piece.items():
            want = torch.where(fed == piece, following, want)
        forced = torch.nn.functional.one_hot(want.clamp(min=0), logits.shape[-1]).bool()
        return torch.where(forced & (want >= 0)[..., None], logits.amax(-1, keepdim=True) + 100.0, logits)

    def remove(self):
        for handle in self.handles:
            handle.remove()


@pytest.fixture(scope="module")
def spelling(tiny_checkpoints, plain):
    """A tiny Qwen2-VL whose think end is THINK_END, hooked to spell PIECES where CLOSE_AT says; and
    HF ``generate``'s greedy tokens per input under the same hooks."""
    model = UnifiedTTE.from_pretrained(tiny_checkpoints["qwen2_vl"], device="cpu", think_end_token=THINK_END)
    assert model.think_end_token_id is None and model.stop_strings.think_end == THINK_END
    pieces = model.tokenizer.encode(PIECES, add_special_tokens=False)
    tokens, _ = plain
    assert len(pieces) == 3 and not set(pieces) & {t for p in tokens for t in p}
    triggers = {tokens[i][k] for i, k in CLOSE_AT.items()}
    for i, p in enumerate(tokens):  # each input meets its first trigger where planned (or never)
        assert next((k for k, t in enumerate(p[:THINK]) if t in triggers), None) == CLOSE_AT.get(i)
    hooks = SpellThinkEnd(model, pieces, triggers)
    streams = [hf_greedy(model, i, x, THINK + 2)[0] for i, x in enumerate(engine_inputs(model))]
    yield model, streams
    hooks.remove()


def expected_tokens(model, stream: list[int], answer: int) -> tuple[list[int], str]:
    """The plain-Python rule: the think section closes at the first token whose decoded prefix
    holds the think end; then exactly ``answer`` tokens follow; else the think budget runs out."""
    text = model.tokenizer.decode
    closes = next((n for n in range(THINK) if THINK_END in text(stream[: n + 1])), None)
    if closes is None:
        return stream[:THINK], "think_budget"
    return stream[: closes + 1 + answer], "answer_budget"


@pytest.mark.parametrize("answer", [0, 1, 2])
@pytest.mark.parametrize("slots", [1, 4])
def test_answer_budget_after_a_think_end_of_several_tokens(spelling, answer, slots):
    model, streams = spelling
    inputs = engine_inputs(model)
    want = [expected_tokens(model, s, answer) for s in streams]
    closing = [i for i, (_, reason) in enumerate(want) if reason == "answer_budget"]
    assert closing == sorted(CLOSE_AT)  # the hooks spell it where planned, ending at the third piece
    budgets = dict(max_think_tokens=THINK, max_answer_tokens=answer)
    for embed in (False, True):
        results = run_engine(model, inputs, slots, embed, **budgets)
        assert [(generated(r), r.stop_reason) for r in results] == want, f"embed={embed}"
    check_schedulers_agree(model, inputs, results, slots, **budgets)
    static = model.think(inputs, batch_size=4, scheduler="static", **budgets)
    assert static == model.think(inputs, batch_size=slots, **budgets) == [r.trace for r in results]


# ------------------------------------------------------------------------- one token: a compare
def test_a_one_token_think_end_is_an_id_compare_on_the_device(vl_model, monkeypatch):
    """With ``</think>`` in the vocabulary there is no text table; a step closes rows by comparing
    token ids and reads nothing back to the host."""
    think_end = vl_model.tokenizer.get_vocab()["</think>"]
    assert vl_model.think_end_token_id == think_end and vl_model.stop_strings is None
    options = vl_model.decode_options(max_think_tokens=4, max_answer_tokens=1)
    assert options.stop_strings is None
    book = RowBook(3, 0, options, "cpu")
    book.start(slice(0, 3), options, EMBED)
    assert book.text_table is None
    steps = [[5, 6, 7], [think_end, 6, think_end], [8, 9, 10]]
    for method in ("tolist", "item", "__bool__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, method, lambda *a, _m=method: pytest.fail(f"host read: {_m}"))
    for token in steps:
        book.advance(torch.tensor(token))
    monkeypatch.undo()
    assert book.closed.tolist() == [True, False, True]
    assert book.reason.tolist() == [StopReason.ANSWER_BUDGET, StopReason.NONE, StopReason.ANSWER_BUDGET]
    assert book.state.tolist() == [RowState.KEEP_LAST, RowState.ALIVE, RowState.KEEP_LAST]
