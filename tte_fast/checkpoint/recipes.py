"""Recipes: the published reasoning embedders' inference settings, as data.

A recipe is a named set of ``TTEConfig`` settings (prompt layout, embedding token and where it is
read, stop tokens, fallback, positions, pixel budget, sampling source) that runs a public checkpoint
as its authors' inference code does (see docs/models.md). ``UnifiedTTE.from_pretrained(path,
recipe=NAME)`` applies one over the checkpoint's saved settings (keyword options still win), saves
its name in ``tte_config.json`` and checks at load that it fits the checkpoint.

- ``ume_r1`` (UME-R1-2B/7B, Qwen2-VL): the chat template with its default system prompt; the user
  turn is the image, then ``"{text}\\n<disc_emb>\\n"`` and the authors' fixed instruction; nothing
  pre-filled. Thinking (both sides) generates up to ``<gen_emb>`` and embeds at it (the state of the
  step that feeds it); a row that never generates it embeds at the last token it fed. Without
  thinking, one forward embeds at ``<disc_emb>``. Text-only inputs get a white 56x56 image (their
  28x28 blank, after qwen-vl-utils' minimum).
- ``rge`` (RGE, Qwen2.5-VL-3B): the chat template, the image written into the text, text ending in
  a newline; queries generate until ``<emb>`` (the only stop token, 128 at most) and embed at it, or
  at their last sampled token, fed; targets embed at ``<emb>`` appended after the generation prompt.
- ``vlm2vec`` (VLM2Vec-V1/V2, Qwen2-VL): no chat template, ``"<|image_pad|> {instruction} {text}"``,
  no thinking, the embedding at the last prompt token, plain sequential positions.

Every recipe takes its sampling from the checkpoint's generation_config (Qwen-VL: greedy over
repetition-penalised logits) and leaves instructions to the inputs (empty defaults), as the authors'
evaluation data carries them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from tte_fast.checkpoint.model_types import is_qwen_vl
from tte_fast.checkpoint.tte_config import TTEConfig
from tte_fast.prompting.prompts import PromptConfig

# UME-R1's instruction after "<disc_emb>" (its evaluation collator's GENERATION_PROMPT, one line).
UME_R1_INSTRUCTION = (
    "Represent the above input text, images, videos, or any combination of the three as embeddings. "
    "First output the thinking process in <think> </think> tags and then summarize the entire input in "
    "a word or sentence. Finally, use the <gen_emb> tag to represent the entire input."
)
QWEN_VL_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
# Instructions come with the inputs (as in MMEB rows); the recipes add none of their own.
_NO_INSTRUCTIONS = {"query_instruction": "", "target_instruction": "", "reasoning_instruction": ""}


@dataclass(frozen=True)
class Recipe:
    """Settings over ``TTEConfig`` (``prompts`` over ``PromptConfig``) and what a checkpoint needs
    for them: tokens its tokenizer must have, and whether it must be a Qwen-VL model."""

    name: str
    settings: dict
    prompts: dict = field(default_factory=dict)
    tokens: tuple[str, ...] = ()
    vision: bool = False

    def apply(self, config: TTEConfig) -> TTEConfig:
        """``config`` with this recipe's settings (its prompts merged over ``config.prompts``)."""
        prompts = PromptConfig.from_dict({**config.prompts.to_dict(), **_NO_INSTRUCTIONS, **self.prompts})
        return replace(config, **self.settings, prompts=prompts, recipe=self.name)

    def check(self, tokenizer, model_type: str) -> None:
        """A clear error where the checkpoint cannot run this recipe."""
        missing = [t for t in self.tokens if t not in tokenizer.get_vocab()]
        if missing:
            raise ValueError(
                f"recipe {self.name!r} needs the tokens {missing}, which this checkpoint's tokenizer lacks"
            )
        if self.vision and not is_qwen_vl(model_type):
            raise ValueError(
                f"recipe {self.name!r} needs a Qwen-VL checkpoint, "
                f"got the text-only model type {model_type!r}"
            )


RECIPES = {
    "ume_r1": Recipe(
        "ume_r1",
        settings=dict(
            embed_token="<gen_emb>",
            think_end_token="",  # one budget for the whole generation, as generate's max_new_tokens
            max_think_tokens=8192,
            embed_fallback="last_fed",
            prompt_embed="token",
            prompt_embed_token="<disc_emb>",
            generation="checkpoint",
            min_pixels=4 * 28 * 28,  # qwen-vl-utils' floor, applied before the processor's 784
            max_pixels=2359296,
        ),
        prompts=dict(
            user_template="{input}\n<disc_emb>\n" + UME_R1_INSTRUCTION,
            joiner=" ",
            strip_input=True,
            think_prefix="",
            think_query=True,
            think_target=True,
            text_image_size=56,
        ),
        tokens=("<gen_emb>", "<disc_emb>"),
        vision=True,
    ),
    "rge": Recipe(
        "rge",
        settings=dict(
            embed_token="<emb>",
            stop_tokens=["<emb>"],
            think_end_token="",
            max_think_tokens=128,
            embed_fallback="last_sampled",
            prompt_embed="append",
            generation="checkpoint",
            min_pixels=256 * 28 * 28,
            max_pixels=1024 * 28 * 28,
        ),
        prompts=dict(
            user_template="{image}{input}\n",
            image_placeholder=QWEN_VL_IMAGE + "\n",
            joiner=" ",
            think_prefix="",
            think_query=True,
            think_target=False,
        ),
        tokens=("<emb>",),
        vision=True,
    ),
    "vlm2vec": Recipe(
        "vlm2vec",
        settings=dict(
            prompt_embed="last",
            positions="sequential",
            generation="checkpoint",
            min_pixels=4 * 28 * 28,
            max_pixels=1280 * 28 * 28,
        ),
        prompts=dict(
            chat=False,
            user_template="{image}{input}",
            image_placeholder="<|image_pad|> ",
            joiner=" ",
            think_prefix="",
            think_query=False,
            think_target=False,
        ),
        tokens=("<|image_pad|>",),
        vision=True,
    ),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; expected one of {sorted(RECIPES)}")
    return RECIPES[name]


def add_recipe_argument(parser) -> None:
    """``--recipe NAME`` on a command that loads a model."""
    parser.add_argument(
        "--recipe",
        default=None,
        choices=sorted(RECIPES),
        help="run a published embedder as its authors do (see docs/models.md)",
    )
