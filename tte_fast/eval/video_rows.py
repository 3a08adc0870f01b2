"""MMEB-V2's video tasks: the rows of VLM2Vec's video datasets with their saved frame folders.

VLM2Vec extracts up to 64 frames per video into ``frame_root/<video>/`` once, and its evaluation
reads ``num_frames`` (8) of them, spread evenly (``linspace(0, n - 1, 8)`` truncated; all of them
when fewer are saved). Those frames are the video input here, so the model's video processor
samples nothing more. The rows, per ``video_parser`` (VLM2Vec's ``dataset_parser``):

- classification: ``ssv2`` (``video_id``, ``pos_text``, ``neg_text``: the candidate labels; local)
  and ``video_classification`` (``video_id``, ``pos_text``; global over the labels the rows name,
  where VLM2Vec lists each dataset's label set in its code);
- text-to-video retrieval (global over the task's videos): ``msrvtt`` (``video_id``, ``caption``),
  ``msvd`` (``video_id``, ``caption[0]``), ``didemo`` (``video``'s file stem, ``caption``),
  ``youcook2`` (``id``, ``sentence``), ``vatex`` (``videoID``, ``enCap[0]``);
- video QA (local over the answer options): ``videomme`` (``videoID``, ``question``, ``options``
  "A. ...", ``answer`` letter), ``nextqa`` (``video``, ``question``, ``a0``..``a4``, ``answer``
  index), ``egoschema`` (``video_idx``, ``question``, ``option``, ``answer`` index),
  ``activitynetqa`` (``video_name``, ``question``, ``answer`` yes / no) and ``mvbench`` (``subset``,
  ``video``: frames under ``frame_root/subset/video``, ``question``, ``candidates``, ``answer``);
- moment retrieval (local over one video's clips): ``moment_retrieval`` (``query``, ``video_path``:
  the query video's frames in ``frame_root/<video>/query/``, each clip's in a sibling folder, the
  positive one named ``positive*``) and ``momentseeker`` (``query``, ``input_frames``: nothing, a
  ``.jpg`` (``frame_root/query_<name>``) or an ``.mp4`` whose frames lie in ``frame_root/video_frames/``;
  ``positive_frames`` / ``negative_frames``: clips as ``{"output_path"}``, every saved frame read).
"""

from __future__ import annotations

import os

import numpy as np

from tte_fast.eval.config import TaskConfig
from tte_fast.eval.records import EvalDataError, TaskData, finish_task

VLM2VEC_FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")  # the frame files VLM2Vec's loader reads
RETRIEVAL_QUERY_INSTRUCTION = "Find a video that contains the following visual content:"
RETRIEVAL_TARGET_INSTRUCTION = "Understand the content of the provided video."
QA_INSTRUCTION = (
    "Given a video and a question, select the most accurate answer from the provided candidates. "
    "Return only the exact text of your chosen answer. Question:"
)
CLASSIFICATION_INSTRUCTIONS = {  # VLM2Vec's, by dataset name
    "Kinetics-700": "Recognize the category of the video content.",
    "K700": "Recognize the category of the video content.",
    "SmthSmthV2": "What actions or object interactions are being performed by the person in the video?",
    "UCF101": "What activities or sports are being performed by the person in the video?",
    "HMDB51": "What actions or objects interactions are the person in the video doing?",
    "Breakfast": "Recognize the breakfast type that the person is cooking in the video.",
}
RETRIEVAL_PARSERS = ("msrvtt", "msvd", "didemo", "youcook2", "vatex")
QA_PARSERS = ("videomme", "nextqa", "egoschema", "activitynetqa")
MOMENT_QUERY_INSTRUCTION = "Find the clip that corresponds to the described scene in the given video:"
MOMENTSEEKER_INSTRUCTIONS = {  # by the query's media
    "text": "Find the clip that corresponds to the given text:",
    "image": "Select the video clip that aligns with the given text and image:",
    "video": "Find the clip that corresponds to the given sentence and video segment:",
}
MOMENTSEEKER_TARGET_INSTRUCTION = "Understand the content of the provided video clip."
VIDEO_PARSERS = (
    "ssv2",
    "video_classification",
    *RETRIEVAL_PARSERS,
    *QA_PARSERS,
    "mvbench",
    "moment_retrieval",
    "momentseeker",
)


def sampled_frames(folder: str, num_frames: int, where: str) -> list[str]:
    """``num_frames`` of a frame folder's files as VLM2Vec picks them (every one when fewer)."""
    from tte_fast.media.video_io import frame_files

    if not os.path.isdir(folder):
        raise EvalDataError(f"{where}: frame folder not found: {folder}")
    try:
        files = [f for f in frame_files(0, folder) if f.lower().endswith(VLM2VEC_FRAME_EXTENSIONS)]
    except ValueError:
        files = []
    if not files:
        raise EvalDataError(f"{where}: no frames ({', '.join(VLM2VEC_FRAME_EXTENSIONS)}) in {folder}")
    if num_frames >= len(files):
        return files
    return [files[i] for i in np.linspace(0, len(files) - 1, num_frames, dtype=int)]


