"""Load a checkpoint's tokenizer / processor without torchvision.

The stock Qwen-VL processors insist on a video processor, whose class needs torchvision; CPU
torch wheels cannot sit next to torchvision, and embedding needs images only. The processors
built here accept ``video_processor=None`` and are otherwise the HF classes, unchanged.
"""

from __future__ import annotations

import functools
import os

from transformers import AutoTokenizer, ProcessorMixin

QWEN_VL_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
CHAT_TEMPLATE_FILE = "chat_template.jinja"
_PACKAGED_TEMPLATE = os.path.join(os.path.dirname(__file__), "configs", "qwen_vl_chat_template.jinja")


def packaged_chat_template() -> str:
    with open(_PACKAGED_TEMPLATE, encoding="utf-8") as f:
        return f.read()


@functools.cache
def _processor_class(model_type: str) -> type:
    if model_type == "qwen2_vl":
        from transformers import Qwen2VLProcessor as base
    elif model_type == "qwen2_5_vl":
        from transformers import Qwen2_5_VLProcessor as base
    elif model_type == "qwen3_vl":
        from transformers import Qwen3VLProcessor as base
    else:
        raise ValueError(f"unknown Qwen-VL model type {model_type!r}; expected one of {QWEN_VL_MODEL_TYPES}")

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and argument is None:
            return None
        return base.check_argument_for_proper_class(self, argument_name, argument)

    return type(
        f"{base.__name__}ImagesOnly",
        (base,),
        {"check_argument_for_proper_class": check_argument_for_proper_class},
    )


def build_processor(
    model_type: str, tokenizer, image_processor, chat_template: str | None = None
) -> ProcessorMixin:
    """A Qwen-VL processor (tokenizer + image processor, no video) for ``model_type``."""
    template = chat_template or getattr(tokenizer, "chat_template", None) or packaged_chat_template()
    return _processor_class(model_type)(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=template
    )


def default_image_processor(path: str):
    """The runtime's image processor for a checkpoint folder: the C++-backed one when the
    extension is built, else transformers' PIL processor (same outputs)."""
    try:
        from tte_fast.preprocess import ImageProcessor
    except ImportError:  # extension not built: stay usable with the pure-Python processor
        from transformers import Qwen2VLImageProcessorPil as ImageProcessor
    return ImageProcessor.from_pretrained(path)


def load_processor(path: str, model_type: str, image_processor=None):
    """Tokenizer for text-only models; an images-only Qwen-VL processor for Qwen-VL checkpoints."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    if model_type not in QWEN_VL_MODEL_TYPES:
        return tokenizer
    template_path = os.path.join(path, CHAT_TEMPLATE_FILE) if os.path.isdir(path) else None
    chat_template = None
    if template_path and os.path.exists(template_path):
        with open(template_path, encoding="utf-8") as f:
            chat_template = f.read()
    return build_processor(
        model_type, tokenizer, image_processor or default_image_processor(path), chat_template
    )
