"""TTE_u head: states captured during incremental decoding give the same embedding (and the same
head gradients) as a fresh full forward over the finished sequences."""

from __future__ import annotations

import copy
import inspect
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import random_image
from PIL import Image

from tte_fast.checkpoint.hf_processor import load_processor
from tte_fast.checkpoint.model_types import QWEN_VL_MODEL_TYPES
from tte_fast.heads import HEAD_CONFIG_NAME, HEAD_WEIGHTS_NAME, TTEUHead, find_decoder
from tte_fast.testing import TINY_MODEL_TYPES

ATOL = 1e-4  # fp32
K = 2  # head depth on the 4-layer tiny models


@pytest.fixture(scope="module")
def loaded(tiny_checkpoints):
    """model type -> (eval-mode HF model, processor or tokenizer), loaded once per module."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    cache = {}

    def get(model_type):
        if model_type not in cache:
            path = tiny_checkpoints[model_type]
            auto = AutoModelForImageTextToText if model_type in QWEN_VL_MODEL_TYPES else AutoModelForCausalLM
            model = auto.from_pretrained(path, dtype=torch.float32).eval()
            model.requires_grad_(False)
            processor = load_processor(path, model_type)
            getattr(processor, "tokenizer", processor).padding_side = "left"
            cache[model_type] = (model, processor)
        return cache[model_type]

    return get


def batch_inputs(model_type, processor, seed=0):
    """Three left-padded prompts of different lengths; Qwen-VL rows carry images of different sizes."""
    rng = np.random.default_rng(seed)
    texts = ["a cat", "describe the dog running across the wide green field in detail", "red"]
    if model_type not in QWEN_VL_MODEL_TYPES:
        prompts = [
            processor.apply_chat_template(
                [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True
            )
            for t in texts
        ]
        return processor(prompts, return_tensors="pt", padding=True)
    images = [random_image(rng, 60, 90), random_image(rng, 120, 50)]
    contents = [
        [{"type": "image"}, {"type": "text", "text": texts[0]}],
        [{"type": "image"}, {"type": "text", "text": texts[1]}],
        [{"type": "text", "text": texts[2]}],
    ]
    prompts = [
        processor.apply_chat_template([{"role": "user", "content": c}], add_generation_prompt=True)
        for c in contents
    ]
    return processor(text=prompts, images=images, return_tensors="pt", padding=True)


def _cache_kwarg(model):
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _output_cache(out):
    return getattr(out, "cache", None) or out.past_key_values


def incremental_decode(model, inputs, new_tokens, emb_id, pad_id):
    """Prefill, then one batched step per position: row r feeds ``new_tokens[r][s]`` while it has one,
    after that a pad token masked out (a row that stopped); then every row feeds ``emb_id``.

    Positions stay contiguous per row, as a decode loop keeps them. Returns the 0/1 mask over every
    position fed, in order."""
    is_vl = "pixel_values" in inputs
    batch = inputs["input_ids"].shape[0]
    mask = inputs["attention_mask"].clone()
    # Text models: positions count real tokens only (as generate does), not the left pads.
    prefill_positions = {} if is_vl else {"position_ids": (mask.cumsum(1) - 1).clamp(min=0)}
    out = model(**inputs, use_cache=True, **prefill_positions)
    cache = _output_cache(out)
    deltas = model.model.rope_deltas.view(batch) if is_vl else None
    position = mask.sum(dim=1)
    steps = max(len(t) for t in new_tokens)
    for s in range(steps + 1):
        if s < steps:
            active = torch.tensor([s < len(t) for t in new_tokens])
            token = torch.tensor([t[s] if s < len(t) else pad_id for t in new_tokens])
        else:
            active = torch.ones(batch, dtype=torch.bool)
            token = torch.full((batch,), emb_id)
        mask = torch.cat([mask, active.long()[:, None]], dim=1)
        if is_vl:
            position_ids = torch.stack([position, position + deltas, position + deltas, position + deltas])[
                ..., None
            ]
        else:
            position_ids = position[:, None]
        out = model(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=True,
            **{_cache_kwarg(model): cache},
        )
        cache = _output_cache(out)
        position = position + active.long()
    return mask


def compact_forward(model, inputs, sequences, pad_id, head):
    """Fresh full forward over each row's real sequence (its prompt, then generated and embedding
    tokens), left padded anew. Returns (HF hidden_states, attention mask, layer L-k rotary tables)."""
    types = []
    mm = inputs.get("mm_token_type_ids")
    if mm is not None:
        for r, seq in enumerate(sequences):
            prompt_types = mm[r][inputs["attention_mask"][r].bool()]
            types.append(F.pad(prompt_types, (0, len(seq) - len(prompt_types))))
    width = max(len(r) for r in sequences)
    ids = torch.stack([F.pad(r, (width - len(r), 0), value=pad_id) for r in sequences])
    mask = torch.stack([F.pad(torch.ones_like(r), (width - len(r), 0)) for r in sequences])
    extra = {"position_ids": (mask.cumsum(1) - 1).clamp(min=0)}
    if mm is not None:
        extra = {
            "mm_token_type_ids": torch.stack([F.pad(t, (width - len(t), 0)) for t in types]),
            "pixel_values": inputs["pixel_values"],
            "image_grid_thw": inputs["image_grid_thw"],
        }
    with head.capture(model) as rec:
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, **extra)
    assert len(rec) == 1
    return out.hidden_states, mask, rec.position_embeddings[0]


def _sequences(inputs, new_tokens, emb_id):
    prompt = [ids[m.bool()] for ids, m in zip(inputs["input_ids"], inputs["attention_mask"])]
    return [torch.cat([p, torch.tensor([*t, emb_id], dtype=p.dtype)]) for p, t in zip(prompt, new_tokens)]


def _perturb(head, seed):
    """Move the head off the backbone's weights, as training would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


