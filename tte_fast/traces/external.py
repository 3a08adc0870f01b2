"""Our stop rule on an engine that has one budget per request (vLLM, Ray Data's vLLM stage).

The engine's rule (``tte_fast.runtime.stop``) has two budgets: ``max_think_tokens`` until the think
section closes, then ``max_answer_tokens`` after the closing token. An external engine runs it in
two requests over the same sampling settings:

1. the prompt, ``max_tokens = max_think_tokens``, stopping at an EOS, at the think end (its token id,
   or its text where it is several tokens) or at a stop string;
2. only for traces that closed their think section with answer budget left: prompt + the first
   part's tokens, ``max_tokens = max_answer_tokens``, stopping at an EOS or a stop string.

EOS handling is ours: the engine's own EOS is ignored and our EOS ids are its stop ids (a
checkpoint's ``stop_tokens`` replace its EOS). What stopped a part is read off its last token and
the engine's stop reason; the kept tokens (an EOS dropped) are decoded as ``think`` decodes them.
Prompts are ours: text models send the token ids ``think`` prefills; Qwen-VL models send the ids of
the rendered prompt with one image placeholder and the image, which the engine expands.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tte_fast.inputs import InputError, check_input, load_input
from tte_fast.prompting.batching import prompt_batch, unpadded, with_blank_image
from tte_fast.prompting.prompts import render_prompt
from tte_fast.traces.store import Generation


@dataclass
class Prompt:
    """One input's request: ``token_ids`` (ours), and for Qwen-VL models the loaded image and the
    pixel budget our processor resizes it to (where the checkpoint's config overrides its own)."""

    token_ids: list[int]
    image: object = None
    pixels: dict | None = None

    def request(self, extra: list[int] = ()) -> dict:
        """The engine's prompt (vLLM's ``TokensPrompt``) with ``extra`` tokens appended."""
        out = {"prompt_token_ids": list(self.token_ids) + list(extra)}
        if self.image is not None:
            out["multi_modal_data"] = {"image": self.image}
            if self.pixels:
                out["mm_processor_kwargs"] = dict(self.pixels)
        return out


def build_prompt(model, index: int, raw: dict, side: str, options) -> Prompt:
    """The prompt ``think`` renders for ``raw`` (an ``InputError`` naming ``index`` if it is bad,
    or too long for the context with the budgets: the engine's check, on the text's tokens)."""
    item = check_input(index, raw)
    if item.image is not None and not model.vision:
        raise InputError(index, f"has an image, but {model.model_type!r} is a text-only model")
    if item.video is not None:  # its frames would need vLLM's video inputs, which are not sent yet
        raise InputError(index, "has a video; external reasoners (vLLM, Ray) take text and images only")
    item = load_input(index, item)
    prompts = model.config.prompts
    if not model.vision:
        batch = prompt_batch(model.processor, [item], [side], True, prompts, False)
        prompt = Prompt(unpadded(batch)[0].tolist())
    else:
        if prompts.text_image_size:
            item = with_blank_image(item, prompts.text_image_size)
        text = render_prompt(model.processor, item, side, True, prompts, True)
        config = model.config
        pixels = {"min_pixels": config.min_pixels, "max_pixels": config.max_pixels}
        pixels = {k: v for k, v in pixels.items() if v is not None}
        prompt = Prompt(model.tokenizer(text, add_special_tokens=False)["input_ids"], item.image, pixels)
    budget = options.max_new_tokens + 1
    length = len(prompt.token_ids)
    if model.context_length is not None and length + budget > model.context_length:
        raise InputError(
            index,
            f"prompt of {length} tokens plus {budget} generated tokens exceeds the model's "
            f"context of {model.context_length} tokens",
        )
    return prompt


def sampling_settings(options, phase: str) -> dict:
    """vLLM ``SamplingParams`` arguments of one phase (``"think"`` or ``"answer"``)."""
    strings = options.stop_strings
    stop = list(strings.strings) if strings is not None else []
    stop_ids = list(options.eos_token_ids)
    if phase == "think":
        if options.think_end_token_id is not None:
            stop_ids.append(options.think_end_token_id)
        elif strings is not None and strings.think_end:
            stop.append(strings.think_end)
    budget = options.max_think_tokens if phase == "think" else options.max_answer_tokens
    settings = {
        "max_tokens": budget,
        "stop_token_ids": stop_ids,
        "stop": stop,
        "include_stop_str_in_output": True,
        "ignore_eos": True,  # our EOS ids are the stop ids
        "repetition_penalty": options.repetition_penalty,
        "temperature": options.temperature if options.do_sample else 0.0,
        "top_k": options.top_k if options.do_sample and options.top_k else -1,
        "top_p": options.top_p if options.do_sample else 1.0,
    }
    if options.do_sample and options.seed is not None:
        settings["seed"] = options.seed
    return settings


def think_outcome(options, tokens: list[int], stop_reason) -> str:
    """What ended the first part: ``eos``, ``closed`` (think end), ``stop_string`` or ``think_budget``."""
    strings = options.stop_strings
    if tokens and tokens[-1] in options.eos_token_ids:
        return "eos"
    if tokens and options.think_end_token_id is not None and tokens[-1] == options.think_end_token_id:
        return "closed"
    if isinstance(stop_reason, str):
        return "closed" if strings is not None and stop_reason == strings.think_end else "stop_string"
    return "think_budget"


def answer_outcome(options, tokens: list[int], stop_reason) -> str:
    if tokens and tokens[-1] in options.eos_token_ids:
        return "eos"
    return "stop_string" if isinstance(stop_reason, str) else "answer_budget"


def generation(model, prompt_tokens: int, tokens: list[int], reason: str) -> Generation:
    """The row of a finished trace: ``tokens`` generated after the prompt (both parts)."""
    kept = tokens[:-1] if reason == "eos" else tokens
    trace = model.decode_traces([torch.tensor(kept, dtype=torch.long)])[0]
    return Generation(trace, reason, prompt_tokens, len(tokens))


def run_two_phase(model, options, prompts: dict, generate) -> dict:
    """{index: Generation} for ``prompts`` ({index: Prompt}); ``generate(requests, phase)`` runs a
    list of engine prompts with ``sampling_settings(options, phase)`` and returns, per request,
    ``(prompt token count, generated token ids, engine stop reason)``."""
    indices = list(prompts)
    first = generate([prompts[i].request() for i in indices], "think")
    out, second = {}, []
    for i, (n_prompt, tokens, stop_reason) in zip(indices, first):
        reason = think_outcome(options, tokens, stop_reason)
        if reason == "closed" and options.max_answer_tokens > 0:
            second.append((i, n_prompt, tokens))
            continue
        out[i] = generation(model, n_prompt, tokens, "answer_budget" if reason == "closed" else reason)
    if second:
        done = generate([prompts[i].request(tokens) for i, _, tokens in second], "answer")
        for (i, n_prompt, head), (_, tail, stop_reason) in zip(second, done):
            out[i] = generation(model, n_prompt, head + tail, answer_outcome(options, tail, stop_reason))
    return out


def prompts_of(model, options, inputs: list) -> tuple[dict, dict]:
    """({index: Prompt}, {index: error}) of ``TraceInput``s."""
    prompts, errors = {}, {}
    for i, x in enumerate(inputs):
        try:
            prompts[i] = build_prompt(model, i, x.input, x.side, options)
        except InputError as err:
            message = str(err)
            prefix = f"input {i}: "
            errors[i] = message[len(prefix) :] if message.startswith(prefix) else message
    return prompts, errors
