"""MMEB-V2's tasks as VLM2Vec's evaluation YAMLs list them (36 image, 18 video, 27 visual-document),
with each task's meta-task, local/global ranking, and where VLM2Vec reads it from (a Hugging Face
dataset id, subset and split; media under the MMEB-V2 data folder). The headline metric follows
the modality: hit@1 for image and video, NDCG@5 for visual documents (``config.HEADLINES``).

A config's ``suite`` section expands into these tasks::

    suite: {name: mmeb_v2, data_root: vlm2vec_eval, modalities: [image, visdoc], sample_cap: null}

``data_root`` is the folder VLM2Vec's download script fills (``image-tasks/`` holds the images of the
image tasks, ``video-tasks/frames/`` the saved frames of the video tasks); the records come through
the ``datasets`` library (see :mod:`tte_fast.eval.hf_source`). Video tasks read 8 of each video's
saved frames (:mod:`tte_fast.eval.video_rows`).

Entries of VLM2Vec's own YAMLs (``dataset_parser: image_cls`` ... ``vidore``, ``visrag``, the video
parsers, with ``dataset_name``) are read as the task they name (:func:`from_vlm2vec`), so those files
can serve as a config's ``tasks``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tte_fast.settings.schema import ConfigError

MODALITIES = ("image", "video", "visdoc")
IMAGE_SOURCE = "ziyjiang/MMEB_Test_Instruct"
# VLM2Vec's fixed instructions for the visual-document tasks (their rows carry none).
VISDOC_QUERY_INSTRUCTION = "Find a document image that matches the given query:"
VISDOC_TARGET_INSTRUCTION = "Understand the content of the provided document image."


@dataclass(frozen=True)
class SuiteTask:
    name: str
    modality: str
    meta_task: str
    eval_type: str
    hf_dataset: str
    hf_subset: str | None
    split: str
    media: str | None = None  # image or frame folder under the data root
    language: str | None = None  # ViDoRe v2 English-only variants filter the queries

    def task_config(self, data_root: str, sample_cap: int | None = None) -> dict:
        """The task's entry in an evaluation config."""
        if self.modality == "video":
            return self._video_config(data_root, sample_cap)
        task = {
            "name": self.name,
            "dataset_parser": "mmeb" if self.modality == "image" else "beir",
            "hf_dataset": self.hf_dataset,
            "hf_subset": self.hf_subset,
            "dataset_split": self.split,
            "eval_type": self.eval_type,
            "meta_task": self.meta_task,
            "sample_cap": sample_cap,
        }
        if self.modality == "image":
            task["image_root"] = os.path.join(data_root, self.media)
        else:
            task["language"] = self.language
            task["query_instruction"] = VISDOC_QUERY_INSTRUCTION
            task["target_instruction"] = VISDOC_TARGET_INSTRUCTION
        return task

    def _video_config(self, data_root: str, sample_cap: int | None) -> dict:
        parser = VIDEO_TASK_PARSERS[self.name]
        return {
            "name": self.name,
            "dataset_parser": "video",
            "video_parser": parser,
            "hf_dataset": self.hf_dataset,
            "hf_subset": self.hf_subset,
            "dataset_split": self.split,
            "frame_root": os.path.join(data_root, self.media),
            "num_frames": VIDEO_FRAMES,
            "eval_type": self.eval_type,
            "meta_task": self.meta_task,
            "sample_cap": sample_cap,
        }


def _image(meta_task: str, names: str) -> list[SuiteTask]:
    return [
        SuiteTask(n, "image", meta_task, "local", IMAGE_SOURCE, n, "test", "image-tasks")
        for n in names.split()
    ]


def _video(meta_task: str, rows) -> list[SuiteTask]:
    return [
        SuiteTask(name, "video", meta_task, eval_type, hf, subset, split, f"video-tasks/frames/{frames}")
        for name, eval_type, hf, subset, split, frames in rows
    ]


def _visdoc(meta_task: str, rows) -> list[SuiteTask]:
    return [
        SuiteTask(name, "visdoc", meta_task, "global", hf, None, split, None, language)
        for name, hf, split, language in rows
    ]