def _head_grads(head, embeddings, weight):
    head.zero_grad(set_to_none=True)
    (embeddings * weight).sum().backward()
    return {name: p.grad.clone() for name, p in head.named_parameters()}


def _special_ids(processor):
    tokenizer = getattr(processor, "tokenizer", processor)
    return tokenizer.convert_tokens_to_ids("<|endoftext|>"), tokenizer.pad_token_id


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_head_over_incremental_decode_equals_full_forward(loaded, model_type):
    """Rows of different lengths that stop at different steps: captured path == fresh forward path,
    for embeddings and head gradients; the untouched head reproduces the backbone's last layer."""
    model, processor = loaded(model_type)
    inputs = batch_inputs(model_type, processor)
    emb_id, pad_id = _special_ids(processor)
    gen = torch.Generator().manual_seed(1)
    lengths = [3, 5, 1]  # row 0 and row 2 stop early; their later tokens are masked out
    new_tokens = [torch.randint(100, 5000, (n,), generator=gen).tolist() for n in lengths]

    head = TTEUHead.from_backbone(model, num_layers=K)
    with torch.no_grad(), head.capture(model) as rec:
        mask = incremental_decode(model, inputs, new_tokens, emb_id, pad_id)
    assert len(rec) == 1 + max(lengths) + 1  # prefill, decode steps, embedding step
    assert rec.concat()[0].shape[1] == mask.shape[1]
    sequences = _sequences(inputs, new_tokens, emb_id)
    hidden, ref_mask, ref_pe = compact_forward(model, inputs, sequences, pad_id, head)

    with torch.no_grad():
        backbone = F.normalize(hidden[-1][:, -1].float(), dim=-1)  # final-norm output at the emb token
        torch.testing.assert_close(head.embed(rec, mask), backbone, atol=ATOL, rtol=0)

    _perturb(head, seed=2)
    captured = head.embed(rec, mask)
    fresh = head(hidden[head.source_layer], ref_mask, ref_pe)
    assert captured.dtype == torch.float32
    torch.testing.assert_close(captured.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(captured, fresh, atol=ATOL, rtol=0)
    assert (captured - backbone).abs().max() > 1e-3  # the perturbed head is really a different function

    weight = torch.randn(captured.shape, generator=gen)
    grads_captured = _head_grads(head, head.embed(rec, mask), weight)
    grads_fresh = _head_grads(head, head(hidden[head.source_layer], ref_mask, ref_pe), weight)
    assert all(g.abs().sum() > 0 for g in grads_captured.values())
    for name, g in grads_captured.items():
        torch.testing.assert_close(g, grads_fresh[name], atol=ATOL, rtol=1e-4, msg=name)


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2"])
def test_head_over_hf_generate(loaded, model_type):
    """States captured while HF ``generate`` decodes (its own positions and cache) give the fresh
    forward's embedding of the same sequences."""
    model, processor = loaded(model_type)
    inputs = batch_inputs(model_type, processor, seed=3)
    head = TTEUHead.from_backbone(model, num_layers=K)
    _perturb(head, seed=4)
    new = 6
    with torch.no_grad(), head.capture(model) as rec:
        out = model.generate(**inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    assert len(rec) == new  # prefill + new - 1 steps: the last token is never fed
    fed = out[:, :-1]
    prompt_len = inputs["input_ids"].shape[1]
    mask = F.pad(inputs["attention_mask"], (0, new - 1), value=1)
    extra = {}
    if "pixel_values" in inputs:
        extra = {
            "mm_token_type_ids": F.pad(inputs["mm_token_type_ids"], (0, fed.shape[1] - prompt_len)),
            "pixel_values": inputs["pixel_values"],
            "image_grid_thw": inputs["image_grid_thw"],
        }
    with torch.no_grad():
        with head.capture(model) as full:
            ref = model(input_ids=fed, attention_mask=mask, output_hidden_states=True, **extra)
        torch.testing.assert_close(
            full.hidden_states[0], ref.hidden_states[head.source_layer], atol=0, rtol=0
        )
        fresh = head(ref.hidden_states[head.source_layer], mask, full.position_embeddings[0])
        torch.testing.assert_close(head.embed(rec, mask), fresh, atol=ATOL, rtol=0)


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "qwen2"])
def test_head_over_the_runtime_decode_loop(loaded, model_type):
    """States captured while ``tte_fast.runtime.static.StaticBatches`` thinks and feeds each row's embedding
    token right after it stops (rows stop at different steps) give the fresh forward's embedding of
    ``.sequences``; the untouched head reproduces the loop's own last-token embedding."""
    from tte_fast.runtime.options import DecodeOptions
    from tte_fast.runtime.static import StaticBatches

    model, processor = loaded(model_type)
    inputs = batch_inputs(model_type, processor, seed=10)
    emb_id, pad_id = _special_ids(processor)
    decoder = StaticBatches.of(model)
    options = DecodeOptions(max_think_tokens=5, max_answer_tokens=0, pad_token_id=pad_id)
    first = decoder.decode(inputs, options)
    # Make row 0's second token a stop token, so rows stop at different steps.
    options = DecodeOptions(
        max_think_tokens=5,
        max_answer_tokens=0,
        pad_token_id=pad_id,
        eos_token_ids=(int(first.generated[0][1]),),
    )
    head = TTEUHead.from_backbone(model, num_layers=K)
    with head.capture(model) as rec:
        out = decoder.decode(inputs, options, embed_token_id=emb_id, compiled=False)
    assert "eos" in out.stop_reasons and "think_budget" in out.stop_reasons
    with torch.no_grad():
        torch.testing.assert_close(
            head.embed(rec, out.attention_mask),
            F.normalize(out.embed_hidden.float(), dim=-1),
            atol=ATOL,
            rtol=0,
        )
        _perturb(head, seed=11)
        hidden, ref_mask, ref_pe = compact_forward(model, inputs, out.sequences, pad_id, head)
        fresh = head(hidden[head.source_layer], ref_mask, ref_pe)
        torch.testing.assert_close(head.embed(rec, out.attention_mask), fresh, atol=ATOL, rtol=0)


