"""Our engine as a trace job's reasoner: the continuous-batching engine ``UnifiedTTE.think`` runs
(same prompts, ``tte_fast.prompting``; same stop rule and sampling, ``tte_fast.runtime``), with each
request's stop reason and token counts kept."""

from __future__ import annotations

from dataclasses import fields
from functools import cached_property

from tte_fast.inputs import InputError, check_input
from tte_fast.runtime.engine import run_requests
from tte_fast.traces.store import Generation


def resolved_decode(options) -> dict:
    """DecodeOptions as JSON (the stop strings as the config lists them): how traces were decoded,
    in the form the eval's trace fingerprint reads them (``ModelRunner.decode_options``)."""
    return {f.name: getattr(options, f.name) for f in fields(options) if f.name != "stop_strings"}


def prompt_settings(config) -> dict:
    """What a prompt and a trace's end depend on in a TTEConfig, besides the decode options."""
    return {
        "prompts": config.prompts.to_dict(),
        "think_end_token": config.think_end_token,
        "stop_strings": list(config.stop_strings),
        "positions": config.positions,
        "recipe": config.recipe,
    }


def eval_runner(model, options):
    """The eval's ``ModelRunner`` over ``model`` with the budgets of ``options``."""
    from tte_fast.eval.config import EncodeConfig
    from tte_fast.eval.encoder import ModelRunner

    budgets = {"max_think_tokens": options.max_think_tokens, "max_answer_tokens": options.max_answer_tokens}
    return ModelRunner(model, EncodeConfig(**budgets))


def eval_trace_fingerprints(model, options, sides: list[str], runner=None) -> dict:
    """side -> the fingerprint ``tte-fast eval`` keys ``model``'s traces by, where the eval decodes
    as ``options`` did (it decodes with the budgets and the model's own sampling); {} where not."""
    runner = runner or eval_runner(model, options)
    if runner.decode_options() != resolved_decode(options):
        return {}
    return {side: runner.trace_fingerprint(side) for side in sides}


class EngineReasoner:
    """A loaded ``UnifiedTTE`` generating traces with ``slots`` engine slots; ``params``
    (``EncodeParams``) sets the budgets and sampling, as for ``think``."""

    backend = "engine"

    def __init__(self, model, params, model_path: str | None = None):
        if hasattr(model, "reasoner"):  # a TwoModelTTE: its reasoner writes the traces
            model = model.reasoner
        self.model, self.params, self.model_path = model, params, model_path
        self.options = model.decode_options(
            max_think_tokens=params.max_think_tokens, **params.decode_kwargs()
        )
        self.think_prefix = model.config.prompts.think_prefix
        self.think_end = model.config.think_end_token

    @cached_property
    def eval_runner(self):
        """The eval's view of this reasoner with these budgets; it fingerprints the weights once
        (reading every weight: the slow part of a fingerprint), for the manifest and the eval keys."""
        return eval_runner(self.model, self.options)

    def description(self) -> dict:
        from tte_fast.eval.fingerprint import digest

        parts = self.eval_runner.reasoner_parts
        return {
            "backend": self.backend,
            "fingerprint": digest("reasoner", parts),
            "model_type": self.model.model_type,
            "dtype": parts["dtype"],
        }

    def settings(self) -> dict:
        return {**prompt_settings(self.model.config), "decode": resolved_decode(self.options)}

    def eval_trace_fingerprints(self, sides: list[str]) -> dict:
        """side -> the fingerprint ``tte-fast eval`` keys this reasoner's traces by, where its
        decoding is the one these traces had (eval decodes with the budgets and the model's
        sampling); absent where it is not."""
        return eval_trace_fingerprints(self.model, self.options, sides, self.eval_runner)

    def generate(self, inputs: list) -> list[Generation]:
        """A :class:`Generation` per ``TraceInput``, in order; a bad input gets its error."""
        model, errors, items = self.model, {}, []
        for i, x in enumerate(inputs):
            try:
                item = check_input(i, x.input)
                if item.image is not None and not model.vision:
                    raise InputError(i, f"has an image, but {model.model_type!r} is a text-only model")
            except InputError as err:
                errors[i], item = str(err), None
            items.append(item)
        results = {}
        with model.lock:
            for side in dict.fromkeys(x.side for x in inputs):
                order = [i for i, x in enumerate(inputs) if x.side == side and items[i] is not None]
                if order:
                    engine = model.engine(self.params.batch_size)
                    results.update(
                        run_requests(
                            engine, items, order, self.options, side=side, embed=False,
                            on_error="skip", errors=errors, bar=_NoProgress(),
                        )
                    )  # fmt: skip
        out = []
        for i in range(len(inputs)):
            if i in errors:
                out.append(Generation(error=_without_index(errors[i], i)))
                continue
            r = results[i]
            out.append(Generation(r.trace, r.stop_reason, r.prompt_tokens, r.generated_tokens))
        return out


class _NoProgress:
    def update(self, n: int) -> None:
        pass


def _without_index(message: str, index: int) -> str:
    """The message without its ``input N:`` prefix (N is the index inside one shard)."""
    prefix = f"input {index}: "
    return message[len(prefix) :] if message.startswith(prefix) else message
