"""``tte-fast traces`` on a tiny Qwen2-VL: traces are ``think``'s, a SIGKILLed run resumes to the
uninterrupted folder, bad inputs are recorded, a different setting is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from traces_cases import THINK, sorted_rows, traces_config, write_config, write_pairs

from tte_fast.corpus.store import MANIFEST
from tte_fast.model import UnifiedTTE
from tte_fast.settings.schema import ConfigError
from tte_fast.traces import EngineReasoner, TraceJobError, generate_traces
from tte_fast.traces.config import parse_traces_config
from tte_fast.traces.sources import read_inputs

pytestmark = pytest.mark.usefixtures("one_thread")

# Runs ``tte-fast traces`` and SIGKILLs itself while the third shard is written: after its temporary
# file is complete, before the rename that puts it in place.
KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from tte_fast.corpus import store
    from tte_fast.cli import main
    renames, replace = [], os.replace
    def dying_replace(src, dst):
        if os.path.basename(dst).startswith("part-"):
            renames.append(dst)
            if len(renames) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        replace(src, dst)
    store.os.replace = dying_replace
    main(sys.argv[1:])
    """
)


@pytest.fixture(scope="module")
def model_path(tiny_checkpoints):
    return tiny_checkpoints["qwen2_vl"]


@pytest.fixture(scope="module")
def tte(model_path):
    return UnifiedTTE.from_pretrained(model_path, device="cpu")


def _run(tte, raw: dict, folder, resume: bool = False) -> dict:
    """The job through the Python API on the loaded model (what the CLI runs)."""
    config = parse_traces_config(raw, base_dir=str(folder))
    reasoner = EngineReasoner(tte, config.decode_params())
    return generate_traces(
        reasoner,
        read_inputs(config),
        config.output_dir,
        sides=config.sides,
        shard_size=config.shard_size,
        resume=resume,
        progress=False,
    )


def test_killed_run_resumes_to_the_uninterrupted_folder(model_path, tte, tmp_path):
    data = write_pairs(tmp_path, 7)
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    summary = _run(tte, traces_config(tmp_path, model_path, data, full), tmp_path)
    # 9 records: 9 queries, 8 distinct positives (records 4 and 5 share theirs).
    assert (summary["inputs"], summary["generated"], summary["failed"]) == (17, 17, 2)
    assert summary["shards_written"] == 6

    rows = {r["id"]: r for r in sorted_rows(full)}
    failed = {r["where"].rsplit(":", 1)[1]: r["error"] for r in rows.values() if r["error"]}
    assert "image file not found" in failed["3"] and "cannot read image" in failed["9"]
    good = [r for r in rows.values() if r["error"] is None]
    assert all(r["trace"].startswith("<think>\n") and r["stop_reason"] for r in good)
    assert all(r["generated_tokens"] == THINK and r["prompt_tokens"] > 10 for r in good)
    # The traces are think()'s, input for input, on either side.
    config = parse_traces_config(traces_config(tmp_path, model_path, data, full), str(tmp_path))
    items = [x for x in read_inputs(config).items if rows[x.id]["error"] is None]
    for side in ("query", "target"):
        mine = [x for x in items if x.side == side]
        expected = tte.think([x.input for x in mine], max_think_tokens=THINK, side=side, batch_size=4)
        assert [rows[x.id]["trace"] for x in mine] == expected

    config_file = write_config(tmp_path, traces_config(tmp_path, model_path, data, killed))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", KILLED_RUN, "traces", config_file, "--quiet"]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    names = sorted(os.listdir(killed))
    assert sum(n.startswith("part-") for n in names) == 2
    assert any(n.startswith(".part-") for n in names), names  # the third shard's temporary file
    assert len(sorted_rows(killed)) == 6

    with pytest.raises(TraceJobError, match="already holds traces: pass --resume"):
        _run(tte, traces_config(tmp_path, model_path, data, killed), tmp_path)
    summary = _run(tte, traces_config(tmp_path, model_path, data, killed), tmp_path, resume=True)
    assert (summary["already_done"], summary["generated"], summary["table"]["rows"]) == (6, 11, 17)
    assert not any(n.startswith(".") for n in os.listdir(killed))
    assert sorted_rows(killed) == sorted_rows(full)
    manifest = json.loads((tmp_path / "killed" / MANIFEST).read_text())
    assert manifest["status"] == "complete"
    assert manifest["counts"] == {"rows": 17, "succeeded": 15, "failed": 2, "shards": 6}
    assert manifest["reasoner"]["backend"] == "engine"
    assert manifest["settings"]["decode"]["max_think_tokens"] == THINK
    assert manifest["settings"]["prompts"] == tte.config.prompts.to_dict()


@pytest.mark.parametrize(
    "change, named",
    [
        ({"decode": {"max_think_tokens": THINK + 1}}, "settings.decode.max_think_tokens: 3 (in the folder)"),
        ({"sides": ["query"]}, "settings.sides"),
        ({"decode": {"max_think_tokens": THINK, "do_sample": True, "seed": 1}}, "settings.decode.do_sample"),
    ],
)
def test_resume_refuses_a_different_setting(model_path, tte, tmp_path, change, named):
    data = write_pairs(tmp_path, 2, bad=False)
    out = str(tmp_path / "out")
    _run(tte, traces_config(tmp_path, model_path, data, out), tmp_path)
    before = sorted(os.listdir(out))
    with pytest.raises(TraceJobError, match="refusing to resume") as err:
        _run(tte, traces_config(tmp_path, model_path, data, out, **change), tmp_path, resume=True)
    assert named in str(err.value)
    assert sorted(os.listdir(out)) == before


@pytest.mark.parametrize(
    "change, message",
    [
        ({"sides": ["query", "pos"]}, "sides must be distinct values of ['query', 'target'], got ['q"),
        ({"decode": {"max_think": 3}}, "decode: unknown keys ['max_think']"),
        ({"decode": {"top_p": 2}}, "decode.top_p must be in (0, 1], got 2"),
        ({"reasoner": {"path": "m", "backend": "sglang"}}, "reasoner.backend must be one of"),
        ({"tasks": [{"name": "t", "data_path": "t.jsonl"}]}, "set either datasets"),
        ({"records": "sft"}, "sides must be [query]"),
        ({"shard_size": 0}, "shard_size must be a positive int, got 0"),
    ],
)
def test_bad_settings_fail_before_any_model_loads(tmp_path, change, message):
    raw = traces_config(tmp_path, "m", "pairs.jsonl", "out", **change)
    with pytest.raises(ConfigError) as err:
        parse_traces_config(raw, str(tmp_path))
    assert message in str(err.value)