@pytest.mark.parametrize(("model_type", "k"), [("qwen2", 4), ("qwen2_vl", 1), ("qwen3_vl", 3)])
def test_copied_head_reproduces_backbone_at_other_depths(loaded, model_type, k):
    """k = L reads the embeddings; on Qwen3-VL k = 3 reads the input of layer 1, after the deepstack
    injection that HF's ``hidden_states[1]`` does not include: the hook sees the real layer input."""
    model, processor = loaded(model_type)
    inputs = batch_inputs(model_type, processor, seed=5)
    head = TTEUHead.from_backbone(model, num_layers=k)
    with torch.no_grad(), head.capture(model) as rec:
        out = model(**inputs, output_hidden_states=True)
        embedding = head.embed(rec, inputs["attention_mask"])
    backbone = F.normalize(out.hidden_states[-1][:, -1].float(), dim=-1)
    torch.testing.assert_close(embedding, backbone, atol=ATOL, rtol=0)


@pytest.mark.parametrize("model_type", ["qwen3_vl", "qwen2"])
def test_source_states_for_training_stop_at_layer_l_minus_k(loaded, model_type):
    """A training forward reads layer L-k inputs without running the last k layers or the LM head;
    the head trained on them gets the same gradients as on a full forward's ``hidden_states``."""
    model, processor = loaded(model_type)
    inputs = batch_inputs(model_type, processor, seed=12)
    head = TTEUHead.from_backbone(model, num_layers=K)
    _perturb(head, seed=13)
    decoder = find_decoder(model)
    calls = []
    hooks = [m.register_forward_hook(lambda *_: calls.append(1)) for m in (decoder.layers[-1], decoder.norm)]
    try:
        hidden, pe = head.source_states(model, **inputs)
    finally:
        for h in hooks:
            h.remove()
    assert not calls  # the backbone stopped at layer L-k
    assert not hidden.requires_grad
    with torch.no_grad(), head.capture(model) as full:
        ref = model(**inputs, output_hidden_states=True)
    torch.testing.assert_close(hidden, ref.hidden_states[head.source_layer], atol=0, rtol=0)
    mask = inputs["attention_mask"]
    weight = torch.randn(mask.shape[0], hidden.shape[-1], generator=torch.Generator().manual_seed(14))
    grads = _head_grads(head, head(hidden, mask, pe), weight)
    grads_full = _head_grads(
        head, head(ref.hidden_states[head.source_layer], mask, full.position_embeddings[0]), weight
    )
    for name, g in grads.items():
        torch.testing.assert_close(g, grads_full[name], atol=ATOL, rtol=1e-4, msg=name)
    assert all(p.grad is None for p in model.parameters())


