#!/usr/bin/env bash
# A SQL Server wire-protocol (TDS) server for the sqlserver connector's import tests:
# pysqlbridge (PyPI) serving CSV files as tables, SQL login "reader", on 127.0.0.1:14330.
# No SQL Server can run on this machine; exports to SQL Server are tested only against a
# real one (IDMESH_SQLSERVER_URL, see README).
#   scripts/tds.sh start | stop
set -euo pipefail
RUN=${IDMESH_RUN:-/tmp/idmesh-run}
DIR=$RUN/tds
PORT=${IDMESH_TDS_PORT:-14330}
# A test login for test data, not a secret of anything real.
export BRIDGE_READER_PW='Tds-reader-1!'

case "${1:-}" in
start)
  mkdir -p "$DIR"
  if [ -f "$DIR/pid" ] && kill -0 "$(cat "$DIR/pid")" 2>/dev/null; then echo "tds: running on $PORT"; exit 0; fi
  cat > "$DIR/people.csv" <<'CSV'
id,name,score,active,hired,modified_at
1,Ada Lovelace,99.5,true,2026-01-02,2026-11-01 10:00:00
2,Grace Hopper,87.25,false,,2026-11-02 11:00:00
3,Alan Turing,78,true,1912-06-23,2026-11-03 12:00:00
CSV
  # The same source a day later: Grace changed, Edsger arrived, and a row committed late
  # with an older timestamp than the watermark (a delta without overlap misses it).
  cat > "$DIR/people_later.csv" <<'CSV'
id,name,score,active,hired,modified_at
1,Ada Lovelace,99.5,true,2026-01-02,2026-11-01 10:00:00
2,Grace Hopper,90,false,,2026-11-04 09:00:00
3,Alan Turing,78,true,1912-06-23,2026-11-03 12:00:00
4,Edsger Dijkstra,93.75,true,1930-05-11,2026-11-04 09:30:00
5,Late Commit,50,true,,2026-11-03 11:59:00
CSV
  cat > "$DIR/config.json" <<'JSON'
{"logins": [{"user": "reader", "password": "${env:BRIDGE_READER_PW}"}],
 "tables": [{"name": "people", "csv": "people.csv"}, {"name": "people_later", "csv": "people_later.csv"}]}
JSON
  nohup python3 -m pysqlbridge.server --config "$DIR/config.json" --host 127.0.0.1 --port "$PORT" \
    > "$DIR/log" 2>&1 &
  echo $! > "$DIR/pid"
  for _ in $(seq 1 100); do
    if grep -q "listening on" "$DIR/log" 2>/dev/null; then echo "tds: running on $PORT"; exit 0; fi
    sleep 0.1
  done
  echo "tds: did not start; see $DIR/log" >&2; cat "$DIR/log" >&2; exit 1
  ;;
stop)
  if [ -f "$DIR/pid" ]; then kill "$(cat "$DIR/pid")" 2>/dev/null || true; rm -f "$DIR/pid"; fi
  ;;
*) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
