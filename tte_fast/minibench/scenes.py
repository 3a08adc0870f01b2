"""Scenes of the miniature benchmark and their Pillow rendering.

A scene is a row of ``CELLS`` cells, each empty or holding one shape of one colour; a crop is one
shape alone on a cell-sized canvas (the grounding candidates). Rendering is a pure function of the
scene, so the same scene always gives the same pixels (and the same PNG bytes).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

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

    @property
    def things(self) -> list[tuple[int, Thing]]:
        """(cell index, thing) of the filled cells, left to right."""
        return [(i, t) for i, t in enumerate(self.cells) if t is not None]

    def key(self) -> str:
        return "-".join("empty" if t is None else f"{t.colour}_{t.shape}" for t in self.cells)


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
    return image


def render_crop(thing: Thing) -> Image.Image:
    image = Image.new("RGB", (CELL, CELL), BACKGROUND)
    _draw(ImageDraw.Draw(image), thing, 0)
    return image


def all_things() -> list[Thing]:
    return [Thing(c, s) for c in sorted(COLOURS) for s in SHAPES]
