#!/usr/bin/env bash
# The benchmark behind `make bench`: syncs N people (default 100,000) from two in-database
# sources (10 attributes each, half of them conflicting) through a full cycle, then a delta
# of 1,000 changes, and prints objects per second, the delta's time and the engine's peak
# memory (the backend's private memory, sampled while it runs). A second run with twice
# the people (2N) shows whether memory grows with the number of objects.
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

# The SQL part: the postgres connector reading 100,000 rows from a database over TCP, and
# exporting 100,000 rows into another, each next to psql's \copy of the same rows.
sql_part() {
  local n=$1 run=${IDMESH_RUN:-/tmp/idmesh-run} port=${IDMESH_PORT:-5499} pw
  pw="bench-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
  for db in idmesh_bench_src idmesh_bench_dst idmesh_bench_sql; do
    "${PSQL[@]}" -q -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
  done
  "${PSQL[@]}" -q -d postgres -v pw="$pw" >/dev/null <<'SQL'
DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bench_app') THEN CREATE ROLE bench_app LOGIN; END IF; END $$;
ALTER ROLE bench_app PASSWORD :'pw';
SQL
  printf '%s' "$pw" > "$run/bench.secret"; chown postgres "$run/bench.secret" 2>/dev/null || true; chmod 600 "$run/bench.secret"
  "${PSQL[@]}" -q -d idmesh_bench_src -v n="$n" >/dev/null <<'SQL'
CREATE TABLE people (id integer PRIMARY KEY, name text, title text, dept text, phone text, mail text,
                     salary numeric(10,2), active boolean, hired date, modified_at timestamptz NOT NULL);
INSERT INTO people SELECT g, 'Person ' || g, 'Title ' || (g % 50), 'Dept ' || (g % 20), '+1 555 ' || g,
       'p' || g || '@corp.local', 1000 + g % 5000, g % 7 <> 0, date '2000-01-01' + g % 9000, now() - g * interval '1 second'
FROM generate_series(1, :n) g;
GRANT SELECT ON people TO bench_app;
SQL
  "${PSQL[@]}" -q -d idmesh_bench_dst >/dev/null <<'SQL'
CREATE TABLE accounts (id integer PRIMARY KEY, name text, title text, dept text, phone text, mail text,
                       salary numeric(10,2), active boolean, hired date);
GRANT SELECT, INSERT, UPDATE, DELETE ON accounts TO bench_app;
SQL
  "${PSQL[@]}" -q -d idmesh_bench_sql -v port="$port" -v secret_file="$run/bench.secret" >/dev/null <<'SQL'
CREATE EXTENSION idmesh;
SELECT mesh.create_connector('Src', 'postgres', jsonb_build_object(
         'dsn', format('host=127.0.0.1 port=%s dbname=idmesh_bench_src user=bench_app sslmode=disable', :'port'),
         'import_query', 'SELECT * FROM people', 'anchor', 'id'), secret => pg_read_file(:'secret_file'));
SELECT mesh.create_connector('Dst', 'postgres', jsonb_build_object(
         'dsn', format('host=127.0.0.1 port=%s dbname=idmesh_bench_dst user=bench_app sslmode=disable', :'port'),
         'import_query', 'SELECT * FROM accounts', 'anchor', 'id', 'export_table', 'accounts'),
       secret => pg_read_file(:'secret_file'));
SELECT mesh.set_projection('Src', 'person', true);
SELECT mesh.add_import_flow('Src', 'person', a, a, 90)
  FROM unnest(ARRAY['id', 'name', 'title', 'dept', 'phone', 'mail', 'salary', 'active', 'hired']) a;
SELECT mesh.add_export_flow('Dst', 'person', a, a)
  FROM unnest(ARRAY['id', 'name', 'title', 'dept', 'phone', 'mail', 'salary', 'active', 'hired']) a;
SELECT mesh.set_provisioning('Dst', 'person', NULL, '{}');
SELECT mesh.set_safety('Dst', delete_threshold => 1000000);
SQL
  local t0 t1 import_ms copy_out_ms copy_land_ms export_ms copy_in_ms
  local memfile sampler mem_import mem_export; memfile=$(mktemp)
  sample_memory idmesh_bench_sql_import "$memfile" &
  sampler=$!
  t0=$(date +%s%N)
  PGAPPNAME=idmesh_bench_sql_import "${PSQL[@]}" -q -d idmesh_bench_sql -c "SELECT mesh.run('Src', 'full_import')" >/dev/null
  t1=$(date +%s%N); import_ms=$(( (t1 - t0) / 1000000 ))
  wait "$sampler" || true
  mem_import=$(cat "$memfile")
  t0=$(date +%s%N)
  PGSSLMODE=disable PGPASSWORD="$pw" /usr/lib/postgresql/15/bin/psql -h 127.0.0.1 -p "$port" -U bench_app -d idmesh_bench_src -Xq \
    -c "\copy (SELECT * FROM people) TO '/dev/null'"
  t1=$(date +%s%N); copy_out_ms=$(( (t1 - t0) / 1000000 ))
  # For scale, not the target's baseline: the same rows copied into a keyed table of the
  # engine's database, the least any import that keeps what it reads must do.
  "${PSQL[@]}" -q -d idmesh_bench_sql -c "CREATE TABLE public.bench_landing (id integer PRIMARY KEY, name text, title text,
    dept text, phone text, mail text, salary numeric(10,2), active boolean, hired date, modified_at timestamptz NOT NULL)"
  t0=$(date +%s%N)
  PGSSLMODE=disable PGPASSWORD="$pw" /usr/lib/postgresql/15/bin/psql -h 127.0.0.1 -p "$port" -U bench_app -d idmesh_bench_src -Xq \
    -c "\copy (SELECT * FROM people) TO STDOUT" | "${PSQL[@]}" -q -d idmesh_bench_sql -c "\copy bench_landing FROM STDIN"
  t1=$(date +%s%N); copy_land_ms=$(( (t1 - t0) / 1000000 ))
  "${PSQL[@]}" -q -d idmesh_bench_sql -c "SELECT mesh.sync()" >/dev/null
  sample_memory idmesh_bench_sql_export "$memfile" &
  sampler=$!
  t0=$(date +%s%N)
  PGAPPNAME=idmesh_bench_sql_export "${PSQL[@]}" -q -d idmesh_bench_sql -c "SELECT mesh.run('Dst', 'export')" >/dev/null
  t1=$(date +%s%N); export_ms=$(( (t1 - t0) / 1000000 ))
  wait "$sampler" || true
  mem_export=$(cat "$memfile"); rm -f "$memfile"
  local exported; exported=$("${PSQL[@]}" -d idmesh_bench_dst -Atc "SELECT count(*) FROM accounts")
  "${PSQL[@]}" -q -d idmesh_bench_src -c "\copy (SELECT id, name, title, dept, phone, mail, salary, active, hired FROM people) TO '$run/bench-accounts.copy'"
  "${PSQL[@]}" -q -d idmesh_bench_dst -c "TRUNCATE accounts"
  t0=$(date +%s%N)
  PGSSLMODE=disable PGPASSWORD="$pw" /usr/lib/postgresql/15/bin/psql -h 127.0.0.1 -p "$port" -U bench_app -d idmesh_bench_dst -Xq \
    -c "\copy accounts FROM '$run/bench-accounts.copy'"
  t1=$(date +%s%N); copy_in_ms=$(( (t1 - t0) / 1000000 ))
  rm -f "$run/bench-accounts.copy" "$run/bench.secret"
  echo "== SQL: $n rows over TCP (postgres connector) vs psql \copy"
  printf 'import %d rows: %d ms; \copy out: %d ms; ratio %s\n' "$n" "$import_ms" "$copy_out_ms" \
    "$(awk -v a="$import_ms" -v b="$copy_out_ms" 'BEGIN {printf "%.2f", a / (b > 0 ? b : 1)}')"
  printf '  for scale: \\copy out and into a keyed table of the engine database: %d ms (import / that: %s)\n' "$copy_land_ms" \
    "$(awk -v a="$import_ms" -v b="$copy_land_ms" 'BEGIN {printf "%.2f", a / (b > 0 ? b : 1)}')"
  printf 'export %d rows (%d written): %d ms; \copy in: %d ms; ratio %s\n' "$n" "$exported" "$export_ms" "$copy_in_ms" \
    "$(awk -v a="$export_ms" -v b="$copy_in_ms" 'BEGIN {printf "%.2f", a / (b > 0 ? b : 1)}')"
  printf 'peak backend private memory: import %d MiB, export %d MiB\n' "$((mem_import / 1024))" "$((mem_export / 1024))"
  for db in idmesh_bench_src idmesh_bench_dst idmesh_bench_sql; do
    [ -n "${BENCH_KEEP:-}" ] || "${PSQL[@]}" -q -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"
  done
}


