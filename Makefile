# protoseg — run `make help` for the list of targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Local wheel sources of the build machines (ignored where absent); torch/torchvision pinned in
# constraints.txt.
UV_SOURCES := --find-links /opt/wheels --extra-index-url file:///opt/pypi/simple \
	--extra-index-url file:///opt/pypi-more/simple --index-strategy unsafe-best-match
DATA ?= ../shared/data
RESULTS := benchmarks/results

.DEFAULT_GOAL := help
.PHONY: help install test test-slow lint format quickstart bench-quickstart readme-table clean \
	bench-monuseg-supervised \
	bench-monuseg-supervised-holdout bench-monuseg-colour bench-monuseg-patchcontrast bench-monuseg-psm bench-monuseg-psm-holdout bench-postprocess bench-resolution \
	bench-monuseg-psm-sweep bench-psm-sam bench-scale-estimate \
	bench-psm-recipes \
	bench-wsi bench-ssl bench-wsss4luad-camsam bench-wsss4luad-prototypes \
	sweep-ssl sweep-segment report

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

# More arguments of the quick-start chain, e.g. QUICKSTART_ARGS=--trainer.precision=32-true
QUICKSTART_ARGS ?=
quickstart: ## Label-free chain on the embedded sample (~2 min CPU): PSM pseudo masks -> U-Net head -> runs/quickstart/predictions, scored by the crops' labels
	$(BIN)/protoseg chain configs/chains/quickstart.yaml $(QUICKSTART_ARGS)

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

bench-monuseg-colour: ## Label-free reference without a network: Otsu of hematoxylin density (whole image; and per object) on the 30 training images (~1 min)
	$(BIN)/python benchmarks/monuseg_colour_baseline.py --data-root $(DATA)/monuseg/train \
		--output $(RESULTS)/monuseg_colour_baseline.json
	$(BIN)/python benchmarks/monuseg_colour_baseline.py --data-root $(DATA)/monuseg/train \
		--refine-pad 6 --output $(RESULTS)/monuseg_colour_baseline_refined.json

# trainer.accelerator of every stage of the label-free chains (gpu on a GPU machine).
CHAIN_ACCELERATOR ?= cpu
# More arguments of the chains, e.g. CHAIN_ARGS=--resume to finish a run cut short.
CHAIN_ARGS ?=
# trainer.precision of every stage and of the test predictions, e.g. CHAIN_PRECISION=32-true
# to time a float32-only CPU on one with bf16 (with ONEDNN_MAX_CPU_ISA=AVX2
# ATEN_CPU_CAPABILITY=avx2); empty: each config's own.
CHAIN_PRECISION ?=
chain_precision = $(if $(CHAIN_PRECISION),--trainer.precision=$(CHAIN_PRECISION))
# $(call chain,CHAIN,RUN_DIR,RESULT): protoseg chain on the MoNuSeg training images.
chain = $(BIN)/protoseg chain configs/chains/$(1).yaml --run_dir $(2) --output $(RESULTS)/$(3).json \
	--data.root $(DATA)/monuseg/train --trainer.accelerator=$(CHAIN_ACCELERATOR) $(chain_precision) $(CHAIN_ARGS)
# $(call predict_test,CONFIG,RUN_DIR): the chain's head predicts the 14 MoNuSeg test images.
define predict_test
	$(BIN)/protoseg predict --config $(1) --trainer.accelerator=$(CHAIN_ACCELERATOR) \
		$(chain_precision) --ckpt_path $(2)/segment/checkpoints/last.ckpt \
		--data.root $(DATA)/monuseg/test --output_dir $(2)/test_predictions
	@echo "instance maps written: $$(ls $(2)/test_predictions/*.png | grep -vc _overlay)"
endef
BENCH_PC := runs/bench_patchcontrast
bench-monuseg-patchcontrast: ## Label-free chain (configs/chains/monuseg_patchcontrast.yaml) on the 30 training images, then predict the 14 test images (CHAIN_ACCELERATOR=gpu on a GPU)
	$(call chain,monuseg_patchcontrast,$(BENCH_PC),monuseg_patchcontrast)
	$(call predict_test,configs/patch_contrast/segment_monuseg.yaml,$(BENCH_PC))

