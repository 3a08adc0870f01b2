"""Recipes against their authors' inference code (tte_fast.checkpoint.authors, plain HF, one input
at a time): on tiny random checkpoints shaped like the published ones, UnifiedTTE.from_pretrained(
recipe=...) batched under both schedulers gives the same sequences (up to the token embedded at) and
the same embeddings, for every way a recipe reads its embedding; recipes that do not fit fail at
load; the recipe name is saved; a LoRA adapter (legacy Qwen-VL keys) is merged at load.

Tolerance: both sides run the same float32 weights on the same tokens and positions, but in other
batch shapes (left padding, batch 3 or 4 against 1, RGE's targets padded to 32, a KV cache against
none), so the matmul reductions round differently: up to ~2e-6 on these unit vectors. ATOL = 1e-5
leaves margin for that; a wrong position, prompt token or read step moves them by far more (these
sharpened random models change their states entirely: > 1e-2, see the positions test).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from helpers import random_image
from transformers import Qwen2VLImageProcessorPil

from tte_fast.checkpoint.authors import AUTHORS_PIXELS, authors_embed
from tte_fast.checkpoint.hf_processor import load_processor
from tte_fast.checkpoint.model_types import auto_model_class
from tte_fast.checkpoint.tte_config import TTE_CONFIG_FILE
from tte_fast.model import UnifiedTTE
from tte_fast.testing import RECIPE_CHECKPOINTS, build_recipe_checkpoint, build_tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-5
SCHEDULERS = ["continuous", "static"]
WORDS = ["a", "cat", "dog", "red", "tree", "house", "blue", "runs", "over", "the", "small", "bright", "old"]


def make_inputs(seed: int, n: int, images: bool = True) -> list[dict]:
    """Random texts (some with an instruction), every other one with a random image of its own size."""
    rng = np.random.default_rng(seed)
    inputs = []
    for i in range(n):
        item = {"text": " ".join(rng.choice(WORDS, size=int(rng.integers(1, 7))))}
        if i % 3 == 2:
            item["instruction"] = "Find the caption:"
        if images and i % 2:
            item["image"] = random_image(
                seed * 100 + i, int(rng.integers(28, 100)), int(rng.integers(28, 100))
            )
        inputs.append(item)
    return inputs


class Pair:
    """A recipe's tiny checkpoint: as UnifiedTTE, and as the plain HF model + processor its authors
    load (``pixels``: a (min, max) pixel budget for both instead of the authors')."""

    def __init__(self, recipe: str, path: str, pixels=None):
        model_type = RECIPE_CHECKPOINTS[recipe][0]
        self.recipe, self.path = recipe, path
        low, high = pixels or AUTHORS_PIXELS[recipe]
        budget = {"min_pixels": low, "max_pixels": high} if pixels else {}
        self.tte = UnifiedTTE.from_pretrained(path, recipe=recipe, device="cpu", dtype="float32", **budget)
        self.hf = auto_model_class(model_type).from_pretrained(path, dtype=torch.float32).eval()
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(path, min_pixels=low, max_pixels=high)
        self.processor = load_processor(path, model_type, image_processor=image_processor)

    def token_id(self, token: str) -> int:
        return self.processor.tokenizer.get_vocab()[token]

    def authors(self, inputs, **kwargs):
        return authors_embed(self.recipe, self.hf, self.processor, inputs, **kwargs)


# RGE's authors' budget brings every image up to 200,704 pixels (256 tokens); the RGE decode tests
# keep the tiny images' own size (test_pixel_budgets checks the real budget, test_rge_target runs it).
SMALL_PIXELS = (4 * 28 * 28, 64 * 28 * 28)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """(recipe, emits_embed_token[, pixels]) -> Pair, each checkpoint built once."""
    root = tmp_path_factory.mktemp("recipes")
    paths = {}

    class _Lazy(dict):
        def __missing__(self, key):
            recipe, emits, pixels = (*key, None)[:3]
            if (recipe, emits) not in paths:
                folder = str(root / f"{recipe}_{emits}")
                paths[recipe, emits] = build_recipe_checkpoint(recipe, folder, emits_embed_token=emits)
            self[key] = Pair(recipe, paths[recipe, emits], pixels)
            return self[key]

    return _Lazy()


def assert_same(result, reference) -> None:
    """Sequences identical (each up to the token embedded at), embeddings within ATOL."""
    assert [s.tolist() for s in result.sequences] == [s.tolist() for s in reference.sequences]
    torch.testing.assert_close(result.embeddings, reference.embeddings, atol=ATOL, rtol=0)


def emitted(reference, token_id: int) -> list[int]:
    """Rows whose generation contains ``token_id``."""
    return [i for i, g in enumerate(reference.generated) if token_id in g.tolist()]


# ------------------------------------------------------------------------------------- UME-R1
UME_BUDGET = 12


@pytest.fixture(scope="module")
def ume_emits(pairs):
    pair = pairs["ume_r1", True]
    inputs = make_inputs(1, 6)
    reference = pair.authors(inputs, think=True, max_new_tokens=UME_BUDGET)
    return pair, inputs, reference


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_ume_r1_gen_mode_embeds_at_gen_emb(ume_emits, scheduler):
    pair, inputs, reference = ume_emits
    gen_emb, im_end = pair.token_id("<gen_emb>"), pair.token_id("<|im_end|>")
    rows = emitted(reference, gen_emb)
    assert len(rows) >= 2, "the checkpoint should generate <gen_emb> for some inputs"
    for i in rows:  # the trained format: one <gen_emb>, then <|im_end|>
        assert reference.generated[i].tolist().count(gen_emb) == 1
        assert reference.generated[i][-1] == im_end and reference.sequences[i][-1] == gen_emb
    for side in ("query", "target"):
        result = pair.tte.encode(
            inputs, think=True, max_think_tokens=UME_BUDGET, batch_size=4, scheduler=scheduler, side=side
        )
        assert_same(result, reference)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_ume_r1_gen_emb_as_the_last_budgeted_token(ume_emits, scheduler):
    """Their index rule reads the step before when <gen_emb> is the last token generate returns."""
    pair, inputs, reference = ume_emits
    gen_emb = pair.token_id("<gen_emb>")
    rows = [i for i in emitted(reference, gen_emb) if reference.generated[i].tolist().index(gen_emb) >= 1]
    i = rows[0]
    budget = reference.generated[i].tolist().index(gen_emb) + 1
    want = pair.authors([inputs[i]], think=True, max_new_tokens=budget)
    assert want.generated[0][-1] == gen_emb and want.sequences[0][-1] != gen_emb
    got = pair.tte.encode(
        [inputs[i], inputs[i - 1]], think=True, max_think_tokens=budget, batch_size=2, scheduler=scheduler
    )
    assert got.sequences[0].tolist() == want.sequences[0].tolist()
    torch.testing.assert_close(got.embeddings[:1], want.embeddings, atol=ATOL, rtol=0)


def test_checkpoint_sampling_with_top_k_1_is_greedy(pairs):
    """generation="checkpoint" takes Qwen-VL-Instruct's sampling; top_k=1 leaves one token to draw."""
    pair = pairs["ume_r1", False]
    options = pair.tte.decode_options()
    assert (options.do_sample, options.top_k, options.temperature) == (True, 1, 0.01)
    assert options.repetition_penalty == 1.05
    inputs = make_inputs(11, 2)
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        runs.append(pair.tte.encode(inputs, think=True, max_think_tokens=4, scheduler="static").sequences)
    greedy = pair.tte.encode(inputs, think=True, max_think_tokens=4, do_sample=False, scheduler="static")
    assert [s.tolist() for s in runs[0]] == [s.tolist() for s in runs[1]]
    assert [s.tolist() for s in runs[0]] == [s.tolist() for s in greedy.sequences]


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_ume_r1_gen_mode_out_of_budget(pairs, scheduler):
    pair, budget = pairs["ume_r1", False], 5
    inputs = make_inputs(2, 5)
    reference = pair.authors(inputs, think=True, max_new_tokens=budget)
    assert all(len(g) == budget and pair.token_id("<gen_emb>") not in g.tolist() for g in reference.generated)
    result = pair.tte.encode(inputs, think=True, max_think_tokens=budget, batch_size=3, scheduler=scheduler)
    assert_same(result, reference)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_ume_r1_disc_mode(pairs, scheduler):
    pair = pairs["ume_r1", False]
    inputs = make_inputs(3, 5)
    reference = pair.authors(inputs, think=False)
    assert all(s[-1] == pair.token_id("<disc_emb>") for s in reference.sequences)
    for side in ("query", "target"):
        assert_same(
            pair.tte.encode(inputs, think=False, batch_size=3, scheduler=scheduler, side=side), reference
        )


# ---------------------------------------------------------------------------------------- RGE
RGE_BUDGET = 14


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_rge_query_generates_emb(pairs, scheduler):
    pair = pairs["rge", True, SMALL_PIXELS]
    inputs = make_inputs(4, 6)
    reference = pair.authors(inputs, side="query", max_new_tokens=RGE_BUDGET)
    emb = pair.token_id("<emb>")
    rows = emitted(reference, emb)
    assert len(rows) >= 2, "the checkpoint should generate <emb> for some inputs"
    assert all(reference.sequences[i][-1] == emb for i in rows)
    result = pair.tte.encode(
        inputs, think=True, max_think_tokens=RGE_BUDGET, batch_size=4, scheduler=scheduler
    )
    assert_same(result, reference)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_rge_query_out_of_budget(pairs, scheduler):
    """The budget runs out: the last sampled token is fed and embedded at."""
    pair, budget = pairs["rge", False, SMALL_PIXELS], 5
    inputs = make_inputs(5, 5)
    reference = pair.authors(inputs, side="query", max_new_tokens=budget)
    assert all(len(g) == budget for g in reference.generated)
    result = pair.tte.encode(inputs, think=True, max_think_tokens=budget, batch_size=3, scheduler=scheduler)
    assert_same(result, reference)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_rge_target(pairs, scheduler):
    pair = pairs["rge", False]
    inputs = make_inputs(6, 3)
    reference = pair.authors(inputs, side="target")
    assert all(s[-1] == pair.token_id("<emb>") for s in reference.sequences)
    result = pair.tte.encode(inputs, side="target", batch_size=3, scheduler=scheduler)
    assert result.traces is None  # targets do not think
    assert_same(result, reference)


# ------------------------------------------------------------------------------------ VLM2Vec
@pytest.mark.parametrize("side", ["query", "target"])
@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_vlm2vec(pairs, side, scheduler):
    pair = pairs["vlm2vec", False]
    inputs = make_inputs(7, 6)
    reference = pair.authors(inputs, side=side)
    result = pair.tte.encode(inputs, side=side, batch_size=4, scheduler=scheduler)
    assert result.traces is None
    assert_same(result, reference)


def test_vlm2vec_positions_are_sequential_not_hf_default(pairs):
    """HF left to itself gives the bare <|image_pad|> tokens 3-D positions (it finds images by token
    type): their sequential positions make a difference the comparison above sees."""
    pair = pairs["vlm2vec", False]
    item = make_inputs(8, 2)[1]
    assert "image" in item
    inputs = pair.processor(
        text=["<|image_pad|> " + item["text"]], images=[item["image"]], return_tensors="pt"
    )
    with torch.no_grad():
        default = pair.hf(**inputs, output_hidden_states=True).hidden_states[-1][0, -1]
    default = torch.nn.functional.normalize(default, dim=-1)
    ours = pair.tte.encode([item]).embeddings[0]
    torch.testing.assert_close(ours, pair.authors([item]).embeddings[0], atol=ATOL, rtol=0)
    assert (ours - default).abs().max() > 1e-2


# ------------------------------------------------------------------------------- loading, saving
@pytest.mark.parametrize("recipe", ["ume_r1", "rge", "vlm2vec"])
def test_pixel_budgets(pairs, recipe):
    """The recipe's image processor budget is the authors' (UME-R1: qwen-vl-utils' floor of 3136
    pixels applied before their processor's 784)."""
    size = pairs[recipe, False].tte.processor.image_processor.size
    low, high = AUTHORS_PIXELS[recipe]
    assert (size.shortest_edge, size.longest_edge) == (max(low, 4 * 28 * 28), high)


def test_recipe_that_does_not_fit_fails_at_load(pairs, tmp_path):
    with pytest.raises(ValueError, match="<gen_emb>"):
        UnifiedTTE.from_pretrained(pairs["vlm2vec", False].path, recipe="ume_r1", device="cpu")
    text_only = build_tiny_checkpoint("qwen2", str(tmp_path / "qwen2"))
    with pytest.raises(ValueError, match="Qwen-VL"):
        UnifiedTTE.from_pretrained(text_only, recipe="vlm2vec", device="cpu")


def test_recipe_is_saved_and_reloaded(pairs, tmp_path):
    pair = pairs["vlm2vec", False]
    pair.tte.save_pretrained(str(tmp_path))
    with open(tmp_path / TTE_CONFIG_FILE, encoding="utf-8") as f:
        assert json.load(f)["recipe"] == "vlm2vec"
    reloaded = UnifiedTTE.from_pretrained(str(tmp_path), device="cpu")
    assert reloaded.config.recipe == "vlm2vec" and reloaded.config.positions == "sequential"
    inputs = make_inputs(9, 4)
    assert_same(reloaded.encode(inputs, batch_size=4), pair.authors(inputs))


def _save_lora(base, path, rename=None):
    """A LoRA adapter (random, non-zero B) on the text and vision attention, keys in the pre-4.52
    Qwen-VL layout (``model.layers``, ``visual``) as VLM2Vec-V1's; ``rename`` maps them further."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file

    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "qkv"], init_lora_weights=False
    )
    peft_model = get_peft_model(base, config)
    peft_model.save_pretrained(path)
    weights_file = os.path.join(path, "adapter_model.safetensors")
    weights = load_file(weights_file)
    legacy = {}
    for key, value in weights.items():
        key = key.replace("model.language_model.layers.", "model.layers.").replace(
            "model.model.visual.", "model.visual."
        )
        legacy[rename(key) if rename else key] = value
    assert any(".model.layers." in k for k in legacy) and any(".model.visual." in k for k in legacy)
    save_file(legacy, weights_file)
    return peft_model


def test_lora_adapter_is_merged_at_load(pairs, tmp_path):
    pair = pairs["vlm2vec", False]
    base = auto_model_class("qwen2_vl").from_pretrained(pair.path, dtype=torch.float32)
    torch.manual_seed(0)
    peft_model = _save_lora(base, str(tmp_path / "adapter"))
    merged = peft_model.merge_and_unload().eval()
    model = UnifiedTTE.from_pretrained(str(tmp_path / "adapter"), recipe="vlm2vec", device="cpu")
    inputs = make_inputs(10, 4)
    reference = authors_embed("vlm2vec", merged, pair.processor, inputs)
    assert_same(model.encode(inputs, batch_size=4), reference)
    assert (reference.embeddings - pair.authors(inputs).embeddings).abs().max() > 1e-2  # the adapter counts


def test_adapter_that_does_not_fit_is_an_error(pairs, tmp_path):
    base = auto_model_class("qwen2_vl").from_pretrained(pairs["vlm2vec", False].path, dtype=torch.float32)
    _save_lora(base, str(tmp_path / "adapter"), rename=lambda key: key.replace(".self_attn.", ".attention."))
    with pytest.raises(ValueError, match="does not fit"):
        UnifiedTTE.from_pretrained(str(tmp_path / "adapter"), recipe="vlm2vec", device="cpu")
