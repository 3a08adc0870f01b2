"""The minibench generator: deterministic files, teacher answers that follow from the scenes,
splits readable by the training and evaluation readers."""

from __future__ import annotations

import hashlib
import json
import os
import random

import pytest

from tte_fast.minibench import teacher as T
from tte_fast.minibench.scenes import render_scene
from tte_fast.minibench.tasks import TASKS, make_examples
from tte_fast.minibench.writer import SIZES, generate, read_teacher


def _digests(root) -> dict[str, str]:
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("minibench") / "a"
    generate(str(root), seed=3, size="fast")
    return str(root)


def test_same_seed_same_files_other_seed_other_files(data, tmp_path):
    generate(str(tmp_path / "b"), seed=3, size="fast")
    assert _digests(data) == _digests(tmp_path / "b")
    generate(str(tmp_path / "c"), seed=4, size="fast")
    other = _digests(tmp_path / "c")
    assert other.keys() != _digests(data).keys() or other != _digests(data)


def test_rendering_is_a_function_of_the_scene():
    scene = make_examples("SceneQA", 1, random.Random(0))[0].scene
    assert render_scene(scene).tobytes() == render_scene(scene).tobytes()
    pixels = render_scene(scene).tobytes()
    colours = {pixels[i : i + 3] for i in range(0, len(pixels), 3)}
    assert len(colours) > 2  # shapes were drawn on the white background


@pytest.mark.parametrize("task", list(TASKS))
def test_teacher_answers_follow_from_the_scene(task):
    for ex in make_examples(task, 200, random.Random(task)):
        assert ex.trace.startswith("<think>\n") and ex.trace.endswith(f"\n</think>\n\n{ex.answer}")
        pos = ex.candidates[0]
        things = [t for _, t in ex.scene.things] if ex.scene else []
        if task == "ShapeCount":
            word = ex.text.split("colour of ")[-1].rstrip("?") if "colour of" in ex.text else None
            if ex.text == "How many shapes are in the picture?":
                assert pos.text == T.NUMBERS[len(things)]
            elif ex.text == "How many shapes have corners?":
                assert pos.text == T.NUMBERS[sum(t.shape != "circle" for t in things)]
            elif word is not None:
                colour = next(c for c, refs in T.COLOUR_OF.items() if word in refs)
                assert pos.text == T.NUMBERS[sum(t.colour == colour for t in things)]
        elif task == "SceneQA":
            assert pos.text == ex.answer and pos.text not in [c.text for c in ex.candidates[1:]]
            if "right after the" in ex.text:
                anchor = ex.text.split("right after the ")[1].rstrip("?")
                names = [t.name for t in things]
                assert things[names.index(anchor) + 1].colour == ex.answer
        elif task == "SceneRetrieval":
            wanted = [t for t in (pos.scene.cells) if t is not None and t.name == ex.answer]
            assert wanted, "the positive picture holds the described shape"
            for neg in ex.candidates[1:]:
                assert ex.answer not in [t.name for t in neg.scene.cells if t is not None]
        else:
            assert pos.crop.name == ex.answer and pos.crop in things
            crops = [c.crop for c in ex.candidates]
            assert len(set(crops)) == len(crops)
            assert set(things) <= set(crops)  # the scene's other shapes are the hard negatives


def test_training_split_reads_as_training_records(data):
    from tte_fast.train.records import read_dataset

    for task in TASKS:
        pairs = read_dataset(
            os.path.join(data, "train", f"{task}.jsonl"), "jsonl", "embedder", image_root=data
        )
        plain = read_dataset(
            os.path.join(data, "train", f"{task}.plain.jsonl"), "jsonl", "embedder", image_root=data
        )
        sft = read_dataset(
            os.path.join(data, "train", f"{task}.sft.jsonl"), "jsonl", "reasoner", image_root=data
        )
        assert len(pairs) == len(plain) == len(sft) == SIZES["fast"]["train"]
        assert all(r.query_trace for r in pairs) and not any(r.query_trace for r in plain)
        assert all(len(r.negs) == 1 for r in pairs)
        assert all("<think>" not in r.trace for r in sft)


