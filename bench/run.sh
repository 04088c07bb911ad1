#!/usr/bin/env bash
# The benchmark behind `make bench`: syncs N people (default 100,000) from two in-database
# sources (10 attributes each, half of them conflicting) through a full cycle, then a delta
# of 1,000 changes, and prints objects per second, the delta's time and the engine's peak
# memory (the backend's private memory, sampled while it runs). A second, smaller run
# (N/10) shows whether memory grows with the number of objects.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${BENCH_PEOPLE:-100000}
CHANGES=${BENCH_CHANGES:-1000}
PSQL=(bash scripts/cluster.sh psql)

# Peak private (anonymous) memory of the backend whose application_name is $1, sampled every 20 ms.
sample_memory() {
  local app=$1 out=$2 pid="" peak=0
  for _ in $(seq 1 500); do
    pid=$("${PSQL[@]}" -d postgres -Atc "SELECT pid FROM pg_stat_activity WHERE application_name = '$app'" 2>/dev/null || true)
    [ -n "$pid" ] && break
    sleep 0.02
  done
  while [ -n "$pid" ] && [ -r "/proc/$pid/status" ]; do
    kb=$(awk '/^RssAnon:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    [ -n "$kb" ] && [ "$kb" -gt "$peak" ] && peak=$kb
    sleep 0.02
  done
  echo "$peak" > "$out"
}

# One mesh.cycle() in database $1 under application_name $2: a line per step
# (connector profile ms added updated unchanged).
cycle_steps() {
  PGAPPNAME=$2 "${PSQL[@]}" -d "$1" -At -F ' ' -c \
    "SELECT coalesce(connector, 'mesh'), profile, round(extract(epoch FROM duration) * 1000), added, updated, unchanged
       FROM mesh.cycle()"
}

one_run() {
  local n=$1 db=idmesh_bench_$1 app=idmesh_bench_$1 memfile
  memfile=$(mktemp)
  "${PSQL[@]}" -q -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
  "${PSQL[@]}" -q -d "$db" -v n="$n" <<'SQL' >/dev/null
CREATE EXTENSION idmesh;
CREATE SCHEMA src;
-- Source A (an HR system): authoritative, projects people.
CREATE TABLE src.a (id integer PRIMARY KEY, given text, surname text, title text, department text, office text,
                    phone text, mobile text, cost_center text, employee_type text,
                    modified_at timestamptz NOT NULL DEFAULT clock_timestamp());
INSERT INTO src.a SELECT g, 'Given' || g, 'Surname' || g, 'Title ' || (g % 50), 'Dept ' || (g % 20), 'Office ' || (g % 30),
       '+1 555 ' || g, NULL, 'CC' || (g % 100), 'employee', now() - interval '1 day' - g * interval '1 second'
FROM generate_series(1, :n) g;
-- Source B (a directory): joins on id; five of its attributes conflict with A's.
CREATE TABLE src.b (key text PRIMARY KEY, title text, department text, office text, phone text, mobile text,
                    mail text, login text, badge text, floor text, desk text,
                    modified_at timestamptz NOT NULL DEFAULT clock_timestamp());
INSERT INTO src.b SELECT g::text, 'B title ' || (g % 40), 'B dept ' || (g % 10), 'B office ' || (g % 7), '+1 999 ' || g,
       '+1 777 ' || g, 'p' || g || '@corp.local', 'u' || g, 'B' || g, (g % 12)::text, 'D' || g, now() - interval '1 day' - g * interval '1 second'
FROM generate_series(1, :n) g;
ANALYZE src.a; ANALYZE src.b;
SELECT mesh.create_connector('A', 'table', '{"source": "src.a", "anchor": "id", "delta_column": "modified_at",
       "export_table": "src.a", "export_mode": "update"}');
SELECT mesh.create_connector('B', 'table', '{"source": "src.b", "anchor": "key", "delta_column": "modified_at",
       "export_table": "src.b", "export_mode": "update"}');
SELECT mesh.set_projection('A', 'person', true);
SELECT mesh.add_join_rule('B', 'person', 'key', 'employee_id');
SELECT mesh.add_import_flow('A', 'person', 'id', 'employee_id', 100);
SELECT mesh.add_import_flow('A', 'person', a, a, 90)
  FROM unnest(ARRAY['given', 'surname', 'title', 'department', 'office', 'phone', 'mobile', 'cost_center', 'employee_type']) a;
SELECT mesh.add_import_flow('B', 'person', a, a, 50)
  FROM unnest(ARRAY['title', 'department', 'office', 'phone', 'mobile']) a;
SELECT mesh.add_import_flow('B', 'person', a, a, 80) FROM unnest(ARRAY['mail', 'login', 'badge', 'floor', 'desk']) a;
-- Both ways: the directory's mail flows to A, A's title to the directory.
ALTER TABLE src.a ADD COLUMN mail text;
SELECT mesh.alter_connector('A', config => '{"source": "src.a", "anchor": "id", "delta_column": "modified_at",
       "export_table": "src.a", "export_mode": "update"}');
SELECT mesh.add_export_flow('A', 'person', 'mail', 'mail');
SELECT mesh.add_export_flow('B', 'person', 'title', 'title');
SQL
  # Full cycle.
  sample_memory "$app" "$memfile" &
  local sampler=$!
  local full
  full=$(cycle_steps "$db" "$app")
  wait "$sampler" || true
  local mem_full; mem_full=$(cat "$memfile")
  # The next cycle confirms what the first exported (imports read it back): steady state after it.
  local confirm
  confirm=$(cycle_steps "$db" "$app-confirm")
  # Delta: CHANGES rows change in each source, then a cycle.
  "${PSQL[@]}" -q -d "$db" -c \
    "UPDATE src.a SET title = 'Changed ' || id, modified_at = clock_timestamp() WHERE id <= $CHANGES" \
    -c "UPDATE src.b SET mobile = '+1 000 ' || key, modified_at = clock_timestamp() WHERE key::int <= $CHANGES" >/dev/null
  sample_memory "$app" "$memfile" &
  sampler=$!
  local delta
  delta=$(cycle_steps "$db" "$app")
  wait "$sampler" || true
  local mem_delta; mem_delta=$(cat "$memfile")
  rm -f "$memfile"
  local full_ms delta_ms
  full_ms=$(awk '{s += $3} END {print s}' <<<"$full")
  delta_ms=$(awk '{s += $3} END {print s}' <<<"$delta")
  echo "== $n people, two sources of 10 attributes, 5 conflicting"
  echo "full cycle steps (connector profile ms added updated unchanged):"
  sed 's/^/  /' <<<"$full"
  printf 'full cycle: %d ms, %d people/s, %d connector objects/s\n' "$full_ms" \
    "$(( n * 1000 / (full_ms > 0 ? full_ms : 1) ))" "$(( 2 * n * 1000 / (full_ms > 0 ? full_ms : 1) ))"
  echo "confirmation cycle (no source change):"
  sed 's/^/  /' <<<"$confirm"
  echo "delta cycle after $CHANGES changes in each source:"
  sed 's/^/  /' <<<"$delta"
  printf 'delta cycle: %d ms\n' "$delta_ms"
  printf 'peak backend private memory: full %d MiB, delta %d MiB\n' "$((mem_full / 1024))" "$((mem_delta / 1024))"
  [ -n "${BENCH_KEEP:-}" ] || "${PSQL[@]}" -q -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"
  echo "RESULT $n $full_ms $delta_ms $mem_full $mem_delta" >> "${BENCH_RESULTS:-/dev/null}"
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r); PostgreSQL $("${PSQL[@]}" -d postgres -Atc 'SHOW server_version')"
one_run "$N"
one_run $(( N / 10 ))
