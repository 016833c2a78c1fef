#!/bin/sh
# WORKERS daphne workers sharing HOST:PORT, under supervisord (deploy/supervisord.conf), in the
# foreground: `make serve` runs it after migrate and collectstatic, the Docker image as its command.
#
#   WORKERS        worker processes (default 1; one per core is a good start)
#   HOST, PORT     where they listen (default 127.0.0.1:8000)
#   PROXY_HEADERS  1 behind a proxy that sets X-Forwarded-For (deploy/haproxy.cfg does)
#   RUN_DIR        supervisord's pid file and socket, and the workers' metrics (default var)
#   BIN            the folder of python, daphne and supervisord (default: python's on PATH)
#
# SIGTERM or Ctrl-C: every worker drains (broadcaster/server/drain.py), then supervisord exits.
set -eu
WORKERS=${WORKERS:-1}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
RUN_DIR=$(mkdir -p "${RUN_DIR:-var}" && CDPATH='' cd -P "${RUN_DIR:-var}" && pwd)
if [ -z "${BIN:-}" ]; then
    PYTHON=$(command -v python) || { echo "serve.sh: no python on PATH; set BIN" >&2; exit 1; }
    BIN=$(dirname "$PYTHON")
fi
# One supervisord per RUN_DIR: a second one would empty the first one's metrics below.
if [ -s "$RUN_DIR/supervisord.pid" ] && kill -0 "$(cat "$RUN_DIR/supervisord.pid")" 2>/dev/null; then
    echo "serve.sh: already running (supervisord pid $(cat "$RUN_DIR/supervisord.pid"), RUN_DIR $RUN_DIR)" >&2
    exit 1
fi
DAPHNE_ARGS="--websocket_timeout -1"
case "${PROXY_HEADERS:-0}" in
    1 | yes | true) DAPHNE_ARGS="$DAPHNE_ARGS --proxy-headers" ;;
esac
# A worker may take the drain time and then CLOSE_WAIT (5 s) to finish; a margin on top.
STOP_WAIT=$("$BIN/python" -c "import os; print(int(float(os.environ.get('BROADCAST_DRAIN_SECONDS') or 10)) + 15)")
# The workers' shared metrics (broadcaster/metrics.py), emptied at each start.
PROMETHEUS_MULTIPROC_DIR=$RUN_DIR/metrics
rm -rf "$PROMETHEUS_MULTIPROC_DIR"
mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
export WORKERS HOST PORT RUN_DIR BIN DAPHNE_ARGS STOP_WAIT PROMETHEUS_MULTIPROC_DIR
CDPATH='' cd -P "$(dirname "$0")/.."
exec "$BIN/supervisord" -c deploy/supervisord.conf
