"""Video inputs through encode on the three Qwen-VL types: the M-RoPE positions of a video prompt are
the ones transformers' model computes for it, and embeddings (thinking on either scheduler, plain,
given traces) equal the HF model's own forward over each returned sequence."""

from __future__ import annotations

import importlib.util
import inspect

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from helpers import random_pixels
from transformers.video_utils import VideoMetadata

from tte_fast.inputs import InputError, check_input, load_image
from tte_fast.model import UnifiedTTE
from tte_fast.prompting.batching import load_videos
from tte_fast.runtime.positions import prefill_position_ids

THINK = 4
ATOL = 1e-4  # fp32
VISION_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

pytestmark = pytest.mark.usefixtures("one_thread")


def frames(seed: int, count: int, height: int, width: int) -> list[np.ndarray]:
    return [random_pixels(seed * 100 + k, height, width) for k in range(count)]


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("video_frames")
    for k, frame in enumerate(frames(7, 6, 50, 36)):
        PIL.Image.fromarray(frame).save(folder / f"frame_{k:04d}.png")
    return str(folder)


def write_mp4(path: str, count: int, rate: int) -> str:
    import av

    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for frame in frames(9, count, 32, 48):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def inputs(video_folder, tmp_path_factory):
    items = [
        {"video": frames(1, 5, 40, 60), "text": "what happens here"},
        "a text-only query about a red car",
        {"image": random_pixels(3, 44, 70), "video": video_folder, "instruction": "Find the clip."},
    ]
    if importlib.util.find_spec("av") is not None:  # a file knows its rate: 1 s per temporal patch here
        path = write_mp4(str(tmp_path_factory.mktemp("mp4") / "clip.mp4"), 6, rate=2)
        items.append({"video": path, "text": "a clip at two frames a second"})
    return items


@pytest.fixture(scope="module", params=VISION_TYPES)
def setup(request, tiny_checkpoints, inputs):
    model = UnifiedTTE.from_pretrained(tiny_checkpoints[request.param], device="cpu")
    return model, model.encode(inputs, max_think_tokens=THINK, batch_size=3)


def reference_embedding(model: UnifiedTTE, sequence: torch.Tensor, item) -> torch.Tensor:
    """The HF model's own forward (its own positions) over one sequence: hidden_states[-1] at the end."""
    ids = sequence[None]
    config = model.hf_model.config
    kwargs = {
        "mm_token_type_ids": (ids == config.image_token_id).int() + 2 * (ids == config.video_token_id).int()
    }
    if isinstance(item, dict) and item.get("image") is not None:
        pixels = model.processor.image_processor(images=[load_image(0, item["image"])], return_tensors="pt")
        kwargs.update(pixel_values=pixels["pixel_values"], image_grid_thw=pixels["image_grid_thw"])
    if isinstance(item, dict) and item.get("video") is not None:
        video_processor = model.processor.video_processor
        clip = video_processor.load(0, item["video"])
        videos = video_processor([clip.frames])
        kwargs.update(
            pixel_values_videos=videos["pixel_values_videos"], video_grid_thw=videos["video_grid_thw"]
        )
        if "second_per_grid_ts" in inspect.signature(model.hf_model.forward).parameters:
            metadata = VideoMetadata(
                total_num_frames=clip.total_frames, fps=clip.fps, frames_indices=clip.indices
            )
            kwargs["second_per_grid_ts"] = torch.tensor(
                [video_processor.temporal_patch_size / metadata.sampled_fps]
            )
    with torch.inference_mode():
        out = model.hf_model(
            input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True, **kwargs
        )
    return F.normalize(out.hidden_states[-1][0, -1].float(), dim=-1)


def assert_equal_reencode(model, inputs, result) -> None:
    for i, item in enumerate(inputs):
        assert result.sequences[i][-1].item() == model.embed_token_id
        expected = reference_embedding(model, result.sequences[i], item)
        torch.testing.assert_close(result.embeddings[i], expected, atol=ATOL, rtol=0)


def test_thinking_embeddings_equal_reencode(setup, inputs):
    model, result = setup
    video_token = model.hf_model.config.video_token_id
    assert all((result.sequences[i] == video_token).any() for i in (0, 2))
    assert all(trace.startswith(model.config.prompts.think_prefix) for trace in result.traces)
    assert_equal_reencode(model, inputs, result)
    static = model.encode(inputs, max_think_tokens=THINK, batch_size=2, scheduler="static")
    assert_equal_reencode(model, inputs, static)


