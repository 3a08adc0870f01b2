"""Prompt rendering (tte_fast.prompting.prompts): one renderer per side, thinking or not, given traces."""

from __future__ import annotations

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
