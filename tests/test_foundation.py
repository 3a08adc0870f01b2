"""The package, its compiled extension and the tiny fixtures load."""

import importlib

import pytest

from tte_fast.checkpoint.hf_processor import load_processor
from tte_fast.testing import TINY_MODEL_TYPES, tiny_config


def test_package_and_kernels_import():
    import tte_fast
    import tte_fast.kernels  # noqa: F401

    assert tte_fast.__version__


def test_compiled_extension_imports():
    ext = importlib.import_module("tte_fast._C")
    assert ext.smart_resize(480, 640, 28, 56 * 56, 28 * 28 * 1280) == (476, 644)


def test_extension_errors_are_python_exceptions():
    from tte_fast import _C

    with pytest.raises(ValueError, match="zero size"):
        _C.smart_resize(0, 10, 28, 56 * 56, 28 * 28 * 1280)
    with pytest.raises(ValueError, match="aspect ratio"):
        _C.smart_resize(10, 2500, 28, 56 * 56, 28 * 28 * 1280)


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_tiny_checkpoint_round_trip(tiny_checkpoints, model_type):
    path = tiny_checkpoints[model_type]
    processor = load_processor(path, model_type)
    tokenizer = getattr(processor, "tokenizer", processor)
    assert len(tokenizer) == tiny_config(model_type).get_text_config().vocab_size
    assert tokenizer.convert_tokens_to_ids("<think>") != tokenizer.unk_token_id


def test_unknown_tiny_model_type():
    with pytest.raises(ValueError, match="llama"):
        tiny_config("llama")
