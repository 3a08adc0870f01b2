"""Records to model-input batches, rendered exactly as ``UnifiedTTE`` renders them at inference.

- contrastive (embedder, head): each side is the left-padded batch that
  ``tte_fast.prompting.batching.prompt_batch`` builds for ``encode(traces=...)`` (query with its
  trace) and ``encode(side="target")``: prompt, trace, embedding token. Targets are laid out per
  query: the positive, then its hard negatives, as ``infonce_loss`` expects.
- reasoner: the prompt ``think`` renders (reasoning instruction, generation prompt) and, as labels,
  the assistant turn: think prefix, trace, think-end token, answer and the stop token. Every other
  position (system, user, image, padding) has label -100. Rows are right-padded.

:class:`StepBatches` is a map-style dataset over steps, so DataLoader workers decode images and run
the processor; a missing or corrupt image follows the bad-data policy (``fail``: an error naming the
file and the record; ``skip``: the record leaves the batch and is counted).
"""

from __future__ import annotations

import torch

from tte_fast.inputs import EmbedInput, InputError, check_input, load_input
from tte_fast.prompting.batching import load_videos, prompt_batch
from tte_fast.prompting.prompts import PromptConfig
from tte_fast.train.records import DataError, PairRecord, SFTRecord
from tte_fast.train.schedule import Schedule

IGNORE_INDEX = -100
ANSWER_SEPARATOR = "\n\n"


class Renderer:
    """Prompts and batches for one model: its processor (or tokenizer), prompts and special tokens."""

    def __init__(self, processor, vision: bool, prompts: PromptConfig, embed_token_id: int, think_end: str):
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.vision = vision
        self.prompts = prompts
        self.embed_token_id = embed_token_id
        self.think_end = think_end
        vocab = self.tokenizer.get_vocab()
        stop = vocab.get("<|im_end|>", self.tokenizer.eos_token_id)
        if stop is None:
            raise ValueError(
                "the tokenizer has neither <|im_end|> nor an EOS token to end the assistant turn"
            )
        self.stop_token_id = stop
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else stop

    def contrastive_batch(self, items: list[EmbedInput], side: str, traces: list[str | None]) -> dict:
        """Left-padded prompts (with their traces) ending in the embedding token: the batch
        ``UnifiedTTE.encode(traces=..., side=...)`` builds (``tte_fast.prompting.batching.prompt_batch``)."""
        sides = [side] * len(items)
        return prompt_batch(
            self.processor, items, sides, False, self.prompts, self.vision, traces, self.embed_token_id
        )

    def completion(self, trace: str, answer: str) -> str:
        """The assistant turn's text after the generation prompt (the stop token follows it)."""
        return (
            f"{self.prompts.think_prefix}{trace.strip()}\n{self.think_end}{ANSWER_SEPARATOR}{answer.strip()}"
        )

    def sft_batch(self, items: list[EmbedInput], traces: list[str], answers: list[str]) -> dict:
        """Right-padded prompt + assistant turn with labels on the assistant turn only."""
        # The thinking prompt without its think prefix (an empty trace takes the prefix's place):
        # the prefix is generated, so it belongs to the labelled assistant turn.
        sides = ["query"] * len(items)
        prompt = prompt_batch(
            self.processor, items, sides, True, self.prompts, self.vision, [""] * len(items)
        )
        mask = prompt["attention_mask"].bool()
        rows, labels = [], []
        for i, (trace, answer) in enumerate(zip(traces, answers)):
            done = self.tokenizer(self.completion(trace, answer), add_special_tokens=False)["input_ids"]
            done = torch.tensor(list(done) + [self.stop_token_id], dtype=torch.long)
            real = prompt["input_ids"][i][mask[i]]
            rows.append(torch.cat([real, done]))
            labels.append(torch.cat([torch.full_like(real, IGNORE_INDEX), done]))
        length = max(len(r) for r in rows)
        batch = {k: v for k, v in prompt.items() if not _per_token(v, prompt["attention_mask"])}
        batch["input_ids"] = _right_pad(rows, length, self.pad_token_id)
        batch["labels"] = _right_pad(labels, length, IGNORE_INDEX)
        batch["attention_mask"] = _right_pad([torch.ones_like(r) for r in rows], length, 0)
        for key, value in prompt.items():  # token types: the prompt's, then zeros (text)
            if key not in ("input_ids", "attention_mask") and _per_token(value, prompt["attention_mask"]):
                parts = [value[i][mask[i]] for i in range(len(rows))]
                batch[key] = _right_pad(parts, length, 0)
        return batch


