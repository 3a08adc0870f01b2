"""Video loading: frame sampling as transformers' Qwen-VL video processors sample, the three sources
(frame lists, folders, files through PyAV) and the early, named errors for bad videos."""

from __future__ import annotations

import builtins
import importlib.util

import numpy as np
import PIL.Image
import pytest
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
from transformers.video_utils import VideoMetadata

from tte_fast.inputs import InputError, check_input
from tte_fast.media.frame_sampling import FrameSampling
from tte_fast.media.video_io import load_video

has_av = importlib.util.find_spec("av") is not None


def solid_frames(count: int, height: int = 24, width: int = 32) -> list[np.ndarray]:
    """Frames whose red channel is 10 * their index, so a read frame tells which it was."""
    frames = []
    for k in range(count):
        frame = np.zeros((height, width, 3), np.uint8)
        frame[..., 0] = 10 * k
        frames.append(frame)
    return frames


def which(clip) -> list[int]:
    return [int(round(frame[..., 0].mean() / 10)) for frame in clip.frames]


# ------------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize(
    "total, options, source_fps, expected",
    [
        (64, {"num_frames": 8}, None, [0, 8, 16, 24, 32, 40, 48, 56]),
        (10, {"num_frames": 4}, None, [0, 2, 5, 7]),  # arange(0, 10, 2.5), truncated
        (10, {"num_frames": 7}, None, [0, 1, 2, 3, 5, 6, 7, 8]),  # 7 rounds to 8, a multiple of 2
        (100, {"fps": 2.0}, 25.0, [0, 12, 25, 37, 50, 62, 75, 87]),  # 4 s at 2 fps
        (6, {"fps": 2.0}, 25.0, [0, 1, 3, 4]),  # raised to min_frames 4
        (7, {}, None, list(range(7))),  # neither: every frame
        (7, {"fps": 2.0}, None, list(range(7))),  # fps of an unknown rate: every frame
    ],
)
def test_qwen2_sampling(total, options, source_fps, expected):
    assert FrameSampling(style="qwen2", **options).indices(total, source_fps) == expected


@pytest.mark.parametrize(
    "total, options, source_fps",
    [
        (64, {"num_frames": 8}, None),
        (10, {"num_frames": 5}, None),
        (300, {"fps": 2}, 30.0),
        (3, {"fps": 2}, 30.0),
    ],
)
def test_qwen3_sampling_equals_transformers(total, options, source_fps):
    theirs = Qwen3VLVideoProcessor().sample_frames(
        VideoMetadata(total_num_frames=total, fps=source_fps), **options
    )
    assert FrameSampling(style="qwen3", **options).indices(total, source_fps) == theirs.tolist()


def test_sampling_settings_are_checked():
    with pytest.raises(ValueError, match="exclusive"):
        FrameSampling(num_frames=8, fps=2.0)
    with pytest.raises(ValueError, match="num_frames must be an int >= 1, got 0"):
        FrameSampling(num_frames=0)
    with pytest.raises(ValueError, match="style must be one of"):
        FrameSampling(style="qwen4")


