"""The perception score compares a trace's perception step with the teacher's, cell by cell."""

from __future__ import annotations

import random

import pytest

from tte_fast.minibench import teacher as T
from tte_fast.minibench.perception import perceived_cells, score
from tte_fast.minibench.scenes import label_scene, random_scene


def _teacher(seed: int, labelled: bool = False) -> str:
    rng = random.Random(seed)
    scene = random_scene(rng, 2, 4)
    return T.full_trace(T.describe(label_scene(rng, scene) if labelled else scene) + " rest.", "two")


def test_teacher_traces_score_full_marks():
    pairs = [(_teacher(s, s % 2 == 0), _teacher(s, s % 2 == 0)) for s in range(20)]
    got = score(pairs)
    assert got["cells"] == got["colour"] == got["shape"] == got["letter"] == 1.0
    assert got["scored_cells"] == 80


def test_each_wrong_part_counts_against_its_own_share():
    teacher = T.full_trace("from left to right: red circle marked A, empty, blue square, empty.", "x")
    student = "<think>\nfrom left to right: red square marked B, empty, green square, blue circle."
    got = score([(student, teacher)])
    assert got["cells"] == pytest.approx(1 / 4)  # only the second cell is named right
    assert got["colour"] == pytest.approx(1 / 2) and got["shape"] == pytest.approx(1 / 2)
    assert got["letter"] == 0.0


def test_a_missing_or_short_perception_step_names_no_cell_right():
    teacher = T.full_trace("from left to right: red circle, empty, empty, empty.", "one")
    assert score([("<think>\nthat makes one.", teacher)])["cells"] == 0.0
    short = score([("<think>\nfrom left to right: red circle.", teacher)])
    assert short["cells"] == pytest.approx(1 / 4) and short["scored_cells"] == 4


def test_traces_without_a_picture_are_not_scored():
    assert perceived_cells("<think>\nthe sun is yellow.") is None
    assert score([("anything", T.full_trace("the sun is yellow.", "yellow"))])["cells"] is None
