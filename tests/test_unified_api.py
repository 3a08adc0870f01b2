"""UnifiedTTE errors, save/load round trip and the TTE_u head wiring."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from test_unified import _StopFirstRow  # a sibling test module (pytest puts tests/ on sys.path)

from tte_fast.inputs import InputError, InputTypeError, load_image
from tte_fast.loading import default_attention
from tte_fast.model import UnifiedTTE
from tte_fast.tte_config import TTE_CONFIG_FILE

ATOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vl_model(tiny_checkpoints):
    return UnifiedTTE.from_pretrained(tiny_checkpoints["qwen2_vl"], device="cpu")


def _image(h=50, w=70, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "bad, error, words",
    [
        ({}, InputError, "input 1: needs a non-empty 'text' or an 'image'"),
        ({"image": b"not an image at all"}, InputError, "input 1: cannot read image"),
        ({"image": "/no/such/file.png"}, InputError, "input 1: image file not found"),
        ({"txt": "typo"}, InputError, "input 1: unknown keys \\['txt'\\]"),
        ({"image": _image().astype(np.float32)}, InputTypeError, "input 1: image array must be uint8"),
        ({"text": 3}, InputTypeError, "input 1: 'text' must be a str"),
        (42, InputTypeError, "input 1: expected a str or a dict"),
        ("x " * 5000, InputError, "input 1: prompt of \\d+ tokens plus \\d+ generated tokens exceeds"),
    ],
)
def test_bad_input_names_its_index(vl_model, bad, error, words):
    with pytest.raises(error, match=words) as info:
        vl_model.encode(["fine", bad, "also fine"], max_think_tokens=2)
    assert info.value.index == 1
    assert isinstance(info.value, ValueError)


def test_skip_keeps_the_rest_of_the_batch(vl_model):
    good = ["fine", {"image": _image(), "text": "ok"}, "also fine"]
    clean = vl_model.encode(good, max_think_tokens=3, batch_size=4)
    mixed = [good[0], {"image": b"garbage"}, good[1], "x " * 5000, good[2]]
    result = vl_model.encode(mixed, max_think_tokens=3, batch_size=4, on_error="skip")
    assert sorted(result.errors) == [1, 3]
    assert "cannot read image" in result.errors[1] and "exceeds" in result.errors[3]
    for bad in (1, 3):
        assert result.traces[bad] is None and result.sequences[bad] is None
        assert torch.count_nonzero(result.embeddings[bad]) == 0
    for got, want in zip((0, 2, 4), range(3)):
        torch.testing.assert_close(result.embeddings[got], clean.embeddings[want], atol=ATOL, rtol=0)
        assert result.traces[got] == clean.traces[want]


def test_image_forms_give_the_same_embedding(vl_model, tmp_path):
    array = _image(64, 48, seed=3)
    path = tmp_path / "img.png"
    load_image(0, array).save(path)
    forms = [array, str(path), path.read_bytes(), load_image(0, array)]
    result = vl_model.encode([{"image": f, "text": "same"} for f in forms], think=False)
    for row in result.embeddings[1:]:
        torch.testing.assert_close(row, result.embeddings[0], atol=1e-6, rtol=0)


def test_text_only_model_rejects_images(tiny_checkpoints):
    model = UnifiedTTE.from_pretrained(tiny_checkpoints["qwen2"], device="cpu")
    with pytest.raises(InputError, match="input 0: has an image, but 'qwen2' is a text-only model"):
        model.encode([{"image": _image(), "text": "x"}], think=False)


def test_unknown_model_type_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "not_a_model"}))
    with pytest.raises(ValueError, match="not_a_model"):
        UnifiedTTE.from_pretrained(str(tmp_path))


def test_call_errors(vl_model):
    with pytest.raises(ValueError, match="side"):
        vl_model.encode(["a"], side="both")
    with pytest.raises(ValueError, match="either think=True or traces"):
        vl_model.encode(["a"], think=True, traces=["t"])
    with pytest.raises(ValueError, match="2 traces for 1 inputs"):
        vl_model.encode(["a"], traces=["t", "u"])
    with pytest.raises(ValueError, match="batch_size"):
        vl_model.encode(["a"], batch_size=0)
    with pytest.raises(ValueError, match="on_error"):
        vl_model.encode(["a"], on_error="ignore")
    with pytest.raises(TypeError, match="unknown from_pretrained options"):
        UnifiedTTE.from_pretrained("unused", not_an_option=1)


def test_save_load_round_trip(vl_model, tmp_path):
    inputs = [{"image": _image(), "text": "round trip"}, "text only"]
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


def _head_reference(model: UnifiedTTE, sequence: torch.Tensor, image) -> torch.Tensor:
    """The head over a fresh, unpadded forward's layer L-k states of one sequence."""
    ids = sequence[None]
    kwargs = {}
    if model.vision:
        kwargs["mm_token_type_ids"] = (ids == model.hf_model.config.image_token_id).int()
        if image is not None:
            pixels = model.processor.image_processor(images=[load_image(0, image)], return_tensors="pt")
            kwargs.update(pixel_values=pixels["pixel_values"], image_grid_thw=pixels["image_grid_thw"])
    with torch.inference_mode(), model.head.capture(model.hf_model) as captured:
        model.hf_model(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
        return model.head.embed(captured, torch.ones_like(ids))[0].float()


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2"])
def test_tte_u_head_over_captured_states_equals_fresh_forward(
    tiny_checkpoints, model_type, tmp_path, monkeypatch
):
    model = UnifiedTTE.from_pretrained(
        tiny_checkpoints[model_type], device="cpu", head="tte_u", head_layers=2
    )
    image = _image(40, 90)
    inputs = ["tte_u query", "a longer text query for the unified head"]
    if model.vision:
        inputs.append({"image": image, "text": "with an image"})
    # Thinking, thinking with one row stopped early on EOS, and one prefill without thinking.
    lengths = {}
    for think, stop_early in ((True, False), (True, True), (False, False)):
        if stop_early:
            forced = _StopFirstRow(model.decoder.lm_head, model.eos_token_ids[0], at=1)
            monkeypatch.setattr(model.decoder, "lm_head", forced)
        result = model.encode(inputs, think=think, max_think_tokens=4, batch_size=3)
        monkeypatch.undo()
        lengths[(think, stop_early)] = [len(seq) for seq in result.sequences]
        if stop_early:
            shorter = zip(lengths[(think, True)], lengths[(think, False)])
            assert sum(a < b for a, b in shorter) == 1
        for i, item in enumerate(inputs):
            img = item.get("image") if isinstance(item, dict) else None
            expected = _head_reference(model, result.sequences[i], img)
            torch.testing.assert_close(result.embeddings[i], expected, atol=ATOL, rtol=0)
    model.save_pretrained(str(tmp_path))
    reloaded = UnifiedTTE.from_pretrained(str(tmp_path), device="cpu")
    assert reloaded.config.head == "tte_u" and reloaded.head is not None
    torch.testing.assert_close(
        reloaded.encode(inputs, think=False).embeddings, model.encode(inputs, think=False).embeddings
    )


def test_progress_bar(vl_model, capsys):
    vl_model.encode(["a", "b", "c"], think=False, batch_size=1, progress=True)
    assert "encode" in capsys.readouterr().err


def test_default_attention(monkeypatch):
    import importlib.util

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "flash_attn" else None)
    assert default_attention(cuda, torch.bfloat16, "last_token", False) == "flash_attention_2"
    assert default_attention(cpu, torch.bfloat16, "last_token", False) == "sdpa"
    assert default_attention(cuda, torch.float32, "last_token", False) == "sdpa"
    assert default_attention(cuda, torch.bfloat16, "tte_u", False) == "sdpa"  # the head takes a 4D mask
    assert default_attention(cuda, torch.bfloat16, "last_token", True) == "sdpa"  # graphs need a static cache
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert default_attention(cuda, torch.bfloat16, "last_token", False) == "sdpa"


