#!/usr/bin/env bash
# Start a throwaway PostgreSQL server for the test suite and print its URL.
# PostgreSQL refuses to run as root, so the cluster belongs to the postgres user.
set -euo pipefail
if ! command -v initdb >/dev/null && [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
  (apt-get update -qq && apt-get install -y -qq postgresql) >/dev/null
fi
BIN=$(dirname "$(command -v initdb 2>/dev/null || echo /usr/lib/postgresql/15/bin/initdb)")
[ -x "$BIN/pg_ctl" ] || BIN=/usr/lib/postgresql/15/bin
D=$(mktemp -d)
chown postgres "$D"
# a free port, so a server left from an earlier run cannot get in the way
PORT=${PGPORT_TEST:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
# a password, not trust: a job running on this machine must not reach the database the
# service uses just by knowing its port (tests/test_isolation.py tries exactly that)
PW=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
printf '%s\n' "$PW" > "$D/pw"
chown postgres "$D/pw"
chmod 600 "$D/pw"
su postgres -c "$BIN/initdb -D $D/data -A scram-sha-256 --pwfile=$D/pw -U postgres" >/dev/null
su postgres -c "$BIN/pg_ctl -D $D/data -o '-p $PORT -k $D -c listen_addresses=127.0.0.1 -c fsync=off' -l $D/log -w start" >/dev/null
echo "postgresql+psycopg://postgres:$PW@127.0.0.1:$PORT/postgres"
