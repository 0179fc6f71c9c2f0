# Run `make help` for the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Offline? Point DATA_DIR at MNIST IDX files: make run DATA_DIR=path/to/mnist
DATA_DIR ?=
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install run explainer test lint protos bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# The example architecture plugin is installed too: the tests use it.
EXAMPLE_PLUGIN := examples/fedxai-example-plugin

$(VENV)/.installed: pyproject.toml $(EXAMPLE_PLUGIN)/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' -e $(EXAMPLE_PLUGIN)
	touch $@

install: $(VENV)/.installed ## create .venv with the project and its dev tools

run: install ## train with XAI: explainer, SuperLink, 2 trainers; images under ./outputs
	$(BIN)/fedxai run $(if $(DATA_DIR),--data-dir $(DATA_DIR)) $(ARGS)

explainer: install ## serve only the explainer on 127.0.0.1:50051
	$(BIN)/fedxai explainer

test: install lint ## lint, then run the whole test suite
	$(BIN)/pytest

lint: install ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

protos: install ## regenerate fedxai/v1 from protos/ (tests fail when they drift)
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. --pyi_out=. \
		protos/fedxai/v1/*.proto

# The quality benchmark scores the global checkpoints of the newest 5-round run of xaitest.
QUALITY_TASK := outputs/xaitest

bench: install ## print the benchmark figures (explainer, explanation quality, federation, then the trainers' relay)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/explainer_bench.py
	ls $(QUALITY_TASK)/runs/*/round-005/global_model.safetensors >/dev/null 2>&1 || \
		$(BIN)/fedxai run --rounds 5 $(if $(DATA_DIR),--data-dir $(DATA_DIR))
	$(BIN)/python benchmarks/xai_quality.py --run-dir $(QUALITY_TASK) --rounds 1 2 3 4 5 \
		$(if $(DATA_DIR),--data-dir $(DATA_DIR))
	$(BIN)/python benchmarks/federation_bench.py --accuracy $(if $(DATA_DIR),--data-dir $(DATA_DIR))
	$(BIN)/python benchmarks/relay_bench.py

clean: ## remove the venv, caches and run state (not ./outputs)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .fedxai