def _bench_module():
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), os.pardir, "bench", "unified.py")
    spec = importlib.util.spec_from_file_location("bench_unified", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_unified_runs(tmp_path):
    bench = _bench_module()
    out = tmp_path / "unified.json"
    args = ["--contexts", "40", "--batch-size", "2", "--prompt-tokens", "12", "--new-tokens", "3"]
    bench.main([*args, "--repeats", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["embed"][0]["context"] == 40 and report["embed"][0]["speedup"] > 0
    assert report["decode"]["rows_identical"] == "2/2"


def test_bench_embed_on_a_growing_cache(tiny_checkpoints):
    """The flash-attn layout (growing cache, exact-width mask) runs through the embed benchmark too."""
    from tte_fast.generate import Decoder

    bench = _bench_module()
    model = UnifiedTTE.from_pretrained(tiny_checkpoints["qwen2"], device="cpu")
    row = bench.bench_embed(model, Decoder(model.hf_model, static_cache=False), 24, 2, 1)
    assert row["embed_step_ms"] > 0


@pytest.mark.parametrize("shape", [(20, 30), (20, 30, 1), (20, 30, 3), (20, 30, 4)])
def test_image_arrays_become_rgb(shape):
    image = load_image(0, np.zeros(shape, dtype=np.uint8))
    assert image.mode == "RGB" and image.size == (30, 20)


def test_prompts_per_side(vl_model):
    from tte_fast.inputs import EmbedInput
    from tte_fast.prompts import PromptConfig, render_prompt

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


def test_eos_ids_of_a_tokenizer_without_end_of_turn_token():
    """A non-Qwen tokenizer with an <unk>: the missing <|im_end|> must not make <unk> a stop token."""
    from types import SimpleNamespace

    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from tte_fast.model import _eos_token_ids

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
        unk_token="<unk>",
        eos_token="</s>",
    )
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == 0  # what the lookup must not use
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=None))
    assert _eos_token_ids(model, tokenizer) == (2,)


