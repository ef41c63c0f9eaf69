# hald: the two commands are `make run` and `make test`; both create .venv from nothing when missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# Exact torch builds: local wheels on the dev/CI machines; change for your CUDA if needed.
TORCH   ?= torch==2.14.1 torchvision==0.29.1

.PHONY: help install run test test-slow test-all chaos bench bench-quick bench-memory bench-speed gpu-check rehearse clean
help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]' $(TORCH)
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install hald (editable) with test extras

run: $(STAMP)  ## the whole pipeline on the bundled dataset (mnist5k); pass ARGS="key=value ..."
	$(BIN)/python src/run.py $(ARGS)

test: $(STAMP)  ## the test suite without the slow subprocess runs (about 8 minutes on 2 cores)
	WANDB_MODE=disabled $(BIN)/python -m pytest -q -m "not slow" $(ARGS)

test-slow: $(STAMP)  ## the slow end-to-end subprocess runs (torchrun, SLURM, kill -9, sweeps); CI runs both
	WANDB_MODE=disabled $(BIN)/python -m pytest -q -m slow $(ARGS)

test-all: $(STAMP)  ## everything
	WANDB_MODE=disabled $(BIN)/python -m pytest -q $(ARGS)

chaos: $(STAMP)  ## reliability: kill -9 and resume in every stage, DDP in every stage, failing sweep jobs, faults
	WANDB_MODE=disabled OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q tests/test_reliability.py $(ARGS)

# Memory rows at ImageNet's image size and class count; 2,000 images (per-process memory and start-up do not grow
# with the count: experiments/memory.md, 10,000 vs 50,000)
MEMORY_SHAPE = --images 2000 --size 224 --classes 1000 --model resnet18 --batch 64

bench: $(STAMP)  ## the five storage/data-path benchmarks (ratios side by side) + the speed benchmarks + the memory row vs the peers' JPEG path (224 px, 1,000 classes, 1 and 2 ranks) + cold-cache reads; writes experiments/bench.md, speed.md, outputs/memory/bench.md and cold.md; on a GPU: ARGS="--device cuda"
	WANDB_MODE=disabled $(BIN)/python -m hald_tools.bench $(ARGS)
	WANDB_MODE=disabled $(BIN)/python -m hald_tools.bench_speed
	WANDB_MODE=disabled $(BIN)/python -m hald_tools.bench_memory $(MEMORY_SHAPE) --cases after,peers --repeat 3
	WANDB_MODE=disabled $(BIN)/python -m hald_tools.bench_cold

bench-speed: $(STAMP)  ## hald's fast defaults vs a re-created peer loop (relabel pass, student epoch, recover) + the fast paths' accuracy (reads outputs/speed from experiments/speed.sh); writes experiments/speed.md
	WANDB_MODE=disabled $(BIN)/python -m hald_tools.bench_speed $(ARGS)

gpu-check: $(STAMP)  ## every accelerator path once (device rendering, fp32 / bf16 / 16-mixed steps, relabel img/s, peak GPU memory, bench 1-3) in <= 8 min on one GPU; runs on CPU too; writes outputs/gpu-check.md
	WANDB_MODE=disabled $(BIN)/python -m hald_tools.gpu_check $(ARGS)

bench-memory: $(STAMP)  ## peak/steady RSS, PSS and time to the first step, 1 and 2 DDP ranks, vs the peers' JPEG path, at 224 px and 1,000 classes; writes outputs/memory/bench.md (the IPC 50 shape, 50,000 images: bash experiments/memory.sh -> experiments/memory.md)
	WANDB_MODE=disabled $(BIN)/python -m hald_tools.bench_memory $(MEMORY_SHAPE) $(ARGS)

bench-quick: $(STAMP)  ## benchmarks 1-4 only (seconds; skips the accuracy multirun)
	WANDB_MODE=disabled $(BIN)/python -m hald_tools.bench --skip-accuracy --out outputs/bench-quick.md $(ARGS)

rehearse: $(STAMP)  ## every paper preset end to end at its real shape (stand-in data, shrunk counts); writes experiments/rehearse.md
	WANDB_MODE=disabled $(BIN)/python -m hald_tools.rehearse $(ARGS)

clean:  ## remove outputs and caches (keeps .venv)
	rm -rf outputs multirun .cache
