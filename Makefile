# The README's two commands: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# HOST and PORT: from the command line, else the environment, else the .env file (as the
# settings read it: BROADCAST_DOTENV names another, or none when empty), else these.
DOTENV_FILE := $(if $(filter undefined,$(origin BROADCAST_DOTENV)),.env,$(BROADCAST_DOTENV))
dotenv = $(if $(DOTENV_FILE),$(shell sed -nE 's/^[[:space:]]*(export[[:space:]]+)?$(1)[[:space:]]*=[[:space:]]*["'"'"']?([^"'"'"'\#[:space:]]*).*/\2/p' $(DOTENV_FILE) 2>/dev/null | tail -n 1))
HOST ?= $(or $(call dotenv,HOST),127.0.0.1)
PORT ?= $(or $(call dotenv,PORT),8000)
# Worker processes for `make serve` (one per core is a good start).
WORKERS ?= $(or $(call dotenv,WORKERS),1)
# Where `make serve` keeps supervisord's pid file and control socket, and the workers' metrics.
RUN_DIR ?= $(or $(BROADCAST_VAR_DIR),$(call dotenv,BROADCAST_VAR_DIR),var)
# PROXY_HEADERS=1 behind a proxy that sets X-Forwarded-For (deploy/haproxy.cfg does): client
# addresses (logs, the failed-token limit) come from it. Never without such a proxy: a client
# could then name any address it likes.
PROXY_HEADERS ?= $(or $(call dotenv,PROXY_HEADERS),0)

.PHONY: run serve test test-fast audit lint format settings-docs bench bench-fanout bench-drain bench-sse bench-hostile bench-audiences bench-memory stop-redis clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python requirements.txt
	$(BIN)/pip install -q -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

## run: virtualenv, dependencies, database, embedded Redis (unless REDIS_URL), the server
run: $(VENV)/.installed
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py runserver $(HOST):$(PORT)

## serve: production: WORKERS daphne processes on one port under supervisord (deploy/supervisord.conf)
serve: $(VENV)/.installed
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	# exec: make's SIGTERM goes straight to supervisord, which drains and stops every worker.
	exec env WORKERS=$(WORKERS) HOST=$(HOST) PORT=$(PORT) PROXY_HEADERS=$(PROXY_HEADERS) \
	  BIN=$(abspath $(BIN)) RUN_DIR=$(abspath $(RUN_DIR)) deploy/serve.sh

# Processes the parallel part of `make test` runs on (pytest-xdist): one per core. One more
# (3 on 2 cores) took the tier from 317 s to 250 s, but slowed the browser tests' pages past
# the server's keep-alive timeout in two runs of three (a reused connection reset).
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)
PYTEST := env -u PROMETHEUS_MULTIPROC_DIR BROADCAST_DOTENV= $(BIN)/pytest

## test: lint, format check and the whole test suite: in parallel, then the timing and memory tests alone
test: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(PYTEST) -n $(TEST_WORKERS) --dist loadgroup -m "not serial"
	$(PYTEST) -m serial

## test-fast: lint and the in-process tests (no daphne, manage.py or browser; under a minute)
test-fast: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(PYTEST) -m "not integration"

# pip-audit in a virtualenv of its own (its dependencies stay out of the project's).
AUDIT_VENV := $(VENV)/audit
$(AUDIT_VENV)/.installed: requirements-audit.txt
	$(PYTHON) -m venv $(AUDIT_VENV)
	$(AUDIT_VENV)/bin/pip install -q -r requirements-audit.txt
	touch $@

## audit: fail on a pinned dependency with a published vulnerability (offline: a warning)
audit:
	@$(MAKE) --no-print-directory $(AUDIT_VENV)/.installed \
	  || echo "audit: WARNING: pip-audit could not be installed; only the advisories in deploy/audit.py are checked" >&2
	$(PYTHON) deploy/audit.py $(AUDIT_VENV)/bin/pip-audit requirements.txt

format: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## settings-docs: rewrite .env.example and the README's configuration table from the settings table (broadcast_site/variables.py)
settings-docs: $(VENV)/.installed
	$(BIN)/python -m broadcast_site.variables

$(VENV)/.installed-bench: $(VENV)/.installed-dev requirements-bench.txt
	$(BIN)/pip install -q -r requirements-bench.txt
	touch $@

## bench: the full benchmark (N = 1,000 to 20,000, six systems; about 30 minutes), then the audience scenario, the SSE scenario and the hostile soak; BENCH_ARGS to change the first
bench: $(VENV)/.installed-bench
	$(BIN)/python -m bench.run $(BENCH_ARGS) --json bench/results/latest.json --plot docs/performance.png
	$(BIN)/python -m bench.targeted --json bench/results/targeted.json
	$(BIN)/python -m bench.sse --json bench/results/sse.json
	$(BIN)/python -m bench.hostile --json bench/results/hostile.json

## bench-fanout: the single-message targets three runs in a row (N = 5,000 and 10,000; the project, websockets.broadcast(), node ws); fails if any run misses one
bench-fanout: $(VENV)/.installed-bench
	$(BIN)/python -m bench.run --n 5000,10000 --systems project,broadcast,node --repeat 3 $(BENCH_ARGS)

## bench-sse: the SSE fallback next to the WebSocket, 5,000 receivers each: time to all, CPU, memory per connection
bench-sse: $(VENV)/.installed-dev
	$(BIN)/python -m bench.sse $(BENCH_ARGS) --json bench/results/sse.json

## bench-hostile: WORKERS=2 for 5 minutes: 1,000 healthy receivers beside 500 never-reading, 200 slowloris, 200 token guessers
bench-hostile: $(VENV)/.installed-dev
	$(BIN)/python -m bench.hostile $(BENCH_ARGS) --json bench/results/hostile.json

## bench-drain: WORKERS=2 with 5,000 receivers: reconnects per 100 ms in a drain and after a kill -9
bench-drain: $(VENV)/.installed-dev
	$(BIN)/python -m bench.drain $(BENCH_ARGS) --json bench/results/drain.json

## bench-audiences: what targeting costs: everyone, a group, one user (5,000 receivers), over sockets then in-process
bench-audiences: $(VENV)/.installed-bench
	$(BIN)/python -m bench.targeted $(BENCH_ARGS) --json bench/results/targeted.json
	$(BIN)/python -m bench.audiences

## bench-memory: where a receiver connection's memory goes (tracemalloc, per allocation site)
bench-memory: $(VENV)/.installed-dev
	$(BIN)/python -m bench.memory $(BENCH_ARGS)

## stop-redis: shut down this checkout's embedded Redis
stop-redis: $(VENV)/.installed
	$(BIN)/python -c "import os, django; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'broadcast_site.settings'); django.setup(); from django.conf import settings; from broadcaster.backend import embedded_redis; print('stopped' if embedded_redis.stop(settings.VAR_DIR) else 'not running')"

clean:
	rm -rf $(VENV) var