def _per_token(value, mask: torch.Tensor) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape == mask.shape


def _right_pad(rows: list[torch.Tensor], length: int, value: int) -> torch.Tensor:
    out = torch.full((len(rows), length), value, dtype=rows[0].dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def load_item(source: str, name: str, raw: dict, vision: bool, processor=None) -> EmbedInput:
    """One record input, checked and with its image decoded and its video's frames read (by the
    ``processor``'s video processor); errors name the record and the part."""
    try:
        item = load_input(0, check_input(0, {k: v for k, v in raw.items() if v is not None}))
        if (item.image is not None or item.video is not None) and not vision:
            raise DataError(f"{source}: {name} has an image or a video, but the model is text-only")
        if item.video is not None:
            (item,) = load_videos(processor, [item])
    except InputError as e:
        raise DataError(f"{source}: {name}: {str(e).split(': ', 1)[-1]}") from None
    return item


class StepBatches(torch.utils.data.Dataset):
    """Item ``step`` is this process's batch of that step (see ``tte_fast.train.schedule``)."""

    def __init__(
        self, job, datasets, schedule: Schedule, rank, per_process, renderer, bad_data, negatives, max_length
    ):
        self.job, self.datasets, self.schedule = job, datasets, schedule
        self.rank, self.per_process, self.renderer = rank, per_process, renderer
        self.bad_data, self.negatives, self.max_length = bad_data, negatives, max_length

    def __len__(self) -> int:
        return len(self.schedule.datasets)

    def __getitem__(self, step: int) -> dict:
        d, rows = self.schedule.rank_slice(step, self.rank, self.per_process)
        records, skipped = [], []
        for r in rows:
            record = self.datasets[d][r]
            try:
                records.append((record, self._load(record)))
            except DataError as e:
                if self.bad_data == "fail":
                    raise
                skipped.append(str(e))
        while records:
            batch = self._build(records)
            too_long = self._too_long(batch, len(records))
            if not too_long:
                break
            message = (
                f"{records[too_long[0]][0].source}: longer than data.max_length={self.max_length} tokens"
            )
            if self.bad_data == "fail":
                raise DataError(message)
            skipped += [f"{records[i][0].source}: too long" for i in too_long]
            records = [r for i, r in enumerate(records) if i not in too_long]
        if not records:
            raise DataError(f"step {step}: every record of this process's batch was skipped: {skipped}")
        batch["samples"], batch["skipped"] = len(records), skipped
        return batch

    def _load(self, record):
        vision, processor = self.renderer.vision, self.renderer.processor
        if isinstance(record, SFTRecord):
            return [load_item(record.source, "input", record.input, vision, processor)]
        assert isinstance(record, PairRecord)
        if len(record.negs) < self.negatives:
            raise DataError(
                f"{record.source}: has {len(record.negs)} negatives, data.negatives={self.negatives}"
            )
        parts = [("query", record.query), ("pos", record.pos)]
        parts += [(f"negs.{i}", n) for i, n in enumerate(record.negs[: self.negatives])]
        return [load_item(record.source, name, raw, vision, processor) for name, raw in parts]

    def _build(self, records) -> dict:
        r = self.renderer
        if self.job == "reasoner":
            batch = r.sft_batch(
                [i[0] for _, i in records], [s.trace for s, _ in records], [s.answer for s, _ in records]
            )
            return {"inputs": batch, "tokens": int(batch["attention_mask"].sum())}
        queries = r.contrastive_batch(
            [i[0] for _, i in records], "query", [s.query_trace for s, _ in records]
        )
        targets, traces = [], []
        for record, items in records:
            targets += items[1:]
            traces += [record.pos_trace] + [None] * (len(items) - 2)
        targets = r.contrastive_batch(targets, "target", traces)
        tokens = int(queries["attention_mask"].sum() + targets["attention_mask"].sum())
        return {"queries": queries, "targets": targets, "tokens": tokens}

    def _too_long(self, batch: dict, n: int) -> list[int]:
        if self.max_length is None:
            return []
        per_record = [b["attention_mask"].sum(-1) for k, b in batch.items() if k in ("inputs", "queries")]
        if "targets" in batch:  # targets hold (1 + negatives) rows per record
            per_record.append(batch["targets"]["attention_mask"].sum(-1).view(n, -1).max(-1).values)
        longest = torch.stack(per_record).max(0).values
        return [i for i, length in enumerate(longest.tolist()) if length > self.max_length]
