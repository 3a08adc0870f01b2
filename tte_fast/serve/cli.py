"""``tte-fast serve --model PATH [--reasoner PATH] [--host 127.0.0.1] [--port 8000] [options]``."""

from __future__ import annotations

import argparse
import os

from tte_fast.checkpoint.recipes import add_recipe_argument
from tte_fast.runtime.packed_prefill import PREFILL_ATTENTION
from tte_fast.serve.config import API_KEY_ENV, MiB, ServeConfig


def parser() -> argparse.ArgumentParser:
    d = ServeConfig()
    p = argparse.ArgumentParser(prog="tte-fast serve", description="OpenAI/vLLM-compatible embeddings server")
    p.add_argument(
        "--model",
        required=True,
        help="checkpoint folder or id (last-token head), or a folder with reasoner/ and embedder/",
    )
    p.add_argument(
        "--reasoner",
        help="a separate reasoner (TTE_t / TTE_s): checkpoint folder or id, or vllm:PATH to think on vLLM "
        "($TTE_FAST_VLLM_ARGS: its LLM arguments as JSON); --model is then the embedder",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", help="the name clients send as 'model' (default: the folder name)")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", help="bfloat16, float16 or float32 (default: the checkpoint's)")
    p.add_argument("--compile", action="store_true", help="compile the decode step (CUDA graphs on GPU)")
    p.add_argument(
        "--prefill-attention",
        default="auto",
        choices=PREFILL_ATTENTION,
        help="admission prefill: auto packs prompts without padding via flash-attn/xformers on GPU",
    )
    add_recipe_argument(p)
    p.add_argument("--api-key", help=f"required as 'Authorization: Bearer KEY' (default: ${API_KEY_ENV})")
    p.add_argument("--slots", type=int, default=d.slots, help="inputs that think at once")
    p.add_argument("--media-dir", help="serve file:// images from this folder only (default: none)")
    p.add_argument(
        "--allow-host", action="append", default=[], metavar="HOST", help="fetch http(s) images from HOST"
    )
    p.add_argument("--max-body-mb", type=float, default=d.max_body_bytes / MiB)
    p.add_argument("--max-inputs", type=int, default=d.max_inputs, help="inputs per request")
    p.add_argument("--max-image-pixels", type=int, default=d.max_image_pixels)
    p.add_argument("--max-image-mb", type=float, default=d.max_image_bytes / MiB, help="per fetched image")
    p.add_argument("--max-video-mb", type=float, default=d.max_video_bytes / MiB, help="per fetched video")
    p.add_argument("--max-think-tokens", type=int, default=d.max_think_tokens, help="most a request may ask")
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="inputs in flight before 429")
    p.add_argument("--request-timeout", type=float, default=d.request_timeout_s, help="seconds (504 after)")
    p.add_argument("--remote-timeout", type=float, default=d.remote_timeout_s, help="seconds per image fetch")
    p.add_argument("--matryoshka", action="store_true", help="allow 'dimensions' below the full size")
    p.add_argument("--log-level", default="info")
    return p


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    name = args.served_model_name or os.path.basename(os.path.normpath(args.model))
    return ServeConfig(
        model_name=name,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        slots=args.slots,
        max_body_bytes=int(args.max_body_mb * MiB),
        max_inputs=args.max_inputs,
        max_image_pixels=args.max_image_pixels,
        max_image_bytes=int(args.max_image_mb * MiB),
        max_video_bytes=int(args.max_video_mb * MiB),
        max_think_tokens=args.max_think_tokens,
        max_queue=args.max_queue,
        request_timeout_s=args.request_timeout,
        media_dir=args.media_dir,
        allowed_hosts=tuple(args.allow_host),
        remote_timeout_s=args.remote_timeout,
        matryoshka=args.matryoshka,
    )


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        import uvicorn

        from tte_fast.serve.app import create_app
    except ImportError as error:
        message = f"tte-fast serve needs the serve extra: pip install -e '.[serve]' ({error})"
        raise SystemExit(message) from error
    try:
        config = config_from_args(args)
    except ValueError as error:
        raise SystemExit(f"tte-fast serve: {error}") from error
    from tte_fast.checkpoint.load import load_tte

    model = load_tte(
        args.model,
        reasoner=args.reasoner,
        device=args.device,
        dtype=args.dtype,
        compile=args.compile,
        prefill_attention=args.prefill_attention,
        **({"recipe": args.recipe} if args.recipe else {}),
    )
    try:
        app = create_app(model, config)
    except ValueError as error:  # a TTE_u checkpoint
        raise SystemExit(f"tte-fast serve: {error}") from error
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
