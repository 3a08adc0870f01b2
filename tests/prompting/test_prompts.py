"""Prompt rendering (tte_fast.prompting.prompts): one renderer per side, thinking or not, given traces."""

from __future__ import annotations

import pytest

from tte_fast.inputs import EmbedInput
from tte_fast.prompting.prompts import PromptConfig, render_prompt


def test_prompts_per_side(vl_model):
    config = PromptConfig(system_prompt="SYS")
    item = EmbedInput(text="a cat", image=None)
    query = render_prompt(vl_model.processor, item, "query", True, config, vision=True)
    target = render_prompt(vl_model.processor, item, "target", False, config, vision=True)
    traced = render_prompt(vl_model.processor, item, "target", False, config, vision=True, trace="<think>\nT")
    assert "SYS" in query and config.query_instruction in query and config.reasoning_instruction in query
    assert query.endswith("<|im_start|>assistant\n" + config.think_prefix)
    assert config.target_instruction in target and config.reasoning_instruction not in target
    assert target.endswith("<|im_start|>assistant\n")
    # A given trace answers the reasoning prompt: same user turn as thinking, then the trace.
    assert config.reasoning_instruction in traced and traced.endswith("assistant\n<think>\nT")
    own = EmbedInput(text="a cat", instruction="Find the cat.")
    assert "Find the cat." in render_prompt(vl_model.processor, own, "query", False, config, vision=True)


def test_user_templates_and_placeholders_lay_out_the_turn_exactly(vl_model):
    """The layouts recipes use: ``{input}`` joined by ``joiner`` (stripped where asked), the image
    written into the text, no chat template at all."""
    image = EmbedInput(text="What is in the image", instruction="Find it:", image=object())
    text = EmbedInput(text="  a cat ", instruction="")
    plain = PromptConfig(
        chat=False, user_template="{image}{input}", image_placeholder="<|image_pad|> ", joiner=" "
    )
    assert render_prompt(vl_model.processor, image, "query", False, plain, True) == (
        "<|image_pad|> Find it: What is in the image"
    )
    # No image: no placeholder; an empty instruction falls back to the side's.
    want = PromptConfig().query_instruction + "   a cat "
    assert render_prompt(vl_model.processor, text, "query", False, plain, True) == want
    stripped = PromptConfig(
        user_template="{input}\n<x>\n{reasoning}", strip_input=True, reasoning_instruction="R"
    )
    rendered = render_prompt(vl_model.processor, text, "target", True, stripped, True)
    user = PromptConfig().target_instruction + "\n  a cat".rstrip() + "\n<x>\nR"
    messages = [{"role": "user", "content": [{"type": "text", "text": user}]}]
    chat = vl_model.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == chat + stripped.think_prefix
    in_text = PromptConfig(user_template="{image}{input}\n", image_placeholder="<V>\n")
    chat = render_prompt(vl_model.processor, image, "query", False, in_text, True)
    assert "<V>\nFind it:\nWhat is in the image\n<|im_end|>" in chat
    assert "<|vision_start|>" not in chat  # the image is in the text, not a content part


def test_prompt_layouts_that_cannot_work_are_refused():
    with pytest.raises(ValueError, match="image_placeholder"):
        PromptConfig(chat=False)
    with pytest.raises(ValueError, match="user_template"):
        PromptConfig(user_template="{input} {text}")
    with pytest.raises(ValueError, match="text_image_size"):
        PromptConfig(text_image_size=-1)
