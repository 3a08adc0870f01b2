"""The four MMEB-style tasks: each example is a query, its candidates (the positive first) and the
teacher's trace and answer.

- ``ShapeCount`` (classification): count the shapes a rule selects (all, with corners, of a referred
  colour, of a shape, marked with a letter before a given one); candidates: the number words.
- ``SceneQA`` (VQA): the colour of the shape after a named one, the shape of a referred colour, or
  the colour or shape of the one marked with the letter after a given one; candidates: every colour
  and shape word.
- ``SceneRetrieval`` (retrieval, text to image): a description by indirect colour and corner count;
  candidates: pictures, the hard ones holding that colour or that shape elsewhere.
- ``ShapeGrounding`` (grounding): the shape of a referred colour, the one before a named shape, or
  the one marked with the letter before a given one; candidates: single-shape crops, the other
  shapes of the scene among them.

A correct match needs the step the trace makes explicit: which colour "the sun" is, which shape
has three corners, which shape comes after another, which letter comes after another and which
shape it is drawn on (the letters are text drawn in the picture: only reading them tells the shapes
apart), how many pass a rule.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tte_fast.minibench import teacher as T
from tte_fast.minibench.scenes import (
    COLOURS,
    LETTERS,
    SHAPES,
    Scene,
    Thing,
    all_things,
    label_scene,
    random_scene,
)

TASKS = {  # name -> (meta-task, query instruction)
    "ShapeCount": ("classification", "Count the shapes the question asks about."),
    "SceneQA": ("vqa", "Answer the question about the picture."),
    "SceneRetrieval": ("retrieval", "Find the picture the description points to."),
    "ShapeGrounding": ("grounding", "Select the shape the expression refers to."),
}
RETRIEVAL_CANDIDATES = 8
GROUNDING_CANDIDATES = 6


@dataclass
class Candidate:
    text: str | None = None
    scene: Scene | None = None
    crop: Thing | None = None


@dataclass
class Example:
    task: str
    text: str
    scene: Scene | None
    candidates: list[Candidate]  # the positive first
    body: str  # the teacher's trace, without tags
    answer: str
    meta: dict = field(default_factory=dict)

    @property
    def trace(self) -> str:
        return T.full_trace(self.body, self.answer)


def _count(rng: random.Random) -> Example:
    scene = random_scene(rng, 0, 4)
    kind = rng.choice(("all", "corners", "colour", "shape", "letter"))
    if kind == "letter":
        scene = label_scene(rng, scene)
    things = [t for _, t in scene.things]
    steps = [T.describe(scene)]
    if kind == "letter":
        letter = rng.choice(LETTERS[1:])
        before = LETTERS[: LETTERS.index(letter)]
        text = f"How many shapes are marked with a letter before {letter}?"
        chosen = [t for i, t in scene.things if scene.label(i) in before]
        steps += [
            f"letters before {letter}: {', '.join(before)}.",
            T.listing(f"marked {' or '.join(before)}", chosen),
        ]
    elif kind == "all":
        text, chosen = "How many shapes are in the picture?", things
        steps.append(T.listing("shapes", chosen))
    elif kind == "corners":
        text, chosen = "How many shapes have corners?", [t for t in things if t.shape != "circle"]
        steps.append(T.listing("shapes with corners", chosen))
    elif kind == "colour":
        colour = rng.choice(sorted(COLOURS))
        reference = rng.choice(T.COLOUR_OF[colour])
        text = f"How many shapes have the colour of {reference}?"
        chosen = [t for t in things if t.colour == colour]
        steps += [T.colour_rule(reference, colour), T.listing(f"{colour} shapes", chosen)]
    else:
        shape = rng.choice(SHAPES)
        text = f"How many shapes have {T.corners_phrase(shape)}?"
        chosen = [t for t in things if t.shape == shape]
        steps += [T.corner_rule(shape), T.listing(f"{shape}s", chosen)]
    answer = T.NUMBERS[len(chosen)]
    steps.append(f"that makes {answer}.")
    others = [n for n in T.NUMBERS if n != answer]
    return Example(
        "ShapeCount",
        text,
        scene,
        [Candidate(answer)] + [Candidate(n) for n in others],
        " ".join(steps),
        answer,
    )


def _marked(rng: random.Random, scene: Scene, relation: str) -> tuple[Scene, Thing, str, list[str]]:
    """Label ``scene`` and pick the shape marked with the letter ``relation`` ("after" or "before")
    another one: (labelled scene, that shape, the other letter, the teacher's steps)."""
    scene = label_scene(rng, scene)
    first = LETTERS[0] if relation == "after" else LETTERS[-1]  # has no letter before / after it
    letter = rng.choice(sorted(set(scene.labelled) - {first}))
    anchor = T.letter_before(letter) if relation == "after" else T.letter_after(letter)
    target = scene.labelled[letter]
    return (
        scene,
        target,
        anchor,
        [T.describe(scene), T.letter_rule(relation, anchor, letter), T.marks(letter, target)],
    )


def _qa(rng: random.Random) -> Example:
    while True:
        scene = random_scene(rng, 2, 4)
        things = [t for _, t in scene.things]
        kind = rng.choice(("after", "colour", "letter"))
        if kind == "letter":
            scene, target, anchor, steps = _marked(rng, scene, "after")
            if rng.random() < 0.5:
                text = f"What colour is the shape marked with the letter after {anchor}?"
                answer = target.colour
            else:
                text = f"What shape is marked with the letter after {anchor}?"
                answer = target.shape
        elif kind == "after":
            k = rng.randrange(len(things) - 1)
            anchor, target = things[k], things[k + 1]
            text = f"What colour is the shape right after the {anchor.name}?"
            steps = [T.describe(scene), f"after the {anchor.name} comes the {target.name}."]
            answer = target.colour
        else:
            colour = rng.choice(sorted({t.colour for t in things}))
            matching = [t for t in things if t.colour == colour]
            if len(matching) != 1:
                continue
            reference = rng.choice(T.COLOUR_OF[colour])
            text = f"What shape has the colour of {reference}?"
            steps = [
                T.describe(scene),
                T.colour_rule(reference, colour),
                f"the {colour} shape is the {matching[0].shape}.",
            ]
            answer = matching[0].shape
        words = sorted(COLOURS) + list(SHAPES)
        candidates = [Candidate(answer)] + [Candidate(w) for w in words if w != answer]
        return Example("SceneQA", text, scene, candidates, " ".join(steps), answer)


def _retrieval(rng: random.Random) -> Example:
    thing = Thing(rng.choice(sorted(COLOURS)), rng.choice(SHAPES))
    reference = rng.choice(T.COLOUR_OF[thing.colour])
    text = f"A picture with a shape that has the colour of {reference} and {T.corners_phrase(thing.shape)}."
    steps = [
        T.colour_rule(reference, thing.colour),
        T.corner_rule(thing.shape),
        f"so the picture has a {thing.name}.",
    ]
    while True:
        positive = random_scene(rng, 1, 3)
        if thing in positive.cells:
            break
    negatives: list[Scene] = []
    while len(negatives) < RETRIEVAL_CANDIDATES - 1:
        scene = random_scene(rng, 1, 3)
        hard = any(t.colour == thing.colour or t.shape == thing.shape for _, t in scene.things)
        if thing in scene.cells or scene in negatives or (len(negatives) < 4 and not hard):
            continue
        negatives.append(scene)
    candidates = [Candidate(scene=s) for s in [positive] + negatives]
    return Example("SceneRetrieval", text, None, candidates, " ".join(steps), thing.name)


def _grounding(rng: random.Random) -> Example:
    while True:
        scene = random_scene(rng, 2, 4)
        things = [t for _, t in scene.things]
        kind = rng.choice(("colour", "before", "letter"))
        if kind == "letter":
            scene, target, anchor, steps = _marked(rng, scene, "before")
            text = f"the shape marked with the letter before {anchor}"
        elif kind == "colour":
            colour = rng.choice(sorted({t.colour for t in things}))
            matching = [t for t in things if t.colour == colour]
            if len(matching) != 1:
                continue
            reference = rng.choice(T.COLOUR_OF[colour])
            target = matching[0]
            text = f"the shape with the colour of {reference}"
            steps = [T.describe(scene), T.colour_rule(reference, colour), f"so it is the {target.name}."]
        else:
            k = rng.randrange(1, len(things))
            anchor, target = things[k], things[k - 1]
            text = f"the shape just before the {anchor.name}"
            steps = [T.describe(scene), f"before the {anchor.name} comes the {target.name}."]
        break
    others = [t for t in things if t != target]
    rest = [t for t in all_things() if t not in things]
    rng.shuffle(rest)
    crops = [target] + others + rest[: GROUNDING_CANDIDATES - len(things)]
    return Example(
        "ShapeGrounding", text, scene, [Candidate(crop=t) for t in crops], " ".join(steps), target.name
    )


MAKERS = {"ShapeCount": _count, "SceneQA": _qa, "SceneRetrieval": _retrieval, "ShapeGrounding": _grounding}


def make_examples(task: str, count: int, rng: random.Random) -> list[Example]:
    if task not in MAKERS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(MAKERS)}")
    return [MAKERS[task](rng) for _ in range(count)]
