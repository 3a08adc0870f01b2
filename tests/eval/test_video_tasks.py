"""MMEB-V2 video tasks: VLM2Vec's rows with their saved frame folders (8 frames read of the saved
ones, as its evaluation picks them), read per layout, and ``tte-fast eval`` over a video task."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.eval_fixtures import THINK_TOKENS
from tests.eval_layouts import write_jsonl
from tte_fast.cli import main
from tte_fast.eval.config import EvalConfigError, TaskConfig
from tte_fast.eval.records import EvalDataError
from tte_fast.eval.video_rows import QA_INSTRUCTION, read_video_task


def write_frames(root, name: str, count: int, seed: int = 0, size=(40, 40)) -> None:
    """``count`` frames ``frame_0001.jpg`` ... in ``root/name`` (VLM2Vec's names)."""
    folder = root / name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for k in range(count):
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"frame_{k + 1:04d}.jpg")


def video_task(parser: str, frame_root, eval_type: str = "global", **extra) -> TaskConfig:
    return TaskConfig(
        name=extra.pop("name", "t"),
        data_path="rows.jsonl",
        dataset_parser="video",
        video_parser=parser,
        frame_root=str(frame_root),
        eval_type=eval_type,
        **extra,
    )


def frame_numbers(item: dict) -> list[int]:
    return [int(path.rsplit("_", 1)[1].split(".")[0]) for path in item["video"]]


def test_retrieval_rows_read_eight_of_the_saved_frames(tmp_path):
    write_frames(tmp_path, "video7", 10)
    write_frames(tmp_path, "video8", 5)
    rows = [{"video_id": "video7", "caption": "a man cooks"}, {"video_id": "video8", "caption": "a dog runs"}]
    data = read_video_task(
        video_task("msrvtt", tmp_path, meta_task="video_retrieval"), rows, "rows", str(tmp_path)
    )
    assert [q["text"] for q in data.queries] == ["a man cooks", "a dog runs"]
    assert sorted(data.corpus_ids) == ["video7", "video8"] and data.candidates is None
    videos = {cid: item for cid, item in zip(data.corpus_ids, data.corpus)}
    assert frame_numbers(videos["video7"]) == [1, 2, 3, 4, 6, 7, 8, 10]  # linspace(0, 9, 8) truncated
    assert frame_numbers(videos["video8"]) == [1, 2, 3, 4, 5]  # fewer saved than 8: all of them
    assert data.relevance == [{"video7": 1.0}, {"video8": 1.0}]
    assert videos["video7"]["instruction"] == "Understand the content of the provided video."


def test_classification_and_qa_rows(tmp_path):
    write_frames(tmp_path, "12", 8)
    write_frames(tmp_path, "v_abc", 8)
    ssv2 = read_video_task(
        video_task("ssv2", tmp_path, "local", name="SmthSmthV2"),
        [{"video_id": 12, "pos_text": "pushing a cup", "neg_text": ["lifting a cup", "pushing a cup"]}],
        "rows",
        str(tmp_path),
    )
    assert ssv2.queries[0]["instruction"].startswith("What actions or object interactions")
    assert [ssv2.corpus_ids[c] for c in ssv2.candidates[0]] == ["lifting a cup", "pushing a cup"]
    assert ssv2.relevance == [{"pushing a cup": 1.0}]
    qa = read_video_task(
        video_task("activitynetqa", tmp_path, "local"),
        [{"video_name": "abc", "question": "is it raining", "answer": "no", "question_id": "q"}],
        "rows",
        str(tmp_path),
    )
    assert (
        qa.queries[0]["text"] == "is it raining? (A) yes; (B) no."
        and qa.queries[0]["instruction"] == QA_INSTRUCTION
    )
    assert qa.relevance == [{"no": 1.0}] and len(qa.queries[0]["video"]) == 8
    mme = read_video_task(
        video_task("videomme", tmp_path, "local"),
        [
            {
                "videoID": "12",
                "question": "Why?",
                "options": ["A. red", "B. blue", "C. green", "D. grey"],
                "answer": "C",
            }
        ],
        "rows",
        str(tmp_path),
    )
    assert mme.queries[0]["text"] == "Why?\nA. red\nB. blue\nC. green\nD. grey"
    assert [mme.corpus_ids[c] for c in mme.candidates[0]] == ["red", "blue", "green", "grey"]
    assert mme.relevance == [{"green": 1.0}]


