"""The mmeb_v2 task list against what VLM2Vec's evaluation YAMLs say (names, counts, local/global,
meta-tasks, headline metric per modality, data sources), and the ``suite`` config section."""

from __future__ import annotations

from collections import Counter

import pytest

from tte_fast.eval import MMEB_V2_TASKS
from tte_fast.eval.config import EvalConfigError, parse_config

# The YAMLs' task names in order, per modality (a sample of each meta-task, and the ends).
IMAGE_ORDER = ["ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397", "Place365", "ImageNet-A"]
LOCAL_VIDEO = {"SmthSmthV2", "QVHighlight", "Charades-STA", "MomentSeeker", "Video-MME", "NExTQA"}
LOCAL_VIDEO |= {"EgoSchema", "MVBench", "ActivityNetQA"}


def by_name():
    return {t.name: t for t in MMEB_V2_TASKS}


def test_counts_order_and_ranking():
    tasks = MMEB_V2_TASKS
    assert Counter(t.modality for t in tasks) == {"image": 36, "video": 18, "visdoc": 27}
    assert [t.name for t in tasks][:7] == IMAGE_ORDER
    assert [t.name for t in tasks if t.modality == "visdoc"][-4:] == [
        "ViDoSeek-page",
        "ViDoSeek-doc",
        "MMLongBench-doc",
        "MMLongBench-page",
    ]
    assert Counter((t.modality, t.meta_task) for t in tasks) == {
        ("image", "classification"): 10,
        ("image", "vqa"): 10,
        ("image", "retrieval"): 12,
        ("image", "grounding"): 4,
        ("video", "video_classification"): 5,
        ("video", "video_retrieval"): 5,
        ("video", "moment_retrieval"): 3,
        ("video", "video_qa"): 5,
        ("visdoc", "vidore_v1"): 10,
        ("visdoc", "vidore_v2"): 7,
        ("visdoc", "visrag"): 6,
        ("visdoc", "visdoc_ood"): 4,
    }
    assert all(t.eval_type == "local" for t in tasks if t.modality == "image")
    assert all(t.eval_type == "global" for t in tasks if t.modality == "visdoc")
    assert {t.name for t in tasks if t.modality == "video" and t.eval_type == "local"} == LOCAL_VIDEO
    assert len({t.name for t in tasks}) == 81


def test_sources():
    tasks = by_name()
    assert (tasks["MSCOCO_t2i"].hf_dataset, tasks["MSCOCO_t2i"].hf_subset) == (
        "ziyjiang/MMEB_Test_Instruct",
        "MSCOCO_t2i",
    )
    assert tasks["ViDoRe_docvqa"].hf_dataset == "vidore/docvqa_test_subsampled_beir"
    assert (tasks["VisRAG_MP-DocVQA"].hf_dataset, tasks["VisRAG_MP-DocVQA"].split) == (
        "openbmb/VisRAG-Ret-Test-MP-DocVQA",
        "train",
    )
    english, every = tasks["ViDoRe_esg_reports_v2"], tasks["ViDoRe_esg_reports_v2_multilingual"]
    assert english.hf_dataset == every.hf_dataset == "vidore/esg_reports_v2"
    assert (english.language, every.language) == ("english", None)
    assert (tasks["K700"].hf_dataset, tasks["MSR-VTT"].hf_subset) == ("VLM2Vec/Kinetics-700", "test_1k")


def test_suite_section_expands_into_tasks():
    config = parse_config(
        {"suite": {"name": "mmeb_v2", "data_root": "eval_data", "sample_cap": 50}},
        base_dir="/base",
    )
    tasks = {t.name: t for t in config.tasks}
    assert len(tasks) == 36 + 27  # image and visual documents by default
    image = tasks["ImageNet-1K"]
    assert (image.dataset_parser, image.hf_subset, image.dataset_split) == ("mmeb", "ImageNet-1K", "test")
    assert (image.image_root, image.headline, image.sample_cap) == ("eval_data/image-tasks", "hit@1", 50)
    doc = tasks["ViDoRe_biomedical_lectures_v2"]
    assert (doc.dataset_parser, doc.eval_type, doc.language) == ("beir", "global", "english")
    assert (doc.meta_task, doc.modality, doc.headline) == ("vidore_v2", "visdoc", "ndcg_linear@5")
    assert doc.query_instruction and doc.target_instruction
    picked = parse_config({"suite": {"name": "mmeb_v2", "tasks": ["CIRR", "VisRAG_PlotQA"]}})
    assert [t.name for t in picked.tasks] == ["CIRR", "VisRAG_PlotQA"]


@pytest.mark.parametrize(
    "suite,message",
    [
        ({"name": "mmeb_v2", "tasks": ["ImageNet"]}, r"not MMEB-V2 tasks: \['ImageNet'\]"),
        ({"name": "mmeb_v2", "modalities": ["audio"]}, r"unknown \['audio'\]"),
        ({"name": "mteb"}, "suite.name must be 'mmeb_v2', got 'mteb'"),
        ({"name": "mmeb_v2", "root": "x"}, r"unknown keys \['root'\]"),
        ({"name": "mmeb_v2", "modalities": "image"}, "suite.modalities must be a list, got 'image'"),
    ],
)
def test_bad_suites_are_named(suite, message):
    with pytest.raises(EvalConfigError, match=message):
        parse_config({"suite": suite})


