"""Two-model pipelines (TTE_t / TTE_s) served over real HTTP on loopback with the official client:
the reasoner's traces and the embedder's embeddings equal ``TwoModelTTE.encode`` of the same inputs,
whether the reasoner runs on our engine or on a vLLM-shaped single-budget engine, whose calls the
server shares between concurrent clients."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from serve_cases import API_KEY, data_url, image_chat, live_server, png_bytes  # noqa: E402
from traces_cases import SingleBudgetHF  # noqa: E402

from tte_fast.model import UnifiedTTE  # noqa: E402
from tte_fast.serve import ServeConfig, create_app  # noqa: E402
from tte_fast.two_model import TwoModelTTE  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ATOL = 1e-5
THINK = 3
NAME = "tte-s"


def _load(path: str) -> UnifiedTTE:
    return UnifiedTTE.from_pretrained(path, device="cpu")


@pytest.fixture(scope="module")
def paths(tiny_checkpoints):
    """Reasoner and embedder: two different tiny VL checkpoints, so a swap or a skipped trace shows."""
    return tiny_checkpoints["qwen2_vl"], tiny_checkpoints["qwen2_5_vl"]


@pytest.fixture(scope="module")
def reference(paths):
    return TwoModelTTE(_load(paths[0]), _load(paths[1]))


def _client(url: str):
    return openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def _rows(response) -> torch.Tensor:
    return torch.tensor(np.array([d.embedding for d in response.data], dtype=np.float32))


def _config() -> ServeConfig:
    return ServeConfig(model_name=NAME, api_key=API_KEY, slots=4, max_think_tokens=64)


def test_our_reasoner_then_the_embedder_equal_two_model_encode(paths, reference):
    model = TwoModelTTE(_load(paths[0]), _load(paths[1]))
    images = [png_bytes(11), png_bytes(12, (56, 28))]
    texts = ["a red square left of a circle", "x"]
    with live_server(create_app(model, _config())) as url:
        client = _client(url)
        got = client.embeddings.create(
            model=NAME, input=texts, extra_body={"max_think_tokens": THINK, "return_traces": True}
        )
        chats = [image_chat("what is shown", data_url(images[0])), image_chat(None, data_url(images[1]))]
        pictures = client.embeddings.create(
            model=NAME,
            input=[],
            extra_body={"messages": chats, "max_think_tokens": THINK, "return_traces": True},
        )
        plain = client.embeddings.create(model=NAME, input=texts, extra_body={"think": False})
    want = reference.encode(texts, think=True, max_think_tokens=THINK)
    torch.testing.assert_close(_rows(got), want.embeddings, atol=ATOL, rtol=0)
    assert [d.model_extra["trace"] for d in got.data] == want.traces
    # Usage: what the reasoner read and wrote, and what the embedder read (input + trace).
    reasoner_prompts = sum(
        len(s) - THINK - 1
        for s in reference.reasoner.encode(texts, think=True, max_think_tokens=THINK).sequences
    )
    embedder_prompts = sum(len(s) for s in want.sequences)
    assert got.usage.prompt_tokens == reasoner_prompts + embedder_prompts
    assert got.usage.total_tokens == got.usage.prompt_tokens + len(texts) * THINK

    want = reference.encode(
        [{"image": images[0], "text": "what is shown"}, {"image": images[1]}],
        think=True,
        max_think_tokens=THINK,
    )
    torch.testing.assert_close(_rows(pictures), want.embeddings, atol=ATOL, rtol=0)
    assert [d.model_extra["trace"] for d in pictures.data] == want.traces
    torch.testing.assert_close(
        _rows(plain), reference.encode(texts, think=False).embeddings, atol=ATOL, rtol=0
    )


class SlowSingleBudget:
    """The HF single-budget engine of the backend tests (vLLM's shape), slow on its first call so
    that the requests arriving meanwhile wait for the next one; records each call's prompt count."""

    def __init__(self, model):
        self.inner, self.calls = SingleBudgetHF(model), []
        self.sampling_params = self.inner.sampling_params

    def generate(self, prompts, settings, use_tqdm=False):
        if not self.calls:
            time.sleep(1.5)
        self.calls.append(len(prompts))
        return self.inner.generate(prompts, settings, use_tqdm)


def test_a_vllm_reasoner_shares_its_calls_between_concurrent_clients(tiny_checkpoints, paths, reference):
    from tte_fast.integrations.vllm_thinker import VllmThinker

    text_reasoner = tiny_checkpoints["qwen2"]  # the single-budget stand-in takes text prompts only
    engine = SlowSingleBudget(_load(text_reasoner))
    model = TwoModelTTE(VllmThinker.from_checkpoint(text_reasoner, llm=engine), _load(paths[1]))
    want_model = TwoModelTTE(_load(text_reasoner), reference.embedder)
    batches = [[f"client {c} query {q}" for q in range(2)] for c in range(4)]
    answers: dict[int, object] = {}
    with live_server(create_app(model, _config())) as url:
        client = _client(url)
        first = threading.Thread(
            target=lambda: answers.update(first=client.embeddings.create(model=NAME, input=["warm up"]))
        )
        first.start()
        time.sleep(0.5)  # the first call is under way: the next requests queue behind it

        def ask(c: int) -> None:
            extra = {"max_think_tokens": THINK, "return_traces": True}
            answers[c] = client.embeddings.create(model=NAME, input=batches[c], extra_body=extra)

        threads = [threading.Thread(target=ask, args=(c,)) for c in range(len(batches))]
        for t in threads:
            t.start()
        for t in [first, *threads]:
            t.join()
        # The pipeline takes what both models take: a text-only reasoner refuses pictures.
        chats = [[{"role": "user", "content": "fine"}], image_chat("a picture", data_url(png_bytes(5)))]
        with pytest.raises(openai.BadRequestError, match=r"messages\[1\].*text-only"):
            client.embeddings.create(model=NAME, input=[], extra_body={"messages": chats})
    for c, texts in enumerate(batches):
        want = want_model.encode(texts, think=True, max_think_tokens=THINK)
        assert [d.model_extra["trace"] for d in answers[c].data] == want.traces
        torch.testing.assert_close(_rows(answers[c]), want.embeddings, atol=ATOL, rtol=0)
    # One call per phase (think, answer) for the warm-up, then the four clients' eight inputs together.
    assert max(engine.calls) == sum(len(b) for b in batches), engine.calls
