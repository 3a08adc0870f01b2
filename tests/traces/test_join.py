"""Traces joined back: reasoner and embedder records that ``tte-fast train`` loads and trains a step
on, and the eval's trace cache, which ``tte-fast eval`` then embeds from instead of thinking."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import pytest
from eval_fixtures import THINK_TOKENS, write_dataset
from traces_cases import traces_config, write_config, write_pairs
from train_cases import example, losses, run_config

from tte_fast.cli import main
from tte_fast.eval import evaluate
from tte_fast.eval import parse_config as parse_eval_config
from tte_fast.model import UnifiedTTE
from tte_fast.traces import TraceJobError, generate_traces
from tte_fast.traces.config import parse_traces_config
from tte_fast.traces.join import JoinError, join_outputs
from tte_fast.traces.sources import read_inputs
from tte_fast.traces.store import Generation
from tte_fast.train import parse_config, train

pytestmark = pytest.mark.usefixtures("one_thread")


class ScriptedReasoner:
    """A teacher whose trace names its input: the join is checked line by line. Inputs whose text
    holds ``open`` never close their think section; those with ``nowhere`` fail."""

    backend = "scripted"
    think_prefix, think_end = "<think>\n", "</think>"

    def description(self) -> dict:
        return {"backend": self.backend, "fingerprint": "scripted-1"}

    def settings(self) -> dict:
        return {"prompts": {}, "decode": {}}

    def generate(self, inputs: list) -> list[Generation]:
        out = []
        for x in inputs:
            name = x.input.get("text") or os.path.basename(x.input["image"])
            if "nowhere" in str(x.input.get("image")):
                out.append(Generation(error="image file not found"))
            elif "open" in name:
                out.append(Generation(f"<think>\nstill thinking about {name}", "think_budget", 9, 4))
            else:
                trace = f"<think>\nThe {x.side} shows {name}.\n</think>\n\n{name} ({x.side})"
                out.append(Generation(trace, "eos", 9, 7))
        return out


def _generate(raw: dict, folder) -> object:
    config = parse_traces_config(raw, base_dir=str(folder))
    generate_traces(
        ScriptedReasoner(), read_inputs(config), config.output_dir, sides=config.sides, progress=False
    )
    return config


def _lines(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_records_join_and_train_a_step(tiny_checkpoints, tmp_path):
    pairs = write_pairs(tmp_path, 3)  # 5 records: one fails (missing image), one has a corrupt image
    with open(pairs, "a", encoding="utf-8") as f:
        f.write(json.dumps({"query": "left open", "pos": "closed"}) + "\n")
    mixture = [{"path": pairs}, {"path": example("mmeb.jsonl"), "format": "mmeb", "max_samples": 2}]
    sft, embedder = str(tmp_path / "sft.jsonl"), str(tmp_path / "embedder.jsonl")
    join = {"reasoner_records": sft, "embedder_records": embedder}
    raw = traces_config(tmp_path, "unused", pairs, str(tmp_path / "out"), datasets=mixture, join=join)
    config = _generate(raw, tmp_path)
    summary = join_outputs(config, config.output_dir)

    # 6 pair records + 2 MMEB rows; the missing image fails, "left open" never closes its think.
    assert summary["reasoner_records"]["written"] == 6
    assert summary["reasoner_records"]["skipped"] == {"failed": 1, "think section not closed": 1}
    first = _lines(sft)[0]
    assert first == {
        "input": {"text": "query 0"},
        "trace": "The query shows query 0.",
        "answer": "query 0 (query)",
    }
    assert summary["embedder_records"]["written"] == 7
    assert summary["embedder_records"]["skipped"] == {"query trace failed": 1}
    records = _lines(embedder)
    assert records[0]["query_trace"] == "<think>\nThe query shows query 0.\n</think>\n\nquery 0 (query)"
    assert records[0]["pos_trace"].endswith("target 0 (target)") and records[0]["negs"] == [
        {"text": "negative 0"}
    ]
    mmeb = records[-1]  # MMEB rows come out in our layout, the placeholder dropped, the image resolved
    assert mmeb["query"]["image"] == example("images/blue_circle.png")
    assert mmeb["query_trace"].endswith("(query)") and mmeb["pos"] == {"text": "circle"}

    model = tiny_checkpoints["qwen2_vl"]
    steps = {"steps": 1, "batch_size": 2}
    for job, data in (("reasoner", sft), ("embedder", embedder)):
        out = tmp_path / f"train-{job}"
        # bad_data skip: the corrupt image's record leaves its batch (the records keep it, as given).
        raw = run_config(
            job, model, out, data={"datasets": [{"path": data}], "bad_data": "skip"}, train=steps
        )
        train(parse_config(raw))
        assert list(losses(out)) == [1]


def test_embedder_records_need_pairs(tmp_path):
    raw = traces_config(
        tmp_path, "m", example("sft.jsonl"), str(tmp_path / "out"), records="sft", sides=["query"]
    )
    raw["join"] = {"embedder_records": str(tmp_path / "e.jsonl")}
    config = _generate(raw, tmp_path)
    with pytest.raises(JoinError, match="embedder records join pairs"):
        join_outputs(config, config.output_dir)


def test_eval_cache_join_serves_the_eval(tiny_checkpoints, tmp_path, capsys):
    """The CLI over eval tasks, joined into the eval's cache: the eval embeds every query from its
    cached trace and thinks none; thinking itself, it writes the same trace files."""
    model_path = tiny_checkpoints["qwen2_vl"]
    eval_raw = write_dataset(str(tmp_path / "data"))
    cache = str(tmp_path / "cache")
    raw = {
        "reasoner": {"path": model_path, "device": "cpu"},
        "tasks": eval_raw["tasks"],
        "decode": {"max_think_tokens": THINK_TOKENS},
        "output_dir": str(tmp_path / "traces"),
        "join": {"eval_cache": cache},
    }
    config_file = write_config(tmp_path / "data", raw)
    main(["traces", config_file, "--quiet"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["job"]["generated"] == 5 and result["job"]["failed"] == 0
    assert result["join"]["eval_cache"]["written"] == {"mmeb_local/query": 3, "ours_global/query": 2}

    model = UnifiedTTE.from_pretrained(model_path, device="cpu")
    runs = {}
    caches = (cache, str(tmp_path / "fresh"))
    for name, cache_dir in zip(("joined", "fresh"), caches):
        eval_config = {**eval_raw, "output_dir": str(tmp_path / name), "cache_dir": cache_dir}
        runs[name] = evaluate(
            parse_eval_config(eval_config, str(tmp_path / "data")), model=model, verbose=False
        )
    for task in runs["joined"]["tasks"].values():
        assert task["encode"]["query"]["thought"] == 0
    served = sum(t["encode"]["query"]["reused_traces"] for t in runs["joined"]["tasks"].values())
    assert served == 5
    # The eval thinking itself writes the same trace files: same fingerprints (names), same traces.
    for task in ("mmeb_local", "ours_global"):
        joined, fresh = (sorted(glob.glob(os.path.join(c, task, "query-traces-*.json"))) for c in caches)
        assert [os.path.basename(p) for p in joined] == [os.path.basename(p) for p in fresh] != []
        assert json.loads(Path(joined[0]).read_text()) == json.loads(Path(fresh[0]).read_text())

    raw["decode"]["do_sample"], raw["decode"]["seed"] = True, 0  # not how the eval decodes
    raw["output_dir"] = str(tmp_path / "sampled")
    with pytest.raises(SystemExit, match="no eval trace fingerprint for side"):
        main(["traces", write_config(tmp_path / "data", raw), "--quiet"])


def test_resume_refuses_another_reasoner(tmp_path):
    """The reasoner's fingerprint is part of what a resumed folder must match."""
    raw = traces_config(tmp_path, "m", write_pairs(tmp_path, 2, bad=False), str(tmp_path / "out"))
    config = _generate(raw, tmp_path)
    other = ScriptedReasoner()
    other.description = lambda: {"backend": "scripted", "fingerprint": "scripted-2"}
    with pytest.raises(
        TraceJobError, match='reasoner.fingerprint: "scripted-1" .in the folder. vs "scripted-2"'
    ):
        generate_traces(other, read_inputs(config), config.output_dir, sides=config.sides, resume=True)
