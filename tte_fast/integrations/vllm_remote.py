"""A ``vllm.LLM`` living in another Python environment, for where vLLM cannot share ours (the CPU
build pins its own torch and transformers): ``reasoner.vllm: {python: .venv-vllm/bin/python}``.

The worker is started once with that interpreter (``-c``, from a scratch folder, so no folder of
this repository shadows a package there) and keeps the model loaded; each ``generate`` call writes
the prompts' token ids and the sampling settings to a JSON file, tells the worker its number on
stdin, and reads the worker's JSON answer back. Text prompts only (images do not travel as JSON).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from types import SimpleNamespace

DONE = "TTE_VLLM_DONE"
WORKER = f"""
import json, os, sys
from vllm import LLM, SamplingParams
llm = LLM(**json.loads(sys.argv[1]))
work = sys.argv[2]
for line in sys.stdin:
    n = line.strip()
    if n.startswith("reset"):
        llm.reset_prefix_cache()
        print("{DONE}", n, flush=True)
        continue
    with open(os.path.join(work, "request-" + n + ".json")) as f:
        req = json.load(f)
    outs = llm.generate(req["prompts"], SamplingParams(**req["settings"]), use_tqdm=False)
    answer = [
        {{"prompt_tokens": len(o.prompt_token_ids), "token_ids": list(o.outputs[0].token_ids),
          "stop_reason": o.outputs[0].stop_reason}}
        for o in outs
    ]
    with open(os.path.join(work, "answer-" + n + ".json"), "w") as f:
        json.dump(answer, f)
    print("{DONE}", n, flush=True)
"""


class RemoteLLM:
    """``LLM(model=path, **engine_args)`` run by ``python``; ``generate`` as ``LLM.generate``'s
    (with the sampling settings as a dict), returning objects shaped like its outputs."""

    def __init__(self, python: str, path: str, engine_args: dict, env: dict | None = None):
        if not os.path.isfile(python):
            raise FileNotFoundError(f"reasoner.vllm.python: no interpreter at {python!r}")
        self.work = tempfile.mkdtemp(prefix="tte-vllm-")
        self.calls = 0
        self.log = open(os.path.join(self.work, "worker.log"), "w")  # noqa: SIM115 - lives with the worker
        self.proc = subprocess.Popen(
            [python, "-c", WORKER, json.dumps({"model": path, **engine_args}), self.work],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=self.work,
            env={**os.environ, **(env or {})},
        )

    @staticmethod
    def sampling_params(**settings) -> dict:
        return settings

    def generate(self, prompts: list[dict], settings: dict, use_tqdm: bool = False) -> list:
        if any("multi_modal_data" in p for p in prompts):
            raise ValueError("a vLLM in another environment takes text prompts only (no images)")
        self.calls += 1
        with open(os.path.join(self.work, f"request-{self.calls}.json"), "w", encoding="utf-8") as f:
            json.dump({"prompts": prompts, "settings": settings}, f)
        self._call(str(self.calls))
        with open(os.path.join(self.work, f"answer-{self.calls}.json"), encoding="utf-8") as f:
            answers = json.load(f)
        return [
            SimpleNamespace(
                prompt_token_ids=range(a["prompt_tokens"]),
                outputs=[SimpleNamespace(token_ids=a["token_ids"], stop_reason=a["stop_reason"])],
            )
            for a in answers
        ]

    def reset_prefix_cache(self) -> None:
        """Drop the worker's cached KV blocks (so a timed run does not reuse the one before)."""
        self.calls += 1
        self._call(f"reset{self.calls}")

    def _call(self, command: str) -> None:
        """Send ``command`` to the worker and wait for its done line."""
        self.proc.stdin.write(f"{command}\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:  # vLLM logs on stdout too (its engine process): keep them
            if line.split() == [DONE, command]:
                return
            self.log.write(line)
        self.log.flush()
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"the vLLM worker exited (code {self.proc.wait()}):\n{tail}")

    def close(self) -> None:
        """Stop the worker and remove its scratch folder (a failure's log tail is in its error)."""
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        self.log.close()
        shutil.rmtree(self.work, ignore_errors=True)