def test_mvbench_rows(tmp_path):
    write_frames(tmp_path / "action_count", "clip.mp4", 10)
    row = {"subset": "action_count", "video": "clip.mp4", "question": "How many?", "candidates": ["2", "3"]}
    data = read_video_task(
        video_task("mvbench", tmp_path, "local"), [{**row, "answer": "3"}], "rows", str(tmp_path)
    )
    assert data.queries[0]["text"] == "How many?\nOptions:\n(A) 2\n(B) 3"
    assert frame_numbers(data.queries[0]) == [1, 2, 3, 4, 6, 7, 8, 10]
    assert [data.corpus_ids[c] for c in data.candidates[0]] == ["(A) 2", "(B) 3"]
    assert data.relevance == [{"(B) 3": 1.0}]


def test_moment_retrieval_rows_rank_the_clips_of_their_video(tmp_path):
    for folder, count in (("query", 12), ("positive_3", 8), ("negative_1", 8), ("negative_2", 5)):
        write_frames(tmp_path / "vid9", folder, count)
    row = {"query": "a man opens a door", "video_path": "videos/vid9.mp4"}
    data = read_video_task(video_task("moment_retrieval", tmp_path, "local"), [row], "rows", str(tmp_path))
    query = data.queries[0]
    assert query["text"] == "a man opens a door" and query["instruction"].startswith("Find the clip")
    assert frame_numbers(query) == [1, 2, 4, 5, 7, 8, 10, 12]  # 8 of the query video's 12
    clips = sorted(data.corpus_ids[c] for c in data.candidates[0])
    assert clips == ["vid9/negative_1", "vid9/negative_2", "vid9/positive_3"]
    assert data.relevance == [{"vid9/positive_3": 1.0}]


def test_momentseeker_rows_with_text_image_and_video_queries(tmp_path):
    for name in ("a_p1", "a_n1", "b_q", "b_p2"):
        write_frames(tmp_path / "video_frames", name, 3)
    Image.new("RGB", (8, 8)).save(tmp_path / "query_x.jpg")
    clip = {"output_path": "a/p1.mp4"}
    rows = [
        {
            "query": "t",
            "input_frames": "",
            "positive_frames": [clip],
            "negative_frames": [{"output_path": "a/n1.mp4"}],
        },
        {"query": "i", "input_frames": "x.jpg", "positive_frames": [clip], "negative_frames": []},
        {
            "query": "v",
            "input_frames": "b/q.mp4",
            "positive_frames": [clip, {"output_path": "b/p2.mp4"}],
            "negative_frames": [],
        },
    ]
    data = read_video_task(video_task("momentseeker", tmp_path, "local"), rows, "rows", str(tmp_path))
    text, image, video = data.queries
    assert "video" not in text and "image" not in text and text["instruction"].endswith("given text:")
    assert image["image"].endswith("query_x.jpg") and "image" in image["instruction"]
    assert frame_numbers(video) == [1, 2, 3] and "video segment" in video["instruction"]
    p1, p2 = os.path.join("video_frames", "a_p1"), os.path.join("video_frames", "b_p2")
    assert data.relevance == [{p1: 1.0}, {p1: 1.0}, {p1: 1.0, p2: 1.0}]
    assert len(data.candidates[0]) == 2 and len(data.candidates[2]) == 2