BENCH_PSM := runs/bench_psm
# The test images are predicted as the chain's result JSON says (predict_config): with the
# Segment Anything refinement of configs/refine/sam.yaml, which the chain's validations skip.
bench-monuseg-psm: ## Label-free chain (configs/chains/monuseg_psm.yaml) on the 30 training images (<=30 min on 2 float32 CPU cores by estimate), then predict the 14 test images with SAM refinement (docs/nuclei.md; CHAIN_ACCELERATOR=gpu on a GPU)
	$(call chain,monuseg_psm,$(BENCH_PSM),monuseg_psm)
	$(call predict_test,configs/psm/segment_monuseg.yaml --config configs/refine/sam.yaml,$(BENCH_PSM))

BENCH_PSM_HOLDOUT := runs/bench_psm_holdout
bench-monuseg-psm-holdout: ## Same chain on the seeded 24/6 split of bench-monuseg-supervised-holdout: every stage trains on 24 images, the figures are the 6 held out (<60 min, 2 CPU cores)
	$(call chain,monuseg_psm,$(BENCH_PSM_HOLDOUT),monuseg_psm_holdout) \
		--data.init_args.val_fraction=0.2

# The held-out chain's head (and the detector it holds) for the three benchmarks below.
HOLDOUT_HEAD := $(BENCH_PSM_HOLDOUT)/segment/checkpoints/last.ckpt
bench-monuseg-psm-sweep: ## The head's post-processing chosen on the 24 tuning images, frozen, quoted on the 6 held out (after bench-monuseg-psm-holdout; docs/nuclei.md)
	$(BIN)/python benchmarks/psm_sweep.py --checkpoint $(HOLDOUT_HEAD) \
		--data-root $(DATA)/monuseg/train --cache $(BENCH_PSM_HOLDOUT)/sweep_inputs \
		--output $(RESULTS)/monuseg_psm_sweep.json

# psm_sam_full_decoder.json: the same benchmark decoding each box against the whole tile
# (--decoder-window full, ~165 CPU s an image), the reference the default is compared with.
bench-psm-sam: ## The refine part (LiteMedSAM, protoseg.postprocess.SamRefinement, its defaults) on the held-out head's split of the 24 tuning and 6 held-out images: AJI, seconds, the tuning-only verdict, and the AJI against full decoding (after bench-monuseg-psm-holdout)
	$(BIN)/python benchmarks/psm_sam.py --checkpoint $(HOLDOUT_HEAD) \
		--data-root $(DATA)/monuseg/train --cache $(BENCH_PSM_HOLDOUT)/sweep_inputs \
		--reference $(RESULTS)/psm_sam_full_decoder.json --output $(RESULTS)/psm_sam.json

bench-scale-estimate: ## The held-out head (shipped post-processing) on the 6 held-out images resized by 0.5-2, read as they are and with image_mpp auto (after bench-monuseg-psm-holdout)
	$(BIN)/python benchmarks/scale_estimate.py --checkpoint $(HOLDOUT_HEAD) \
		--data-root $(DATA)/monuseg/train --precision 32-true \
		--output $(RESULTS)/scale_estimate.json

bench-quickstart: ## Time `make quickstart` (budget: 3 min on 2 CPU cores in float32: QUICKSTART_ARGS=--trainer.precision=32-true) into benchmarks/results/quickstart.json
	$(BIN)/python benchmarks/quickstart.py --output $(RESULTS)/quickstart.json -- $(QUICKSTART_ARGS)

bench-postprocess: ## The PSM head's post-processing of 8 training images x 3, in this process and in 1 / 2 worker processes (after bench-monuseg-psm; ~6 min, 2 CPU cores)
	$(BIN)/python benchmarks/postprocess_pool.py --inputs $(BENCH_PSM)/split_inputs \
		--checkpoint $(BENCH_PSM)/segment/checkpoints/last.ckpt \
		--data-root $(DATA)/monuseg/train \
		--repeats 3 --workers 1 2 --output $(RESULTS)/postprocess_pool.json

