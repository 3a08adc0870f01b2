"""Loading and saving (tte_fast.checkpoint.loading, UnifiedTTE.from_pretrained / save_pretrained): round
trips, restored settings, unknown model types, the default attention and the stop tokens."""

from __future__ import annotations

import importlib.util
import json
import os
from types import SimpleNamespace

import pytest
import torch
from helpers import random_pixels
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from tte_fast.checkpoint.loading import default_attention
from tte_fast.checkpoint.tte_config import TTE_CONFIG_FILE
from tte_fast.model import UnifiedTTE, _eos_token_ids

pytestmark = pytest.mark.usefixtures("one_thread")


def test_unknown_model_type_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "not_a_model"}))
    with pytest.raises(ValueError, match="not_a_model"):
        UnifiedTTE.from_pretrained(str(tmp_path))


def test_save_load_round_trip(vl_model, tmp_path):
    inputs = [{"image": random_pixels(0, 50, 70), "text": "round trip"}, "text only"]
    before = vl_model.encode(inputs, max_think_tokens=3)
    vl_model.save_pretrained(str(tmp_path))
    assert any(name.endswith(".safetensors") for name in os.listdir(tmp_path))
    assert (tmp_path / TTE_CONFIG_FILE).exists()
    reloaded = UnifiedTTE.from_pretrained(str(tmp_path), device="cpu")
    after = reloaded.encode(inputs, max_think_tokens=3)
    assert after.traces == before.traces
    torch.testing.assert_close(after.embeddings, before.embeddings, atol=1e-6, rtol=0)


def test_saved_settings_are_restored(tiny_checkpoints, tmp_path):
    model = UnifiedTTE.from_pretrained(
        tiny_checkpoints["qwen2"], device="cpu", max_think_tokens=7, prompts={"query_instruction": "Q!"}
    )
    model.save_pretrained(str(tmp_path))
    reloaded = UnifiedTTE.from_pretrained(str(tmp_path), device="cpu")
    assert reloaded.config.max_think_tokens == 7
    assert reloaded.config.prompts.query_instruction == "Q!"
    assert reloaded.embed_token == "<|im_end|>"  # the tiny tokenizer has no <emb>


def test_default_attention(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "flash_attn" else None)
    assert default_attention(cuda, torch.bfloat16, "last_token", False) == "flash_attention_2"
    assert default_attention(cpu, torch.bfloat16, "last_token", False) == "sdpa"
    assert default_attention(cuda, torch.float32, "last_token", False) == "sdpa"
    assert default_attention(cuda, torch.bfloat16, "tte_u", False) == "sdpa"  # the head takes a 4D mask
    assert default_attention(cuda, torch.bfloat16, "last_token", True) == "sdpa"  # graphs need a static cache
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert default_attention(cuda, torch.bfloat16, "last_token", False) == "sdpa"


def test_eos_ids_of_a_tokenizer_without_end_of_turn_token():
    """A non-Qwen tokenizer with an <unk>: the missing <|im_end|> must not make <unk> a stop token."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
        unk_token="<unk>",
        eos_token="</s>",
    )
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == 0  # what the lookup must not use
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=None))
    assert _eos_token_ids(model, tokenizer) == (2,)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"prompt_embed": "token"}, "prompt_embed_token"),
        ({"prompt_embed_token": "<x>"}, "prompt_embed_token"),
        ({"prompt_embed": "middle"}, "prompt_embed"),
        ({"positions": "3d"}, "positions"),
        ({"embed_fallback": "last"}, "embed_fallback"),
        ({"generation": "hf"}, "generation"),
        ({"stop_tokens": "<emb>"}, "stop_tokens"),
        ({"min_pixels": 0}, "min_pixels"),
        ({"min_pixels": 5000, "max_pixels": 4000}, "exceeds max_pixels"),
    ],
)
def test_settings_that_cannot_work_are_refused(settings, message):
    from tte_fast.checkpoint.tte_config import TTEConfig

    with pytest.raises(ValueError, match=message):
        TTEConfig(**settings)


def test_stop_tokens_replace_the_checkpoints_and_pixels_are_set_at_load(tiny_checkpoints):
    path = tiny_checkpoints["qwen2_vl"]
    default = UnifiedTTE.from_pretrained(path, device="cpu")
    model = UnifiedTTE.from_pretrained(
        path, device="cpu", stop_tokens=["<|object_ref_end|>"], embed_token="<|box_start|>", max_pixels=9999
    )
    vocab = model.tokenizer.get_vocab()
    # The embedding token always ends a trace; the checkpoint's EOS tokens no longer do.
    assert model.eos_token_ids == (vocab["<|object_ref_end|>"], vocab["<|box_start|>"])
    assert default.eos_token_ids[0] == vocab["<|im_end|>"] and vocab["<|im_end|>"] not in model.eos_token_ids
    assert model.processor.image_processor.size.longest_edge == 9999
    with pytest.raises(ValueError, match="stop_tokens: the tokenizer has no token '<nope>'"):
        UnifiedTTE.from_pretrained(path, device="cpu", stop_tokens=["<nope>"])
    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        UnifiedTTE.from_pretrained(path, device="cpu", recipe="nope")
