"""split_inputs: per-sample chunks of tensors and of Qwen-VL per-image patch tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tte_fast.checkpoint.hf_processor import load_processor
from tte_fast.prompting.chunking import batch_size, split_inputs

MERGE = 4  # patches per image token (spatial_merge_size ** 2)


def qwen_like_batch(images_per_sample: list[list[tuple[int, int]]], seq_len: int = 40, with_token_types=True):
    """A processor-like batch: each sample lists the (h, w) patch grid of its images, in order."""
    n = len(images_per_sample)
    grids = [(1, h, w) for sample in images_per_sample for h, w in sample]
    patches = sum(t * h * w for t, h, w in grids)
    token_types = torch.zeros(n, seq_len, dtype=torch.long)
    for i, sample in enumerate(images_per_sample):
        tokens = sum(h * w for h, w in sample) // MERGE
        token_types[i, 2 : 2 + tokens] = 1
    batch = {
        "input_ids": torch.randint(0, 100, (n, seq_len)),
        "attention_mask": torch.ones(n, seq_len, dtype=torch.long),
        # Each patch row holds its global patch index, so tests can check where rows went.
        "pixel_values": torch.arange(patches, dtype=torch.float32)[:, None].expand(patches, 6).clone(),
        "image_grid_thw": torch.tensor(grids, dtype=torch.long).reshape(-1, 3),
    }
    if with_token_types:
        batch["mm_token_type_ids"] = token_types
    return batch


SAMPLES = [[(2, 4)], [], [(4, 4), (2, 2)], [(2, 6)], [], [(4, 2)], [(2, 2)]]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 10])
@pytest.mark.parametrize("use_counts", [False, True])
def test_qwen_vl_media_follow_their_samples(chunk, use_counts):
    batch = qwen_like_batch(SAMPLES, with_token_types=not use_counts)
    if use_counts:
        batch["image_counts"] = torch.tensor([len(s) for s in SAMPLES])
    chunks = split_inputs(batch, chunk)
    assert len(chunks) == -(-len(SAMPLES) // chunk)
    patch_start = 0
    for c, chunk_inputs in enumerate(chunks):
        samples = SAMPLES[c * chunk : (c + 1) * chunk]
        assert "image_counts" not in chunk_inputs
        assert batch_size(chunk_inputs) == len(samples)
        torch.testing.assert_close(chunk_inputs["input_ids"], batch["input_ids"][c * chunk : (c + 1) * chunk])
        grids = [(1, h, w) for s in samples for h, w in s]
        n_patches = sum(h * w for _, h, w in grids)
        if not grids:  # an image-free chunk looks like an image-free processor batch
            assert chunk_inputs["pixel_values"] is None and chunk_inputs["image_grid_thw"] is None
            continue
        assert chunk_inputs["image_grid_thw"].tolist() == [list(g) for g in grids]
        want = torch.arange(patch_start, patch_start + n_patches, dtype=torch.float32)
        torch.testing.assert_close(chunk_inputs["pixel_values"][:, 0], want)
        patch_start += n_patches
    assert patch_start == batch["pixel_values"].shape[0]


grids = st.tuples(st.sampled_from([2, 4, 6]), st.sampled_from([2, 4, 6]))


@settings(max_examples=40, deadline=None)
@given(samples=st.lists(st.lists(grids, max_size=3), min_size=1, max_size=9), chunk=st.integers(1, 10))
def test_chunks_reassemble_to_the_batch(samples, chunk):
    batch = qwen_like_batch(samples)
    chunks = split_inputs(batch, chunk)
    for key in ("input_ids", "mm_token_type_ids", "pixel_values", "image_grid_thw"):
        parts = [c[key] for c in chunks if c[key] is not None]
        if batch[key].shape[0]:
            torch.testing.assert_close(torch.cat(parts), batch[key])
    for c in chunks:  # each chunk's patches are exactly its grids' patches
        rows = 0 if c["image_grid_thw"] is None else int(c["image_grid_thw"].prod(dim=1).sum())
        assert rows == (0 if c["pixel_values"] is None else c["pixel_values"].shape[0])
        assert rows == int(c["mm_token_type_ids"].eq(1).sum()) * MERGE


def test_plain_tensor_and_lists():
    x = torch.arange(10)
    assert [c.tolist() for c in split_inputs(x, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    chunks = split_inputs({"ids": x, "names": list("abcdefghij"), "flag": True}, 6)
    assert chunks[1] == {"ids": chunks[1]["ids"], "names": list("ghij"), "flag": True}
    assert chunks[1]["ids"].tolist() == [6, 7, 8, 9]


def test_errors_name_the_problem():
    batch = qwen_like_batch(SAMPLES, with_token_types=False)
    with pytest.raises(ValueError, match="image_counts.*mm_token_type_ids"):
        split_inputs(batch, 2)
    batch["image_counts"] = torch.tensor([1, 0, 2, 1, 0, 1, 2])  # one image too many
    with pytest.raises(ValueError, match="image_counts"):
        split_inputs(batch, 2)
    batch = qwen_like_batch(SAMPLES)
    batch["pixel_values"] = batch["pixel_values"][:-1]
    with pytest.raises(ValueError, match="pixel_values has"):
        split_inputs(batch, 2)
    batch = qwen_like_batch(SAMPLES)
    batch["mm_token_type_ids"][0, 2] = 0  # sample 0 loses an image token
    batch["mm_token_type_ids"][1, 2] = 1  # ... which sample 1 gains
    with pytest.raises(ValueError, match="sample 0"):
        split_inputs(batch, 2)
    with pytest.raises(ValueError, match="'extra' has first dimension 3"):
        split_inputs({"input_ids": torch.zeros(4, 2), "extra": torch.zeros(3)}, 2)
    with pytest.raises(ValueError, match="chunk_size"):
        split_inputs(torch.zeros(4), 0)
    with pytest.raises(TypeError, match="tensor or a dict"):
        split_inputs([torch.zeros(4)], 2)
    with pytest.raises(ValueError, match="batch size"):
        split_inputs({"flag": True}, 2)


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_real_processor_batch_splits_like_processing_each_sample_alone(tiny_checkpoints, model_type):
    processor = load_processor(tiny_checkpoints[model_type], model_type)
    rng = np.random.default_rng(0)
    specs = [("one", [(56, 84)]), ("none", []), ("two", [(112, 56), (64, 64)]), ("tall", [(140, 56)])]
    texts, images = [], []
    for text, sizes in specs:
        content = [{"type": "image"} for _ in sizes] + [{"type": "text", "text": text}]
        texts.append(processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False))
        images.append([Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes])
    batch = processor(
        text=texts, images=[im for ims in images for im in ims], return_tensors="pt", padding=True
    )
    for chunk, text, ims in zip(split_inputs(batch, 1), texts, images):
        alone = processor(text=[text], images=ims or None, return_tensors="pt")
        for key in ("pixel_values", "image_grid_thw"):
            if alone.get(key) is None:
                assert chunk[key] is None
            else:
                torch.testing.assert_close(chunk[key], alone[key], rtol=0, atol=0)
        n = int(alone["attention_mask"].sum())  # right padding: the sample's own tokens come first
        torch.testing.assert_close(chunk["input_ids"][0, :n], alone["input_ids"][0])