bench-resolution: ## The PSM head on the 30 training images halved (20x): as they are and resampled by image_mpp (after bench-monuseg-psm; ~8 min, 2 CPU cores)
	$(BIN)/python benchmarks/resolution.py --data-root $(DATA)/monuseg/train \
		--checkpoint $(BENCH_PSM)/segment/checkpoints/last.ckpt \
		--run-dir runs/bench_resolution --output $(RESULTS)/resolution.json

# The authors' Res2Net-101 in bench-psm-recipes: steps of 4 crops of PSM_AUTHORS_CROP px (their
# code: ~2,700 steps of one 512 px crop; the config: 3,000 of 4 x 256 px). 80 x 128 px is what
# 2 CPU cores shared by four engineers trained in an hour (docs/psm_recipes.md).
PSM_AUTHORS_STEPS ?= 80
PSM_AUTHORS_CROP ?= 128
bench-psm-recipes: ## The PSM authors' recipe (configs/psm/monuseg_authors.yaml) beside ours and hematoxylin alone on the 30 training images' central 512 px (after bench-monuseg-psm; docs/psm_recipes.md)
	$(BIN)/python benchmarks/psm_recipes.py --data-root $(DATA)/monuseg/train \
		--fit-steps $(PSM_AUTHORS_STEPS) --run-dir runs/bench_psm_recipes \
		--ours-masks $(BENCH_PSM)/pseudo_masks --output $(RESULTS)/monuseg_psm_recipes.json \
		-- --data.crop_size=$(PSM_AUTHORS_CROP) --model.augment.init_args.size=$(PSM_AUTHORS_CROP)

BENCH_CAMSAM := runs/bench_wsss4luad_camsam
bench-wsss4luad-camsam: ## CAM + SAM chain on WSSS4LUAD (frozen LiteMedSAM encoder): classifier -> CAM and CAM+SAM pseudo masks -> a head on each, scored on the 31 validation images and the 21-image report fold (embeddings cached in runs/sam_embeddings; CHAIN_ACCELERATOR=gpu on a GPU)
	$(BIN)/python -m benchmarks.wsss4luad_camsam --data-root $(DATA)/wsss4luad \
		--run-dir $(BENCH_CAMSAM) --output $(RESULTS)/wsss4luad_camsam.json \
		--accelerator $(CHAIN_ACCELERATOR) $(CHAIN_ARGS)

BENCH_PROTO := runs/bench_wsss4luad_prototypes
bench-wsss4luad-prototypes: ## Tissue prototype chain on WSSS4LUAD (SSL -> clusters -> simulated pathologist -> pseudo masks -> head) by protoseg chain, 3-fold supervised reference and colour baseline, scored on the validation masks (CHAIN_ARGS=--resume to finish a cut run)
	$(BIN)/python benchmarks/wsss4luad_prototypes.py --data-root $(DATA)/wsss4luad \
		--run-dir $(BENCH_PROTO) --output $(RESULTS)/wsss4luad_prototypes.json \
		$(if $(filter-out cpu,$(CHAIN_ACCELERATOR)),--accelerator $(CHAIN_ACCELERATOR)) $(CHAIN_ARGS)

WSI_DEVICE ?= cpu
# A trained segmentation head (e.g. the one of bench-monuseg-supervised); empty: random init.
WSI_CKPT ?=
bench-wsi: ## Whole-slide prediction tiles/s and peak memory: the CMU SVS and a generated 20k x 20k pyramid (WSI_DEVICE=cuda on a GPU)
	$(BIN)/python benchmarks/wsi.py --svs $(DATA)/wsi/CMU-1-Small-Region.svs --size 20000 \
		--device $(WSI_DEVICE) --run-dir runs/bench_wsi --output $(RESULTS)/wsi.json \
		$(if $(WSI_CKPT),--ckpt $(WSI_CKPT))

