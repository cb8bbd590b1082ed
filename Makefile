# The two commands of the README:  `make run`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export KEDRO_DISABLE_TELEMETRY := true

.PHONY: setup run test viz clean-data

$(BIN)/kedro: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(BIN)/kedro

setup: $(BIN)/kedro  ## create .venv and install the project

run: setup  ## run the whole experiment offline on the simulated backend
	$(BIN)/kedro run

test: setup  ## run the test suite
	$(BIN)/pytest -q

viz: setup  ## build the kedro-viz site into build/viz (offline)
	$(BIN)/kedro viz build

clean-data:  ## delete everything the runs wrote under data/
	find data -type f ! -name .gitkeep -delete
