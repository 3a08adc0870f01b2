"""The published embedders' own inference paths, in plain HF transformers: the references the
recipes (``tte_fast.checkpoint.recipes``) are checked against.

Nothing here uses the tte_fast runtime: prompts are built as the authors' evaluation code builds
them, then one HF ``generate(..., output_hidden_states=True, return_dict_in_generate=True)`` and/or
plain forwards, one input at a time, and the embedding read where their code reads it.

- ``ume_r1`` (UME-R1's ``eval_twomode.py``): one user turn through the chat template, the image
  first (a text-only input gets their 28x28 white JPEG, which qwen-vl-utils brings up to 56x56),
  then ``text.strip() + "\\n<disc_emb>\\n" + GENERATION_PROMPT``; every image through qwen-vl-utils'
  ``fetch_image`` resize (``smart_resize`` within [3136, 16384*28*28] pixels, then the processor).
  ``think=True`` is their gen mode (both sides): ``generate`` with the model's generation_config
  and nothing else but ``max_new_tokens``, the embedding at ``hidden_states[idx][-1]`` with ``idx``
  from their ``get_gen_embedding_idx`` (the step that feeds the last ``<gen_emb>``; -1, the last
  step, when there is none or it is among the last two generated tokens; where one token alone was
  generated, their code breaks on the prefill's [L, D] states: here, the last prompt token's).
  ``think=False`` is disc mode: one forward, the state at the last ``<disc_emb>`` (upstream's rule;
  the fork's ``j + 1`` was a bug). Batch size 1 is the
  defined case: their batched fallback ``hidden_states[-1]`` reads the last step of the whole
  batch, so for a row that finished earlier it depends on how long the other rows ran.
- ``rge`` (RGE's ``eval_ar.py``): the chat template, the image written into the text as
  ``<|vision_start|><|image_pad|><|vision_end|>\\n``, the text ending in a newline. A query that
  thinks (``side="query"``, ``think=True``) runs ``generate(max_new_tokens=128,
  eos_token_id=<emb>)`` and a second one-token forward of the last generated token on the returned
  cache (its M-RoPE position from the ``rope_deltas`` generate cached, as in their transformers),
  the embedding its last-layer state; a target (or ``think=False``) is the prompt plus ``"<emb>"``,
  left-padded to a multiple of 32 as their collator pads, one forward, read at the first ``<emb>``
  (a text-only row's positions given by hand as their transformers built them, ``cumsum(mask) - 1``:
  the installed one counts the padding). Their resize of an image side under 28 pixels is not done.
- ``vlm2vec`` (VLM2Vec's ``MMEBModel``): no chat template, ``"<|image_pad|> " + instruction + " "
  + text`` (the bare image token, no ``<|vision_start|>``), one forward, the last token; positions
  0, 1, 2, ... on all three M-RoPE rows, as their ``get_rope_index`` gives prompts without
  ``<|vision_start|>`` (passed by hand: the installed HF finds images by token type and would give
  them 3-D positions). An image with a side under 28 pixels is resized to 56x56 first, as theirs
  is. ``think`` is ignored: VLM2Vec never generates.

The caller loads ``processor`` with the authors' pixel budget, ``AUTHORS_PIXELS[recipe]``
(``(min_pixels, max_pixels)`` of the image processor): UME-R1's processor [784, 2359296] after
qwen-vl-utils (done here); RGE's eval [256*28*28, 1024*28*28]; VLM2Vec's defaults
[4*28*28, 1280*28*28]. Their text formatting of evaluation data (MMEB instructions, trailing
newlines, VLM2Vec-V1's 1344x1344 pre-resize) belongs to the inputs and is not redone here.

Embeddings are L2-normalised float32; every embedding is the final-norm state
(``hidden_states[-1]``) of one token, and ``sequences[i]`` are the ids up to and including it.
"""

from __future__ import annotations

import inspect
import io
import math
from dataclasses import dataclass

import PIL.Image
import torch
import torch.nn.functional as F