# -------------------------------------------------------------------------------------- sources
def test_folder_frames_in_natural_order(tmp_path):
    for k, frame in enumerate(solid_frames(12)):
        PIL.Image.fromarray(frame).save(tmp_path / f"frame_{k}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    clip = load_video(0, str(tmp_path), FrameSampling(num_frames=4))
    assert which(clip) == [0, 3, 6, 9]  # frame_10 sorts after frame_9, not after frame_1
    assert clip.frames.shape == (4, 24, 32, 3) and clip.total_frames == 12 and clip.fps is None


def test_list_and_array_of_frames():
    frames = solid_frames(5)
    assert which(load_video(0, frames, FrameSampling())) == [0, 1, 2, 3, 4]
    assert which(load_video(0, np.stack(frames), FrameSampling(num_frames=2))) == [0, 2]
    grey = [PIL.Image.fromarray(f[..., 0]) for f in frames[:2]]  # any image the image path takes
    assert load_video(0, grey, FrameSampling()).frames.shape == (2, 24, 32, 3)


@pytest.mark.skipif(not has_av, reason="PyAV (the video extra) is not installed")
def test_file_decoded_with_pyav(tmp_path):
    import av

    path = str(tmp_path / "clip.mp4")
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        for frame in solid_frames(20):
            frame[..., 1:] = frame[..., :1]  # grey frames survive the encoder's colour subsampling
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    clip = load_video(0, path, FrameSampling(fps=2.0))  # 2 s at 10 fps: 4 frames at 2 fps
    assert clip.total_frames == 20 and clip.fps == 10.0 and clip.indices == [0, 5, 10, 15]
    assert which(clip) == [0, 5, 10, 15]
    with open(path, "rb") as f:  # the file's bytes decode the same
        from_bytes = load_video(0, f.read(), FrameSampling(fps=2.0))
    np.testing.assert_array_equal(from_bytes.frames, clip.frames)


def test_missing_pyav_names_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"\x00" * 64)
    real_import = builtins.__import__

    def no_av(name, *args, **kwargs):
        if name == "av":
            raise ImportError("No module named 'av'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_av)
    with pytest.raises(ImportError, match=r"tte_fast\[video\]"):
        check_input(0, {"video": str(path)})


# --------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "video, message",
    [
        ([], "input 3: video has no frames"),
        ("no/such/folder", "input 3: video not found: 'no/such/folder'"),
        (np.zeros((0, 8, 8, 3), np.uint8), "input 3: video has no frames"),
        (np.zeros((8, 8, 3), np.uint8), "input 3: a video array must be frames x H x W x C"),
        ([np.zeros((8, 8), np.float32)], "input 3: image array must be uint8"),
        (42, "input 3: video must be a list of frames"),
        ("https://example.com/a.mp4", "input 3: video URLs are not fetched"),
        (b"", "input 3: video bytes are empty"),
    ],
)
def test_bad_videos_fail_at_check(video, message):
    with pytest.raises(InputError, match=message):
        check_input(3, {"video": video, "text": "x"})


def test_bad_videos_fail_at_load(tmp_path):
    with pytest.raises(InputError, match="input 2: video folder .* has no frame images"):
        load_video(2, str(tmp_path), FrameSampling())
    frames = solid_frames(2) + [np.zeros((30, 32, 3), np.uint8)]
    with pytest.raises(
        InputError, match="input 2: video frames differ in size: frame 0 is 32x24, frame 2 is 32x30"
    ):
        load_video(2, frames, FrameSampling())
    with pytest.raises(InputError, match="input 2: video has 6 frames to read, more than max_frames=5"):
        load_video(2, solid_frames(6), FrameSampling(max_frames=5))
    with pytest.raises(InputError, match="input 2: video of 3 frames: cannot sample 4 frames"):
        load_video(2, solid_frames(3), FrameSampling(num_frames=4))
    broken = tmp_path / "frames"
    broken.mkdir()
    (broken / "frame_0.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(InputError, match="input 2: cannot read image from file"):
        load_video(2, str(broken), FrameSampling())


@pytest.mark.skipif(not has_av, reason="PyAV (the video extra) is not installed")
def test_unreadable_video_file(tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"this is no video")
    with pytest.raises(InputError, match="input 1: cannot read video file .*clip.mp4"):
        load_video(1, str(path), FrameSampling())
    with pytest.raises(InputError, match="input 1: cannot read video bytes"):
        load_video(1, b"this is no video", FrameSampling())


def test_video_processor_settings_change_in_place():
    from tte_fast.video_preprocess import VideoProcessor, VideoSettings

    processor = VideoProcessor(VideoSettings(fps=2.0))
    processor.update(num_frames=2)  # a count replaces the rate
    assert which(processor.load(0, solid_frames(6))) == [0, 3]
    with pytest.raises(ValueError, match="min_pixels"):
        processor.update(max_pixels=10)
    with pytest.raises(TypeError, match=r"unknown video settings \['frames'\]"):
        processor.update(frames=3)
    assert processor.settings.num_frames == 2 and processor.settings.max_pixels == VideoSettings().max_pixels


def test_trace_keys_tell_videos_apart():
    """The trace job keys training inputs by content: two records differing only in their video differ."""
    from tte_fast.traces.sources import training_key

    assert training_key("query", {"text": "t", "video": "a"}) != training_key(
        "query", {"text": "t", "video": "b"}
    )
    assert training_key("query", {"text": "t", "video": "a"}) != training_key("query", {"text": "t"})
    assert training_key("query", {"text": "t", "video": None}) == training_key("query", {"text": "t"})
