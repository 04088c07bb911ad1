#!/usr/bin/env bash
# The project's own PostgreSQL 15 cluster (not the system's configuration): used by the
# integration tests, the demo and the benchmark. Runs as user postgres on a private socket
# directory and 127.0.0.1:$IDMESH_PORT, with idmesh and pg_cron preloaded.
#   scripts/cluster.sh start | stop | status | psql [args]
set -euo pipefail
BIN=/usr/lib/postgresql/15/bin
RUN=${IDMESH_RUN:-/tmp/idmesh-run}
PORT=${IDMESH_PORT:-5499}
DATA=$RUN/data
SOCK=$RUN/sock
as_pg() { if [ "$(id -un)" = postgres ]; then "$@"; else sudo -u postgres "$@"; fi; }

case "${1:-}" in
start)
  mkdir -p "$RUN" "$SOCK" "$RUN/connectors"
  chown postgres:postgres "$RUN" "$SOCK" 2>/dev/null || true
  chmod 755 "$RUN" "$RUN/connectors"
  if [ ! -f "$DATA/PG_VERSION" ]; then
    # Local sockets trust the OS user; TCP needs a password (the postgres connector's tests use it).
    as_pg "$BIN/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >/dev/null
    cat >> "$DATA/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$SOCK'
shared_preload_libraries = 'pg_cron,idmesh'
cron.database_name = 'idmesh_workers'
cron.host = '$SOCK'
idmesh.database = 'idmesh_workers'
idmesh.connector_directory = '$RUN/connectors'
idmesh.launcher_naptime = 200
idmesh.secret_key_file = '$RUN/idmesh.key'
max_worker_processes = 16
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 512MB
work_mem = 64MB
maintenance_work_mem = 256MB
max_wal_size = 4GB
log_min_messages = warning
CONF
  fi
  if [ ! -f "$DATA/server.crt" ]; then
    # TLS for connectors that ask for it (sslmode=verify-full in a dsn): a self-signed
    # certificate for localhost and 127.0.0.1; $RUN/server-ca.crt is the one to trust.
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=localhost" \
      -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
      -keyout "$DATA/server.key" -out "$DATA/server.crt" >/dev/null 2>&1
    chown postgres:postgres "$DATA/server.key" "$DATA/server.crt"
    chmod 600 "$DATA/server.key"
    cp "$DATA/server.crt" "$RUN/server-ca.crt" && chmod 644 "$RUN/server-ca.crt"
    echo "ssl = on" >> "$DATA/postgresql.conf"
    as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1 && as_pg "$BIN/pg_ctl" -D "$DATA" reload >/dev/null
  fi
  if ! as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    as_pg "$BIN/pg_ctl" -D "$DATA" -l "$RUN/postgres.log" -w -t 60 start >/dev/null
  fi
  # The database the idmesh launcher (and pg_cron) serve.
  if [ "$("$BIN/psql" -h "$SOCK" -p "$PORT" -U postgres -XAtc "SELECT count(*) FROM pg_database WHERE datname = 'idmesh_workers'" postgres)" = 0 ]; then
    "$BIN/psql" -h "$SOCK" -p "$PORT" -U postgres -Xq -c "CREATE DATABASE idmesh_workers" postgres
  fi
  echo "cluster: running on $SOCK port $PORT"
  ;;
stop)
  if [ -f "$DATA/PG_VERSION" ]; then as_pg "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null 2>&1 || true; fi
  ;;
status)
  as_pg "$BIN/pg_ctl" -D "$DATA" status
  ;;
destroy)
  "$0" stop; rm -rf "$RUN"
  ;;
psql)
  shift; exec "$BIN/psql" -h "$SOCK" -p "$PORT" -U postgres -X -v ON_ERROR_STOP=1 "$@"
  ;;
*) echo "usage: $0 start|stop|status|destroy|psql [args]" >&2; exit 2 ;;
esac
