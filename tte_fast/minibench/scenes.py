"""Scenes of the miniature benchmark and their Pillow rendering.

A scene is a row of ``CELLS`` cells, each empty or holding one shape of one colour; a labelled scene
also marks some of its shapes with a capital letter (``LETTERS``), drawn with Pillow's built-in font
(no download) in black on a white tag over the shape's middle. A crop is one shape alone on a
cell-sized canvas (the grounding candidates). Rendering is a pure function of the scene, so the same
scene always gives the same pixels (and the same PNG bytes).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

CELL = 56  # pixels per cell side: 2 x 2 merged 28-pixel patches of a Qwen2-VL vision tower
CELLS = 4
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 165, 60),
    "blue": (45, 80, 220),
    "yellow": (235, 200, 30),
}
SHAPES = ("circle", "square", "triangle")
CORNERS = {"circle": 0, "square": 4, "triangle": 3}
BACKGROUND = (255, 255, 255)
LETTERS = ("A", "B", "C", "D")  # the labels, in alphabetical order
# The white tag under a label, in cell coordinates: 18 pixels square, inside every shape.
TAG = (19, 25, 36, 42)
LABEL_SIZE = 18  # font size of a label (capital letters about 13 pixels tall)
INK = (0, 0, 0)


@dataclass(frozen=True)
class Thing:
    colour: str
    shape: str

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    cells: tuple[Thing | None, ...]
    labels: tuple[str | None, ...] | None = None  # per cell: the letter drawn on its shape, or None

    @property
    def things(self) -> list[tuple[int, Thing]]:
        """(cell index, thing) of the filled cells, left to right."""
        return [(i, t) for i, t in enumerate(self.cells) if t is not None]

    def label(self, cell: int) -> str | None:
        return self.labels[cell] if self.labels else None

    @property
    def labelled(self) -> dict[str, Thing]:
        """letter -> the thing it marks."""
        return {self.label(i): t for i, t in self.things if self.label(i)}

    def cell_names(self) -> list[str]:
        """Per cell, left to right: ``empty``, ``red circle`` or ``red circle marked C``."""
        names = []
        for i, t in enumerate(self.cells):
            label = self.label(i)
            names.append("empty" if t is None else f"{t.name} marked {label}" if label else t.name)
        return names

    def key(self) -> str:
        names = ["empty" if t is None else f"{t.colour}_{t.shape}" for t in self.cells]
        if self.labels:
            names = [n + (f"_{self.labels[i]}" if self.labels[i] else "") for i, n in enumerate(names)]
        return "-".join(names)


def random_thing(rng: random.Random) -> Thing:
    return Thing(rng.choice(sorted(COLOURS)), rng.choice(SHAPES))


def random_scene(rng: random.Random, min_things: int = 1, max_things: int = CELLS) -> Scene:
    """``min_things`` .. ``max_things`` shapes in random cells, no two alike (colour and shape)."""
    count = rng.randint(min_things, max_things)
    cells = sorted(rng.sample(range(CELLS), count))
    things: list[Thing] = []
    while len(things) < count:
        thing = random_thing(rng)
        if thing not in things:
            things.append(thing)
    row: list[Thing | None] = [None] * CELLS
    for cell, thing in zip(cells, things):
        row[cell] = thing
    return Scene(tuple(row))


def label_scene(rng: random.Random, scene: Scene, share: float = 1.0) -> Scene:
    """``scene`` with distinct random letters on its shapes, each marked with probability ``share``."""
    letters = rng.sample(LETTERS, len(scene.things))
    labels: list[str | None] = [None] * len(scene.cells)
    for (cell, _), letter in zip(scene.things, letters):
        if share >= 1.0 or rng.random() < share:
            labels[cell] = letter
    return Scene(scene.cells, tuple(labels))


def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=LABEL_SIZE)


def _draw_label(draw: ImageDraw.ImageDraw, letter: str, left: int) -> None:
    x0, y0, x1, y1 = TAG
    draw.rectangle((left + x0, y0, left + x1, y1), fill=BACKGROUND)
    centre = (left + (x0 + x1 + 1) / 2, (y0 + y1 + 1) / 2)
    draw.text(centre, letter, fill=INK, font=_font(), anchor="mm")


def _draw(draw: ImageDraw.ImageDraw, thing: Thing, left: int) -> None:
    pad = 8
    box = (left + pad, pad, left + CELL - pad - 1, CELL - pad - 1)
    fill = COLOURS[thing.colour]
    if thing.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif thing.shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        x0, y0, x1, y1 = box
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)


def render_scene(scene: Scene) -> Image.Image:
    image = Image.new("RGB", (CELL * len(scene.cells), CELL), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for i, thing in scene.things:
        _draw(draw, thing, i * CELL)
        if scene.label(i):
            _draw_label(draw, scene.label(i), i * CELL)
    return image


def render_crop(thing: Thing) -> Image.Image:
    image = Image.new("RGB", (CELL, CELL), BACKGROUND)
    _draw(ImageDraw.Draw(image), thing, 0)
    return image


def all_things() -> list[Thing]:
    return [Thing(c, s) for c in sorted(COLOURS) for s in SHAPES]