# The AD part: a full import of the benchmark users from the Samba DC (loaded offline once by
# scripts/samba.sh load-bench and reused), next to a raw paged ldapsearch of the same users
# and attributes into /dev/null; at 1,000 and all users, with the engine's peak memory.
ad_part() {
  local users=$1 run=${IDMESH_RUN:-/tmp/idmesh-run}
  bash scripts/samba.sh load-bench "$users" >/dev/null
  eval "$(bash scripts/samba.sh env)"
  local ou="OU=Bench,$IDMESH_AD_BASE"
  local attrs=(sAMAccountName cn givenName sn displayName mail title department telephoneNumber employeeID userAccountControl)
  printf '%s' "$IDMESH_AD_SVC_PASSWORD" > "$run/bench-ad.secret"
  chown postgres "$run/bench-ad.secret" 2>/dev/null || true; chmod 600 "$run/bench-ad.secret"
  echo "== AD: full import from the Samba DC (ldaps, paged 1000) vs ldapsearch -E pr=1000 of the same users and attributes"
  local filter n
  for n in 1000 "$users"; do
    if [ "$n" = "$users" ]; then filter='(objectClass=user)'; else filter='(|(sAMAccountName=bench00*)(sAMAccountName=bench01000))'; fi
    local db=idmesh_bench_ad app=idmesh_bench_ad_$n memfile t0 t1 ldap_ms got
    memfile=$(mktemp)
    "${PSQL[@]}" -q -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
    "${PSQL[@]}" -q -d "$db" -c "CREATE EXTENSION idmesh" >/dev/null
    # The connector, (re)created empty: each first import starts from an empty connector space.
    make_connector() {
      "${PSQL[@]}" -q -d "$db" -v ou="$ou" -v ca="$IDMESH_AD_CA" -v svc="$IDMESH_AD_SVC_DN" -v filter="$filter" \
        -v attrs="$(IFS=,; echo "${attrs[*]}")" -v secret_file="$run/bench-ad.secret" >/dev/null <<'SQL'
SELECT mesh.drop_connector('AD') FROM mesh.connector WHERE name = 'AD';
SELECT mesh.create_connector('AD', 'active_directory',
       jsonb_build_object('url', 'ldaps://127.0.0.1', 'ca_file', :'ca', 'bind_dn', :'svc', 'base_dn', :'ou',
         'object_types', jsonb_build_array('person'), 'filter', :'filter',
         'attributes', to_jsonb(string_to_array(:'attrs', ','))),
       secret => pg_read_file(:'secret_file'));
SQL
    }
    # Rounds of ldapsearch, first import, re-import, interleaved so that a slow spell of the
    # machine or the DC hits all three alike; medians over the rounds (a first ldapsearch
    # warms the DC's cache).
    local ldap_ms first_ms again_ms ldap_times=() first_times=() again_times=() rounds=${BENCH_AD_ROUNDS:-5} i
    # The raw read: the same users, paged 1000 over ldaps, the attributes given, to /dev/null.
    paged_ldapsearch() {
      LDAPTLS_CACERT="$IDMESH_AD_CA" ldapsearch -x -H ldaps://127.0.0.1 -D "$IDMESH_AD_SVC_DN" -w "$IDMESH_AD_SVC_PASSWORD" \
        -E pr=1000/noprompt -b "$ou" "(&(&(objectCategory=person)(objectClass=user))$filter)" "$@" > /dev/null
    }
    import_ms() {
      local t0 t1
      t0=$(date +%s%N)
      PGAPPNAME=$app "${PSQL[@]}" -q -d "$db" -c "SELECT mesh.run('AD', 'full_import')" >/dev/null
      t1=$(date +%s%N); echo $(( (t1 - t0) / 1000000 ))
    }
    paged_ldapsearch 1.1
    for i in $(seq 1 "$rounds"); do
      t0=$(date +%s%N)
      paged_ldapsearch objectGUID objectClass "${attrs[@]}"
      t1=$(date +%s%N); ldap_times+=($(( (t1 - t0) / 1000000 )))
      # A first import, into an empty connector space; the first one sampled for memory.
      make_connector
      [ "$i" = 1 ] && { sample_memory "$app" "$memfile" & }
      first_times+=("$(import_ms)")
      wait
      # A re-import: everything is found unchanged.
      again_times+=("$(import_ms)")
    done
    median() { sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
    ldap_ms=$(printf '%s\n' "${ldap_times[@]}" | median)
    first_ms=$(printf '%s\n' "${first_times[@]}" | median)
    again_ms=$(printf '%s\n' "${again_times[@]}" | median)
    echo "  per round (ms): ldapsearch ${ldap_times[*]}; first import ${first_times[*]}; re-import ${again_times[*]}"
    got=$("${PSQL[@]}" -d "$db" -Atc "SELECT count(*) FROM mesh.connector_object WHERE NOT deleted")
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / (b > 0 ? b : 1)}'; }
    printf 'users %d (%d imported): ldapsearch %d ms; first import %d ms (ratio %s); re-import %d ms (ratio %s); peak backend private memory %d MiB\n' \
      "$n" "$got" "$ldap_ms" "$first_ms" "$(ratio "$first_ms" "$ldap_ms")" "$again_ms" "$(ratio "$again_ms" "$ldap_ms")" \
      "$(( $(cat "$memfile") / 1024 ))"
    rm -f "$memfile"
    [ -n "${BENCH_KEEP:-}" ] || "${PSQL[@]}" -q -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"
  done
  rm -f "$run/bench-ad.secret"
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r); PostgreSQL $("${PSQL[@]}" -d postgres -Atc 'SHOW server_version')"
# Before each part: dirty buffers written and autovacuum done with what the last part left,
# so a part is not timed against the cleanup of the one before.
settle() {
  "${PSQL[@]}" -q -d postgres -c "CHECKPOINT"
  for _ in $(seq 1 120); do
    [ "$("${PSQL[@]}" -d postgres -Atc "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'")" = 0 ] && break
    sleep 0.5
  done
}

# BENCH_PARTS picks parts (sync, sql, ad) for a quicker look at one of them; all by default.
part() { [[ " ${BENCH_PARTS:-sync sql ad} " == *" $1 "* ]]; }
if part sync; then settle; one_run "$N"; settle; one_run $(( N * 2 )); fi
if part sql; then settle; sql_part "${BENCH_SQL_ROWS:-100000}"; fi
if part ad; then settle; ad_part "${BENCH_AD_USERS:-10000}"; fi