# lightly is the reference of the throughput figures, not a protoseg dependency: installed
# here only, torch/torchvision held by constraints.txt (lightly 1.6.0 adds hydra-core,
# omegaconf, antlr4-python3-runtime). On a GPU:
#   make bench-ssl BENCH_SSL_ARGS="--device cuda --output $(RESULTS)/ssl_gpu.json"
BENCH_SSL_ARGS ?=
bench-ssl: ## SSL: SimCLR/MoCo v2/BYOL/DINO images/s vs lightly (ResNet-18, 224 px) and linear-probe Dice vs random init (~20 min, 2 CPU cores)
	$(BIN)/uv pip install --python $(BIN)/python $(UV_SOURCES) -c constraints.txt lightly==1.6.0
	$(BIN)/python benchmarks/ssl_bench.py --output $(RESULTS)/ssl.json $(BENCH_SSL_ARGS)

# Sweeps: one plain `protoseg fit` line per grid point (`make -n sweep-ssl` prints them), each
# run in its own folder (a rerun of the sweep resumes each one, as sbatch jobs do): seed, logs, checkpoints (the configs list ModelCheckpoint last) and
# the SSL encoder (EncoderExport writes <default_root_dir>/encoder.ckpt). With SLURM=1 each
# line writes an sbatch script with `protoseg slurm` and submits it.
SWEEPS ?= runs/sweeps
SEEDS ?= 0 1 2
SSL_METHODS ?= simclr moco byol dino
SSL_DATASETS ?= monuseg
SEG_CONFIGS ?= monuseg/segment
SLURM ?= 0
SLURM_ARGS ?= --nodes 1 --gpus-per-node 4 --time 24:00:00 --partition gpu
define newline


endef
# $(call fit_args,CONFIG,RUN_DIR,SEED)
fit_args = --config $(1) --seed_everything $(3) --trainer.default_root_dir $(2) \
	--trainer.logger.init_args.save_dir $(2) --trainer.callbacks.init_args.dirpath $(2)/checkpoints
ifeq ($(SLURM),1)
sweep_run = $(BIN)/protoseg slurm $(SLURM_ARGS) --job-name $(notdir $(2)) --log-dir $(2) \
	--output $(2)/job.sbatch $(call fit_args,$(1),$(2),$(3)) && sbatch $(2)/job.sbatch
else
# --ckpt_path last: a rerun resumes (or keeps) each grid point instead of being refused.
sweep_run = $(BIN)/protoseg fit $(call fit_args,$(1),$(2),$(3)) --ckpt_path last
endif

sweep-ssl: ## SSL sweep: SSL_METHODS x SSL_DATASETS x SEEDS into runs/sweeps/ssl/ (SLURM=1: sbatch each)
	$(foreach m,$(SSL_METHODS),$(foreach d,$(SSL_DATASETS),$(foreach s,$(SEEDS),$(call \
		sweep_run,configs/ssl/$(m)_$(d).yaml,$(SWEEPS)/ssl/$(m)_$(d)_s$(s),$(s))$(newline))))

sweep-segment: ## Segmentation-head sweep: SEG_CONFIGS x SEEDS into runs/sweeps/segment/ (SLURM=1: sbatch each)
	$(foreach c,$(SEG_CONFIGS),$(foreach s,$(SEEDS),$(call \
		sweep_run,configs/$(c).yaml,$(SWEEPS)/segment/$(subst /,_,$(c))_s$(s),$(s))$(newline)))

readme-table: ## Regenerate the README's results table from the summary rows of benchmarks/results/*.json
	$(BIN)/protoseg report --readme --results $(RESULTS) --published benchmarks/published.json \
		--splice README.md

report: ## One markdown table of benchmarks/results/*.json and the sweeps' last metrics (REPORT=file.csv for CSV)
	$(BIN)/protoseg report --results $(RESULTS) $(if $(wildcard $(SWEEPS)),--runs $(SWEEPS)) $(if $(REPORT),--output $(REPORT))
