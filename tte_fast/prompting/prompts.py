"""Prompts through the model's chat template, or as plain text.

A prompt is one user turn (image first, then video, then the task instruction, then the text; with thinking,
the reasoning instruction last) followed by the assistant generation prompt. With thinking on, the
assistant turn opens with ``think_prefix`` so the model writes ``<think> ... </think>`` and a short
answer; a given trace is appended after the generation prompt in the same place. The embedding
token then closes the sequence.

Published embedders format the user turn their own way (``tte_fast.checkpoint.recipes``):
``user_template`` lays it out from ``{input}`` (instruction and text joined by ``joiner``),
``{image}`` (``image_placeholder``, where the image is written into the text instead of being a chat
content part) and ``{reasoning}`` (the reasoning instruction when thinking); ``chat=False`` uses that
text as the whole prompt, with no chat template and no generation prompt.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tte_fast.inputs import EmbedInput
from tte_fast.settings.schema import build

DEFAULT_REASONING_INSTRUCTION = (
    "Before answering, think step by step inside <think> </think> about what this input shows and "
    "what a retrieval embedding of it must capture for the task: the key objects, attributes, text and "
    "intent. Then give a short final answer that summarises it."
)
DEFAULT_QUERY_INSTRUCTION = "Represent the given query for retrieving relevant candidates."
DEFAULT_TARGET_INSTRUCTION = "Represent the given candidate."
SIDES = ("query", "target")


@dataclass
class PromptConfig:
    """Instructions per side; ``think_query`` / ``think_target`` pick thinking when encode() is not told."""

    query_instruction: str = DEFAULT_QUERY_INSTRUCTION
    target_instruction: str = DEFAULT_TARGET_INSTRUCTION
    reasoning_instruction: str = DEFAULT_REASONING_INSTRUCTION
    think_prefix: str = "<think>\n"
    system_prompt: str | None = None
    think_query: bool = True
    think_target: bool = False
    chat: bool = True
    user_template: str | None = None
    joiner: str = "\n"
    strip_input: bool = False
    image_placeholder: str | None = None
    text_image_size: int = 0  # > 0: text-only inputs get a white image of this side (UME-R1's eval)

    def __post_init__(self):
        if not self.chat and self.image_placeholder is None:
            raise ValueError("prompts without the chat template (chat=False) need image_placeholder")
        if self.user_template is not None:
            try:
                self.user_template.format(input="", image="", reasoning="")
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(
                    "user_template may use only {input}, {image} and {reasoning}: "
                    f"{self.user_template!r} ({e})"
                ) from None
        if not isinstance(self.text_image_size, int) or self.text_image_size < 0:
            raise ValueError(f"text_image_size must be an int >= 0, got {self.text_image_size!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PromptConfig:
        return build(cls, data, "prompts.")

    def thinks(self, side: str) -> bool:
        check_side(side)
        return self.think_query if side == "query" else self.think_target

    def instruction(self, side: str) -> str:
        check_side(side)
        return self.query_instruction if side == "query" else self.target_instruction


def check_side(side: str) -> None:
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")


def user_text(item: EmbedInput, side: str, think: bool, config: PromptConfig) -> str:
    """The text of the user turn (an image written into it as ``image_placeholder``; as a chat
    content part, it goes before this text)."""
    parts = [p for p in (item.instruction or config.instruction(side), item.text) if p]
    joined = config.joiner.join(parts)
    if config.strip_input:
        joined = joined.strip()
    reasoning = config.reasoning_instruction if think else ""
    image = config.image_placeholder if item.image is not None and config.image_placeholder else ""
    if config.user_template is not None:
        return config.user_template.format(input=joined, image=image, reasoning=reasoning)
    return image + "\n".join(p for p in (joined, reasoning) if p)


def build_messages(
    item: EmbedInput, side: str, think: bool, config: PromptConfig, vision: bool
) -> list[dict]:
    """Chat messages for one input; list-of-parts content for Qwen-VL templates, a str for text-only ones."""
    text = user_text(item, side, think, config)
    if vision:
        as_part = item.image is not None and config.image_placeholder is None
        content = ([{"type": "image"}] if as_part else []) + [{"type": "text", "text": text}]
        if item.video is not None:  # a chat part even where images are written into the text
            content.insert(int(as_part), {"type": "video"})
    else:
        content = text
    messages = [{"role": "user", "content": content}]
    if config.system_prompt:
        system = [{"type": "text", "text": config.system_prompt}] if vision else config.system_prompt
        messages.insert(0, {"role": "system", "content": system})
    return messages


def render_prompt(
    template_owner,
    item: EmbedInput,
    side: str,
    think: bool,
    config: PromptConfig,
    vision: bool,
    trace: str | None = None,
) -> str:
    """The prompt string: chat turn + generation prompt, then the think prefix (thinking) or ``trace``."""
    # A trace answers the reasoning prompt, so it follows the same user turn that thinking uses.
    reasoning = think or trace is not None
    if item.video is not None and not config.chat:
        raise ValueError("videos need the chat template; prompts with chat=False take text and images only")
    if config.chat:
        messages = build_messages(item, side, reasoning, config, vision)
        text = template_owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        text = user_text(item, side, reasoning, config)
    if trace is not None:
        return text + trace
    return text + (config.think_prefix if think else "")
