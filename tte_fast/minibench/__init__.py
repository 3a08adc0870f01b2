"""A miniature Think-Then-Embed benchmark the package generates itself.

Seeded Pillow scenes (shapes, colours, positions, counts, capital letters drawn on the shapes as
text), four MMEB-style tasks (classification, VQA, retrieval, grounding) whose queries need a
reasoning step, a rule-based teacher that writes it out, a small word-level tokenizer, and a
pipeline that trains baseline / TTE_t / TTE_s / TTE_u through ``tte-fast train`` and scores them
through ``tte-fast eval`` (``tte-fast minibench``).
"""

from tte_fast.minibench.base import build_base
from tte_fast.minibench.pipeline import run
from tte_fast.minibench.tasks import TASKS, make_examples
from tte_fast.minibench.writer import generate

__all__ = ["TASKS", "build_base", "generate", "make_examples", "run"]
