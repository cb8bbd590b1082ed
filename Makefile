# The two commands of the README:  `make run`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export KEDRO_DISABLE_TELEMETRY := true

.PHONY: setup setup-local setup-labelstudio run run-local test test-labelstudio viz clean-data

$(BIN)/kedro: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(BIN)/kedro

setup: $(BIN)/kedro  ## create .venv and install the project

setup-local: setup  ## add the local LLM backend (CPU torch, transformers, SmolLM2 weights)
	VENV=$(VENV) bash scripts/install_local_llm.sh

run: setup  ## run the whole experiment offline on the simulated backend
	$(BIN)/kedro run

run-local: setup-local  ## run the whole experiment offline on a real small LLM (SmolLM2-135M)
	$(BIN)/kedro run --env local_llm

test: setup-local setup-labelstudio  ## run the test suite (the local-LLM and Label Studio tests included)
	$(BIN)/pytest -q

setup-labelstudio:  ## Label Studio 1.23 + SDK 2 in their own virtualenv (.venv-labelstudio)
	bash scripts/label_studio.sh install

test-labelstudio: setup setup-labelstudio  ## the real Label Studio round trip alone (tests/crowd/test_label_studio.py)
	LABEL_STUDIO_REQUIRED=1 $(BIN)/pytest -q -s tests/crowd/test_label_studio.py

viz: setup  ## build the kedro-viz site into build/viz (offline)
	$(BIN)/kedro viz build

clean-data:  ## delete everything the runs wrote under data/
	find data -type f ! -name .gitkeep -delete
