"""Why the minibench model is a Qwen3-VL: its decoder can tell the picture's columns apart.

The cells of a scene sit side by side, so which cell a picture token shows is its column. The text
decoder's M-RoPE rotates every picture token by its (t, h, w) position: the phases of the tokens of
one row must differ from column to column for attention to pick a cell by position. With the
Qwen2-VL layout the minibench used before (contiguous sections, the column axis on the lowest
frequencies) eight columns are nearly one phase; with the shipped Qwen3-VL layout (interleaved axes)
they are far apart. The vision tower adds the other half: Qwen3-VL's learned absolute position
embedding, which Qwen2-VL's tower does not have.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForImageTextToText

from tte_fast.minibench.base import PROMPTS, model_config
from tte_fast.minibench.scenes import CELLS
from tte_fast.minibench.tokenizer import build_tokenizer
from tte_fast.runtime.fused_decoder import FusedDecoder

COLUMNS = 2 * CELLS  # merged picture tokens per row: two per cell
# The text and vision sizes of the minibench's Qwen2-VL, as shipped before.
QWEN2_VL_LAYOUT = {
    "model_type": "qwen2_vl",
    "text_config": {
        "model_type": "qwen2_vl_text",
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 64,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
    },
    "vision_config": {"model_type": "qwen2_vl_vision", "depth": 1, "embed_dim": 64, "hidden_size": 128},
}


@pytest.fixture(scope="module")
def models():
    """The shipped Qwen3-VL and the former Qwen2-VL layout, random weights."""
    shipped = AutoModelForImageTextToText.from_config(model_config(build_tokenizer(PROMPTS)))
    former = AutoModelForImageTextToText.from_config(AutoConfig.for_model(**QWEN2_VL_LAYOUT))
    return shipped, former


def column_phases(model) -> torch.Tensor:
    """``[COLUMNS, 2 d]``: the rotary cos and sin the text decoder gives the first row's picture
    tokens (t and h fixed, w the column)."""
    columns = torch.arange(COLUMNS)
    positions = torch.stack([torch.zeros_like(columns), torch.zeros_like(columns), columns])[:, None]
    hidden = torch.zeros(1, COLUMNS, model.config.get_text_config().hidden_size)
    cos, sin = FusedDecoder(model).rotary(hidden, positions)
    return torch.cat([cos[0], sin[0]], dim=-1)


def closest_columns(model) -> float:
    """The smallest distance between two columns' rotary phases."""
    distances = torch.cdist(column_phases(model), column_phases(model))
    return distances[~torch.eye(COLUMNS, dtype=torch.bool)].min().item()


def test_the_shipped_layout_tells_columns_apart_and_the_former_one_did_not(models):
    shipped, former = models
    assert shipped.config.model_type == "qwen3_vl"
    assert closest_columns(shipped) > 0.3
    assert closest_columns(former) < 0.02  # eight columns within 0.003 rad a column


def test_the_vision_tower_knows_where_each_patch_is(models):
    """Qwen3-VL's tower adds a learned position embedding to every patch (Qwen2-VL's has none): a
    cell's tokens differ by where the cell is, whatever it holds."""
    shipped, former = models
    assert hasattr(shipped.model.visual, "pos_embed")
    assert not any("pos_embed" in name for name, _ in former.model.visual.named_parameters())
