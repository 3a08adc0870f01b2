"""The mteb adapter inside mteb itself: a small text-to-image retrieval task defined here with mteb's
own task classes (no downloads), run by ``mteb.evaluate`` on a tiny Qwen2-VL."""

from __future__ import annotations

import numpy as np
import pytest

mteb = pytest.importorskip(
    "mteb", reason="mteb is not installed (optional extra: pip install 'tte_fast[mteb]')"
)

from datasets import Dataset  # noqa: E402  (mteb depends on datasets)
from mteb.abstasks.retrieval import AbsTaskRetrieval  # noqa: E402
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData  # noqa: E402
from mteb.abstasks.task_metadata import TaskMetadata  # noqa: E402
from PIL import Image  # noqa: E402

from tte_fast.integrations.mteb import TTEEncoder, tte_model_meta  # noqa: E402
from tte_fast.model import UnifiedTTE  # noqa: E402


class TinyTextToImage(AbsTaskRetrieval):
    metadata = TaskMetadata(
        name="TinyTextToImage",
        description="Three captions against three random images, for testing the adapter offline.",
        reference=None,
        dataset={"path": "local/tiny-t2i", "revision": "0"},
        type="Any2AnyRetrieval",
        category="t2i",
        modalities=["text", "image"],
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        main_score="ndcg_at_10",
        date=("2025-01-01", "2025-01-01"),
        domains=[],
        task_subtypes=[],
        license="cc-by-4.0",
        annotations_creators="derived",
        dialect=[],
        sample_creation="created",
        bibtex_citation="",
    )

    def load_data(self, num_proc=None, **kwargs) -> None:
        rng = np.random.default_rng(0)
        images = [Image.fromarray(rng.integers(0, 256, (28, 36, 3), dtype=np.uint8)) for _ in range(3)]
        split = RetrievalSplitData(
            queries=Dataset.from_dict({"id": ["q0", "q1", "q2"], "text": ["a cat", "a dog", "a bird"]}),
            corpus=Dataset.from_dict({"id": ["d0", "d1", "d2"], "image": images}),
            relevant_docs={"q0": {"d0": 1}, "q1": {"d1": 1}, "q2": {"d2": 1}},
            top_ranked=None,
        )
        self.dataset = {"default": {"test": split}}
        self.data_loaded = True


@pytest.fixture(scope="module")
def model(tiny_checkpoints, one_thread):
    return UnifiedTTE.from_pretrained(tiny_checkpoints["qwen2_vl"], device="cpu")


def test_runs_inside_mteb_queries_think_documents_do_not(model, tmp_path):
    sides = []
    original = model.encode

    def spy(inputs, **kwargs):
        result = original(inputs, **kwargs)
        sides.append((kwargs["side"], len(inputs), result.traces is not None, inputs[0]))
        return result

    model.encode = spy
    try:
        encoder = TTEEncoder(model, max_think_tokens=2, batch_size=2)
        results = mteb.evaluate(encoder, tasks=[TinyTextToImage()], cache=None, show_progress_bar=False)
    finally:
        del model.encode
    scores = results.task_results[0].scores["test"][0]
    assert 0.0 <= scores["ndcg_at_10"] <= 1.0 and "recall_at_1" in scores
    by_side = {side: (n, thought, first) for side, n, thought, first in sides}
    assert by_side["query"][:2] == (3, True) and by_side["query"][2]["text"] == "a cat"
    assert by_side["target"][:2] == (3, False) and isinstance(by_side["target"][2]["image"], Image.Image)


def test_embeddings_equal_the_models_and_meta_loads(model, tiny_checkpoints):
    from torch.utils.data import DataLoader

    encoder = TTEEncoder(model, max_think_tokens=2)
    rows = Dataset.from_dict({"text": ["a cat", "a dog", "red"]})
    loader = DataLoader(rows, batch_size=2)
    got = encoder.encode(
        loader,
        task_metadata=TinyTextToImage.metadata,
        hf_split="test",
        hf_subset="default",
        prompt_type=mteb.types.PromptType.document,
    )
    want = model.encode(["a cat", "a dog", "red"], think=False, side="target").embeddings.numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)

    meta = tte_model_meta(tiny_checkpoints["qwen2_vl"], device="cpu", max_think_tokens=2)
    assert meta.similarity_fn_name == "cosine" and set(meta.modalities) == {"image", "text"}
    # mteb's own meta.load_model() first demands its [image] extra (torchvision, which must not sit
    # beside a CPU torch); the loader it would call is ours:
    loaded = meta.loader(meta.name, revision=meta.revision, **meta.loader_kwargs)
    assert isinstance(loaded, TTEEncoder) and isinstance(loaded.model, UnifiedTTE)
    assert loaded.max_think_tokens == 2