def test_pads_never_reach_real_tokens(loaded):
    """Garbage in pad positions (and in a masked gap) leaves every row's embedding unchanged, and a
    row embedded in a padded batch equals the same row alone."""
    model, processor = loaded("qwen2")
    inputs = batch_inputs("qwen2", processor, seed=6)
    head = TTEUHead.from_backbone(model, num_layers=K)
    _perturb(head, seed=7)
    with torch.no_grad(), head.capture(model) as rec:
        model(**inputs)
        hidden, pe = rec.concat()
        mask = inputs["attention_mask"].clone()
        mask[0, -3] = 0  # a masked gap inside row 0, as left by a row that stopped
        clean = head(hidden, mask, pe)
        poisoned = hidden.clone()
        poisoned[mask == 0] = 1e3 * torch.randn(int((mask == 0).sum()), hidden.shape[-1])
        torch.testing.assert_close(head(poisoned, mask, pe), clean, atol=ATOL, rtol=0)
        for r in range(hidden.shape[0]):
            keep = mask[r].bool()
            alone = head(
                hidden[r : r + 1, keep],
                mask[r : r + 1, keep],
                (pe[0][r : r + 1, keep], pe[1][r : r + 1, keep]),
            )
            torch.testing.assert_close(alone, clean[r : r + 1], atol=ATOL, rtol=0)
        # Eager attention takes the additive form of the same mask.
        head.layers[0].self_attn.config._attn_implementation = "eager"
        torch.testing.assert_close(head(poisoned, mask, pe), clean, atol=ATOL, rtol=0)


def test_head_is_a_trainable_copy(loaded):
    model, _ = loaded("qwen2_vl")
    decoder = find_decoder(model)
    head = TTEUHead.from_backbone(model, num_layers=K)
    assert (head.num_layers, head.source_layer, head.num_backbone_layers) == (K, 2, 4)
    assert all(p.requires_grad for p in head.parameters())
    assert not any(p.requires_grad for p in model.parameters())
    backbone_params = {p.data_ptr() for p in model.parameters()}
    assert not any(p.data_ptr() in backbone_params for p in head.parameters())
    torch.testing.assert_close(head.layers[0].mlp.up_proj.weight, decoder.layers[2].mlp.up_proj.weight)
    torch.testing.assert_close(head.norm.weight, decoder.norm.weight)


def test_save_load_round_trip(loaded, tmp_path):
    model, processor = loaded("qwen2_5_vl")
    inputs = batch_inputs("qwen2_5_vl", processor, seed=8)
    head = TTEUHead.from_backbone(model, num_layers=K)
    _perturb(head, seed=9)
    head.save_pretrained(str(tmp_path))
    assert (tmp_path / HEAD_WEIGHTS_NAME).is_file() and (tmp_path / HEAD_CONFIG_NAME).is_file()
    loaded_head = TTEUHead.from_pretrained(str(tmp_path), model)
    assert loaded_head.num_layers == K
    with torch.no_grad(), head.capture(model) as rec:
        model(**inputs)
        torch.testing.assert_close(
            loaded_head.embed(rec, inputs["attention_mask"]),
            head.embed(rec, inputs["attention_mask"]),
            atol=0,
            rtol=0,
        )


