#!/usr/bin/env bash
# `make run`: migrate the embedded database and serve on 127.0.0.1:8000.
# With no Stripe configured, a local Stripe peer (localstripe, a dev dependency) is started on
# 127.0.0.1:8420 so checkouts, cancels and refunds work on a laptop with no network.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
# a laptop: the development secrets that ship in the source are accepted (with a warning)
export BILLWATCH_ENV="${BILLWATCH_ENV:-development}"
mkdir -p var
if [ -z "${BILLWATCH_STRIPE_API_BASE:-}" ] && [ -z "${BILLWATCH_STRIPE_API_KEY:-}" ]; then
  port="${BILLWATCH_LOCAL_STRIPE_PORT:-8420}"
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "no Stripe configured: starting the local Stripe peer on 127.0.0.1:$port (log: var/localstripe.log)"
    (cd var && exec ../$BIN/localstripe --port "$port" >>localstripe.log 2>&1) &
    for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  fi
  export BILLWATCH_STRIPE_API_BASE="http://127.0.0.1:$port"
  $BIN/billwatch sync-plans
fi
$BIN/billwatch migrate
exec $BIN/billwatch serve --host 127.0.0.1 --port "${PORT:-8000}" --no-migrate
