"""UnifiedTTE: one model that thinks, then embeds straight from the generation cache.

``encode`` builds prompts through the chat template, decodes a reasoning trace per input with the
batched decoder, and reads each embedding on the step that feeds the embedding token onto the cache
generation left (last-token head), or runs the TTE_u head once over the layer L-k states captured
while generating. Without thinking (or with given traces) it is one prefill per batch.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field, fields, replace

import torch
from tqdm.auto import tqdm

from tte_fast.checkpoint.hf_processor import CHAT_TEMPLATE_FILE, load_processor
from tte_fast.checkpoint.loading import (
    build_head,
    default_attention,
    load_backbone,
    processor_source,
    resolve_device,
    resolve_dtype,
)
from tte_fast.checkpoint.model_types import QWEN_VL_MODEL_TYPES
from tte_fast.checkpoint.recipes import get_recipe
from tte_fast.checkpoint.tte_config import GENERATION_SOURCES, TTEConfig
from tte_fast.inputs import EmbedInput, InputError, as_input_list, check_input, load_input
from tte_fast.profiling import instrument_vision_encoder, stage
from tte_fast.prompting.batching import embed_batch, normalize, prompt_batch, unpadded
from tte_fast.prompting.prompts import PromptConfig, check_side
from tte_fast.runtime.engine import Engine, run_requests
from tte_fast.runtime.options import DecodeOptions
from tte_fast.runtime.packed_prefill import choose_prefill_attention
from tte_fast.runtime.runner import Runner
from tte_fast.runtime.static import StaticBatches
from tte_fast.runtime.stop_strings import StopStrings
from tte_fast.settings.checks import positive_int

ON_ERROR = ("raise", "skip")
SCHEDULERS = ("continuous", "static")
# The decode options a caller sets (DecodeOptions' other fields come from the checkpoint).
GENERATION_OPTIONS = (
    "max_think_tokens",
    "max_answer_tokens",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "seed",
    "repetition_penalty",
    "generation",
)
# generation_config fields generation="checkpoint" reads (None there: DecodeOptions' default).
CHECKPOINT_SAMPLING = ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty")


@dataclass
class EncodeResult:
    """Embeddings in input order: float32 [N, D], unit norm.

    ``sequences[i]`` holds input i's token ids without padding (prompt, trace, embedding token; the
    embedding was read at the last one). With ``on_error="skip"``, ``errors`` maps the index of each
    input that failed to its message; its row is all zeros and its trace and sequence are None.
    """

    embeddings: torch.Tensor
    traces: list[str | None] | None
    sequences: list[torch.Tensor | None]
    errors: dict[int, str] = field(default_factory=dict)


class UnifiedTTE:
    """A Qwen-VL (or text-only causal LM) backbone with its processor, prompts and embedding head."""

    def __init__(
        self,
        hf_model,
        processor,
        model_type: str,
        config: TTEConfig | None = None,
        head=None,
        compile: bool | str = False,
        prefill_attention: str = "auto",
        decoder: str = "auto",
    ):
        self.hf_model = hf_model.eval()
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.model_type = model_type
        self.vision = model_type in QWEN_VL_MODEL_TYPES
        self.config = config or TTEConfig()
        self.head = head
        if self.config.recipe is not None:
            get_recipe(self.config.recipe).check(self.tokenizer, model_type)
        self.embed_token, self.embed_token_id = self.config.resolve_embed_token(self.tokenizer)
        self.prompt_embed_token_id = self.config.resolve_prompt_embed_token(self.tokenizer)
        self.think_end_token_id, self.stop_strings = _stop_rule(self.tokenizer, self.config)
        # A trace ends at an EOS (the checkpoint's, or stop_tokens instead) or at the embedding token.
        stops = self.config.resolve_stop_tokens(self.tokenizer)
        stops = _eos_token_ids(hf_model, self.tokenizer) if stops is None else stops
        self.eos_token_ids = tuple(dict.fromkeys((*stops, self.embed_token_id)))
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else self.eos_token_ids[0]
        instrument_vision_encoder(self.hf_model)  # its own NVTX range inside prefill
        # One runner (the model's prefill and decode steps) under both schedulers.
        self.runner = Runner(hf_model, compile=compile, decoder=decoder)
        self.batches = StaticBatches(self.runner)
        # The engine's admission prefill: padded, or packed through a varlen attention (checked now).
        self.prefill_attention = choose_prefill_attention(prefill_attention, hf_model)
        # One encode / think / engine step at a time: they share the caches and the head's capture hooks.
        self.lock = threading.RLock()
        self._engine: Engine | None = None
        self.context_length = getattr(hf_model.config.get_text_config(), "max_position_embeddings", None)

    # ----------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str,
        dtype=None,
        device=None,
        head: str | None = None,
        head_layers: int | None = None,
        attn_implementation: str | None = None,
        compile: bool | str = False,
        image_processor=None,
        prefill_attention: str = "auto",
        recipe: str | None = None,
        base_model: str | None = None,
        decoder: str = "auto",
        **opts,
    ) -> UnifiedTTE:
        """Load a HF Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint or any HF causal LM (text only).

        ``dtype=None`` keeps the checkpoint's dtype; ``device=None`` picks CUDA when available.
        ``attn_implementation=None`` picks flash-attn 2 where :func:`default_attention` allows it,
        else SDPA. ``compile=True`` compiles the decode step (CUDA graphs on GPU).
        ``prefill_attention`` is how the continuous-batching engine prefills the prompts it admits:
        ``"auto"`` packs them without padding through flash-attn's or xformers' variable-length
        attention where installed (CUDA), else pads them; ``"padded"``, ``"flash_varlen"``,
        ``"xformers"`` or ``"sdpa_varlen"`` force one (see ``tte_fast.runtime.packed_prefill``).
        ``decoder`` runs the engine's decode steps: ``"auto"`` (default) through our fused forward
        where the text decoder is supported (``tte_fast.runtime.fused_decoder``), ``"fused"`` requires
        it, ``"transformers"`` runs transformers' modules. ``head`` is
        ``"last_token"`` (default) or ``"tte_u"``; ``opts`` override ``TTEConfig`` fields
        (``embed_token``, ``max_think_tokens``, ``prompts``, ...) over the checkpoint's saved ones.
        ``recipe`` (``"ume_r1"``, ``"rge"``, ``"vlm2vec"``: ``tte_fast.checkpoint.recipes``) runs a
        published embedder as its authors do: its settings go over the saved ones, under ``opts``.
        A PEFT adapter checkpoint loads ``base_model`` (default: the base its adapter config names)
        with the adapter merged.
        """
        overrides = dict(opts)
        unknown = sorted(set(overrides) - {f.name for f in fields(TTEConfig)})
        if unknown:
            raise TypeError(f"unknown from_pretrained options {unknown}")
        config = TTEConfig.load(path_or_id) or TTEConfig()
        if recipe is not None:
            config = get_recipe(recipe).apply(config)
        if head is not None:
            overrides["head"] = head
        if head_layers is not None:
            overrides["head_layers"] = head_layers
        if isinstance(overrides.get("prompts"), dict):
            overrides["prompts"] = PromptConfig.from_dict(
                {**config.prompts.to_dict(), **overrides["prompts"]}
            )
        config = replace(config, **overrides)
        device, dtype = resolve_device(device), resolve_dtype(dtype)
        if attn_implementation is None:
            attn_implementation = default_attention(device, dtype, config.head, compile)
        hf_model, model_type = load_backbone(path_or_id, dtype, device, attn_implementation, base_model)
        processor = load_processor(
            processor_source(path_or_id, base_model),
            model_type,
            image_processor,
            min_pixels=config.min_pixels,
            max_pixels=config.max_pixels,
        )
        head_module = build_head(config, path_or_id, hf_model)
        return cls(
            hf_model,
            processor,
            model_type,
            config,
            head=head_module,
            compile=compile,
            prefill_attention=prefill_attention,
            decoder=decoder,
        )

    def save_pretrained(self, directory: str) -> None:
        """Safetensors weights, tokenizer, image processor, chat template, tte_config.json (and head)."""
        os.makedirs(directory, exist_ok=True)
        self.hf_model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        if self.vision:
            self.processor.image_processor.save_pretrained(directory)
            if getattr(self.processor, "video_processor", None) is not None:
                self.processor.video_processor.save_pretrained(directory)
            with open(os.path.join(directory, CHAT_TEMPLATE_FILE), "w", encoding="utf-8") as f:
                f.write(self.processor.chat_template)
        if self.head is not None:
            self.head.save_pretrained(directory)
        self.config.save(directory)

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    # ------------------------------------------------------------------------------------ public
    def encode(
        self,
        inputs,
        think: bool | None = None,
        max_think_tokens: int | None = None,
        batch_size: int = 8,
        traces: list[str] | None = None,
        side: str = "query",
        progress: bool | None = None,
        on_error: str = "raise",
        scheduler: str = "continuous",
        **generation,
    ) -> EncodeResult:
        """Embed ``inputs``, thinking first where asked; results in input order.

        Args:
            inputs: a list of inputs (or one): a str is text; a dict takes ``text``, ``image`` (PIL
                image, HxWxC uint8 array, path or encoded bytes) and ``instruction`` (overrides the
                side's task instruction).
            think: True decodes a reasoning trace per input and embeds from the generation cache;
                False embeds with one prefill; None follows the side's setting
                (``config.prompts.think_query`` / ``think_target``: queries think, targets do not).
            max_think_tokens: budget of the trace before ``</think>``; None takes the checkpoint's.
            batch_size: inputs per batch (similar lengths are batched together).
            traces: given traces (teacher traces, offline target traces), one str per input:
                embedded in one prefill after the same prompt thinking uses; ``think`` must not be True.
            side: ``"query"`` or ``"target"``: picks the instruction and the default of ``think``.
            progress: show a progress bar (None: when there are more than 4 batches).
            on_error: ``"raise"`` stops at the first bad input (``InputError`` naming its index);
                ``"skip"`` embeds the rest, leaves zero rows and lists messages in ``result.errors``.
            scheduler: how thinking inputs are batched: ``"continuous"`` (``batch_size`` slots, an
                input enters as soon as another finishes: ``tte_fast.runtime.engine``) or ``"static"``
                (batches of ``batch_size`` decode until their longest trace ends). The TTE_u head
                always embeds in static batches.
            **generation: decode options, see :meth:`decode_options`: ``max_answer_tokens`` (answer
                budget after ``</think>``), ``do_sample``, ``temperature``, ``top_k``, ``top_p``,
                ``repetition_penalty`` (HF's, over prompt and generated ids), ``seed`` (the same seed
                and input give the same sampled trace in any batch) and ``generation``
                (``"checkpoint"``: unset sampling options come from the checkpoint's
                ``generation_config``).

        Returns:
            ``EncodeResult`` with ``embeddings`` (float32 [N, D], unit norm), ``traces`` (None when
            nothing thought or was given), ``sequences`` (token ids each embedding was read at) and
            ``errors``.

        Safe to call from several threads: calls on one model run one at a time.

        Example::

            model = UnifiedTTE.from_pretrained("path/to/checkpoint")
            result = model.encode(
                [{"image": "cat.jpg", "instruction": "Find the caption."}, "a cat on a mat"],
                think=True,
                max_think_tokens=128,
            )
            scores = result.embeddings[0] @ result.embeddings[1]
        """
        with self.lock:
            items, errors = self._check(inputs, on_error)
            check_side(side)
            _check_scheduler(scheduler)
            if traces is not None:
                if think:
                    raise ValueError("pass either think=True or traces, not both")
                traces = _check_traces(traces, len(items))
            thinking = traces is None and (self.config.prompts.thinks(side) if think is None else bool(think))
            options = self.decode_options(max_think_tokens=max_think_tokens, **generation)
            n = len(items)
            out_traces: list[str | None] = [None] * n
            sequences: list[torch.Tensor | None] = [None] * n
            embeddings: list[torch.Tensor | None] = [None] * n

            def run(batch_items, indices):
                batch = self.batch_inputs(batch_items, indices, side, thinking, traces, options)
                if thinking:
                    return self._think_and_embed(batch, options)
                return self.embed_prefill(batch), None, unpadded(batch)

            if thinking and scheduler == "continuous" and self.head is None:
                for i, r in self._run_engine(
                    items, errors, batch_size, progress, on_error, options, side, True
                ).items():
                    embeddings[i], sequences[i], out_traces[i] = r.embedding, r.sequence, r.trace
                run = None
            batches = (
                self._batches(items, errors, batch_size, progress, on_error, run, "encode") if run else ()
            )
            for indices, result in batches:
                emb, batch_traces, seqs = result
                for j, i in enumerate(indices):
                    embeddings[i] = emb[j]
                    sequences[i] = seqs[j].cpu()
                    if batch_traces is not None:
                        out_traces[i] = batch_traces[j]
                    elif traces is not None:
                        out_traces[i] = traces[i]
            dim = next((e.shape[-1] for e in embeddings if e is not None), self._hidden_size())
            stacked = (
                torch.stack([e if e is not None else torch.zeros(dim) for e in embeddings])
                if n
                else torch.zeros(0, dim)
            )
            has_traces = thinking or traces is not None
            return EncodeResult(stacked, out_traces if has_traces else None, sequences, errors)

    def think(
        self,
        inputs,
        max_think_tokens: int | None = None,
        batch_size: int = 8,
        side: str = "query",
        progress: bool | None = None,
        on_error: str = "raise",
        return_errors: bool = False,
        scheduler: str = "continuous",
        **generation,
    ):
        """Reasoning traces (think prefix + generated text, stop token dropped) in input order.

        Arguments as in :meth:`encode`. With ``on_error="skip"`` a failed input's trace is None;
        ``return_errors=True`` returns ``(traces, {index: message})`` instead of the traces alone."""
        options = self.decode_options(max_think_tokens=max_think_tokens, **generation)
        _check_scheduler(scheduler)
        with self.lock:
            traces, errors = self._think(inputs, options, batch_size, side, progress, on_error, scheduler)
        return (traces, errors) if return_errors else traces

    def decode_options(self, **options) -> DecodeOptions:
        """The ``DecodeOptions`` for ``encode`` / ``think`` keyword options (``GENERATION_OPTIONS``;
        None or absent budgets take the checkpoint's ``max_think_tokens`` / ``max_answer_tokens``).
        ``generation="checkpoint"`` fills the sampling options not passed from ``generation_config``."""
        unknown = sorted(set(options) - set(GENERATION_OPTIONS))
        if unknown:
            raise TypeError(
                f"unknown generation options {unknown}; expected some of {list(GENERATION_OPTIONS)}"
            )
        source = options.pop("generation", None) or self.config.generation
        if source not in GENERATION_SOURCES:
            raise ValueError(f"generation must be one of {GENERATION_SOURCES}, got {source!r}")
        if source == "checkpoint":
            options = {**self.checkpoint_sampling(), **options}
        for budget in ("max_think_tokens", "max_answer_tokens"):
            if options.get(budget) is None:
                options[budget] = getattr(self.config, budget)
        return DecodeOptions(
            eos_token_ids=self.eos_token_ids,
            think_end_token_id=self.think_end_token_id,
            pad_token_id=self.pad_token_id,
            stop_strings=self.stop_strings,
            embed_fallback=self.config.embed_fallback,
            **options,
        )

    def checkpoint_sampling(self) -> dict:
        """The sampling options the checkpoint's ``generation_config`` sets (HF's meaning: with
        ``do_sample`` False, greedy; the repetition penalty applies either way)."""
        config = getattr(self.hf_model, "generation_config", None)
        values = {name: getattr(config, name, None) for name in CHECKPOINT_SAMPLING}
        return {name: value for name, value in values.items() if value is not None}

    def release_memory(self) -> None:
        """Free the KV caches of the decoder and the batching engine (kept between calls for reuse)."""
        self.batches.release()
        self._engine = None

    def engine(self, slots: int) -> Engine:
        """The continuous-batching engine with ``slots`` slots (kept, and its cache, for reuse)."""
        wanted = (slots, self.prefill_attention)
        if self._engine is None or (len(self._engine.slots), self._engine.prefill_attention) != wanted:
            self._engine = Engine(self, slots=slots)
        return self._engine

    def _run_engine(self, items, errors, slots, progress, on_error, options, side, embed) -> dict:
        """{index: EngineResult} of the thinking inputs run through the engine."""
        positive_int("batch_size", slots)
        order = [i for i, item in enumerate(items) if item is not None]
        show = progress if progress is not None else len(order) > 4 * slots
        desc = "encode" if embed else "think"
        with tqdm(total=len(order), desc=desc, disable=not show, unit="input") as bar:
            return run_requests(
                self.engine(slots),
                items,
                order,
                options,
                side=side,
                embed=embed,
                on_error=on_error,
                errors=errors,
                bar=bar,
            )

    def _think(self, inputs, options: DecodeOptions, batch_size, side, progress, on_error, scheduler):
        """(traces in input order, {index: message} of the inputs that failed)."""
        items, errors = self._check(inputs, on_error)
        check_side(side)
        out: list[str | None] = [None] * len(items)
        if scheduler == "continuous":
            for i, r in self._run_engine(
                items, errors, batch_size, progress, on_error, options, side, False
            ).items():
                out[i] = r.trace
            return out, errors

        def run(batch_items, indices):
            batch = self.batch_inputs(batch_items, indices, side, True, None, options)
            decoded = self.batches.decode(batch, options)
            return self.decode_traces(decoded.kept)

        for indices, traces in self._batches(items, errors, batch_size, progress, on_error, run, "think"):
            for j, i in enumerate(indices):
                out[i] = traces[j]
        return out, errors

    # ---------------------------------------------------------------------------------- internals
    def _check(self, inputs, on_error: str):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        items, errors = [], {}
        for i, raw in enumerate(as_input_list(inputs)):
            try:
                item = check_input(i, raw)
                if (item.image is not None or item.video is not None) and not self.vision:
                    media = "an image" if item.image is not None else "a video"
                    raise InputError(i, f"has {media}, but {self.model_type!r} is a text-only model")
                if item.video is not None and not self.config.prompts.chat:
                    raise InputError(i, "has a video, but this model's prompts (chat=False) take no video")
            except InputError as e:
                if on_error == "raise":
                    raise
                errors[i], item = str(e), None
            items.append(item)
        return items, errors

    def _batches(self, items, errors, batch_size, progress, on_error, run, desc):
        """Yield (input indices, run's result) per batch; similar lengths share a batch."""
        positive_int("batch_size", batch_size)
        order = sorted(
            (i for i, item in enumerate(items) if item is not None),
            key=lambda i: (items[i].video is not None, items[i].image is not None, len(items[i].text or "")),
        )
        show = progress if progress is not None else len(order) > 4 * batch_size
        with tqdm(total=len(order), desc=desc, disable=not show, unit="input") as bar:
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                loaded = []
                for i in chunk:
                    try:
                        loaded.append((i, load_input(i, items[i])))
                    except InputError as e:
                        if on_error == "raise":
                            raise
                        errors[i] = str(e)
                yield from _run_skipping(loaded, errors, on_error, run)
                bar.update(len(chunk))

    def batch_inputs(self, items: list[EmbedInput], indices, side, think, traces, options) -> dict:
        """Tokenized, left-padded prompts of loaded inputs on the model's device (the schedulers'
        input); prompts without thinking end in the embedding token. ``indices`` name the inputs in
        errors (an ``InputError`` for a prompt too long for the context). ``side`` and ``options``
        are one for all or a list (one per item); ``traces`` (None, or indexable by input index)
        gives each input's trace."""
        n = len(items)
        sides = side if isinstance(side, list) else [side] * n
        all_options = options if isinstance(options, list) else [options] * n
        with stage("preprocess"):
            batch = prompt_batch(
                self.processor,
                items,
                sides,
                think,
                self.config.prompts,
                self.vision,
                traces=None if traces is None else [traces[i] for i in indices],
                embed_token_id=self.embed_token_id,
                prompt_embed=self.config.prompt_embed,
                prompt_embed_token_id=self.prompt_embed_token_id,
                sequential_positions=self.config.positions == "sequential",
                indices=list(indices),
            )
            lengths = batch["attention_mask"].sum(-1).tolist()
            if self.context_length is not None:
                for i, length, opts in zip(indices, lengths, all_options):
                    budget = opts.max_new_tokens + 1 if think else 0
                    if length + budget > self.context_length:
                        raise InputError(
                            i,
                            f"prompt of {length} tokens plus {budget} generated tokens exceeds the model's "
                            f"context of {self.context_length} tokens",
                        )
            dtype = next(self.hf_model.parameters()).dtype
            return {
                k: v.to(self.device, dtype=dtype if k.startswith("pixel_values") else None)
                if isinstance(v, torch.Tensor)
                else v
                for k, v in batch.items()
            }

    def _think_and_embed(self, batch: dict, options: DecodeOptions):
        if self.head is None:
            out = self.batches.decode(batch, options, embed_token_id=self.embed_token_id)
            with stage("embed"):
                emb = normalize(out.embed_hidden)
        else:
            with self.head.capture(self.hf_model) as captured:
                out = self.batches.decode(batch, options, embed_token_id=self.embed_token_id, compiled=False)
            with stage("embed"), torch.inference_mode():
                emb = self.head.embed(captured, out.attention_mask)
        return emb.float().cpu(), self.decode_traces(out.kept), out.sequences

    @torch.inference_mode()
    def embed_prefill(self, batch: dict) -> torch.Tensor:
        """One forward over prompt (+ trace) + embedding token; embedding read at the last token."""
        return embed_batch(self.hf_model, batch, self.head, self.runner).float().cpu()

    def decode_traces(self, kept: list[torch.Tensor]) -> list[str]:
        """The traces of generated token ids: the think prefix, then the text (special tokens dropped)."""
        prefix = self.config.prompts.think_prefix
        return [prefix + self.tokenizer.decode(k.tolist(), skip_special_tokens=True) for k in kept]

    def _hidden_size(self) -> int:
        return self.hf_model.config.get_text_config().hidden_size


def _run_skipping(loaded: list[tuple[int, EmbedInput]], errors: dict, on_error: str, run):
    """``run`` over a batch; with ``on_error="skip"`` an input the batch rejects (a prompt too long
    for the context) is recorded and the rest of the batch runs without it."""
    while loaded:
        indices = [i for i, _ in loaded]
        try:
            result = run([item for _, item in loaded], indices)
        except InputError as e:
            if on_error == "raise" or e.index not in indices:
                raise
            errors[e.index] = str(e)
            loaded = [(i, item) for i, item in loaded if i != e.index]
            continue
        yield indices, result
        return


def _check_scheduler(scheduler: str) -> None:
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")


def _check_traces(traces, n: int) -> list[str]:
    if isinstance(traces, str) or not hasattr(traces, "__len__"):
        raise TypeError(f"traces must be a list of str (one per input), got {type(traces).__name__}")
    traces = list(traces)
    if len(traces) != n:
        raise ValueError(f"got {len(traces)} traces for {n} inputs")
    for i, trace in enumerate(traces):
        if not isinstance(trace, str):
            raise InputError(i, f"trace must be a str, got {type(trace).__name__}")
    return traces


def _stop_rule(tokenizer, config: TTEConfig) -> tuple[int | None, StopStrings | None]:
    """The think end's token id where it is one token (closed by an id compare on the device), and
    the strings matched on generated text: the think end where it is several tokens (Qwen2-VL and
    Qwen2.5-VL spell ``</think>`` in pieces) and ``config.stop_strings``. None where there are none."""
    think_end = config.think_end_token or None  # "": rows never close a think section
    # A vocab lookup, not convert_tokens_to_ids: that maps a missing token to <unk>.
    think_end_id = None if think_end is None else tokenizer.get_vocab().get(think_end)
    text_end = think_end if think_end_id is None else None
    if text_end is None and not config.stop_strings:
        return think_end_id, None
    return think_end_id, StopStrings.of(tokenizer, text_end, config.stop_strings)


def _eos_token_ids(hf_model, tokenizer) -> tuple[int, ...]:
    ids: list[int] = []
    gen = getattr(hf_model, "generation_config", None)
    for source in (
        getattr(gen, "eos_token_id", None),
        tokenizer.eos_token_id,
        # A vocab lookup, not convert_tokens_to_ids: that maps a missing token to <unk>.
        tokenizer.get_vocab().get("<|im_end|>"),
    ):
        for value in source if isinstance(source, (list, tuple)) else [source]:
            if isinstance(value, int) and value >= 0 and value not in ids:
                ids.append(value)
    if not ids:
        raise ValueError(
            "the checkpoint defines no EOS token (generation_config.eos_token_id or the tokenizer's)"
        )
    return tuple(ids)