@pytest.mark.parametrize(
    "parser, row, message",
    [
        ("msrvtt", {"video_id": "gone", "caption": "x"}, "row 0: frame folder not found: .*gone"),
        (
            "video_classification",
            {"video_id": "v", "pos_text": "x"},
            "task 't' is none of .*set its query_instruction",
        ),
        (
            "msrvtt",
            {"video_id": "empty", "caption": "x"},
            r"row 0: no frames \(.jpg, .jpeg, .png\) in .*empty",
        ),
        (
            "msrvtt",
            {"video": "v.mp4", "caption": "x"},
            "row 0: missing column 'video_id' for video_parser 'msrvtt'",
        ),
        (
            "nextqa",
            {"video": "v", "question": "q", "answer": 7, **{f"a{k}": "o" for k in range(5)}},
            "answer index 7",
        ),
    ],
)
def test_bad_rows_are_named(tmp_path, parser, row, message):
    (tmp_path / "empty").mkdir()
    write_frames(tmp_path, "v", 2)
    with pytest.raises(EvalDataError, match=message):
        read_video_task(video_task(parser, tmp_path, "local"), [row], "rows.jsonl", str(tmp_path))


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"video_parser": "nope", "frame_root": "f"}, "video_parser must be one of"),
        ({"video_parser": "msrvtt"}, "a video task needs frame_root"),
    ],
)
def test_bad_video_task_configs(fields, message):
    with pytest.raises(EvalConfigError, match=message):
        TaskConfig(name="t", data_path="x", dataset_parser="video", **fields)


def test_eval_over_a_video_task(tiny_checkpoints, tmp_path, one_thread):
    """tte-fast eval: a text-to-video retrieval task (captions against 3 videos' frame folders)."""
    data = tmp_path / "data"
    frames = data / "frames"
    for i in range(3):
        write_frames(frames, f"video{i}", 4, seed=i, size=(32, 48))
    write_jsonl(data / "rows.jsonl", [{"video_id": f"video{i}", "caption": f"clip {i}"} for i in range(3)])
    config = {
        "model": {"path": tiny_checkpoints["qwen2_vl"], "device": "cpu"},
        "encode": {"batch_size": 3, "max_think_tokens": THINK_TOKENS, "progress": False},
        "tasks": {
            "MSR-VTT": {
                "dataset_parser": "video",
                "video_parser": "msrvtt",
                "data_path": "rows.jsonl",
                "frame_root": "frames",
                "eval_type": "global",
                "meta_task": "video_retrieval",
            }
        },
    }
    (data / "config.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    main(["eval", str(data / "config.yaml"), f"output_dir={out}", "--quiet"])
    result = json.loads((out / "results.json").read_text())["tasks"]["MSR-VTT"]
    assert (result["modality"], result["headline_metric"], result["num_queries"]) == ("video", "hit@1", 3)
    report = json.loads((out / "vlm2vec" / "all_scores.json").read_text())
    assert report["metrics"]["video"]["MSR-VTT"]["hit@1"] == result["metrics"]["hit@1"]
    predictions = [
        json.loads(line) for line in (out / "vlm2vec" / "MSR-VTT_pred.jsonl").read_text().splitlines()
    ]
    assert [p["label"] for p in predictions] == [["video0"], ["video1"], ["video2"]]
    assert all(sorted(p["prediction"]) == ["video0", "video1", "video2"] for p in predictions)


def test_input_fingerprints_read_the_frames(tmp_path):
    """Eval caches and deduplicates inputs by fingerprint: videos differing only in pixels differ."""
    from tte_fast.eval.fingerprint import input_fingerprint
    from tte_fast.media.video_io import frame_files

    write_frames(tmp_path, "a", 3, seed=1)
    write_frames(tmp_path, "b", 3, seed=2)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert input_fingerprint({"video": a}) != input_fingerprint({"video": b})
    assert input_fingerprint({"video": a}) == input_fingerprint({"video": frame_files(0, a)})
    assert input_fingerprint({"video": a}) != input_fingerprint({"video": frame_files(0, a)[:2]})
    assert input_fingerprint({"video": a, "text": "x"}) != input_fingerprint(
        {"image": frame_files(0, a)[0], "text": "x"}
    )