def read_video_task(task: TaskConfig, rows: list[dict], source: str, frame_root: str) -> TaskData:
    """``rows`` of ``task.video_parser``'s layout read from ``source`` (named in errors)."""
    if task.sample_cap:
        rows = rows[: task.sample_cap]
    if not rows:
        raise EvalDataError(f"{source}: no rows")
    reader = _Reader(task, frame_root)
    parse = _PARSERS[task.video_parser]
    for n, row in enumerate(rows):
        where = f"{source}: row {n}"
        try:
            parse(reader, row, where)
        except EvalDataError:
            raise
        except KeyError as err:
            raise EvalDataError(
                f"{where}: missing column {err.args[0]!r} for video_parser {task.video_parser!r}"
            ) from None
        except (TypeError, IndexError, ValueError) as err:
            raise EvalDataError(f"{where}: not a {task.video_parser!r} row ({err})") from None
    return reader.finish()


class _Reader:
    """Collects queries, a deduplicated corpus and each query's positive and candidates."""

    def __init__(self, task: TaskConfig, frame_root: str):
        self.task, self.frame_root = task, frame_root
        self.query_ids, self.queries, self.relevance, self.lists = [], [], [], []
        self.corpus_ids, self.corpus = [], []

    def video(self, name, where: str, every_frame: bool = False) -> list[str]:
        count = 1 << 30 if every_frame else self.task.num_frames
        return sampled_frames(os.path.join(self.frame_root, str(name)), count, where)

    def candidate(self, cid: str, item: dict) -> str:
        if cid not in self.corpus_ids:
            self.corpus_ids.append(cid)
            self.corpus.append(item)
        return cid

    def add(self, query: dict, positive: str | list[str], candidates: list[str], where: str) -> None:
        positives = [positive] if isinstance(positive, str) else positive
        missing = [p for p in positives if p not in candidates] or ([] if positives else ["(none)"])
        if missing:
            raise EvalDataError(
                f"{where}: the answer {missing[0]!r} is not among the candidates {candidates}"
            )
        if self.task.query_instruction:
            query["instruction"] = self.task.query_instruction
        self.query_ids.append(str(len(self.queries)))
        self.queries.append(query)
        self.relevance.append(dict.fromkeys(positives, 1.0))
        self.lists.append(candidates)

    def text_candidates(self, texts: list[str]) -> list[str]:
        inst = self.task.target_instruction
        return [self.candidate(t, {"text": t, **({"instruction": inst} if inst else {})}) for t in texts]

    def finish(self) -> TaskData:
        local = self.task.eval_type == "local"
        return finish_task(
            self.task.name,
            self.query_ids,
            self.queries,
            self.corpus_ids,
            self.corpus,
            self.relevance,
            self.lists if local else None,
        )


def _classification(reader: _Reader, row: dict, where: str, labels: list[str]) -> None:
    task = reader.task
    instruction = task.query_instruction or CLASSIFICATION_INSTRUCTIONS.get(task.name)
    if instruction is None:  # VLM2Vec's are per dataset: another name needs its own
        known = sorted(CLASSIFICATION_INSTRUCTIONS)
        raise EvalDataError(f"{where}: task {task.name!r} is none of {known}; set its query_instruction")
    query = {"video": reader.video(row["video_id"], where), "instruction": instruction}
    reader.add(query, str(row["pos_text"]), reader.text_candidates([str(t) for t in labels]), where)


def _ssv2(reader: _Reader, row: dict, where: str) -> None:
    _classification(reader, row, where, list(row["neg_text"]))


def _video_classification(reader: _Reader, row: dict, where: str) -> None:
    _classification(reader, row, where, [row["pos_text"]])  # global: the corpus gathers every label


def _retrieval(name_and_caption):
    def parse(reader: _Reader, row: dict, where: str) -> None:
        name, caption = name_and_caption(row)
        target = reader.task.target_instruction or RETRIEVAL_TARGET_INSTRUCTION
        video = reader.candidate(str(name), {"video": reader.video(name, where), "instruction": target})
        query = {"text": str(caption), "instruction": RETRIEVAL_QUERY_INSTRUCTION}
        reader.add(query, video, [video], where)

    return parse


def _first(value):
    return value[0] if isinstance(value, (list, tuple)) else value


def _qa(reader: _Reader, row: dict, where: str, name, question: str, options: list[str], answer: int) -> None:
    if not 0 <= answer < len(options):
        raise EvalDataError(f"{where}: answer index {answer} outside the {len(options)} options")
    query = {"video": reader.video(name, where), "text": question, "instruction": QA_INSTRUCTION}
    candidates = reader.text_candidates(options)
    reader.add(query, candidates[answer], candidates, where)


def _lettered(options: list[str]) -> list[str]:
    """ "A. text" options as their text (VLM2Vec's candidates)."""
    return [o[o.find(". ") :].strip(". ") for o in options]


