"""An OpenAI / vLLM-compatible embeddings server that can think (``pip install -e ".[serve]"``).

``tte-fast serve --model PATH`` or, in Python, ``create_app(model, ServeConfig(...))`` for any ASGI
server. See docs/serve.md for the request fields, limits and errors.
"""

from tte_fast.serve.config import API_KEY_ENV, ServeConfig

__all__ = ["API_KEY_ENV", "ServeConfig", "create_app"]


def create_app(model, config: ServeConfig | None = None):
    """The FastAPI app serving ``model`` (imported here so that ``ServeConfig`` needs no FastAPI)."""
    from tte_fast.serve.app import create_app as _create_app

    return _create_app(model, config)
