# protoseg — run `make help` for the list of targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Local wheel sources (see DEVELOPERS.md); torch/torchvision pinned in constraints.txt.
UV_SOURCES := --find-links /opt/wheels --extra-index-url file:///opt/pypi/simple \
	--extra-index-url file:///opt/pypi-more/simple --index-strategy unsafe-best-match
DATA ?= ../shared/data
RESULTS := benchmarks/results

.DEFAULT_GOAL := help
.PHONY: help install test test-slow lint format quickstart clean bench-monuseg-supervised \
	bench-monuseg-supervised-holdout bench-monuseg-patchcontrast

help: ## Show this help
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*?## "}; {printf "  %-34s %s\n", $$1, $$2}'

install: ## Create .venv and install protoseg with dev tools (torch pinned by constraints.txt)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade uv
	$(BIN)/uv pip install --python $(BIN)/python $(UV_SOURCES) -c constraints.txt -e ".[dev]"

test: ## Run the fast test suite (CPU, no slow tests)
	$(BIN)/python -m pytest -q

test-slow: ## Run only the slow tests (shipped configs end to end, real-data checks)
	$(BIN)/python -m pytest -q -m slow

lint: ## Lint with ruff
	$(BIN)/ruff check protoseg tests benchmarks
	$(BIN)/ruff format --check protoseg tests benchmarks

format: ## Format with ruff
	$(BIN)/ruff check --fix protoseg tests benchmarks
	$(BIN)/ruff format protoseg tests benchmarks

quickstart: ## Train on the embedded sample, then predict it into runs/quickstart/predictions
	$(BIN)/protoseg fit --config configs/quickstart.yaml
	$(BIN)/protoseg predict --config configs/quickstart.yaml \
		--ckpt_path runs/quickstart/checkpoints/last.ckpt --output_dir runs/quickstart/predictions

clean: ## Remove runs/ and caches (keeps .venv)
	rm -rf runs .pytest_cache .ruff_cache

BENCH_SUP := runs/bench_monuseg_supervised
bench-monuseg-supervised: ## Supervised reference row: train on all 30 MoNuSeg images (~30 min, 2 CPU cores), predict the 14 test images
	$(BIN)/python benchmarks/monuseg_supervised.py --data-root $(DATA)/monuseg/train \
		--run-dir $(BENCH_SUP) --output $(RESULTS)/monuseg_supervised.json
	$(BIN)/protoseg predict --config configs/monuseg/segment.yaml \
		--ckpt_path $(BENCH_SUP)/checkpoints/last.ckpt \
		--data.root $(DATA)/monuseg/test --output_dir $(BENCH_SUP)/test_predictions
	@echo "instance maps written: $$(ls $(BENCH_SUP)/test_predictions/*.png | grep -vc _overlay)"

bench-monuseg-supervised-holdout: ## Same recipe on a seeded 24/6 split: held-out validation figures
	$(BIN)/python benchmarks/monuseg_supervised.py --data-root $(DATA)/monuseg/train \
		--val-fraction 0.2 --run-dir runs/bench_holdout \
		--output $(RESULTS)/monuseg_supervised_holdout.json

BENCH_PC := runs/bench_patchcontrast
bench-monuseg-patchcontrast: ## Label-free chain: FCNN -> pseudo masks -> segmentation head on the 30 training images, then predict the 14 test images
	$(BIN)/python benchmarks/monuseg_patchcontrast.py --data-root $(DATA)/monuseg/train \
		--run-dir $(BENCH_PC) --output $(RESULTS)/monuseg_patchcontrast.json
	$(BIN)/protoseg predict --config configs/patch_contrast/segment_monuseg.yaml \
		--ckpt_path $(BENCH_PC)/segment/checkpoints/last.ckpt \
		--data.root $(DATA)/monuseg/test --output_dir $(BENCH_PC)/test_predictions
	@echo "instance maps written: $$(ls $(BENCH_PC)/test_predictions/*.png | grep -vc _overlay)"
