"""Model-input batches and the embedding forward, shared by inference and training.

``prompt_batch`` renders inputs through the chat template (``tte_fast.prompting.prompts``) and
tokenizes them (the Qwen-VL processor with images, or the tokenizer) into one left-padded batch;
prompts that do not think end in the token they are embedded at: the embedding token appended (a
prompt with a trace always), the prompt's own last token, or the last occurrence of a prompt token
(the prompt is cut after it: under causal attention nothing later changes that token's state).
``embed_batch`` reads the embedding of such a batch: the L2-normalised final-norm state of its last
token (last-token head), or the TTE_u head over the layer L-k states. ``UnifiedTTE.encode`` runs
both under ``inference_mode``; the training jobs run them with gradients, so what is trained is
exactly what is run.
"""

from __future__ import annotations

from dataclasses import replace

import PIL.Image
import torch

from tte_fast.inputs import EmbedInput, InputError
from tte_fast.kernels import pool_normalize
from tte_fast.media.video_io import VideoClip
from tte_fast.profiling import stage
from tte_fast.prompting.prompts import PromptConfig, render_prompt
from tte_fast.runtime.positions import SEQUENTIAL_POSITIONS, prefill_position_ids
from tte_fast.runtime.runner import model_inputs


def prompt_batch(
    processor,
    items: list[EmbedInput],
    sides: list[str],
    think: bool,
    prompts: PromptConfig,
    vision: bool,
    traces: list[str | None] | None = None,
    embed_token_id: int | None = None,
    prompt_embed: str = "append",
    prompt_embed_token_id: int | None = None,
    sequential_positions: bool = False,
    indices: list[int] | None = None,
) -> dict:
    """One left-padded batch (CPU tensors) of ``items`` (images loaded; videos are loaded here by
    the processor's video processor, errors naming ``indices``, default 0, 1, ...). Without thinking each
    prompt is closed by ``embed_token_id`` (``prompt_embed="append"``, or any prompt with a trace),
    ends at its own last token (``"last"``), or is cut after its last ``prompt_embed_token_id``
    (``"token"``). ``sequential_positions`` marks the batch for 0, 1, 2, ... positions."""
    given = traces is not None and any(t is not None for t in traces)
    traces = traces or [None] * len(items)
    if vision and prompts.text_image_size:
        items = [with_blank_image(item, prompts.text_image_size) for item in items]
    texts = [
        render_prompt(processor, item, side, think, prompts, vision, trace=trace)
        for item, side, trace in zip(items, sides, traces)
    ]
    if vision:
        images = [item.image for item in items if item.image is not None]
        batch = processor(
            text=texts,
            images=images or None,
            padding=True,
            padding_side="left",
            return_tensors="pt",
            **video_arguments(processor, items, indices),
        )
    else:
        tokenizer = getattr(processor, "tokenizer", processor)
        batch = tokenizer(
            texts, padding=True, padding_side="left", return_tensors="pt", add_special_tokens=False
        )
    batch = dict(batch)
    batch.pop(
        "video_metadata", None
    )  # read by the processor (timestamps, seconds per grid); not a model input
    if sequential_positions:
        batch[SEQUENTIAL_POSITIONS] = True
    if think or (prompt_embed == "last" and not given):
        return batch
    if prompt_embed == "token" and not given:
        if prompt_embed_token_id is None:
            raise ValueError("prompt_embed='token' needs the prompt embedding token id")
        return cut_after_last(batch, prompt_embed_token_id, getattr(processor, "image_token_id", None))
    if embed_token_id is None:
        raise ValueError("a batch that does not think needs the embedding token id")
    return append_token(batch, embed_token_id)


def cut_after_last(batch: dict, token_id: int, image_token_id: int | None = None) -> dict:
    """A left-padded batch whose rows end at their last ``token_id`` (what follows it is dropped and
    the rows padded again); an error naming the row where it is missing or an image token follows."""
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    width = ids.shape[1]
    columns = torch.arange(width)
    hits = (ids == token_id) & mask
    ends = torch.where(hits, columns, -1).max(-1).values
    for row, end in enumerate(ends.tolist()):
        if end < 0:
            raise ValueError(f"row {row} of the batch has no prompt embedding token (id {token_id})")
        if image_token_id is not None and bool((ids[row, end + 1 :] == image_token_id).any()):
            raise ValueError(f"row {row} has image tokens after its prompt embedding token (id {token_id})")
    starts = width - mask.sum(-1)
    new_width = int((ends + 1 - starts).max())
    # Column c of the new row r is old column ends[r] + 1 - new_width + c (negative: padding).
    source = ends.view(-1, 1) + 1 - new_width + torch.arange(new_width).view(1, -1)
    inside = source >= starts.view(-1, 1)
    gather = source.clamp(min=0)
    out = dict(batch)
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids"):
        value = batch.get(key)
        if value is not None:
            out[key] = torch.where(inside, value.gather(1, gather), torch.zeros_like(gather))
    out["attention_mask"] = inside.to(batch["attention_mask"].dtype)
    pad = ids[~mask]
    if pad.numel():  # keep the processor's pad id on padding columns
        out["input_ids"] = torch.where(inside, out["input_ids"], pad[0])
    return out


