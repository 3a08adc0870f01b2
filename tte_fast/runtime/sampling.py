"""Token choice: HF's repetition penalty, then greedy argmax or HF's warpers (temperature, top-k,
top-p) and a draw; with a seed, one generator per row seeded from the row's own prompt, so a trace
does not depend on its batch."""

from __future__ import annotations

import hashlib

import torch

from tte_fast.prompting.chunking import split_inputs
from tte_fast.runtime.options import DecodeOptions


def row_generators(batch: dict, options: DecodeOptions) -> list[torch.Generator] | None:
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


# Vocabulary chunk of ``greedy_tokens``: large enough that the per-chunk maxima are one small pass.
ARGMAX_CHUNK = 1024


def greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(-1)`` of ``[B, V]`` logits, the first index on ties, NaN as the maximum, as
    torch's (bfloat16 logits as they are: their argmax is that of their exact float32 copy). On CPU
    in two passes (each chunk's maximum, then an argmax inside the first chunk holding the row's
    maximum): torch's CPU argmax over a large vocabulary is several times slower than a max
    reduction, and at decode batch sizes it was a visible share of a step."""
    if logits.is_cuda or logits.shape[-1] <= ARGMAX_CHUNK:
        return logits.argmax(-1)
    rows, vocab = logits.shape
    full = vocab // ARGMAX_CHUNK * ARGMAX_CHUNK
    maxima = logits[:, :full].reshape(rows, -1, ARGMAX_CHUNK).amax(-1)
    if full < vocab:
        maxima = torch.cat([maxima, logits[:, full:].amax(-1, keepdim=True)], dim=1)
    start = maxima.argmax(-1, keepdim=True) * ARGMAX_CHUNK  # the first chunk holding the maximum
    columns = (start + torch.arange(ARGMAX_CHUNK, device=logits.device)).clamp_max_(vocab - 1)
    return (start + logits.gather(1, columns).argmax(-1, keepdim=True)).squeeze(1).clamp_max_(vocab - 1)


def draws_argmax(options: DecodeOptions) -> bool:
    """Whether a pick is the argmax: greedy, or sampling from the top 1 (Qwen-VL's generation_config:
    ``top_k=1``), whose draw can only be that token (up to exact ties, where HF draws among them)."""
    return not options.do_sample or options.top_k == 1


def sampling_probs(logits: torch.Tensor, options: DecodeOptions) -> torch.Tensor:
    """[B, V] probabilities a sampled token is drawn from: temperature, then top-k, then top-p
    (the order of HF's logits warpers), in float32 as HF computes them (a decode step's logits
    come in the head's dtype). With top-k, top-p sorts only the k kept scores."""
    scores = logits.float() / options.temperature
    if options.top_k:
        k = min(options.top_k, scores.shape[-1])
        top, where = torch.topk(scores, k, dim=-1)
        kept = scores >= top[:, -1:]
        if options.top_p < 1 and not bool((kept.sum(-1) > k).any()):  # no tie at the k-th score
            top = _top_p(top, options.top_p)  # sorted descending already
            return torch.zeros_like(scores).scatter(-1, where, top.softmax(-1))
        scores = scores.masked_fill(~kept, float("-inf"))
    if options.top_p < 1:
        sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
        drop = torch.zeros_like(scores, dtype=torch.bool).scatter(
            -1, order, torch.isneginf(_top_p(sorted_scores, options.top_p))
        )
        scores = scores.masked_fill(drop, float("-inf"))
    return scores.softmax(-1)


def _top_p(sorted_scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Scores sorted descending with a token dropped (-inf) once the mass before it already reaches
    ``top_p`` (the top token always stays)."""
    probs = sorted_scores.softmax(-1)
    drop = probs.cumsum(-1) - probs >= top_p
    return sorted_scores.masked_fill(drop, float("-inf"))


def penalize(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """HF's ``RepetitionPenaltyLogitsProcessor`` over a ``[B, V]`` mask of seen ids: a seen token's
    positive logit is divided by ``penalty``, a negative one multiplied (the same float ops as HF,
    with the penalty a Python float as there, so the result is bit for bit HF's)."""
    return torch.where(seen, torch.where(logits < 0, logits * penalty, logits / penalty), logits)


class SeenTokens:
    """The token ids each row has seen so far (prompt and sampled), for the repetition penalty.

    A ``[rows, vocab + 1]`` bool mask (the last column takes prompt padding) rather than each row's
    ids padded to a width: its shape never changes (64 slots x 152k ids: 9.7 MB, a quarter of one
    step's float32 logits), a prompt sets a row with one scatter and a sampled token costs one more,
    all on the device; a padded id list would grow every step and be re-padded at every admission.
    Penalties are per row and kept on the host, where the options already are."""

    def __init__(self, rows: int, vocab: int, device):
        self.mask = torch.zeros(rows, vocab + 1, dtype=torch.bool, device=device)
        self.penalties = [1.0] * rows

    def start(self, rows: list[int], input_ids: torch.Tensor, attention_mask: torch.Tensor, penalty: float):
        """Rows ``rows`` begin a request with these prompts (``[len(rows), T]``, padding ignored)."""
        for row in rows:
            self.penalties[row] = float(penalty)
        if penalty == 1.0:
            return
        vocab = self.mask.shape[1] - 1
        ids = torch.where(attention_mask.bool(), input_ids, vocab)
        seen = torch.zeros(len(rows), vocab + 1, dtype=torch.bool, device=self.mask.device)
        self.mask[rows] = seen.scatter_(1, ids.to(self.mask.device), True)

    def record(self, tokens: torch.Tensor, rows: list[int] | None = None) -> None:
        """Mark each row's token just sampled (``tokens [rows]``) for the rows in ``rows`` (None: all)."""
        if rows is None:
            self.mask.scatter_(1, tokens.view(-1, 1), True)
            return
        penalised = [row for row in rows if self.penalties[row] != 1.0]
        if penalised:
            where = torch.tensor(penalised, device=self.mask.device)
            self.mask[where, tokens[where]] = True

    def apply(self, logits: torch.Tensor, rows: list[int] | None = None) -> torch.Tensor:
        """``logits`` (``[len(rows), V]``; None: every row) with each row's penalty applied, in float32
        as HF applies it (a decode step's logits come in the head's dtype)."""
        logits = logits.float()
        every = list(range(len(self.penalties)))
        rows = every if rows is None else rows
        vocab = logits.shape[-1]
        for penalty in sorted({self.penalties[row] for row in rows} - {1.0}):
            picked = [k for k, row in enumerate(rows) if self.penalties[row] == penalty]
            if len(picked) == len(rows) and rows == every:  # one penalty for all rows: no gathers
                logits = penalize(logits, self.mask[:, :vocab], penalty)
                continue
            index = torch.tensor(picked, device=logits.device)
            seen = self.mask[[rows[k] for k in picked], :vocab]
            logits = logits.index_copy(0, index, penalize(logits[index], seen, penalty))
        return logits


def pick_tokens(
    logits: torch.Tensor, options: DecodeOptions, generators, seen: SeenTokens | None = None
) -> torch.Tensor:
    """Greedy argmax, or a sample from ``sampling_probs`` (one generator per real row when seeded;
    padding rows past them take the argmax). With ``seen``, the logits are penalised first and the
    picks recorded (every row: a row that stopped never samples again)."""
    if seen is not None:
        logits = seen.apply(logits)
        tokens = pick_tokens(logits, options, generators)
        seen.record(tokens)
        return tokens
    if draws_argmax(options):
        return greedy_tokens(logits)
    probs = sampling_probs(logits, options)
    if generators is None:
        return torch.multinomial(probs, 1).squeeze(-1)
    tokens = probs.argmax(-1)
    for row, generator in enumerate(generators):
        tokens[row] = torch.multinomial(probs[row], 1, generator=generator)[0]
    return tokens
