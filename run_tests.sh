#!/usr/bin/env bash
# Run the whole test suite. First use sets up everything it needs: a virtualenv in .venv with the package and
# its test extras, and the redis-server binary (installed with apt-get when missing and we are root). The tests
# start their own redis-server processes on free loopback ports; they never touch a server on 6379.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

PYTHON=${PYTHON:-python3}
VENV=.venv
stamp="$VENV/.installed-$(cat setup.cfg pyproject.toml | sha1sum | cut -c1-12)"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$stamp" ]; then
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet ".[test]"
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi

if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "run_tests.sh: installing redis-server with apt-get" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "run_tests.sh: redis-server is not installed; the Redis tests will be skipped (install it: apt-get install redis-server)" >&2
  fi
fi

"$VENV/bin/ruff" check .
"$VENV/bin/python" -m mypy
exec "$VENV/bin/python" -m pytest "$@"
