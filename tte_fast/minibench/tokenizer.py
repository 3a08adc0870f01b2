"""The benchmark's own small tokenizer: word level, a few hundred tokens.

The real Qwen tokenizer's 151k-token embedding alone would outweigh the whole model. This one is a
``tokenizers`` WordLevel model over byte-level pre-tokens (so decoding gives back the exact text,
spaces and newlines included), trained on every prompt, trace, answer and candidate the benchmark
renders, with the special tokens the runtime needs, wrapped as a transformers
``PreTrainedTokenizerFast`` that carries the Qwen-VL chat template.
"""

from __future__ import annotations

import random

from tte_fast.minibench import teacher as T
from tte_fast.minibench.scenes import COLOURS, SHAPES
from tte_fast.minibench.tasks import TASKS, make_examples

UNK, PAD, EOS = "[UNK]", "<|endoftext|>", "<|im_end|>"
SPECIAL = [
    PAD,
    "<|im_start|>",
    EOS,
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<emb>",
]
THINK_TOKENS = [T.THINK_OPEN, T.THINK_CLOSE]  # plain added tokens: kept when traces are decoded
SAMPLES_PER_TASK = 300


def _lexicon() -> list[str]:
    words = list(COLOURS) + list(SHAPES) + [s + "s" for s in SHAPES] + list(T.NUMBERS)
    words += [p for refs in T.COLOUR_OF.values() for p in refs] + ["empty", "none", "no", "corners"]
    text = " ".join(words)
    return [text, " " + text, "\n".join(words), text.replace(" ", ", ") + "."]


def training_texts(prompts) -> list[str]:
    """Every kind of text the benchmark renders through the chat template, for the vocabulary."""
    from jinja2 import Template

    from tte_fast.checkpoint.hf_processor import packaged_chat_template

    template = Template(packaged_chat_template())
    texts = _lexicon()
    fixed = [prompts.query_instruction, prompts.target_instruction, prompts.reasoning_instruction]
    fixed += [v[1] for v in TASKS.values()]
    for task in TASKS:
        for ex in make_examples(task, SAMPLES_PER_TASK, random.Random(f"vocabulary/{task}")):
            for think in (False, True):
                parts = [TASKS[task][1], ex.text] + ([prompts.reasoning_instruction] if think else [])
                content = [{"type": "image"}, {"type": "text", "text": "\n".join(parts)}]
                messages = [{"role": "user", "content": content}]
                texts.append(template.render(messages=messages, add_generation_prompt=True) + ex.trace)
            for c in ex.candidates:
                if c.text:
                    messages = [
                        {"role": "user", "content": [{"type": "text", "text": "\n".join([fixed[1], c.text])}]}
                    ]
                    texts.append(template.render(messages=messages, add_generation_prompt=True))
    return texts + fixed


def build_tokenizer(prompts):
    """A ``PreTrainedTokenizerFast`` trained on :func:`training_texts` (deterministic)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tte_fast.checkpoint.hf_processor import packaged_chat_template

    backend = Tokenizer(models.WordLevel(unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in [UNK] + SPECIAL])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    trainer = trainers.WordLevelTrainer(special_tokens=[UNK] + SPECIAL, min_frequency=1, show_progress=False)
    backend.train_from_iterator(training_texts(prompts), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK,
        pad_token=PAD,
        eos_token=EOS,
        additional_special_tokens=SPECIAL[1:],
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )
    tokenizer.chat_template = packaged_chat_template()
    return tokenizer