RECIPES = ("ume_r1", "rge", "vlm2vec")
# The image processor's (min_pixels, max_pixels) in each author's inference code.
AUTHORS_PIXELS = {
    "ume_r1": (784, 2359296),
    "rge": (256 * 28 * 28, 1024 * 28 * 28),
    "vlm2vec": (4 * 28 * 28, 1280 * 28 * 28),
}
# UME-R1's eval collator GENERATION_PROMPT (one line).
UME_R1_GENERATION_PROMPT = (
    "Represent the above input text, images, videos, or any combination of the three as embeddings. "
    "First output the thinking process in <think> </think> tags and then summarize the entire input in "
    "a word or sentence. Finally, use the <gen_emb> tag to represent the entire input."
)
UME_R1_MAX_NEW_TOKENS = 8192  # README eval
RGE_MAX_NEW_TOKENS = 128
RGE_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
VLM2VEC_IMAGE = "<|image_pad|>"
# qwen-vl-utils 0.0.11 fetch_image defaults.
QWEN_VL_UTILS_FACTOR, QWEN_VL_UTILS_MIN_PIXELS, QWEN_VL_UTILS_MAX_PIXELS = 28, 4 * 28 * 28, 16384 * 28 * 28


@dataclass
class AuthorsResult:
    """``embeddings`` float32 [N, D], unit norm; ``sequences[i]`` the ids (prompt included) ending at
    the token input i's embedding was read at; ``generated[i]`` the ids ``generate`` returned after
    the prompt (None where nothing was generated)."""

    embeddings: torch.Tensor
    sequences: list[torch.Tensor]
    generated: list[torch.Tensor | None]


def authors_embed(
    recipe: str,
    hf_model,
    processor,
    inputs: list[dict],
    side: str = "query",
    think: bool = True,
    max_new_tokens: int | None = None,
) -> AuthorsResult:
    """Embed ``inputs`` (dicts with optional ``text``, ``image`` (PIL image), ``instruction``) one at
    a time as the authors of ``recipe`` do; ``max_new_tokens`` replaces their generation budget."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; expected one of {RECIPES}")
    if side not in ("query", "target"):
        raise ValueError(f"side must be 'query' or 'target', got {side!r}")
    run = {"ume_r1": _ume_r1, "rge": _rge, "vlm2vec": _vlm2vec}[recipe]
    vectors, sequences, generated = [], [], []
    with torch.no_grad():
        for item in inputs:
            vector, sequence, gen = run(hf_model, processor, item, side, think, max_new_tokens)
            vectors.append(vector.float().cpu())
            sequences.append(sequence.cpu())
            generated.append(None if gen is None else gen.cpu())
    embeddings = F.normalize(torch.stack(vectors), p=2, dim=-1)
    return AuthorsResult(embeddings, sequences, generated)


# ------------------------------------------------------------------------------------- shared
def _text(item: dict) -> str:
    """Instruction and text joined by a space (MMEB's ``inst + " " + text``)."""
    return " ".join(p for p in (item.get("instruction"), item.get("text")) if p)


def _to_device(batch, model) -> dict:
    device = next(model.parameters()).device
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in dict(batch).items()}


def _cache(output):
    return getattr(output, "cache", None) or getattr(output, "past_key_values", None)


