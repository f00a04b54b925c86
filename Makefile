# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install when pyproject.toml changes; the stamp marks a finished install.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,demo]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/transferlab demo

# The layer contract first (pyproject.toml [tool.importlinter]): seconds, and it names the import.
test: $(VENV)/.installed
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .cache .pytest_cache