def load_videos(processor, items: list[EmbedInput], indices: list[int] | None = None) -> list[EmbedInput]:
    """``items`` with their videos' sampled frames loaded (``VideoClip``); errors name ``indices``."""
    indices = list(range(len(items))) if indices is None else indices
    video_processor = getattr(processor, "video_processor", None)
    out = []
    for index, item in zip(indices, items):
        if item.video is not None and not isinstance(item.video, VideoClip):
            if video_processor is None:
                raise InputError(index, "has a video, but this processor has no video processor")
            item = replace(item, video=video_processor.load(index, item.video))
        out.append(item)
    return out


def video_arguments(processor, items: list[EmbedInput], indices: list[int] | None) -> dict:
    """The processor call's ``videos`` and ``video_metadata`` (nothing for a batch without video)."""
    if all(item.video is None for item in items):
        return {}
    clips = [item.video for item in load_videos(processor, items, indices) if item.video is not None]
    metadata = [processor.video_processor.metadata(clip) for clip in clips]
    return {"videos": [clip.frames for clip in clips], "video_metadata": metadata}


def with_blank_image(item: EmbedInput, size: int) -> EmbedInput:
    """``item``, or for a text-only one a copy with a white ``size`` x ``size`` image."""
    if item.image is not None or item.video is not None:
        return item
    return replace(item, image=PIL.Image.new("RGB", (size, size), (255, 255, 255)))


def append_token(batch: dict, token_id: int) -> dict:
    """Append one token column to a left-padded batch (every row is real at the end)."""
    out = dict(batch)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    out["input_ids"] = torch.cat([ids, torch.full_like(ids[:, :1], token_id)], dim=1)
    out["attention_mask"] = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    for key in ("mm_token_type_ids", "token_type_ids"):  # the embedding token is text
        if batch.get(key) is not None:
            out[key] = torch.cat([batch[key], torch.zeros_like(batch[key][:, :1])], dim=1)
    return out


def unpadded(batch: dict) -> list[torch.Tensor]:
    """Each row's token ids without padding."""
    return [ids[mask.bool()] for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]


def normalize(hidden: torch.Tensor) -> torch.Tensor:
    """[B, D] rows (final-norm states at embedding tokens) as unit vectors, by the pooling kernel."""
    ones = torch.ones(hidden.shape[0], 1, dtype=torch.long, device=hidden.device)
    return pool_normalize(hidden[:, None, :], ones)


def embed_batch(hf_model, batch: dict, head=None, runner=None) -> torch.Tensor:
    """[B, D] unit embeddings of a batch ending in the embedding token: one forward, no cache.
    With a TTE_u ``head`` the backbone stops at layer L-k and the head runs its k layers. Without
    one, ``runner`` (the model's ``tte_fast.runtime.runner.Runner``, None: transformers' forward)
    runs the forward: through its fused decoder where that takes the batch (text only, on CPU)."""
    position_ids, _ = prefill_position_ids(hf_model, batch)
    backbone = hf_model.base_model
    ids, mask, extra = batch["input_ids"], batch["attention_mask"], model_inputs(backbone, batch)
    kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False, **extra)
    if head is None:
        with stage("prefill"):
            if runner is None:
                hidden = backbone(**kwargs).last_hidden_state
            else:
                hidden = runner.hidden_states(ids, position_ids, mask, None, **extra)
        with stage("embed"):
            return pool_normalize(hidden, batch["attention_mask"])
    with stage("prefill"):  # stops at layer L-k: the head replaces the backbone's last k layers
        hidden, position_embeddings = head.source_states(backbone, **kwargs)
    with stage("embed"):
        return head(hidden, batch["attention_mask"], position_embeddings)
