# deepfake-monitor: `make run` and `make test` set up what they need themselves.
SHELL := /bin/bash
CACHE ?= $(or $(DFM_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/deepfake-monitor)
export DFM_CACHE := $(CACHE)
export DFM_PHOTOS_DIR ?= $(CACHE)/photos
BIN := .venv/bin
SAMPLE := $(CACHE)/sample

.PHONY: check setup setup-run run test lint format schema k8s-rules lock image clean

setup:
	@scripts/bootstrap.sh

# The service alone: no test tools (GStreamer, Prometheus, Chromium, Kafka jars, npm
# validators, checkov, Toxiproxy); `make test` installs those when it first runs.
setup-run:
	@DFM_SKIP_TEST_DEPS=1 scripts/bootstrap.sh

## run: the live service with embedded defaults: a synthetic face-swap sample looped as a
## live stream, verdicts as JSON lines on stdout, HTTP on 127.0.0.1:8080. Ctrl-C drains.
run: setup-run
	@test -f $(SAMPLE)/labels.csv || $(BIN)/deepfake-monitor synth $(SAMPLE) --videos 2 --frames 300 --seed 7 --identities astronaut,sample3
	@echo "deepfake-monitor: watching $$(ls $(SAMPLE)/00001_fake_*.mp4) as live stream 'sample' (looped)."
	@echo "Web page on http://127.0.0.1:$${DFM_HTTP_PORT:-8080}/ (API: /v1/streams, /metrics, /healthz); verdicts below; Ctrl-C stops."
	@echo "Model: $${DFM_CHECKPOINT:-the bundled demo checkpoint, trained on synthetic data only (not a real-world detector)}."
	@DFM_ALLOW_FILE_SOURCES=true \
	DFM_SOURCES='[{"id": "sample", "url": "file://'"$$(ls $(SAMPLE)/00001_fake_*.mp4)"'", "options": {"loop": true}}]' \
	exec $(BIN)/deepfake-monitor serve

## test: lint, types, then the whole suite on TEST_JOBS workers (pytest-xdist; each test
## file stays on one worker, with its servers; TEST_JOBS=1 runs it in one process).
TEST_JOBS ?= 2
test: setup lint
	$(BIN)/python -m pytest $(if $(filter-out 1,$(TEST_JOBS)),-n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder)

## check: the edit loop: lint, types, and the unit tests of pure logic (under a minute).
UNIT = tests/test_service_units.py tests/test_shedding.py tests/test_buffers.py \
       tests/test_streams.py tests/test_urls.py tests/test_blend.py tests/test_datasets.py \
       tests/test_architecture.py tests/test_docs.py tests/test_calibrate.py tests/test_pool.py \
       tests/test_crops.py
check: setup lint
	$(BIN)/python -m pytest -q $(UNIT)

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

## k8s-rules: regenerate the PrometheusRule in k8s/ from deploy/prometheus/rules.yml
## (RUNBOOK_BASE=URL: where docs/runbook.md is published, for every alert's runbook_url).
k8s-rules: setup
	$(BIN)/python scripts/prometheusrule.py $(if $(RUNBOOK_BASE),--runbook-base $(RUNBOOK_BASE))

## lock: re-pin requirements.lock (runtime) and requirements-dev.lock (plus test and lint
## tools) from pyproject.toml, with hashes (scripts/lock.sh).
lock:
	scripts/lock.sh

## image: build deploy/Dockerfile (Docker when a daemon answers, else buildah) and print
## its size; STANDIN=1 builds on a base made from Debian's packages, for a machine that
## reaches no image registry (as `make test` does).
image:
	scripts/image.sh $(if $(STANDIN),--standin)

clean:
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache build *.egg-info