def test_from_pretrained_errors(loaded, tmp_path):
    model, _ = loaded("qwen2")
    with pytest.raises(FileNotFoundError, match=HEAD_CONFIG_NAME):
        TTEUHead.from_pretrained(str(tmp_path), model)
    TTEUHead.from_backbone(model, num_layers=1).save_pretrained(str(tmp_path))
    shallow = copy.deepcopy(model)
    shallow.model.layers = torch.nn.ModuleList(list(shallow.model.layers)[:3])
    with pytest.raises(ValueError, match="4 decoder layers"):
        TTEUHead.from_pretrained(str(tmp_path), shallow)
    (tmp_path / HEAD_CONFIG_NAME).write_text('{"format_version": 99, "num_layers": 1}')
    with pytest.raises(ValueError, match="format version 99"):
        TTEUHead.from_pretrained(str(tmp_path), model)


@pytest.mark.parametrize(
    ("num_layers", "error"), [(0, ValueError), (5, ValueError), ("2", TypeError), (True, TypeError)]
)
def test_bad_num_layers(loaded, num_layers, error):
    model, _ = loaded("qwen2")
    with pytest.raises(error, match=repr(num_layers) if error is TypeError else f"num_layers={num_layers}"):
        TTEUHead.from_backbone(model, num_layers=num_layers)


def test_head_may_not_skip_deepstack_features(loaded):
    model, _ = loaded("qwen3_vl")
    with pytest.raises(ValueError, match="deepstack"):
        TTEUHead.from_backbone(model, num_layers=4)


def test_bad_inputs_raise_early(loaded):
    model, processor = loaded("qwen2")
    inputs = batch_inputs("qwen2", processor)
    head = TTEUHead.from_backbone(model, num_layers=K)
    with torch.no_grad(), head.capture(model) as rec:
        model(**inputs)
    hidden, pe = rec.concat()
    mask = inputs["attention_mask"]
    with pytest.raises(ValueError, match="attention_mask has shape"):
        head.embed(rec, mask[:, 1:])
    empty = mask.clone()
    empty[1] = 0
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        head(hidden, empty, pe)
    with pytest.raises(ValueError, match="position_embeddings cover"):
        head(hidden, mask, (pe[0][:, 1:], pe[1][:, 1:]))
    with pytest.raises(ValueError, match="no hidden states were captured"):
        with head.capture(model) as nothing:
            pass
        head.embed(nothing, mask)


def test_capture_hook_removed_on_error(loaded):
    model, _ = loaded("qwen2")
    head = TTEUHead.from_backbone(model, num_layers=K)
    layer = find_decoder(model).layers[head.source_layer]
    with pytest.raises(RuntimeError, match="boom"), head.capture(model):
        assert len(layer._forward_pre_hooks) == 1
        raise RuntimeError("boom")
    assert len(layer._forward_pre_hooks) == 0


def _fresh_head_embedding(model, head, image_processor, raw, seq):
    """The head over a from-scratch HF forward of one unpadded sequence (HF's own positions)."""
    kwargs = {}
    if image_processor is not None:
        kwargs["mm_token_type_ids"] = (seq == model.config.image_token_id).int()[None]
        if isinstance(raw, dict) and raw.get("image") is not None:
            pixels = image_processor(images=[Image.fromarray(raw["image"])], return_tensors="pt")
            kwargs.update(pixel_values=pixels["pixel_values"], image_grid_thw=pixels["image_grid_thw"])
    with torch.no_grad(), head.capture(model) as rec:
        out = model(input_ids=seq[None], output_hidden_states=True, **kwargs)
        mask = torch.ones(1, len(seq), dtype=torch.long)
        return head(out.hidden_states[head.source_layer], mask, rec.position_embeddings[0])[0]


