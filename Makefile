# deepfake-monitor: `make run` and `make test` set up what they need themselves.
SHELL := /bin/bash
CACHE ?= $(or $(DFM_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/deepfake-monitor)
export DFM_CACHE := $(CACHE)
export DFM_PHOTOS_DIR ?= $(CACHE)/photos
BIN := .venv/bin
SAMPLE := $(CACHE)/sample

.PHONY: setup run test lint format schema lock clean

setup:
	@scripts/bootstrap.sh

## run: what this build can serve so far (the live service arrives with the streaming
## issue): a synthetic FAKE sample clip scanned window by window, verdicts as JSON lines.
run: setup
	@echo "deepfake-monitor: the live service (serve) is not in this build yet."
	@echo "Running the offline path instead: a synthetic face-swap clip -> BlazeFace tracks ->"
	@echo "ResNeXt50-LSTM over 150-frame windows every 30 frames -> verdict v1 JSON lines."
	@echo "No trained checkpoint is bundled yet, so the weights are random (verdicts say random-init)."
	@test -f $(SAMPLE)/labels.csv || $(BIN)/deepfake-monitor synth $(SAMPLE) --videos 2 --frames 240 --seed 7
	$(BIN)/deepfake-monitor scan $(SAMPLE)/00001_fake_*.mp4 --random-weights

## test: lint, types, then the whole suite.
test: setup lint
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## schema: regenerate the verdict JSON Schema from the pydantic model.
schema: setup
	$(BIN)/deepfake-monitor schema > deploy/schemas/verdict.v1.json

## lock: re-pin requirements.lock from the current .venv.
lock:
	{ sed -n '1,2p' requirements.lock; $(BIN)/python -m pip freeze --all --exclude-editable \
	  | grep -vE '^(pip|deepfake-monitor)=='; } > requirements.lock.new && mv requirements.lock.new requirements.lock

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache build *.egg-info
