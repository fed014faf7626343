# bitfi: the two front-door commands are `make run` and `make test`.
# Both create .venv from scratch with the Python found as $(PYTHON); `make
# run` installs what a node needs, `make test` the development tools too.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
# installed: what a node needs (make run); that and the [dev] extra (make test)
RUN_STAMP := $(VENV)/.installed-run
STAMP  := $(VENV)/.installed
# regenerate twisted/plugins/dropin.cache after an install
PLUGIN_CACHE := $(PY) -c "from twisted.plugin import IPlugin, getPlugins; import twisted.plugins; list(getPlugins(IPlugin, twisted.plugins))"
PORT   ?= 3000
BOOTSTRAP ?=
# NODEID@host:port,... of the network's witnesses; empty: the node is its own (n = 1)
WITNESSES ?=
TRIAL_JOBS ?= 2
# make bench QUICK=1: every benchmark's small version (about a minute and a half in all)
QUICK ?=
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: all venv run test lint typecheck unit bench clean

all: test

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (set PYTHON=...)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# The [dev] install holds everything `make run` needs: after it, `make run`
# installs nothing (it also marks $(RUN_STAMP), or is found up to date here).
$(RUN_STAMP): setup.cfg pyproject.toml | $(PY)
	@if [ $(STAMP) -nt setup.cfg ] && [ $(STAMP) -nt pyproject.toml ]; then touch $(RUN_STAMP); else \
	  echo "$(PY) -m pip install --quiet -e ." && $(PY) -m pip install --quiet -e . && \
	  $(PLUGIN_CACHE) && touch $(RUN_STAMP); fi

$(STAMP): setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PLUGIN_CACHE)
	touch $(STAMP) $(RUN_STAMP)

venv: $(STAMP)

# Fair order by default: without WITNESSES (here or in the environment) the
# node is its own network's one witness (n = 1), named by the key that
# `bitfi node-id` makes in its data directory before it starts.
# Ctrl-C (SIGINT, or SIGTERM, to the process group) stops the node
# cleanly, and twistd then dies of that signal, which make would report as
# an error ("*** [run] Interrupt"): the shell waits for the node and exits
# 0 for a stop by signal (130, 143).  A node that cannot start still fails
# with twistd's exit status.
RUN_NODE = $(VENV)/bin/twistd -n --pidfile= --logfile=- bitfi --port $(PORT) $(if $(BOOTSTRAP),--bootstrap $(BOOTSTRAP)) $(if $(WITNESSES),,--witness $$($(VENV)/bin/bitfi node-id --port $(PORT) --host 127.0.0.1))
run: $(RUN_STAMP)
	@echo '$(RUN_NODE)'
	@trap 'exit 0' INT TERM; $(RUN_NODE); status=$$?; case $$status in 130|143) exit 0;; *) exit $$status;; esac

# ruff, then the import contracts of pyproject.toml ([tool.importlinter]):
# layers in data-path order, no cycles, no Twisted in the pure core
lint: $(STAMP)
	$(VENV)/bin/ruff check bitfitech tests twisted benchmarks
	$(VENV)/bin/ruff format --check bitfitech tests twisted benchmarks
	$(VENV)/bin/lint-imports --no-cache

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(PY) -m twisted.trial -j$(TRIAL_JOBS) tests

test: lint typecheck unit

# the bench extra (matplotlib, for the plots) is installed here only: make test never needs it
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	$(PLUGIN_CACHE)
	touch $(BENCH_STAMP)

# every benchmarks/bench_*.py; figures, summary.json and plots in benchmarks/results/
bench: $(BENCH_STAMP)
	$(PY) benchmarks/run_all.py $(if $(filter-out 0 no false,$(QUICK)),--quick)

clean:
	rm -rf $(VENV) build dist *.egg-info _trial_temp* .mypy_cache .ruff_cache
