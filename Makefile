# The two commands a new user needs: `make demo` and `make test`.
# Each creates .venv and installs what it needs; nothing else is assumed.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test lint format docs demo bench clean
CHROMIUM := /usr/bin/chromium
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[testing,docs]'
	touch $(STAMP)

# The demo's browser test drives Debian's chromium (never a downloaded one).
$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# The shared outbox's tests start their own PostgreSQL from Debian's package.
POSTGRES := $(firstword $(wildcard /usr/lib/postgresql/*/bin/initdb) $(shell command -v initdb))
.PHONY: postgresql
postgresql:
ifeq ($(POSTGRES),)
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
endif

test: $(STAMP) $(CHROMIUM) postgresql
	$(PY) -m pytest --cov=pyramid_txmail --cov-report=term-missing

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

docs: $(STAMP)
	$(VENV)/bin/sphinx-build -W --keep-going -q -b html docs docs/_build/html

# Not part of `make test`: figures, not assertions. Installs Postfix for
# smtp-sink/smtp-source, and the peers (pyramid_mailer, repoze.sendmail,
# zope.sendmail) in their own environment.
# `make bench BENCH_ARGS=--quick` for a short run.
PEERS := tests/benchmarks/.peers-venv/bin/python
$(PEERS):
	$(PYTHON) -m venv tests/benchmarks/.peers-venv
	$(PEERS) -m pip install --quiet pyramid_mailer==0.15.1 repoze.sendmail==4.5 \
	  zope.sendmail==7.3

bench: $(STAMP) $(PEERS) postgresql
	[ -x /usr/sbin/smtp-sink ] || ($(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix)
	$(PY) tests/benchmarks/bench.py $(BENCH_ARGS)
	$(PY) tests/benchmarks/outbox_bench.py $(if $(findstring --quick,$(BENCH_ARGS)),--quick)

# `make demo HTTP_PORT=8080 SMTP_PORT=2525 CATCHER_PORT=8081` when taken.
HTTP_PORT    ?= 6543
SMTP_PORT    ?= 8025
CATCHER_PORT ?= 8026
demo: $(STAMP)
	$(PY) demo/run.py --http-port=$(HTTP_PORT) --smtp-port=$(SMTP_PORT) \
	  --catcher-port=$(CATCHER_PORT)

clean:
	rm -rf $(VENV) docs/_build demo/var .coverage .coverage.* .pytest_cache tests/benchmarks/.work
