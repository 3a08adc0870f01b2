"""Load a checkpoint's tokenizer / processor without torchvision.

The stock Qwen-VL processors insist on a transformers video processor, whose class needs
torchvision; CPU torch wheels cannot sit next to torchvision. The processors built here take our
C++-backed ``tte_fast.video_preprocess.VideoProcessor`` (or ``video_processor=None``) and are
otherwise the HF classes, unchanged: their video placeholders, timestamps and token types are theirs.
"""

from __future__ import annotations

import functools
import json
import os
import warnings

from transformers import AutoTokenizer, ProcessorMixin

from tte_fast.checkpoint.model_types import is_qwen_vl, processor_class

try:
    from tte_fast.video_preprocess import VideoProcessor
except ImportError:  # the C++ extension is not built: images through transformers, no video
    VideoProcessor = None

CHAT_TEMPLATE_FILE = "chat_template.jinja"
# The older processor template file many published Qwen-VL checkpoints ship: {"chat_template": "..."}.
LEGACY_CHAT_TEMPLATE_FILE = "chat_template.json"
_PACKAGED_TEMPLATE = os.path.join(
    os.path.dirname(os.path.dirname(__file__)), "configs", "qwen_vl_chat_template.jinja"
)
_PROBE = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "probe"}]}]


def packaged_chat_template() -> str:
    with open(_PACKAGED_TEMPLATE, encoding="utf-8") as f:
        return f.read()


@functools.cache
def _processor_class(model_type: str) -> type:
    base = processor_class(model_type)

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and (
            argument is None or VideoProcessor and isinstance(argument, VideoProcessor)
        ):
            return None
        return base.check_argument_for_proper_class(self, argument_name, argument)

    return type(
        f"{base.__name__}ImagesOnly",
        (base,),
        {"check_argument_for_proper_class": check_argument_for_proper_class},
    )


def build_processor(
    model_type: str, tokenizer, image_processor, chat_template: str | None = None, video_processor=None
) -> ProcessorMixin:
    """A Qwen-VL processor (tokenizer + image processor + our video processor, or none) for ``model_type``."""
    template = chat_template or getattr(tokenizer, "chat_template", None) or packaged_chat_template()
    return _processor_class(model_type)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=template,
    )


def default_image_processor(path: str, min_pixels: int | None = None, max_pixels: int | None = None):
    """The runtime's image processor for a checkpoint folder: the C++-backed one when the
    extension is built, else transformers' PIL processor (same outputs). ``min_pixels`` /
    ``max_pixels`` replace the checkpoint's pixel budget."""
    try:
        from tte_fast.preprocess import ImageProcessor
    except ImportError:  # extension not built: stay usable with the pure-Python processor
        from transformers import Qwen2VLImageProcessorPil as ImageProcessor
    budget = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v}
    processor = ImageProcessor.from_pretrained(path, **budget)
    size = processor.size
    if size.shortest_edge and size.longest_edge and size.shortest_edge > size.longest_edge:
        raise ValueError(
            f"the image processor's min_pixels {size.shortest_edge} exceed its max_pixels {size.longest_edge}"
        )
    return processor


def saved_chat_template(path: str) -> str | None:
    """The processor chat template a checkpoint folder ships: ``chat_template.jinja``, else the
    older ``chat_template.json``; None when it has neither."""
    if not os.path.isdir(path):
        return None
    jinja, legacy = (os.path.join(path, name) for name in (CHAT_TEMPLATE_FILE, LEGACY_CHAT_TEMPLATE_FILE))
    if os.path.isfile(jinja):
        with open(jinja, encoding="utf-8") as f:
            return f.read()
    if os.path.isfile(legacy):
        with open(legacy, encoding="utf-8") as f:
            try:
                template = json.load(f).get("chat_template")
            except (json.JSONDecodeError, AttributeError) as e:
                raise ValueError(f"{legacy} is not a JSON object with a 'chat_template' string: {e}") from e
        if not isinstance(template, str):
            raise ValueError(f"{legacy} has no 'chat_template' string")
        return template
    return None


def renders_images(processor) -> bool:
    """Whether the processor's chat template turns an image part into the image placeholder."""
    image_token = getattr(processor, "image_token", None) or "<|image_pad|>"
    try:
        text = processor.apply_chat_template(_PROBE, add_generation_prompt=True, tokenize=False)
    except Exception:  # jinja raises UndefinedError, TypeError, ... on list-of-parts content
        return False
    return isinstance(text, str) and image_token in text


def load_processor(path: str, model_type: str, image_processor=None, min_pixels=None, max_pixels=None):
    """Tokenizer for text-only models; an images-only Qwen-VL processor for Qwen-VL checkpoints
    (``min_pixels`` / ``max_pixels``: its pixel budget instead of the checkpoint's).

    A Qwen-VL chat template that cannot render image parts (a text-only tokenizer template, say)
    is replaced by the packaged Qwen-VL template, with a warning, instead of failing in ``encode``."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not is_qwen_vl(model_type):
        return tokenizer
    image_processor = image_processor or default_image_processor(path, min_pixels, max_pixels)
    video_processor = _video_processor(model_type, image_processor, path)
    processor = build_processor(
        model_type, tokenizer, image_processor, saved_chat_template(path), video_processor
    )
    if not renders_images(processor):
        warnings.warn(
            f"the chat template of {path!r} cannot render image parts; using the packaged Qwen-VL template",
            UserWarning,
            stacklevel=2,
        )
        processor = build_processor(
            model_type, tokenizer, image_processor, packaged_chat_template(), video_processor
        )
    return processor


def _video_processor(model_type: str, image_processor, path: str):
    """Our video processor for the checkpoint; None where the C++ extension is not built."""
    if VideoProcessor is None:
        return None
    return VideoProcessor.for_checkpoint(model_type, image_processor, path)