VIDEO_FRAMES = 8  # frames VLM2Vec reads of each video's saved ones
# The video tasks' row layouts (VLM2Vec's dataset_parser names).
VIDEO_TASK_PARSERS = {
    "SmthSmthV2": "ssv2",
    **dict.fromkeys(("HMDB51", "UCF101", "K700", "Breakfast"), "video_classification"),
    "MSR-VTT": "msrvtt",
    "MSVD": "msvd",
    "DiDeMo": "didemo",
    "YouCook2": "youcook2",
    "VATEX": "vatex",
    "QVHighlight": "moment_retrieval",
    "Charades-STA": "moment_retrieval",
    "MomentSeeker": "momentseeker",
    "Video-MME": "videomme",
    "NExTQA": "nextqa",
    "EgoSchema": "egoschema",
    "MVBench": "mvbench",
    "ActivityNetQA": "activitynetqa",
}
_VIDORE = "vidore/{}_test_subsampled_beir"
_SYNTHETIC = "vidore/syntheticDocQA_{}_test_beir"
_VISRAG = "openbmb/VisRAG-Ret-Test-{}"

TASKS: tuple[SuiteTask, ...] = tuple(
    _image("classification", "ImageNet-1K N24News HatefulMemes VOC2007 SUN397 Place365 ImageNet-A")
    + _image("classification", "ImageNet-R ObjectNet Country211")
    + _image("vqa", "OK-VQA A-OKVQA DocVQA InfographicsVQA ChartQA Visual7W ScienceQA VizWiz GQA TextVQA")
    + _image("retrieval", "MSCOCO_i2t VisualNews_i2t VisDial MSCOCO_t2i VisualNews_t2i WebQA EDIS")
    + _image("retrieval", "Wiki-SS-NQ CIRR NIGHTS OVEN FashionIQ")
    + _image("grounding", "MSCOCO RefCOCO RefCOCO-Matching Visual7W-Pointing")
    + _video(
        "video_classification",
        [
            ("SmthSmthV2", "local", "VLM2Vec/SmthSmthV2", None, "test", "video_cls/SSv2"),
            ("HMDB51", "global", "VLM2Vec/HMDB51", None, "test", "video_cls/HMDB51"),
            ("UCF101", "global", "VLM2Vec/UCF101", None, "test", "video_cls/UCF101"),
            ("K700", "global", "VLM2Vec/Kinetics-700", None, "test", "video_cls/K700"),
            ("Breakfast", "global", "VLM2Vec/Breakfast", None, "test", "video_cls/Breakfast"),
        ],
    )
    + _video(
        "video_retrieval",
        [
            ("MSR-VTT", "global", "VLM2Vec/MSR-VTT", "test_1k", "test", "video_ret/MSR-VTT"),
            ("MSVD", "global", "VLM2Vec/MSVD", None, "test", "video_ret/MSVD"),
            ("DiDeMo", "global", "VLM2Vec/DiDeMo", None, "test", "video_ret/DiDeMo"),
            ("YouCook2", "global", "lmms-lab/YouCook2", None, "val", "video_ret/YouCook2"),
            ("VATEX", "global", "VLM2Vec/VATEX", None, "test", "video_ret/VATEX"),
        ],
    )
    + _video(
        "moment_retrieval",
        [
            ("QVHighlight", "local", "VLM2Vec/QVHighlight", None, "test", "video_mret/QVHighlight"),
            ("Charades-STA", "local", "VLM2Vec/Charades-STA", None, "test", "video_mret/Charades_STA"),
            ("MomentSeeker", "local", "VLM2Vec/MomentSeeker", None, "test", "video_mret/MomentSeeker"),
        ],
    )
    + _video(
        "video_qa",
        [
            ("Video-MME", "local", "VLM2Vec/Video-MME", None, "test", "video_qa/Video-MME"),
            ("NExTQA", "local", "VLM2Vec/NExTQA", "MC", "test", "video_qa/NExTQA"),
            ("EgoSchema", "local", "VLM2Vec/EgoSchema", "Subset", "test", "video_qa/EgoSchema"),
            ("MVBench", "local", "VLM2Vec/MVBench", None, "train", "video_qa/MVBench"),
            ("ActivityNetQA", "local", "VLM2Vec/ActivityNetQA", None, "test", "video_qa/ActivityNetQA"),
        ],
    )
    + _visdoc(
        "vidore_v1",
        [
            ("ViDoRe_arxivqa", _VIDORE.format("arxivqa"), "test", None),
            ("ViDoRe_docvqa", _VIDORE.format("docvqa"), "test", None),
            ("ViDoRe_infovqa", _VIDORE.format("infovqa"), "test", None),
            ("ViDoRe_tabfquad", _VIDORE.format("tabfquad"), "test", None),
            ("ViDoRe_tatdqa", "vidore/tatdqa_test_beir", "test", None),
            ("ViDoRe_shiftproject", "vidore/shiftproject_test_beir", "test", None),
        ]
        + [
            (f"ViDoRe_syntheticDocQA_{topic}", _SYNTHETIC.format(topic), "test", None)
            for topic in ("artificial_intelligence", "energy", "government_reports", "healthcare_industry")
        ],
    )
    + _visdoc(
        "vidore_v2",
        [("ViDoRe_esg_reports_human_labeled_v2", "vidore/esg_reports_human_labeled_v2", "test", None)]
        + [
            row
            for topic in ("biomedical_lectures", "economics_reports", "esg_reports")
            for row in (
                (f"ViDoRe_{topic}_v2", f"vidore/{topic}_v2", "test", "english"),
                (f"ViDoRe_{topic}_v2_multilingual", f"vidore/{topic}_v2", "test", None),
            )
        ],
    )
    + _visdoc(
        "visrag",
        [
            (f"VisRAG_{name}", _VISRAG.format(name), "train", None)
            for name in ("ArxivQA", "ChartQA", "MP-DocVQA", "SlideVQA", "InfoVQA", "PlotQA")
        ],
    )
    + _visdoc(
        "visdoc_ood",
        [
            ("ViDoSeek-page", "VLM2Vec/ViDoSeek-page-fixed", "test", None),
            ("ViDoSeek-doc", "VLM2Vec/ViDoSeek", "test", None),
            ("MMLongBench-doc", "VLM2Vec/MMLongBench-doc", "test", None),
            ("MMLongBench-page", "VLM2Vec/MMLongBench-page-fixed", "test", None),
        ],
    )
)
BY_NAME = {t.name: t for t in TASKS}
SUITE_KEYS = {"name", "data_root", "modalities", "tasks", "sample_cap"}


