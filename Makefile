# The two commands a newcomer types: `make demo` and `make test`.
# Both create their own virtual environment in .venv from pyproject.toml.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install lint bench schemas dashboards clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tokenpools demo --out results

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python -m bench

schemas: $(STAMP)
	$(BIN)/tokenpools schemas export

# Regenerate dashboards/json/ and the panel reference in dashboards/README.md from dashboards/ (make test
# fails while they are stale).
dashboards: $(STAMP)
	$(BIN)/python -m dashboards

clean:
	rm -rf $(VENV) results .pytest_cache .hypothesis