def _videomme(reader: _Reader, row: dict, where: str) -> None:
    options = list(row["options"])
    question = row["question"] + "\n" + "\n".join(options)
    _qa(reader, row, where, row["videoID"], question, _lettered(options), "ABCD".index(row["answer"]))


def _nextqa(reader: _Reader, row: dict, where: str) -> None:
    options = [str(row[f"a{k}"]) for k in range(5)]
    lines = [f"({chr(ord('A') + k)}) {o}" for k, o in enumerate(options)]
    question = f"{row['question']}\nOptions:\n" + "\n".join(lines)
    _qa(reader, row, where, row["video"], question, options, int(row["answer"]))


def _egoschema(reader: _Reader, row: dict, where: str) -> None:
    options = list(row["option"])
    question = row["question"] + " ".join(options)
    _qa(reader, row, where, row["video_idx"], question, _lettered(options), int(row["answer"]))


def _activitynetqa(reader: _Reader, row: dict, where: str) -> None:
    question = row["question"] + "? (A) yes; (B) no."
    _qa(
        reader,
        row,
        where,
        f"v_{row['video_name']}",
        question,
        ["yes", "no"],
        ["yes", "no"].index(row["answer"]),
    )


def _mvbench(reader: _Reader, row: dict, where: str) -> None:
    options = [str(c) for c in row["candidates"]]
    letters = [f"({chr(ord('A') + k)}) {o}" for k, o in enumerate(options)]
    question = f"{row['question']}\nOptions:\n" + "\n".join(letters)
    name = os.path.join(str(row["subset"]), str(row["video"]))
    _qa(reader, row, where, name, question, letters, options.index(str(row["answer"])))


def _clip(reader: _Reader, folder: str, where: str, instruction: str, every_frame: bool) -> str:
    frames = reader.video(folder, where, every_frame)
    return reader.candidate(
        folder, {"video": frames, "instruction": reader.task.target_instruction or instruction}
    )


def _moment_retrieval(reader: _Reader, row: dict, where: str) -> None:
    name = os.path.splitext(os.path.basename(row["video_path"]))[0]
    folder = os.path.join(reader.frame_root, name)
    if not os.path.isdir(folder):
        raise EvalDataError(f"{where}: frame folder not found: {folder}")
    clips = sorted(c for c in os.listdir(folder) if c != "query" and os.path.isdir(os.path.join(folder, c)))
    ids = [_clip(reader, os.path.join(name, c), where, RETRIEVAL_TARGET_INSTRUCTION, False) for c in clips]
    positives = [cid for cid, c in zip(ids, clips) if c.startswith("positive")]
    query = {
        "video": reader.video(os.path.join(name, "query"), where),
        "text": str(row["query"]),
        "instruction": MOMENT_QUERY_INSTRUCTION,
    }
    reader.add(query, positives, ids, where)


def _momentseeker(reader: _Reader, row: dict, where: str) -> None:
    source = str(row.get("input_frames") or "")
    query = {"text": str(row["query"])}
    if source.endswith(".mp4"):
        query["video"] = reader.video(os.path.join("video_frames", _clip_name(source)), where, True)
        query["instruction"] = MOMENTSEEKER_INSTRUCTIONS["video"]
    elif source.endswith(".jpg"):
        image = os.path.join(reader.frame_root, f"query_{source}")
        if not os.path.isfile(image):
            raise EvalDataError(f"{where}: query image not found: {image}")
        query.update(image=image, instruction=MOMENTSEEKER_INSTRUCTIONS["image"])
    else:
        query["instruction"] = MOMENTSEEKER_INSTRUCTIONS["text"]

    def clips(key: str) -> list[str]:
        folders = [os.path.join("video_frames", _clip_name(entry["output_path"])) for entry in row[key]]
        return [_clip(reader, f, where, MOMENTSEEKER_TARGET_INSTRUCTION, True) for f in folders]

    positives = clips("positive_frames")
    reader.add(query, positives, positives + clips("negative_frames"), where)


def _clip_name(path: str) -> str:
    """MomentSeeker's frame folder name of a clip path (``a/b.mp4`` -> ``a_b``)."""
    return path.replace("/", "_").split(".mp4")[0]


_PARSERS = {
    "ssv2": _ssv2,
    "video_classification": _video_classification,
    "msrvtt": _retrieval(lambda row: (row["video_id"], row["caption"])),
    "msvd": _retrieval(lambda row: (row["video_id"], _first(row["caption"]))),
    "didemo": _retrieval(lambda row: (os.path.splitext(os.path.basename(row["video"]))[0], row["caption"])),
    "youcook2": _retrieval(lambda row: (row["id"], row["sentence"])),
    "vatex": _retrieval(lambda row: (row["videoID"], _first(row["enCap"]))),
    "videomme": _videomme,
    "nextqa": _nextqa,
    "egoschema": _egoschema,
    "activitynetqa": _activitynetqa,
    "mvbench": _mvbench,
    "moment_retrieval": _moment_retrieval,
    "momentseeker": _momentseeker,
}
