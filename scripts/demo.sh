#!/usr/bin/env bash
# The demo: a bi-directional sync on the embedded default (two in-database sources) in the
# project's own cluster. `make demo` installs the extension and starts the cluster first.
set -euo pipefail
cd "$(dirname "$0")/.."
DB=idmesh_demo
PSQL=(bash scripts/cluster.sh psql)
"${PSQL[@]}" -q -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
"${PSQL[@]}" -d "$DB" -q <<'SQL'
\set QUIET on
\pset footer off
CREATE EXTENSION idmesh;

-- Two sources in this database: an HR system (the authority on people and titles) and a
-- phonebook (the authority on phone numbers).
CREATE SCHEMA hr;
CREATE TABLE hr.employees (
    employee_id integer PRIMARY KEY, first_name text, last_name text, title text, department text,
    manager_id integer, phone text, modified_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION hr.touch() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN NEW.modified_at := clock_timestamp(); RETURN NEW; END $$;
CREATE TRIGGER touch BEFORE UPDATE ON hr.employees FOR EACH ROW EXECUTE FUNCTION hr.touch();
INSERT INTO hr.employees (employee_id, first_name, last_name, title, department, manager_id)
SELECT g, (ARRAY['Ada','Grace','Alan','Edsger','Barbara','Donald','Frances','Ken'])[1 + g % 8],
       'Employee' || g, (ARRAY['Engineer','Analyst','Manager','Designer'])[1 + g % 4],
       (ARRAY['R&D','Sales','Finance'])[1 + g % 3], CASE WHEN g > 10 THEN 1 + g % 10 END
FROM generate_series(1, 500) g;

CREATE SCHEMA phonebook;
CREATE TABLE phonebook.entries (emp_no text PRIMARY KEY, phone text, title text, manager text,
    modified_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TRIGGER touch BEFORE UPDATE ON phonebook.entries FOR EACH ROW EXECUTE FUNCTION hr.touch();
INSERT INTO phonebook.entries (emp_no, phone, title)
SELECT g::text, '+1 555 ' || lpad(g::text, 4, '0'), 'Staff' FROM generate_series(1, 480) g;

-- Connectors, flows with confidence, a join rule, projection.
SELECT mesh.create_connector('HR Database', 'table',
       '{"source": "hr.employees", "anchor": ["employee_id"], "delta_column": "modified_at",
         "export_table": "hr.employees", "export_mode": "update"}');
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
\echo '== Second cycle: nothing changed, so nothing moves (no echo)'
SELECT coalesce(connector, '(mesh)') AS connector, profile, status, added, updated, deleted, unchanged, errors
FROM mesh.cycle();
\echo '== A phone changes in the phonebook, a title in HR'
UPDATE phonebook.entries SET phone = '+1 555 9999' WHERE emp_no = '42';
UPDATE hr.employees SET title = 'Principal Engineer' WHERE employee_id = 42;
SELECT coalesce(connector, '(mesh)') AS connector, profile, status, added, updated, deleted, unchanged, errors
FROM mesh.cycle();
SELECT e.employee_id, e.title AS hr_title, e.phone AS hr_phone, p.title AS phonebook_title, p.phone AS phonebook_phone,
       p.manager AS phonebook_manager
FROM hr.employees e JOIN phonebook.entries p ON p.emp_no = e.employee_id::text WHERE e.employee_id = 42;
\echo '== Why is the title of employee 42 what it is?'
SELECT connector, value, confidence, winner, reason
FROM mesh.explain((SELECT id FROM mesh.objects WHERE attrs->>'employee_id' = '42'), 'title');
\echo '== Dashboard'
SELECT flow, status, summary, last_run, pending_exports, errors FROM mesh.dashboard;
SQL
