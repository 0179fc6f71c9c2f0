# Run `make help` for the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STORE ?= outputs

.DEFAULT_GOAL := help
.PHONY: help install run test lint protos bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed ## create .venv with the project and its dev tools

run: install ## serve the explainer on 127.0.0.1:50051, images under ./outputs
	FEDXAI_OUTPUT_DIR=$(STORE) $(BIN)/fedxai explainer

test: install lint ## lint, then run the whole test suite
	$(BIN)/pytest

lint: install ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

protos: install ## regenerate fedxai/v1 from protos/ (tests fail when they drift)
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. --pyi_out=. \
		protos/fedxai/v1/*.proto

bench: install ## print the explainer benchmark figures
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/explainer_bench.py

clean: ## remove the venv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