def test_tte_u_prefill_skips_the_backbones_last_k_layers(tiny_checkpoints):
    """Without thinking the TTE_u head replaces the backbone's last k layers: they never run."""
    from tte_fast.heads import find_decoder

    model = UnifiedTTE.from_pretrained(tiny_checkpoints["qwen2"], device="cpu", head="tte_u", head_layers=2)
    decoder = find_decoder(model.hf_model)
    calls = []
    hooks = [m.register_forward_hook(lambda *_: calls.append(1)) for m in (decoder.layers[-2], decoder.norm)]
    try:
        result = model.encode(["a query", "a longer query about cats"], think=False)
    finally:
        for hook in hooks:
            hook.remove()
    assert not calls
    torch.testing.assert_close(result.embeddings.norm(dim=-1), torch.ones(2), atol=1e-5, rtol=0)


def test_image_files_are_closed(tmp_path):
    """A multi-frame file (PIL keeps those open after load) is closed once decoded."""
    import gc
    import warnings

    from PIL import Image

    frames = [Image.fromarray(np.full((8, 10, 3), 40 * i, dtype=np.uint8)) for i in range(3)]
    path = tmp_path / "frames.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        image = load_image(0, str(path))
        gc.collect()
    assert image.mode == "RGB" and image.size == (10, 8)
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_transparency_is_composited_onto_white_as_hf_does():
    """Every transparent form (RGBA, LA, palette with a transparent index, HxWx4 arrays, PNG bytes)
    gives the pixels transformers' ``convert_to_rgb`` gives, which HF's Qwen-VL processors use."""
    import io

    from PIL import Image
    from transformers.image_transforms import convert_to_rgb

    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    rgba = rng.integers(0, 256, (12, 17, 4), dtype=np.uint8)
    rgba[:4, :, 3] = 0  # fully transparent rows over random colour
    pil_rgba = Image.fromarray(rgba)
    palette = Image.fromarray(rgba[..., :3]).quantize(8)
    palette.info["transparency"] = 0
    png = io.BytesIO()
    pil_rgba.save(png, format="PNG")
    cases = {
        "RGBA": (pil_rgba, pil_rgba),
        "LA": (pil_rgba.convert("LA"), pil_rgba.convert("LA")),
        "P": (palette, palette),
        "array": (rgba, pil_rgba),
        "bytes": (png.getvalue(), pil_rgba),
    }
    for name, (given, reference) in cases.items():
        expected = convert_to_rgb(reference, return_numpy=True)
        np.testing.assert_array_equal(np.asarray(load_image(0, given)), expected, err_msg=name)
    assert (np.asarray(load_image(0, pil_rgba))[:4] == 255).all()  # white, not the hidden colour


def test_rgb_files_and_bytes_load_to_usable_images(tmp_path):
    """Encoded RGB images come back loaded: their file is closed once decoded."""
    import io

    from PIL import Image

    pixels = np.random.default_rng(int.from_bytes(os.urandom(4), "little")).integers(0, 256, (9, 13, 3))
    png = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(png, format="PNG")
    (tmp_path / "x.png").write_bytes(png.getvalue())
    for given in (png.getvalue(), str(tmp_path / "x.png")):
        np.testing.assert_array_equal(np.asarray(load_image(0, given)), pixels)
