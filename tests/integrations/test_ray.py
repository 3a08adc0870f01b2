"""The Ray Data adapter on a local Ray instance: the tiny model on CPU, in one actor.

Ray is an optional extra (``pip install 'tte_fast[ray]'``); without it this module is skipped. Ray
starts slowly, so everything is checked in one small run."""

from __future__ import annotations

import numpy as np
import pytest
from corpus_cases import THINK, mixed_items, write_corpus

ray = pytest.importorskip("ray", reason="Ray is not installed (optional extra: pip install 'tte_fast[ray]')")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'tte_fast[ray]')")

from tte_fast.integrations.ray import encode_dataset  # noqa: E402
from tte_fast.model import UnifiedTTE  # noqa: E402

# Ray Data's own settings warn about their renamed fields when it starts; nothing of ours.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.mark.usefixtures("local_ray", "one_thread")
def test_actor_pool_encodes_like_the_model(tiny_checkpoints, tmp_path):
    model_path = tiny_checkpoints["qwen2_vl"]
    write_corpus(tmp_path, [])  # the images
    items = mixed_items(4) + [{"id": "doc-bad", "text": "a", "image": "nowhere.png"}]
    dataset = ray.data.from_items(items)
    out = encode_dataset(
        dataset,
        model_path,
        actors=1,
        batch_size=3,
        device="cpu",
        max_think_tokens=int(THINK),
        encode_batch_size=1,  # each row's numbers then do not depend on the rows sent with it
        image_root=str(tmp_path),
    )
    rows = sorted(out.take_all(), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == sorted(x["id"] for x in items)
    assert "image" not in rows[0]

    bad = rows[-1]
    assert "image file not found" in bad["error"] and bad["trace"] is None
    assert np.isnan(bad["embedding"]).all()

    model = UnifiedTTE.from_pretrained(model_path, device="cpu")
    good = sorted(items[:4], key=lambda x: x["id"])
    inputs = [
        {k: (str(tmp_path / v) if k == "image" else v) for k, v in x.items() if k != "id"} for x in good
    ]
    expected = model.encode(inputs, max_think_tokens=int(THINK), batch_size=1)
    got = np.stack([r["embedding"] for r in rows[:4]])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected.embeddings.numpy(), atol=1e-6, rtol=0)
    assert [r["trace"] for r in rows[:4]] == expected.traces
    assert all(r["error"] is None for r in rows[:4])