def test_the_shipped_example_config_parses():
    import os

    import yaml

    path = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "eval", "mmeb_v2.yaml")
    with open(path, encoding="utf-8") as f:
        config = parse_config(yaml.safe_load(f))
    assert len(config.tasks) == 36 + 27 and config.output_dir == "eval_out/mmeb_v2"


# Entries as VLM2Vec's image.yaml, visdoc.yaml and video.yaml write them.
VLM2VEC_ENTRIES = {
    "ImageNet-1K": {
        "dataset_parser": "image_cls",
        "dataset_name": "ImageNet-1K",
        "dataset_split": "test",
        "image_root": "image-tasks/",
        "eval_type": "local",
    },
    "ViDoRe_esg_reports_v2": {
        "dataset_parser": "vidore",
        "dataset_name": "ViDoRe_esg_reports_v2",
        "image_root": "visdoc-tasks/esg_reports_v2",
        "eval_type": "global",
    },
    "VisRAG_ChartQA": {
        "dataset_parser": "visrag",
        "dataset_name": "VisRAG_ChartQA",
        "image_root": "visdoc-tasks/VisRAG_ChartQA",
        "eval_type": "global",
    },
    "K700": {
        "dataset_parser": "video_classification",
        "dataset_name": "Kinetics-700",
        "video_root": "video-tasks/videos/video_cls/K700",
        "frame_root": "video-tasks/frames/video_cls/K700",
        "num_sample_per_subset": None,
        "max_frames_saved": 64,
        "num_frames": 8,
        "eval_type": "global",
    },
    "QVHighlight": {
        "dataset_parser": "moment_retrieval",
        "dataset_name": "QVHighlight",
        "video_root": "",
        "clip_root": "",
        "frame_root": "video-tasks/frames/video_mret/QVHighlight",
        "num_negative_clips": 9,
        "max_video_frames_saved": 64,
        "max_clip_frames_saved": 8,
        "num_video_frames": 8,
        "num_clip_frames": 8,
        "eval_type": "local",
    },
    "MSR-VTT": {
        "dataset_parser": "msrvtt",
        "dataset_name": "MSR-VTT",
        "video_root": "video-tasks/videos/video_ret/MSR-VTT/",
        "frame_root": "video-tasks/frames/video_ret/MSR-VTT/",
        "max_frames_saved": 64,
        "num_frames": 8,
        "eval_type": "global",
    },
}


def test_vlm2vec_yaml_entries_read_as_the_tasks_they_name():
    ours = {t.name: t for t in parse_config({"tasks": VLM2VEC_ENTRIES}).tasks}
    modalities = ["image", "visdoc", "video"]
    spec = {"name": "mmeb_v2", "data_root": ".", "modalities": modalities}
    suite = {t.name: t for t in parse_config({"suite": spec}).tasks}
    assert len(suite) == 36 + 27 + 18
    for name, task in ours.items():
        if name == "ImageNet-1K":
            assert task.image_root == "image-tasks/"
            task.image_root = suite[name].image_root
        if task.modality == "video":  # VLM2Vec's frame_root, relative to where it runs
            assert task.frame_root == VLM2VEC_ENTRIES[name]["frame_root"]
            task.frame_root = suite[name].frame_root
        assert task == suite[name], name
    local = {**VLM2VEC_ENTRIES["ImageNet-1K"], "data_path": "copies/ImageNet-1K", "num_sample_per_subset": 9}
    task = parse_config({"tasks": {"ImageNet-1K": local}}).tasks[0]
    assert (task.data_path, task.hf_dataset, task.sample_cap) == ("copies/ImageNet-1K", None, 9)


@pytest.mark.parametrize(
    "entry,message",
    [
        (
            {"dataset_parser": "moment_retrieval", "dataset_name": "QVHighlight", "frame_root": "f"}
            | {"num_video_frames": 8, "num_clip_frames": 4},
            "num_clip_frames 4 != num_video_frames; one count is read",
        ),
        (
            {"dataset_parser": "msvd", "dataset_name": "MSR-VTT"},
            "'MSR-VTT' is no MMEB-V2 video task read by 'msvd'",
        ),
        (
            {"dataset_parser": "image_cls", "dataset_name": "ViDoRe_docvqa"},
            "'ViDoRe_docvqa' is no MMEB-V2 image",
        ),
        ({"dataset_parser": "vidore", "dataset_name": "Nope"}, "'Nope' is no MMEB-V2 visdoc task"),
    ],
)
def test_bad_vlm2vec_entries_are_named(entry, message):
    with pytest.raises(EvalConfigError, match=message):
        parse_config({"tasks": {"x": entry}})