def test_eval_splits_read_as_tte_tasks_with_teacher_traces(data):
    from tte_fast.eval.config import TaskConfig
    from tte_fast.eval.data import read_task

    for task, (meta, _) in TASKS.items():
        for split in ("val", "test"):
            config = TaskConfig(
                name=task,
                data_path=os.path.join(data, split, task),
                dataset_parser="tte",
                image_root=data,
                meta_task=meta,
            )
            loaded = read_task(config)
            assert len(loaded.query_ids) == SIZES["fast"][split]
            assert loaded.local and all(len(c) >= 5 for c in loaded.candidates)
            teacher = read_teacher(data, split, task)
            assert set(teacher) == set(loaded.query_ids)
    with open(os.path.join(data, "manifest.json"), encoding="utf-8") as f:
        assert json.load(f)["seed"] == 3


def test_cli_data_only_writes_data_base_model_and_configs(tmp_path):
    from tte_fast.cli import main
    from tte_fast.minibench.pipeline import CONFIG_FILES

    main(["minibench", "--output", str(tmp_path), "--profile", "fast", "--data-only"])
    assert (tmp_path / "data" / "manifest.json").exists()
    assert (tmp_path / "base" / "model.safetensors").exists()
    assert sorted(os.listdir(tmp_path / "configs")) == sorted(CONFIG_FILES)


def _png(image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _dark_pixels(image) -> int:
    data = image.tobytes()
    return sum(max(data[i : i + 3]) < 80 for i in range(0, len(data), 3))


def _labelled_examples(task: str, count: int = 300) -> list:
    return [ex for ex in make_examples(task, count, random.Random(f"text/{task}")) if "letter" in ex.text]


def test_labels_are_drawn_deterministically_in_dark_ink():
    from tte_fast.minibench.scenes import CELL, TAG, Scene, label_scene, random_scene

    scene = label_scene(random.Random(5), random_scene(random.Random(5), 4, 4))
    again = label_scene(random.Random(5), random_scene(random.Random(5), 4, 4))
    assert scene == again and _png(render_scene(scene)) == _png(render_scene(again))  # same seed, same bytes
    assert sorted(scene.labelled) == ["A", "B", "C", "D"]
    plain = render_scene(Scene(scene.cells))
    drawn = render_scene(scene)
    assert plain.tobytes() != drawn.tobytes()
    x0, y0, x1, y1 = TAG
    tags = []
    for i, _ in scene.things:
        box = (i * CELL + x0, y0, i * CELL + x1 + 1, y1 + 1)
        assert _dark_pixels(drawn.crop(box)) >= 15, i  # the letter's strokes
        assert _dark_pixels(plain.crop(box)) == 0  # no shape colour is that dark
        tags.append(drawn.crop(box).tobytes())
    assert len(set(tags)) == 4  # four letters, four different drawings


def test_unlabelled_scenes_render_as_before_and_keys_name_the_labels():
    from tte_fast.minibench.scenes import Scene, Thing

    cells = (Thing("red", "circle"), None, Thing("blue", "square"), None)
    assert Scene(cells).key() == "red_circle-empty-blue_square-empty"
    marked = Scene(cells, ("C", None, None, None))
    assert marked.key() == "red_circle_C-empty-blue_square-empty"
    assert T.describe(marked) == "from left to right: red circle marked C, empty, blue square, empty."


@pytest.mark.parametrize("task", ["ShapeCount", "SceneQA", "ShapeGrounding"])
def test_text_queries_need_the_letters_and_the_teacher_reads_them(task):
    from tte_fast.minibench.scenes import LETTERS

    examples = _labelled_examples(task)
    assert len(examples) >= 40  # the text kinds are a real share of the task
    for ex in examples:
        scene, letter = ex.scene, ex.text.rstrip("?").split()[-1]
        marks = {scene.labels[i]: t for i, t in enumerate(scene.cells) if t is not None and scene.labels[i]}
        for name, t in marks.items():  # the perception step names every label
            assert f"{t.name} marked {name}" in ex.body
        pos = ex.candidates[0]
        if task == "ShapeCount":
            expected = sum(1 for name in marks if LETTERS.index(name) < LETTERS.index(letter))
            assert pos.text == ex.answer == T.NUMBERS[expected]
        elif task == "SceneQA":
            target = marks[LETTERS[LETTERS.index(letter) + 1]]
            expected = target.colour if ex.text.startswith("What colour") else target.shape
            assert pos.text == ex.answer == expected
            assert f"the letter after {letter} is" in ex.body
        else:
            target = marks[LETTERS[LETTERS.index(letter) - 1]]
            assert pos.crop == target and ex.answer == target.name
            assert f"the letter before {letter} is" in ex.body
            # without reading the letters the target is one of several shapes of the scene
            assert len([c for c in ex.candidates if c.crop in scene.cells]) >= 2
