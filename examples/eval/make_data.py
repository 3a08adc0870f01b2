"""Write the tiny example dataset of ``config.yaml``: eight 32x32 PNGs (four colours, two shapes) and
three tasks over them: two in the MMEB-eval layout (local) and one in our own layout (global, graded).

Run from anywhere: ``python examples/eval/make_data.py``; files go next to this script.
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (240, 210, 20)}
SHAPES = ("square", "circle")
INSTRUCTION_I2T = "<|image_1|>\nRepresent the given image for classification: which colour and shape?"


def draw(color, shape: str) -> Image.Image:
    pixels = np.full((32, 32, 3), 255, np.uint8)
    yy, xx = np.mgrid[:32, :32]
    mask = (
        (abs(yy - 15.5) < 10) & (abs(xx - 15.5) < 10)
        if shape == "square"
        else (yy - 15.5) ** 2 + (xx - 15.5) ** 2 < 110
    )
    pixels[mask] = color
    return Image.fromarray(pixels)


def write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def main() -> None:
    os.makedirs(os.path.join(HERE, "images"), exist_ok=True)
    os.makedirs(os.path.join(HERE, "colors_tte"), exist_ok=True)
    items = [(c, s) for c in COLORS for s in SHAPES]
    for c, s in items:
        draw(COLORS[c], s).save(os.path.join(HERE, "images", f"{c}_{s}.png"), optimize=True)
    names = [f"{c}_{s}" for c, s in items]
    captions = {f"{c}_{s}": f"a {c} {s}" for c, s in items}

    # MMEB layout, image -> text: candidate 0 is the positive, then three others (rotating).
    i2t = []
    for i, name in enumerate(names):
        others = [names[(i + j) % len(names)] for j in (1, 3, 5)]
        i2t.append(
            {
                "qry_text": INSTRUCTION_I2T,
                "qry_img_path": f"{name}.png",
                "tgt_text": [captions[n] for n in [name, *others]],
                "tgt_img_path": ["", "", "", ""],
            }
        )
    write_jsonl(os.path.join(HERE, "colors_i2t.jsonl"), i2t)

    # MMEB layout, text -> image.
    t2i = []
    for i, name in enumerate(names):
        others = [names[(i + j) % len(names)] for j in (2, 4, 6)]
        t2i.append(
            {
                "qry_text": f"Find an image of {captions[name]}.",
                "qry_img_path": "",
                "tgt_text": ["<|image_1|>"] * 4,
                "tgt_img_path": [f"{n}.png" for n in [name, *others]],
            }
        )
    write_jsonl(os.path.join(HERE, "colors_t2i.jsonl"), t2i)

    # Our layout, global over a mixed corpus, graded: the colour is worth 2, each shape match 1 more.
    corpus = [{"id": name, "image": f"../images/{name}.png"} for name in names]
    corpus += [{"id": f"text_{c}", "text": f"Everything about the colour {c}."} for c in COLORS]
    queries, qrels = [], []
    for c in COLORS:
        for s in SHAPES:
            qid = f"{c}-{s}"
            queries.append({"id": qid, "text": f"something {c}, preferably a {s}"})
            qrels += [
                {"query_id": qid, "corpus_id": f"{c}_{s}", "relevance": 3},
                {"query_id": qid, "corpus_id": f"{c}_{SHAPES[1 - SHAPES.index(s)]}", "relevance": 2},
                {"query_id": qid, "corpus_id": f"text_{c}", "relevance": 1},
            ]
    write_jsonl(os.path.join(HERE, "colors_tte", "queries.jsonl"), queries)
    write_jsonl(os.path.join(HERE, "colors_tte", "corpus.jsonl"), corpus)
    write_jsonl(os.path.join(HERE, "colors_tte", "qrels.jsonl"), qrels)


if __name__ == "__main__":
    main()
