"""Where a Qwen-VL checkpoint's chat template comes from, and what happens when it cannot show images."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from tte_fast.checkpoint.hf_processor import (
    CHAT_TEMPLATE_FILE,
    LEGACY_CHAT_TEMPLATE_FILE,
    packaged_chat_template,
)
from tte_fast.model import UnifiedTTE

# A working template with a marker, to see which file it was read from.
MARKED = packaged_chat_template().replace("<|im_start|>assistant", "<|im_start|>assistant MARK", 1)
# A text-only template: string concatenation fails on list-of-parts content.
TEXT_ONLY = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content + '' }}<|im_end|>\n{% endfor %}"


@pytest.fixture
def checkpoint(tiny_checkpoints, tmp_path):
    """A copy of the tiny Qwen2-VL checkpoint without its processor template."""
    path = tmp_path / "model"
    shutil.copytree(tiny_checkpoints["qwen2_vl"], path)
    os.remove(path / CHAT_TEMPLATE_FILE)
    return path


def _image_input():
    return {"image": np.full((40, 40, 3), 200, dtype=np.uint8), "text": "what is this"}


def test_the_older_chat_template_json_is_read(checkpoint):
    (checkpoint / LEGACY_CHAT_TEMPLATE_FILE).write_text(json.dumps({"chat_template": MARKED}))
    model = UnifiedTTE.from_pretrained(str(checkpoint), device="cpu")
    assert model.processor.chat_template == MARKED


def test_chat_template_jinja_wins_over_json(checkpoint):
    (checkpoint / LEGACY_CHAT_TEMPLATE_FILE).write_text(json.dumps({"chat_template": TEXT_ONLY}))
    (checkpoint / CHAT_TEMPLATE_FILE).write_text(MARKED)
    model = UnifiedTTE.from_pretrained(str(checkpoint), device="cpu")
    assert model.processor.chat_template == MARKED


@pytest.mark.parametrize("source", ["tokenizer", CHAT_TEMPLATE_FILE])
def test_a_template_that_cannot_render_images_is_replaced_with_a_warning(checkpoint, source):
    if source == "tokenizer":  # the tokenizer's own (text-only) template is all the checkpoint has
        config_path = checkpoint / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        config["chat_template"] = TEXT_ONLY
        config_path.write_text(json.dumps(config))
        for extra in checkpoint.glob("chat_template*"):
            extra.unlink()
    else:
        (checkpoint / CHAT_TEMPLATE_FILE).write_text(TEXT_ONLY)
    with pytest.warns(UserWarning, match="cannot render image parts"):
        model = UnifiedTTE.from_pretrained(str(checkpoint), device="cpu")
    assert model.processor.chat_template == packaged_chat_template()
    result = model.encode([_image_input()], think=False)
    assert result.embeddings.shape[0] == 1


def test_a_broken_chat_template_json_names_the_file(checkpoint):
    (checkpoint / LEGACY_CHAT_TEMPLATE_FILE).write_text("[1, 2]")
    with pytest.raises(ValueError, match="chat_template.json"):
        UnifiedTTE.from_pretrained(str(checkpoint), device="cpu")
