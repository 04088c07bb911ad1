#!/usr/bin/env bash
# The demo: a bi-directional sync between a networked HR database, an in-database
# phonebook and Active Directory (a Samba AD DC on loopback) in the project's own cluster.
# `make demo` installs the extension and starts the cluster and the DC first.
set -euo pipefail
cd "$(dirname "$0")/.."
DB=idmesh_demo
HR_DB=idmesh_demo_hr
RUN=${IDMESH_RUN:-/tmp/idmesh-run}
PORT=${IDMESH_PORT:-5499}
PSQL=(bash scripts/cluster.sh psql)
"${PSQL[@]}" -q -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" \
  -c "DROP DATABASE IF EXISTS $HR_DB WITH (FORCE)" -c "CREATE DATABASE $HR_DB"

# The HR system: its own database, reached over TCP with a password, like a real one.
HR_PASSWORD="demo-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
"${PSQL[@]}" -q -d postgres -v pw="$HR_PASSWORD" <<'SQL'
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hr_app') THEN CREATE ROLE hr_app LOGIN; END IF;
END $$;
ALTER ROLE hr_app PASSWORD :'pw';
SQL
# The connector's secret is read from a file by the server, so it is in no statement text.
printf '%s' "$HR_PASSWORD" > "$RUN/demo-hr.secret"
chown postgres "$RUN/demo-hr.secret" 2>/dev/null || true
chmod 600 "$RUN/demo-hr.secret"
"${PSQL[@]}" -d "$HR_DB" -q <<'SQL'
CREATE TABLE employees (
    employee_id integer PRIMARY KEY, first_name text, last_name text, title text, department text,
    manager_id integer, phone text, modified_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN NEW.modified_at := clock_timestamp(); RETURN NEW; END $$;
CREATE TRIGGER touch BEFORE UPDATE ON employees FOR EACH ROW EXECUTE FUNCTION touch();
GRANT SELECT, UPDATE ON employees TO hr_app;
INSERT INTO employees (employee_id, first_name, last_name, title, department, manager_id)
SELECT g, (ARRAY['Ada','Grace','Alan','Edsger','Barbara','Donald','Frances','Ken'])[1 + g % 8],
       'Employee' || g, (ARRAY['Engineer','Analyst','Manager','Designer'])[1 + g % 4],
       (ARRAY['R&D','Sales','Finance'])[1 + g % 3], CASE WHEN g > 10 THEN 1 + g % 10 END
FROM generate_series(1, 500) g;
SQL

"${PSQL[@]}" -d "$DB" -q -v port="$PORT" -v secret_file="$RUN/demo-hr.secret" <<'SQL'
\set QUIET on
\pset footer off
CREATE EXTENSION idmesh;

-- The phonebook lives in this database (the in-database "table" kind); HR is the
-- networked PostgreSQL database above (the "postgres" kind).
CREATE SCHEMA phonebook;
CREATE TABLE phonebook.entries (emp_no text PRIMARY KEY, phone text, title text, manager text,
    modified_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION phonebook.touch() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN NEW.modified_at := clock_timestamp(); RETURN NEW; END $$;
CREATE TRIGGER touch BEFORE UPDATE ON phonebook.entries FOR EACH ROW EXECUTE FUNCTION phonebook.touch();
INSERT INTO phonebook.entries (emp_no, phone, title)
SELECT g::text, '+1 555 ' || lpad(g::text, 4, '0'), 'Staff' FROM generate_series(1, 480) g;

-- Connectors, flows with confidence, a join rule, projection.
SELECT mesh.create_connector('HR Database', 'postgres',
       jsonb_build_object('dsn', format('host=127.0.0.1 port=%s dbname=idmesh_demo_hr user=hr_app', :'port'),
         'import_query', 'SELECT * FROM employees WHERE modified_at > @watermark',
         'anchor', jsonb_build_array('employee_id'), 'delta_column', 'modified_at',
         'export_table', 'employees', 'export_mode', 'update'),
       secret => pg_read_file(:'secret_file'));
SELECT step, ok, detail FROM mesh.test_connection('HR Database');
SELECT mesh.create_connector('Phonebook', 'table',
       '{"source": "phonebook.entries", "anchor": "emp_no", "delta_column": "modified_at",
         "export_table": "phonebook.entries", "export_mode": "update"}');
SELECT mesh.set_projection('HR Database', 'person', true);
SELECT mesh.add_import_flow('HR Database', 'person', 'employee_id', 'employee_id', 100);
SELECT mesh.add_import_flow('HR Database', 'person', $$first_name || ' ' || last_name$$, 'display_name', 90);
SELECT mesh.add_import_flow('HR Database', 'person', 'title', 'title', 90);
SELECT mesh.add_import_flow('HR Database', 'person', 'department', 'department', 90);
SELECT mesh.add_import_flow('HR Database', 'person', 'manager_id', 'manager', 90, reference => true);
SELECT mesh.add_join_rule('Phonebook', 'person', 'emp_no', 'employee_id');
SELECT mesh.add_import_flow('Phonebook', 'person', 'title', 'title', 50);
SELECT mesh.add_import_flow('Phonebook', 'person', 'phone', 'phone', 80);
SELECT mesh.add_export_flow('HR Database', 'person', 'phone', 'phone');
SELECT mesh.add_export_flow('Phonebook', 'person', 'title', 'title');
SELECT mesh.add_export_flow('Phonebook', 'person', 'manager', 'manager', reference => true);
\set QUIET off
\echo
\echo '== First cycle: import both sources, sync, export both ways'
SELECT coalesce(connector, '(mesh)') AS connector, profile, status, added, updated, deleted, unchanged, errors,
       round(extract(epoch FROM duration) * 1000) AS ms
FROM mesh.cycle();
\echo '== Second cycle: HR is read back; what the engine wrote there only confirms its exports (no echo)'
SELECT coalesce(connector, '(mesh)') AS connector, profile, status, added, updated, confirmed, deleted, unchanged, errors
FROM mesh.cycle();
\echo '== Third cycle: nothing changed anywhere, nothing moves'
SELECT coalesce(connector, '(mesh)') AS connector, profile, status, added, updated, deleted, unchanged, errors
FROM mesh.cycle();
\echo '== A phone changes in the phonebook'
UPDATE phonebook.entries SET phone = '+1 555 9999' WHERE emp_no = '42';
SELECT coalesce(connector, '(mesh)') AS connector, profile, status, added, updated, confirmed, deleted, unchanged, errors
FROM mesh.cycle();
SQL
echo "== ... and a title in HR"
"${PSQL[@]}" -d "$HR_DB" -q -c "UPDATE employees SET title = 'Principal Engineer' WHERE employee_id = 42"
"${PSQL[@]}" -d "$DB" -q <<'SQL'
\pset footer off
SELECT coalesce(connector, '(mesh)') AS connector, profile, status, added, updated, confirmed, deleted, unchanged, errors
FROM mesh.cycle();
SELECT o.attrs->>'title' AS mesh_title, o.attrs->>'phone' AS mesh_phone, p.title AS phonebook_title,
       p.phone AS phonebook_phone, p.manager AS phonebook_manager
FROM mesh.objects o JOIN phonebook.entries p ON p.emp_no = o.attrs->>'employee_id' WHERE o.attrs->>'employee_id' = '42';
\echo '== Why is the title of employee 42 what it is?'
SELECT connector, value, confidence, winner, reason
FROM mesh.explain((SELECT id FROM mesh.objects WHERE attrs->>'employee_id' = '42'), 'title');
\echo '== Dashboard'
SELECT flow, status, summary, last_run, pending_exports, errors FROM mesh.dashboard;
SQL
"${PSQL[@]}" -d "$HR_DB" -q -c "SELECT employee_id, title AS hr_title, phone AS hr_phone FROM employees WHERE employee_id = 42"

# ---------------------------------------------------------------------------------------
# Active Directory: HR people provisioned into department OUs, phones read back into HR.
eval "$(bash scripts/samba.sh env)"
AD_OU="OU=Demo,$IDMESH_AD_BASE"
ldap() { local tool=$1; shift; "$tool" -x -H ldap://127.0.0.1 -D "$IDMESH_AD_ADMIN_DN" -w "$IDMESH_AD_ADMIN_PASSWORD" "$@"; }
if ldap ldapsearch -LLL -s base -b "$AD_OU" '(objectClass=*)' 1.1 >/dev/null 2>&1; then
  ldap ldapdelete -r "$AD_OU"
fi
printf 'dn: %s\nobjectClass: organizationalUnit\n\ndn: OU=People,%s\nobjectClass: organizationalUnit\n\n' "$AD_OU" "$AD_OU" | ldap ldapadd >/dev/null
printf '%s' "$IDMESH_AD_SVC_PASSWORD" > "$RUN/demo-ad.secret"
chown postgres "$RUN/demo-ad.secret" 2>/dev/null || true
chmod 600 "$RUN/demo-ad.secret"
echo
echo "== Active Directory joins: provision the 500 HR people into $AD_OU, by department"
"${PSQL[@]}" -d "$DB" -q -v ou="$AD_OU" -v ca="$IDMESH_AD_CA" -v svc="$IDMESH_AD_SVC_DN" \
  -v secret_file="$RUN/demo-ad.secret" <<'SQL'
\set QUIET on
\pset footer off
\o /dev/null
SELECT mesh.create_connector('Active Directory', 'active_directory',
       jsonb_build_object('url', 'ldaps://127.0.0.1', 'ca_file', :'ca', 'bind_dn', :'svc', 'base_dn', :'ou',
         'object_types', jsonb_build_array('person'),
         'dn_template', jsonb_build_object('person', 'CN={cn},OU={department},OU=People,' || :'ou'),
         'create_ous', true),
       secret => pg_read_file(:'secret_file'));
\o
SELECT step, ok, detail FROM mesh.test_connection('Active Directory');
\o /dev/null
SELECT mesh.add_import_flow('HR Database', 'person', 'first_name', 'first_name', 90);
SELECT mesh.add_import_flow('HR Database', 'person', 'last_name', 'last_name', 90);
SELECT mesh.add_join_rule('Active Directory', 'person', 'employeeID', 'employee_id');
-- Phones maintained in AD win over the phonebook's, and flow on to HR.
SELECT mesh.add_import_flow('Active Directory', 'person', 'telephoneNumber', 'phone', 90);
SELECT mesh.add_export_flow('Active Directory', 'person', 'display_name', 'cn');
SELECT mesh.add_export_flow('Active Directory', 'person', $$'demo' || employee_id$$, 'sAMAccountName');
SELECT mesh.add_export_flow('Active Directory', 'person', 'first_name', 'givenName');
SELECT mesh.add_export_flow('Active Directory', 'person', 'last_name', 'sn');
SELECT mesh.add_export_flow('Active Directory', 'person', 'title', 'title');
SELECT mesh.add_export_flow('Active Directory', 'person', 'department', 'department');
SELECT mesh.add_export_flow('Active Directory', 'person', 'employee_id', 'employeeID');
SELECT mesh.add_export_flow('Active Directory', 'person', 'manager', 'manager', reference => true);
SELECT mesh.set_provisioning('Active Directory', 'person', NULL,
       '{"deprovision": "disable", "disable": {"accountDisabled": true}}');
\o
\set QUIET off
SELECT coalesce(connector, '(mesh)') AS connector, profile, status, added, updated, confirmed, deleted, unchanged, errors,
       round(extract(epoch FROM duration) * 1000) AS ms
FROM mesh.cycle();
SQL
echo "== In AD (ldapsearch): employee 42, created enabled in its department's OU, with its manager's DN"
ldap ldapsearch -LLL -o ldif-wrap=no -b "$AD_OU" '(employeeID=42)' sAMAccountName title department manager userAccountControl
echo "== Someone updates employee 42's phone in AD ..."
printf 'dn: %s\nchangetype: modify\nreplace: telephoneNumber\ntelephoneNumber: +1 555 4242\n' \
  "$(ldap ldapsearch -LLL -o ldif-wrap=no -b "$AD_OU" '(employeeID=42)' 1.1 | sed -n 's/^dn: //p')" | ldap ldapmodify >/dev/null
"${PSQL[@]}" -d "$DB" -q <<'SQL'
\pset footer off
SELECT coalesce(connector, '(mesh)') AS connector, profile, status, added, updated, confirmed, deleted, unchanged, errors
FROM mesh.cycle();
\echo '== ... it reaches the mesh and HR; the next cycle moves nothing (no echo)'
SELECT coalesce(connector, '(mesh)') AS connector, profile, status, added, updated, confirmed, deleted, unchanged, errors
FROM mesh.cycle();
SELECT connector, value, confidence, winner, reason
FROM mesh.explain((SELECT id FROM mesh.objects WHERE attrs->>'employee_id' = '42'), 'phone');
\echo '== Dashboard: every connector, both directions'
SELECT flow, status, summary, last_run, pending_exports, errors FROM mesh.dashboard;
SQL
"${PSQL[@]}" -d "$HR_DB" -q -c "SELECT employee_id, title AS hr_title, phone AS hr_phone FROM employees WHERE employee_id = 42"