def test_unified_tte_with_a_trained_head(tiny_checkpoints, tmp_path):
    """``UnifiedTTE(head="tte_u")`` with a head moved off the backbone's weights (so it differs from
    the last-token head): thinking (captured states) and plain encodes equal the head over a fresh
    forward of ``.sequences``; a saved model gives the same embeddings back."""
    from transformers import Qwen2VLImageProcessorPil

    from tte_fast.model import UnifiedTTE

    model_type = "qwen2_vl"
    path = tiny_checkpoints[model_type]
    tte = UnifiedTTE.from_pretrained(path, head="tte_u", head_layers=K, device="cpu")
    _perturb(tte.head, seed=15)
    rng = np.random.default_rng(16)
    inputs = [
        {"text": "a dog on grass"},
        "red",
        {"text": "a longer description of a cat asleep", "instruction": "Find it."},
    ]
    inputs[0]["image"] = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    inputs[1] = {"image": rng.integers(0, 256, (120, 50, 3), dtype=np.uint8)}
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(path)
    for think in (True, False):
        result = tte.encode(inputs, think=think, max_think_tokens=5, batch_size=3)
        expected = torch.stack(
            [
                _fresh_head_embedding(tte.hf_model, tte.head, image_processor, r, s)
                for r, s in zip(inputs, result.sequences)
            ]
        )
        torch.testing.assert_close(result.embeddings, expected, atol=ATOL, rtol=0)
    tte.save_pretrained(str(tmp_path))
    again = UnifiedTTE.from_pretrained(str(tmp_path), device="cpu")
    assert again.head is not None and again.head.num_layers == K
    torch.testing.assert_close(
        again.encode(inputs, think=False).embeddings, result.embeddings, atol=0, rtol=0
    )


def test_bf16_head_tracks_fp32(loaded):
    """A bf16 copy of the head (SDPA and eager masks) over the same captured states stays within
    bf16 tolerance of the fp32 head."""
    model, processor = loaded("qwen2_vl")
    inputs = batch_inputs("qwen2_vl", processor, seed=17)
    head = TTEUHead.from_backbone(model, num_layers=K)
    _perturb(head, seed=18)
    with torch.no_grad(), head.capture(model) as rec:
        model(**inputs)
        mask = inputs["attention_mask"]
        reference = head.embed(rec, mask)
        half = copy.deepcopy(head).to(torch.bfloat16)
        for implementation in ("sdpa", "eager"):
            half.layers[0].self_attn.config._attn_implementation = implementation
            embedding = half.embed(rec, mask)
            assert embedding.dtype == torch.float32
            torch.testing.assert_close(embedding, reference, atol=1e-2, rtol=0)  # ~ bf16 eps


def test_sliding_window_layers(tiny_checkpoints):
    """Sliding-window attention layers keep their window in the head: the copied head reproduces a
    Qwen2 backbone whose last layers use a window shorter than the prompts."""
    from transformers import AutoModelForCausalLM

    from tte_fast.testing import tiny_config

    base = tiny_config("qwen2").to_dict()
    config = type(tiny_config("qwen2"))(
        **{
            **base,
            "use_sliding_window": True,
            "sliding_window": 5,
            "max_window_layers": 1,
            "layer_types": None,
        }
    )
    torch.manual_seed(19)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    head = TTEUHead.from_backbone(model, num_layers=3)
    assert [layer.self_attn.sliding_window for layer in head.layers] == [5, 5, 5]
    ids = torch.randint(0, 5000, (3, 14))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[2, :9] = 0
    with torch.no_grad(), head.capture(model) as rec:
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(1) - 1).clamp(min=0),
            output_hidden_states=True,
        )
        embedding = head.embed(rec, mask)
        torch.testing.assert_close(
            embedding, F.normalize(out.hidden_states[-1][:, -1], dim=-1), atol=ATOL, rtol=0
        )
        for layer in head.layers:
            layer.self_attn.sliding_window = None
        assert (head.embed(rec, mask) - embedding).abs().max() > 1e-2  # the window really mattered


def test_random_masks_equal_compacted_rows(loaded):
    """Fresh random masks (left pads, gaps anywhere before the last real token): the head over the
    gapped batch equals the head over each row with its masked positions removed."""
    model, _ = loaded("qwen2")
    head = TTEUHead.from_backbone(model, num_layers=K)
    seed = int.from_bytes(os.urandom(4), "little")
    gen = torch.Generator().manual_seed(seed)
    b, t, d = 4, 24, model.config.hidden_size
    hidden = torch.randn(b, t, d, generator=gen)
    positions = torch.randint(0, 500, (b, t), generator=gen)
    cos, sin = find_decoder(model).rotary_emb(hidden, positions)
    mask = (torch.rand(b, t, generator=gen) > 0.4).long()
    mask[:, -1] = 1
    mask[0, : t // 2] = 0
    with torch.no_grad():
        batched = head(hidden, mask, (cos, sin))
        for r in range(b):
            keep = mask[r].bool()
            alone = head(
                hidden[r : r + 1, keep], mask[r : r + 1, keep], (cos[r : r + 1, keep], sin[r : r + 1, keep])
            )
            torch.testing.assert_close(
                alone, batched[r : r + 1], atol=ATOL, rtol=0, msg=f"seed {seed}, row {r}"
            )
