"""``tte-fast encode``: a JSONL file in, a safetensors file of embeddings (and the traces) out."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tte_fast.cli import main
from tte_fast.model import UnifiedTTE

THINK = "3"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tiny_checkpoints):
    return tiny_checkpoints["qwen2_vl"], UnifiedTTE.from_pretrained(
        tiny_checkpoints["qwen2_vl"], device="cpu"
    )


def _jsonl(folder, items: list) -> str:
    """Write ``items`` one a line (a None leaves a blank line) next to a small image ``cat.png``."""
    image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(image).save(folder / "cat.png")
    path = folder / "inputs.jsonl"
    path.write_text("".join("\n" if x is None else json.dumps(x) + "\n" for x in items), encoding="utf-8")
    return str(path)


def _encode(model_path, inputs_file, output, *flags):
    main(["encode", "--model", model_path, "--inputs", inputs_file, "--output", output, *flags])


@pytest.mark.parametrize("think", [True, False])
def test_encode_writes_embeddings_and_traces(model, tmp_path, monkeypatch, capsys, think):
    path, tte = model
    cat = {"text": "a cat", "image": "cat.png", "instruction": "Find the picture."}
    inputs_file = _jsonl(tmp_path, ["a red car", None, cat])
    monkeypatch.chdir(tmp_path.parent)  # relative image paths start at the JSONL file's folder
    output = str(tmp_path / "out.safetensors")
    _encode(path, inputs_file, output, "--max-think-tokens", THINK, *([] if think else ["--no-think"]))
    assert "wrote (2, " in capsys.readouterr().out

    expected = tte.encode(
        ["a red car", {**cat, "image": str(tmp_path / "cat.png")}], think=think, max_think_tokens=int(THINK)
    )
    got = load_file(output)["embeddings"]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(got, expected.embeddings, atol=1e-5, rtol=0)
    traces_file = tmp_path / "out.safetensors.traces.json"
    if think:
        assert json.loads(traces_file.read_text(encoding="utf-8")) == expected.traces
    else:
        assert not traces_file.exists()


@pytest.mark.parametrize(
    "lines, message",
    [
        (["ok", {"image": "missing.png"}], r"inputs.jsonl:2: input 1: image file not found"),
        (["ok", None, {"txt": "typo"}], r"inputs.jsonl:3: input 1: unknown keys"),
        (["ok", 7], r"inputs.jsonl:2: expected a string or an object, got int"),
        ([None], r"inputs.jsonl: no inputs"),
    ],
)
def test_bad_input_names_its_line(model, tmp_path, lines, message):
    inputs_file = _jsonl(tmp_path, lines)
    with pytest.raises(SystemExit, match=message):
        _encode(model[0], inputs_file, str(tmp_path / "out.safetensors"), "--no-think")
    assert not (tmp_path / "out.safetensors").exists()


def test_invalid_json_names_its_line(model, tmp_path):
    inputs_file = tmp_path / "inputs.jsonl"
    inputs_file.write_text('"ok"\n{"text": \n', encoding="utf-8")
    with pytest.raises(SystemExit, match=r"inputs.jsonl:2: not valid JSON"):
        _encode(model[0], str(inputs_file), str(tmp_path / "out.safetensors"))


def test_saved_think_budget_is_the_default(model, tmp_path):
    """Without --max-think-tokens the checkpoint's saved ``max_think_tokens`` applies."""
    path, _ = model
    saved = UnifiedTTE.from_pretrained(path, device="cpu", max_think_tokens=2)
    saved.save_pretrained(str(tmp_path / "ckpt"))
    inputs_file = _jsonl(tmp_path, ["a red car"])
    output = str(tmp_path / "out.safetensors")
    _encode(str(tmp_path / "ckpt"), inputs_file, output)
    expected = saved.encode(["a red car"])
    one_token = saved.encode(["a red car"], max_think_tokens=1)
    assert len(expected.sequences[0]) == len(one_token.sequences[0]) + 1  # the saved budget of 2 applied
    traces = json.loads((tmp_path / "out.safetensors.traces.json").read_text(encoding="utf-8"))
    assert traces == expected.traces
    torch.testing.assert_close(load_file(output)["embeddings"], expected.embeddings, atol=1e-5, rtol=0)


def test_demo_help_lists_the_demo_options(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "--max-think-tokens" in capsys.readouterr().out


def test_encode_runs_a_recipe(model, tmp_path):
    """``--recipe`` reaches the model: the embeddings are the recipe's, not the checkpoint's own."""
    path, tte = model
    inputs_file = _jsonl(tmp_path, ["a red car", {"text": "a cat", "image": "cat.png"}])
    output = str(tmp_path / "out.safetensors")
    _encode(path, inputs_file, output, "--recipe", "vlm2vec", "--no-think")
    inputs = ["a red car", {"text": "a cat", "image": str(tmp_path / "cat.png")}]
    recipe = UnifiedTTE.from_pretrained(path, device="cpu", recipe="vlm2vec")
    got = load_file(output)["embeddings"]
    torch.testing.assert_close(got, recipe.encode(inputs, think=False).embeddings, atol=1e-5, rtol=0)
    assert (got - tte.encode(inputs, think=False).embeddings).abs().max() > 1e-2


def test_an_unknown_recipe_is_refused_before_loading(model, tmp_path, capsys):
    with pytest.raises(SystemExit):
        _encode(model[0], _jsonl(tmp_path, ["x"]), str(tmp_path / "o.safetensors"), "--recipe", "nope")
    assert "invalid choice: 'nope'" in capsys.readouterr().err
