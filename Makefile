# Two commands: `make run` starts the whole service, `make test` runs the test suite.
# Both install everything they need into the project-local virtualenv .venv first.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: run test chromium bench-broker bench-ratelimit bench-fairness bench-load bench-burst bench-store bench-limiter-cost bench-timing clean

run: $(INSTALLED)
	$(PY) -m devtools.run

# The import-linter contracts (.importlinter) first: a wrong import fails the build.
test: $(INSTALLED) chromium
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

# The dashboard's browser tests drive Debian's Chromium. Where it cannot be installed they skip,
# and say so in the summary; under CI (CI set) that fails the run instead.
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
		|| { [ -z "$$CI" ] || { echo "make: Chromium could not be installed; CI cannot test the dashboard without it"; exit 1; }; \
		     echo "make: Chromium could not be installed; the dashboard's browser tests will be skipped"; }

bench-broker: $(INSTALLED)
	$(PY) -m bench.broker

bench-ratelimit: $(INSTALLED)
	$(PY) -m bench.ratelimit

# How clients share one vendor's quota: a heavy client and light ones, weights 3:1, 10,000 clients.
bench-fairness: $(INSTALLED)
	$(PY) -m bench.fairness $(ARGS)

# The timing-sensitive tests, 20 runs beside two busy loops: they must hold on a loaded machine.
bench-timing: $(INSTALLED)
	$(PY) -m bench.timing $(ARGS)

# The load test drives the API with wrk (Debian's package), which has far less overhead than locust.
bench-load: $(INSTALLED)
	command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	$(PY) -m bench.load $(ARGS)

# A burst of jobs for an unlimited vendor, drained while it arrives and from a full backlog.
bench-burst: $(INSTALLED)
	$(PY) -m bench.burst $(ARGS)

# What a sync job's insert, claim and completion cost the embedded MongoDB-wire server, by batch size.
bench-store: $(INSTALLED)
	$(PY) -m bench.store $(ARGS)

# What the limiter costs Redis per job in instructions (callgrind, Debian's valgrind): comparable across days.
bench-limiter-cost: $(INSTALLED)
	command -v valgrind >/dev/null || (apt-get update && apt-get install -y valgrind)
	$(PY) -m bench.limiter_cost $(ARGS)

$(INSTALLED): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(INSTALLED)

clean:
	rm -rf $(VENV) var .pytest_cache
