"""The rule-based teacher: the reasoning a large teacher reasoner would write, made explicit.

Each trace first says what the image shows (the perception step: every cell, with the letter drawn on
a shape when there is one), then applies the task's rule (an indirect colour reference, a corner
count, a relation, the alphabet, a count) and names the result; the answer after ``</think>`` is the
result alone. The phrases below are the whole world knowledge the tasks use.
"""

from __future__ import annotations

from tte_fast.minibench.scenes import CORNERS, LETTERS, Scene, Thing

# Indirect colour references: "the colour of X".
COLOUR_OF = {
    "red": ("a ripe tomato", "a fire truck"),
    "green": ("fresh grass", "a frog"),
    "blue": ("the clear sky", "the deep sea"),
    "yellow": ("a banana", "the sun"),
}
NUMBERS = ("zero", "one", "two", "three", "four")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def corners_phrase(shape: str) -> str:
    return f"{NUMBERS[CORNERS[shape]] if CORNERS[shape] else 'no'} corners"


def describe(scene: Scene) -> str:
    """The perception step: every cell, left to right, with the letter that marks a shape."""
    return "from left to right: " + ", ".join(scene.cell_names()) + "."


def letter_after(letter: str) -> str:
    return LETTERS[LETTERS.index(letter) + 1]


def letter_before(letter: str) -> str:
    return LETTERS[LETTERS.index(letter) - 1]


def letter_rule(relation: str, letter: str, result: str) -> str:
    """The alphabet step: ``the letter after B is C.``"""
    return f"the letter {relation} {letter} is {result}."


def marks(letter: str, thing: Thing) -> str:
    """The reading step: ``C marks the red circle.``"""
    return f"{letter} marks the {thing.name}."


def colour_rule(reference: str, colour: str) -> str:
    return f"{reference} is {colour}."


def corner_rule(shape: str) -> str:
    return f"{corners_phrase(shape)} means a {shape}."


def listing(label: str, things: list[Thing]) -> str:
    return f"{label}: " + (", ".join(t.name for t in things) if things else "none") + "."


def full_trace(body: str, answer: str) -> str:
    """A trace as ``UnifiedTTE.think`` returns it (think prefix included), for embedder records."""
    return f"{THINK_OPEN}\n{body}\n{THINK_CLOSE}\n\n{answer}"
