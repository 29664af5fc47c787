# Two commands: `make run` starts the whole service, `make test` runs the test suite.
# Both install everything they need into the project-local virtualenv .venv first.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: run test bench-broker bench-ratelimit clean

run: $(INSTALLED)
	$(PY) -m devtools.run

test: $(INSTALLED)
	$(PY) -m pytest

bench-broker: $(INSTALLED)
	$(PY) -m bench.broker

bench-ratelimit: $(INSTALLED)
	$(PY) -m bench.ratelimit

$(INSTALLED): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(INSTALLED)

clean:
	rm -rf $(VENV) var .pytest_cache
