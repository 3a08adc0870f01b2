"""Prompts through the model's chat template.

A prompt is one user turn (image first, then the task instruction, then the text; with thinking,
the reasoning instruction last) followed by the assistant generation prompt. With thinking on, the
assistant turn opens with ``think_prefix`` so the model writes ``<think> ... </think>`` and a short
answer; a given trace is appended after the generation prompt in the same place. The embedding
token then closes the sequence.
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


def user_parts(item: EmbedInput, side: str, think: bool, config: PromptConfig) -> list[str]:
    """The text pieces of the user turn, in order (the image, if any, goes before them)."""
    parts = [item.instruction or config.instruction(side)]
    if item.text:
        parts.append(item.text)
    if think:
        parts.append(config.reasoning_instruction)
    return [p for p in parts if p]


def build_messages(
    item: EmbedInput, side: str, think: bool, config: PromptConfig, vision: bool
) -> list[dict]:
    """Chat messages for one input; list-of-parts content for Qwen-VL templates, a str for text-only ones."""
    text = "\n".join(user_parts(item, side, think, config))
    if vision:
        content = ([{"type": "image"}] if item.image is not None else []) + [{"type": "text", "text": text}]
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
    messages = build_messages(item, side, think or trace is not None, config, vision)
    text = template_owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if trace is not None:
        return text + trace
    return text + (config.think_prefix if think else "")
