#!/usr/bin/env bash
# Run the whole test suite: install poolctl with its test dependencies into
# .venv, start MariaDB and Redis if they are not running, then run pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k fill).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'

wait_for() {  # wait_for NAME COMMAND...: up to 30 seconds for COMMAND to succeed
  local name=$1; shift
  for _ in $(seq 60); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "scripts/test.sh: $name did not come up within 30 seconds" >&2
  return 1
}

redis_up() { .venv/bin/python -c "import redis; redis.Redis(host='127.0.0.1', port=6379, socket_connect_timeout=1).ping()"; }
mariadb_up() { .venv/bin/python -c "import pymysql; pymysql.connect(host='127.0.0.1', port=3306, user='root', password='', connect_timeout=1)"; }

if ! redis_up 2>/dev/null; then
  echo "scripts/test.sh: starting Redis on 127.0.0.1:6379" >&2
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  wait_for Redis redis_up
fi
if ! mariadb_up 2>/dev/null; then
  echo "scripts/test.sh: starting MariaDB" >&2
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
  wait_for MariaDB mariadb_up
fi

exec .venv/bin/python -m pytest "$@"