def suite_tasks(spec: dict) -> list[dict]:
    """The task entries of a ``suite`` section (keys: ``name``, ``data_root``, ``modalities``
    (default image and visdoc), ``tasks`` (names; default all of those modalities), ``sample_cap``)."""
    if not isinstance(spec, dict):
        raise ConfigError(f"suite must be a mapping, got {type(spec).__name__}")
    unknown = sorted(set(spec) - SUITE_KEYS)
    if unknown:
        raise ConfigError(f"suite: unknown keys {unknown}; known: {sorted(SUITE_KEYS)}")
    if spec.get("name") != "mmeb_v2":
        raise ConfigError(f"suite.name must be 'mmeb_v2', got {spec.get('name')!r}")
    for key in ("modalities", "tasks"):
        if spec.get(key) is not None and not isinstance(spec[key], list):
            raise ConfigError(f"suite.{key} must be a list, got {spec[key]!r}")
    modalities = spec.get("modalities") or ["image", "visdoc"]
    bad = [m for m in modalities if m not in MODALITIES]
    if bad:
        raise ConfigError(f"suite.modalities: unknown {bad}; known: {list(MODALITIES)}")
    names = spec.get("tasks")
    if names is None:
        chosen = [t for t in TASKS if t.modality in modalities]
    else:
        unknown_names = [n for n in names if n not in BY_NAME]
        if unknown_names:
            raise ConfigError(f"suite.tasks: not MMEB-V2 tasks: {unknown_names}")
        chosen = [BY_NAME[n] for n in names]
    data_root = spec.get("data_root") or "."
    return [t.task_config(data_root, spec.get("sample_cap")) for t in chosen]


