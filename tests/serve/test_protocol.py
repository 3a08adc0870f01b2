"""The server's parts without a server: request parsing, ``dimensions``, the CLI's settings, and the
refusal of a TTE_u checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")

from tte_fast.runtime.engine import EngineResult  # noqa: E402
from tte_fast.serve import API_KEY_ENV, ServeConfig, create_app  # noqa: E402
from tte_fast.serve.cli import config_from_args, parser  # noqa: E402
from tte_fast.serve.errors import APIError  # noqa: E402
from tte_fast.serve.protocol import parse_request  # noqa: E402
from tte_fast.serve.responses import check_dimensions, embeddings_body  # noqa: E402


def test_chats_become_inputs():
    chat = [
        {"role": "system", "content": "Find the caption."},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": "U"}]},
        {"role": "user", "content": "b"},
    ]
    one = parse_request({"messages": chat}, max_inputs=4)
    assert [(i.param, i.text, i.image, i.instruction) for i in one.items] == [
        ("messages[0]", "a\nb", "U", "Find the caption.")
    ]
    two = parse_request({"messages": [chat, [{"role": "user", "content": "c"}]], "input": []}, max_inputs=4)
    assert [i.param for i in two.items] == ["messages[0]", "messages[1]"]
    assert two.items[1].text == "c" and two.items[1].image is None


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"input": "a", "messages": [{"role": "user", "content": "b"}]}, 400, "messages"),
        (
            {
                "messages": [
                    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}] * 2}]
                ]
            },
            400,
            "messages[0]",
        ),
        (
            {"messages": [[{"role": "user", "content": [{"type": "audio", "audio": "x"}]}]]},
            400,
            "messages[0]",
        ),
        (
            {"messages": [[{"role": "user", "content": "a"}], {"role": "user", "content": "b"}]},
            422,
            "messages",
        ),
        ({"input": [[1, 2, 3]]}, 422, "input[0]"),
        ({"input": []}, 400, "input"),
        ({"input": "a", "dimensions": 0}, 400, "dimensions"),
        ({"input": "a", "return_traces": 1}, 422, "return_traces"),
    ],
)
def test_bad_requests(body, status, param):
    with pytest.raises(APIError) as caught:
        parse_request(body, max_inputs=4)
    assert (caught.value.status, caught.value.param) == (status, param)


def _result(values) -> EngineResult:
    emb = torch.tensor(values, dtype=torch.float32)
    return EngineResult(emb / emb.norm(), "t", torch.zeros(3), 3, 2)


def test_dimensions_truncate_and_renormalise_only_for_matryoshka_models():
    check_dimensions(None, 4, matryoshka=False)
    check_dimensions(4, 4, matryoshka=False)
    for dims, matryoshka in ((2, False), (5, True)):
        with pytest.raises(APIError) as caught:
            check_dimensions(dims, 4, matryoshka)
        assert caught.value.status == 400 and caught.value.param == "dimensions"
    check_dimensions(2, 4, matryoshka=True)
    body = embeddings_body(
        [_result([3, 4, 5, 6])], "m", encoding_format="float", dimensions=2, return_traces=False
    )
    np.testing.assert_allclose(body["data"][0]["embedding"], [0.6, 0.8], rtol=1e-6)
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 5, "completion_tokens": 2}


def test_cli_settings(monkeypatch, tmp_path):
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    args = parser().parse_args(
        [
            "--model",
            str(tmp_path / "ckpt/"),
            "--media-dir",
            str(tmp_path),
            "--allow-host",
            "Images.Example.org",
        ]
    )
    config = config_from_args(args)
    assert config.model_name == "ckpt" and config.api_key == "from-env"
    assert config.allowed_hosts == ("images.example.org",) and config.media_dir == str(tmp_path.resolve())
    assert config_from_args(parser().parse_args(["--model", "m", "--api-key", "flag"])).api_key == "flag"
    with pytest.raises(ValueError, match="media_dir"):
        ServeConfig(media_dir=str(tmp_path / "missing"))


def test_serve_subcommand_help(capsys):
    from tte_fast.cli import main

    with pytest.raises(SystemExit) as caught:
        main(["serve", "--help"])
    assert caught.value.code == 0 and "--max-image-pixels" in capsys.readouterr().out


def test_a_tte_u_checkpoint_is_refused(tiny_checkpoints):
    from tte_fast.model import UnifiedTTE

    model = UnifiedTTE.from_pretrained(
        tiny_checkpoints["qwen2_vl"], device="cpu", head="tte_u", head_layers=1
    )
    with pytest.raises(ValueError, match="TTE_u"):
        create_app(model, ServeConfig())


def test_cli_prefill_attention_reaches_the_serving_engine(tiny_checkpoints, monkeypatch):
    """``--prefill-attention`` reaches the serving engine, not only the model (CPU's auto is padded)."""
    import uvicorn

    from tte_fast.serve.cli import main

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.update(app=app))
    main(["--model", tiny_checkpoints["qwen2_vl"], "--device", "cpu", "--prefill-attention", "sdpa_varlen"])
    assert served["app"].state.service.engine.prefill_attention == "sdpa_varlen"


def test_cli_serves_a_two_model_pipeline(tiny_checkpoints, monkeypatch):
    """``--reasoner`` makes ``--model`` the embedder: the reasoner thinks on an engine of its own."""
    import uvicorn

    from tte_fast.serve.cli import main
    from tte_fast.serve.thinkers import EngineThinker

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.update(app=app))
    paths = tiny_checkpoints["qwen2"], tiny_checkpoints["qwen2_vl"]
    main(["--model", paths[1], "--reasoner", paths[0], "--device", "cpu"])
    service = served["app"].state.service
    assert isinstance(service.thinker, EngineThinker) and service.thinker.engine.model is service.reasoner
    assert service.engine.model is service.embedder
    assert service.embedder.vision and not service.reasoner.vision


def test_cli_recipe_reaches_the_served_model(tiny_checkpoints, monkeypatch):
    import uvicorn

    from tte_fast.serve.cli import main

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.update(app=app))
    main(["--model", tiny_checkpoints["qwen2_vl"], "--device", "cpu", "--recipe", "vlm2vec"])
    config = served["app"].state.service.embedder.config
    assert (config.recipe, config.positions, config.prompt_embed) == ("vlm2vec", "sequential", "last")
