# The two commands of the README's quick start: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data/catsdogs
COLLECTION ?= .lookalike
K ?= 5
LINTED := src tests benchmarks examples

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall when the project's dependencies change. An editable install does not byte-compile the project's
# modules as a regular one does; compileall does, so a first `lookalike search` does not compile them (and
# nor does every run where PYTHONDONTWRITEBYTECODE is set).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	$(BIN)/python -m compileall -q src
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/python -m compileall -q src
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	@if [ ! -d "$(DATA)" ]; then \
	  echo "No images at DATA=$(DATA)."; \
	  echo "Get Kaggle's Dogs vs. Cats training images (https://www.kaggle.com/c/dogs-vs-cats/data),"; \
	  echo "put them in one sub-folder per label (e.g. photos/cat/*.jpg, photos/dog/*.jpg),"; \
	  echo "and run: make demo DATA=photos"; \
	  exit 1; \
	fi
	$(BIN)/lookalike index "$(DATA)" --collection "$(COLLECTION)" --log "$(COLLECTION)/last-index.json"
	@query=$$(find "$(DATA)" -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \) | sort | head -n 1); \
	echo; echo "Images most similar to $$query:"; \
	$(BIN)/lookalike search "$$query" -k $(K) --collection "$(COLLECTION)"
	@echo
	$(BIN)/lookalike evaluate "$(DATA)" --collection "$(COLLECTION)" --k $(K) --out reports/demo

# Everything CI runs: lint, then every test, the slow ones included (tests/test_benchmarks.py runs every
# benchmark's --smoke version; tests/test_examples.py the examples). A quick run: `.venv/bin/pytest -q`.
test: lint
	$(BIN)/pytest -q --runslow

lint: $(VENV)/.installed-test
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

bench: $(VENV)/.installed-test
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .lookalike reports