# VLM2Vec's dataset_parser names: the image and visual-document ones (-> modality), and the video ones.
VLM2VEC_PARSERS = {p: "image" for p in ("image_cls", "image_qa", "image_i2t", "image_t2i", "image_i2i_vg")}
VLM2VEC_PARSERS |= {"vidore": "visdoc", "visrag": "visdoc"}
VLM2VEC_VIDEO_PARSERS = {
    *("ssv2", "video_classification", "msrvtt", "msvd", "didemo", "youcook2", "vatex"),
    *("moment_retrieval", "momentseeker", "videomme", "nextqa", "egoschema", "mvbench", "activitynetqa"),
}
# Keys of VLM2Vec's entries that the translation consumes (the task is found by its dataset name).
_VLM2VEC_ONLY = ("dataset_name", "dataset_parser")


def is_vlm2vec_entry(raw: dict) -> bool:
    parser = raw.get("dataset_parser")
    return parser in VLM2VEC_PARSERS or parser in VLM2VEC_VIDEO_PARSERS


def from_vlm2vec(raw: dict) -> dict:
    """A task entry as VLM2Vec's YAMLs write it (its ``dataset_parser``, ``dataset_name``,
    ``dataset_split``, ``image_root``, ``eval_type``) as ours, the task found by its dataset name."""
    name, parser = raw["name"], raw["dataset_parser"]
    if parser in VLM2VEC_VIDEO_PARSERS:
        return _from_vlm2vec_video(raw)
    dataset = raw.get("dataset_name", name)
    known = BY_NAME.get(dataset)
    if known is None or known.modality != VLM2VEC_PARSERS[parser]:
        raise ConfigError(
            f"task {name!r}: dataset_name {dataset!r} is no MMEB-V2 {VLM2VEC_PARSERS[parser]} task"
        )
    entry = known.task_config(".")
    entry.update({k: v for k, v in raw.items() if k not in _VLM2VEC_ONLY})
    if entry.get("data_path"):  # local copies of the records instead of the dataset id
        entry.pop("hf_dataset")
        entry.pop("hf_subset")
    if known.modality == "visdoc":
        entry.pop("image_root", None)  # where VLM2Vec saves the pages it reads from the corpus
    return entry


# Keys of VLM2Vec's video entries that name what it extracts frames from, not what it reads.
_VLM2VEC_VIDEO_ONLY = (
    *("video_root", "max_frames_saved", "clip_root", "max_video_frames_saved", "max_clip_frames_saved"),
    "num_negative_clips",  # moment retrieval reads every clip saved
)


def _from_vlm2vec_video(raw: dict) -> dict:
    """A VLM2Vec video entry (``frame_root``, ``num_frames``) as our ``video`` task."""
    name, parser = raw["name"], raw["dataset_parser"]
    dataset = raw.get("dataset_name", name)
    known = next(
        (t for t in TASKS if t.modality == "video" and dataset in (t.name, t.hf_dataset.split("/")[-1])), None
    )
    if known is None or VIDEO_TASK_PARSERS[known.name] != parser:
        raise ConfigError(
            f"task {name!r}: dataset_name {dataset!r} is no MMEB-V2 video task read by {parser!r}"
        )
    entry = known.task_config(".")
    entry["name"] = name
    raw = dict(raw)
    clip_frames = raw.pop(
        "num_clip_frames", None
    )  # moment retrieval: frames of the query video and of a clip
    if "num_video_frames" in raw:
        raw["num_frames"] = raw.pop("num_video_frames")
        if clip_frames is not None and clip_frames != raw["num_frames"]:
            raise ConfigError(
                f"task {name!r}: num_clip_frames {clip_frames} != num_video_frames; one count is read"
            )
    skipped = (*_VLM2VEC_ONLY, *_VLM2VEC_VIDEO_ONLY)
    entry.update({k: v for k, v in raw.items() if k not in skipped})
    if entry.get("data_path"):
        entry.pop("hf_dataset")
        entry.pop("hf_subset")
    return entry