def _cache_argument(model) -> str:
    """The forward's name for the KV cache (``past_key_values``, renamed ``cache`` in newer transformers)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


# --------------------------------------------------------------------------------------- UME-R1
def _qwen_vl_utils_resize(image: PIL.Image.Image) -> PIL.Image.Image:
    """qwen-vl-utils' ``fetch_image``: RGB (RGBA pasted on white), then ``smart_resize`` and a PIL
    resize (its default filter)."""
    if image.mode == "RGBA":
        white = PIL.Image.new("RGB", image.size, (255, 255, 255))
        white.paste(image, mask=image.split()[3])
        image = white
    image = image.convert("RGB")
    width, height = image.size
    factor = QWEN_VL_UTILS_FACTOR
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > QWEN_VL_UTILS_MAX_PIXELS:
        beta = math.sqrt(height * width / QWEN_VL_UTILS_MAX_PIXELS)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < QWEN_VL_UTILS_MIN_PIXELS:
        beta = math.sqrt(QWEN_VL_UTILS_MIN_PIXELS / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return image.resize((w_bar, h_bar))


def ume_r1_blank_image() -> PIL.Image.Image:
    """Their blank image of a text-only input: a 28x28 white image saved as JPEG (a base64 URL), read back."""
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (28, 28), (255, 255, 255)).save(buffer, format="JPEG")
    buffer.seek(0)
    return PIL.Image.open(buffer).convert("RGB")


def gen_embedding_idx(out_ids: list[int], token_id: int) -> int:
    """Their ``get_gen_embedding_idx`` for one row: j + 1 for the last ``token_id`` at j, -1 when
    there is none or j + 1 >= len(out_ids) - 1."""
    for j in range(len(out_ids) - 1, -1, -1):
        if out_ids[j] == token_id:
            return -1 if j + 1 >= len(out_ids) - 1 else j + 1
    return -1


def _ume_r1(model, processor, item, side, think, max_new_tokens):
    vocab = processor.tokenizer.get_vocab()
    text = _text(item).strip() + "\n<disc_emb>\n" + UME_R1_GENERATION_PROMPT
    image = item.get("image")
    image = _qwen_vl_utils_resize(ume_r1_blank_image() if image is None else image)
    messages = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}
    ]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = _to_device(processor(text=[prompt], images=[image], padding=True, return_tensors="pt"), model)
    ids = inputs["input_ids"][0]
    if not think:  # disc mode: the state at the last <disc_emb>
        hidden = model(**inputs, output_hidden_states=True, return_dict=True).hidden_states[-1][0]
        hits = (ids == vocab["<disc_emb>"]).nonzero().flatten().tolist()
        j = hits[-1] if hits and hits[-1] + 1 < len(ids) - 1 else -1
        end = j if j >= 0 else len(ids) - 1
        return hidden[j], ids[: end + 1], None
    output = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens or UME_R1_MAX_NEW_TOKENS,
        output_hidden_states=True,
        return_dict_in_generate=True,
        use_cache=True,
    )
    generated = output.sequences[0, len(ids) :]
    idx = gen_embedding_idx(generated.tolist(), vocab["<gen_emb>"])
    steps = output.hidden_states
    step = idx if idx >= 0 else len(steps) - 1
    # Step 0 is the prefill (at its last position: the last prompt token); step k >= 1 feeds generated
    # token k - 1.
    vector = steps[step][-1][0, -1]
    return vector, output.sequences[0, : len(ids) + step], generated


# ------------------------------------------------------------------------------------------ RGE
def _rge(model, processor, item, side, think, max_new_tokens):
    tokenizer = processor.tokenizer
    emb_id = tokenizer.convert_tokens_to_ids("<emb>")
    image = item.get("image")
    text = (RGE_IMAGE + "\n" if image is not None else "") + _text(item)
    if not text.endswith("\n"):  # ensure_trailing_newline
        text += "\n"
    messages = [{"role": "user", "content": [{"type": "text", "text": text}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    images = [image] if image is not None else None
    if side == "query" and think:
        inputs = _to_device(processor(text=prompt, images=images, return_tensors="pt"), model)
        output = model.generate(
            **inputs,
            return_dict_in_generate=True,
            output_hidden_states=True,
            max_new_tokens=max_new_tokens or RGE_MAX_NEW_TOKENS,
            eos_token_id=emb_id,
            use_cache=True,
        )
        cache = _cache(output)
        seen = cache.get_seq_length()
        second = model(
            input_ids=output.sequences[:, -1:],
            **{_cache_argument(model): cache},
            cache_position=torch.arange(seen, seen + 1, device=output.sequences.device),
            output_hidden_states=True,
            use_cache=True,
        )
        generated = output.sequences[0, inputs["input_ids"].shape[1] :]
        return second.hidden_states[-1][0, -1], output.sequences[0], generated
    inputs = processor(
        text=[prompt + "<emb>"],
        images=images,
        padding=True,
        padding_side="left",
        pad_to_multiple_of=32,
        return_tensors="pt",
    )
    inputs = _to_device(inputs, model)
    ids, mask = inputs["input_ids"][0], inputs["attention_mask"][0]
    if images is None:  # their transformers' positions for a left-padded text-only row
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        inputs["position_ids"] = positions.view(1, 1, -1).expand(3, 1, -1)
    hidden = model(**inputs, output_hidden_states=True).hidden_states[-1][0]
    index = int(torch.argmax((ids == emb_id).int()))
    return hidden[index], ids[: index + 1][mask[: index + 1].bool()], None


# -------------------------------------------------------------------------------------- VLM2Vec
def _vlm2vec(model, processor, item, side, think, max_new_tokens):
    image = item.get("image")
    text = _text(item)
    if image is not None:
        text = VLM2VEC_IMAGE + " " + text
        if min(image.size) < 28:
            image = image.resize((56, 56))
    inputs = processor(text=[text], images=[image] if image is not None else None, return_tensors="pt")
    inputs = _to_device(inputs, model)
    length = inputs["input_ids"].shape[1]
    positions = torch.arange(length, device=inputs["input_ids"].device)
    inputs["position_ids"] = positions.view(1, 1, -1).expand(3, 1, -1)
    hidden = model(**inputs, output_hidden_states=True, return_dict=True).hidden_states[-1][0]
    return hidden[-1], inputs["input_ids"][0], None