def test_plain_and_given_trace_embeddings_equal_reencode(setup, inputs):
    model, thought = setup
    assert_equal_reencode(model, inputs, model.encode(inputs, think=False, batch_size=2))
    assert_equal_reencode(model, inputs, model.encode(inputs, traces=thought.traces, batch_size=3))


def test_prefill_positions_equal_the_models_own(setup, inputs):
    """Our prefill's M-RoPE rows equal what the HF model computes from the same left-padded batch
    (its get_rope_index with the processor's grids, token types and seconds per temporal patch)."""
    model, _ = setup
    items = [model._check([x], "raise")[0][0] for x in inputs]
    batch = model.batch_inputs(items, list(range(len(items))), "query", False, None, model.decode_options())
    ours, _ = prefill_position_ids(model.hf_model, batch)
    language_model = model.hf_model.model
    wanted = inspect.signature(language_model.compute_3d_position_ids).parameters
    language_model.rope_deltas = None
    theirs = language_model.compute_3d_position_ids(
        **{k: batch.get(k) for k in wanted if k not in ("inputs_embeds", "cache")},
        inputs_embeds=None,
        cache=None,
    )
    real = batch["attention_mask"].bool()
    assert torch.equal(ours[1:, real], theirs[:, real])
    assert not torch.equal(
        ours[1:, 2][:, real[2]], ours[0, 2][real[2]].expand(3, -1)
    )  # not plain text positions


def test_video_errors_name_the_input(setup, tmp_path):
    model, _ = setup
    uneven = frames(0, 2, 30, 30) + frames(1, 1, 31, 30)
    with pytest.raises(InputError, match="input 1: video frames differ in size"):
        model.encode(["fine", {"video": uneven}], think=False)
    skipped = model.encode(["fine", {"video": str(tmp_path)}], think=False, on_error="skip")
    assert list(skipped.errors) == [1] and "has no frame images" in skipped.errors[1]
    assert skipped.embeddings[1].abs().sum() == 0 and skipped.embeddings[0].abs().sum() > 0


def test_text_only_model_refuses_video(tiny_checkpoints):
    model = UnifiedTTE.from_pretrained(tiny_checkpoints["qwen2"], device="cpu")
    with pytest.raises(InputError, match="input 0: has a video, but 'qwen2' is a text-only model"):
        model.encode([{"video": frames(0, 2, 20, 20)}], think=False)
    with pytest.raises(InputError, match="input 0: has a video, but this processor has no video processor"):
        load_videos(model.tokenizer, [check_input(0, {"video": frames(0, 2, 20, 20)})])


def test_external_reasoners_refuse_video():
    from tte_fast.traces.external import build_prompt

    with pytest.raises(InputError, match="input 2: has a video; external reasoners"):
        build_prompt(None, 2, {"video": frames(0, 2, 8, 8), "text": "x"}, "query", None)


def test_packed_prefill_embeds_videos_as_padded(tiny_checkpoints, inputs):
    """The engine's packed admission prefill (SDPA per prompt here; flash-attn / xformers on GPU)
    gives video prompts the same positions and embeddings as the padded one."""
    path = tiny_checkpoints["qwen2_5_vl"]
    packed = UnifiedTTE.from_pretrained(path, device="cpu", prefill_attention="sdpa_varlen")
    padded = UnifiedTTE.from_pretrained(path, device="cpu", prefill_attention="padded")
    assert (packed.prefill_attention, padded.prefill_attention) == ("sdpa_varlen", "padded")
    ours = packed.encode(inputs, think=True, max_think_tokens=THINK, batch_size=3)  # through the engine
    theirs = padded.encode(inputs, think=True, max_think_tokens=THINK, batch_size=3)
    assert [s.tolist() for s in ours.sequences] == [s.tolist() for s in theirs.sequences]
    torch.testing.assert_close(ours.embeddings, theirs.embeddings, atol=ATOL, rtol=0)


def test_prompts_without_chat_template_refuse_video(tiny_checkpoints):
    plain = {"chat": False, "image_placeholder": "<|image_pad|>"}
    model = UnifiedTTE.from_pretrained(tiny_checkpoints["qwen2_vl"], device="cpu", prompts=plain)
    with pytest.raises(InputError, match=r"input 1: has a video, but this model's prompts \(chat=False\)"):
        model.encode(["fine", {"video": frames(0, 2, 20, 20)}], think=False)
