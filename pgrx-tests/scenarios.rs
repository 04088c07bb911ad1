// In-database end-to-end scenarios, included into `mod tests` by src/lib.rs. Each test
// runs in its own transaction against the real extension in a real PostgreSQL 15, builds
// its own source tables, drives the engine through its SQL surface, and asserts on the
// mesh, the targets and the run counters.
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Value};

fn run(sql: &str) {
    Spi::run(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

fn one<T: FromDatum + IntoDatum>(sql: &str) -> Option<T> {
    Spi::get_one::<T>(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn js(sql: &str) -> Value {
    one::<JsonB>(sql).map(|j| j.0).unwrap_or(Value::Null)
}

fn int(sql: &str) -> i64 {
    one::<i64>(sql).unwrap_or_else(|| panic!("{sql}: no value"))
}

/// The SQLSTATE and message of a statement that should fail (run in a subtransaction, so
/// whatever it did is rolled back), or "ok".
fn outcome(sql: &str) -> String {
    run("DO $d$ BEGIN IF to_regprocedure('pg_temp.outcome(text)') IS NULL THEN
           CREATE FUNCTION pg_temp.outcome(q text) RETURNS text LANGUAGE plpgsql AS $f$
           BEGIN EXECUTE q; RETURN 'ok'; EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $f$;
         END IF; END $d$");
    one::<String>(&format!("SELECT pg_temp.outcome($q${sql}$q$)")).unwrap()
}

/// Counters of the runs a cycle returned, keyed "connector/profile".
fn cycle() -> Value {
    js("SELECT jsonb_object_agg(coalesce(connector, '') || '/' || profile,
              jsonb_build_object('added', added, 'updated', updated, 'deleted', deleted, 'unchanged', unchanged,
                                 'errors', errors, 'status', status, 'details', details))
        FROM mesh.cycle()")
}

fn attrs(employee_id: i64) -> Value {
    js(&format!("SELECT (SELECT attrs FROM mesh.mesh_object WHERE attrs->>'employee_id' = '{employee_id}' AND NOT deleted)"))
}

/// An HR table (projects people) and a phonebook (joins on employee number).
fn hr_and_phonebook() {
    run("CREATE SCHEMA hr;
         CREATE TABLE hr.employees (
             employee_id integer PRIMARY KEY, first_name text, last_name text, title text, department text,
             manager_id integer, phone text, terminated boolean NOT NULL DEFAULT false,
             modified_at timestamptz NOT NULL DEFAULT clock_timestamp());
         CREATE FUNCTION hr.touch() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN NEW.modified_at := clock_timestamp(); RETURN NEW; END $$;
         CREATE TRIGGER touch BEFORE UPDATE ON hr.employees FOR EACH ROW EXECUTE FUNCTION hr.touch();
         INSERT INTO hr.employees (employee_id, first_name, last_name, title, department, manager_id) VALUES
             (1, 'Ada', 'Lovelace', 'Engineer', 'R&D', NULL),
             (2, 'Grace', 'Hopper', 'Admiral', 'Navy', 1),
             (3, 'Alan', 'Turing', 'Researcher', 'R&D', 1);
         CREATE SCHEMA pb;
         CREATE TABLE pb.entries (emp_no text PRIMARY KEY, display text, phone text, title text, manager text,
                                  modified_at timestamptz NOT NULL DEFAULT clock_timestamp());
         CREATE TRIGGER touch BEFORE UPDATE ON pb.entries FOR EACH ROW EXECUTE FUNCTION hr.touch();
         INSERT INTO pb.entries (emp_no, display, phone, title) VALUES
             ('1', 'Ada L.', '+44 100', 'Developer'),
             ('2', 'Grace H.', '+1 200', NULL),
             ('3', 'Alan T.', '+44 300', 'Cryptanalyst');");
    run(r#"SELECT mesh.create_connector('HR', 'table', '{"source": "hr.employees", "anchor": ["employee_id"],
              "delta_column": "modified_at", "soft_delete_column": "terminated", "export_table": "hr.employees",
              "export_mode": "update"}')"#);
    run(r#"SELECT mesh.create_connector('Phonebook', 'table', '{"source": "pb.entries", "anchor": "emp_no",
              "delta_column": "modified_at", "export_table": "pb.entries", "export_mode": "update"}')"#);
    run("SELECT mesh.set_projection('HR', 'person', true)");
    run("SELECT mesh.add_import_flow('HR', 'person', 'employee_id', 'employee_id', 100)");
    run("SELECT mesh.add_import_flow('HR', 'person', $$first_name || ' ' || last_name$$, 'display_name', 90)");
    run("SELECT mesh.add_import_flow('HR', 'person', 'department', 'department', 90)");
    run("SELECT mesh.add_join_rule('Phonebook', 'person', 'emp_no', 'employee_id')");
    run("SELECT mesh.add_import_flow('HR', 'person', 'title', 'title', 90)");
    run("SELECT mesh.add_import_flow('Phonebook', 'person', 'title', 'title', 50)");
}

#[pg_test]
fn extension_installs_with_builtin_types() {
    assert_eq!(int("SELECT count(*) FROM mesh.object_type"), 3);
    assert_eq!(int("SELECT count(*) FROM mesh.dashboard"), 0);
}

/// Scenario 1: HR projects, the phonebook joins; HR's title (90) beats the phonebook's
/// (50); when HR's title is cleared, the phonebook's wins; explain shows both.
#[pg_test]
fn confidence_resolution_and_explain() {
    hr_and_phonebook();
    let runs = cycle();
    assert_eq!(runs["HR/delta_import"]["added"], json!(3), "{runs}");
    assert_eq!(runs["Phonebook/delta_import"]["added"], json!(3), "{runs}");
    assert_eq!(runs["/full_sync"]["added"], json!(3), "three people projected: {runs}");
    assert_eq!(runs["/full_sync"]["details"]["joined"], json!(3), "three phonebook entries joined: {runs}");
    assert_eq!(int("SELECT count(*) FROM mesh.mesh_object"), 3);

    let ada = attrs(1);
    assert_eq!(ada["title"], json!("Engineer"), "HR (90) wins over phonebook (50): {ada}");
    assert_eq!(ada["display_name"], json!("Ada Lovelace"));
    // Grace has no phonebook title: HR's is the only one.
    assert_eq!(attrs(2)["title"], json!("Admiral"));

    let id = int("SELECT id FROM mesh.mesh_object WHERE attrs->>'employee_id' = '1'");
    let ex = js(&format!(
        "SELECT jsonb_agg(jsonb_build_object('connector', connector, 'value', value, 'winner', winner, 'reason', reason)
                ORDER BY winner DESC) FROM mesh.explain({id}, 'title')"
    ));
    assert_eq!(ex.as_array().unwrap().len(), 2, "{ex}");
    assert_eq!(ex[0]["connector"], json!("HR"));
    assert_eq!(ex[0]["winner"], json!(true));
    assert_eq!(ex[0]["reason"], json!("highest confidence (90 over 50)"));
    assert_eq!(ex[1]["connector"], json!("Phonebook"));
    assert_eq!(ex[1]["value"], json!("Developer"));
    assert_eq!(ex[1]["winner"], json!(false));
    // The conflicts view lists the disagreement.
    assert_eq!(int(&format!("SELECT count(*) FROM mesh.conflicts WHERE mesh_id = {id} AND attribute = 'title'")), 1);

    // Clear HR's title: an empty value is no contribution, so the phonebook's wins.
    run("UPDATE hr.employees SET title = NULL WHERE employee_id = 1");
    let runs = cycle();
    assert_eq!(runs["HR/delta_import"]["updated"], json!(1), "{runs}");
    assert_eq!(runs["/sync"]["updated"], json!(1), "{runs}");
    assert_eq!(attrs(1)["title"], json!("Developer"));
    let ex = js(&format!("SELECT jsonb_agg(to_jsonb(e) ORDER BY winner DESC) FROM mesh.explain({id}, 'title') e"));
    assert_eq!(ex[0]["connector"], json!("Phonebook"));
    assert_eq!(ex[0]["winner"], json!(true));
    assert_eq!(ex[1]["counts"], json!(false), "{ex}");

    // The resolution aggregate, applied to the contributions, agrees with the mesh everywhere.
    assert_eq!(
        int("SELECT count(*) FROM (
               SELECT k.mesh_id, k.attribute, mesh.resolve_agg(k.value, k.confidence, k.observed_at, k.connector, k.empty_is_value) v
               FROM mesh.contributions k GROUP BY 1, 2) r
             JOIN mesh.mesh_object o ON o.id = r.mesh_id
             WHERE (o.attrs -> r.attribute) IS DISTINCT FROM r.v"),
        0
    );
}

/// Scenario 2: phone flows from the phonebook to HR, title from HR to the phonebook; a
/// second cycle with no source change changes nothing anywhere.
#[pg_test]
fn bidirectional_without_echo() {
    hr_and_phonebook();
    run("SELECT mesh.add_import_flow('Phonebook', 'person', 'phone', 'phone', 80)");
    run("SELECT mesh.add_export_flow('HR', 'person', 'phone', 'phone')");
    run("SELECT mesh.add_export_flow('Phonebook', 'person', 'title', 'title')");

    let first = cycle();
    assert_eq!(first["HR/export"]["updated"], json!(3), "phones written to HR: {first}");
    // Phonebook titles: Ada's and Alan's replaced by HR's, Grace's filled in.
    assert_eq!(first["Phonebook/export"]["updated"], json!(3), "{first}");
    assert_eq!(one::<String>("SELECT phone FROM hr.employees WHERE employee_id = 2").as_deref(), Some("+1 200"));
    assert_eq!(one::<String>("SELECT title FROM pb.entries WHERE emp_no = '1'").as_deref(), Some("Engineer"));
    assert_eq!(one::<String>("SELECT title FROM pb.entries WHERE emp_no = '2'").as_deref(), Some("Admiral"));
    assert_eq!(int("SELECT count(*) FROM mesh.pending_export"), 0, "read-back confirmed every export");
    // The export statement staged its rows as read back: the connector space holds each
    // written row as an import stages it (attributes and hash), so nothing echoes.
    assert_eq!(
        int("SELECT count(*) FROM mesh.connector_object c JOIN mesh.connector k ON k.id = c.connector_id AND k.name = 'HR'
             JOIN hr.employees e ON c.anchor = e.employee_id::text
             WHERE c.attrs = to_jsonb(e) AND c.hash = md5(to_jsonb(e)::text) AND c.mesh_id IS NOT NULL"),
        3
    );

    for round in 0..2 {
        let again = cycle();
        for (step, counters) in again.as_object().unwrap() {
            for k in ["added", "updated", "deleted", "errors"] {
                assert_eq!(counters[k], json!(0), "round {round}: {step} {k} should be 0: {again}");
            }
        }
        assert_eq!(int("SELECT count(*) FROM mesh.pending_export"), 0);
    }

    // A phone change in the phonebook reaches HR once, and comes back as nothing.
    run("UPDATE pb.entries SET phone = '+44 999' WHERE emp_no = '3'");
    let changed = cycle();
    assert_eq!(changed["Phonebook/delta_import"]["updated"], json!(1), "{changed}");
    assert_eq!(changed["HR/export"]["updated"], json!(1), "{changed}");
    assert_eq!(changed["Phonebook/export"]["updated"], json!(0), "{changed}");
    assert_eq!(one::<String>("SELECT phone FROM hr.employees WHERE employee_id = 3").as_deref(), Some("+44 999"));
    let after = cycle();
    assert_eq!(after["HR/delta_import"]["updated"], json!(0), "no echo: {after}");
    assert_eq!(after["/sync"]["updated"], json!(0), "{after}");
    assert_eq!(after["HR/export"]["updated"], json!(0), "{after}");
}

/// A delta among many objects looks its few objects up (the path a large directory's
/// deltas take; a small test's deltas touch most objects and take the full statements):
/// the changed object is resolved and exported, the terminated one leaves the mesh, no
/// other object is touched, and the session's own settings are back after the sync.
#[pg_test]
fn a_small_delta_among_many_objects_touches_only_its_objects() {
    hr_and_phonebook();
    run("INSERT INTO hr.employees (employee_id, first_name, last_name, title, department)
         SELECT g, 'Given' || g, 'Surname' || g, 'Title ' || g, 'Dept' FROM generate_series(10, 49) g;
         INSERT INTO pb.entries (emp_no, display, phone) SELECT g::text, 'P ' || g, '+1 ' || g FROM generate_series(10, 49) g;");
    run("SELECT mesh.add_export_flow('Phonebook', 'person', 'title', 'title')");
    cycle();
    cycle();
    let before = int("SELECT count(*) FROM mesh.mesh_object WHERE NOT deleted");
    assert_eq!(before, 43);
    let untouched: String = one("SELECT updated_at::text FROM mesh.mesh_object WHERE attrs->>'employee_id' = '20'").unwrap();

    run("UPDATE hr.employees SET title = 'Countess' WHERE employee_id = 1;
         UPDATE hr.employees SET terminated = true WHERE employee_id = 3;");
    run("SET LOCAL work_mem = '64MB'; SET LOCAL jit = on");
    let runs = cycle();
    let sync = &runs["/sync"];
    assert_eq!(sync["details"]["objects_considered"], json!(2), "two of 43 objects, looked up: {runs}");
    assert_eq!(sync["updated"], json!(1), "{runs}");
    assert_eq!(sync["deleted"], json!(1), "{runs}");
    assert_eq!(runs["Phonebook/export"]["updated"], json!(1), "{runs}");
    assert_eq!(attrs(1)["title"], json!("Countess"));
    assert_eq!(attrs(3), Value::Null);
    assert_eq!(one::<String>("SELECT title FROM pb.entries WHERE emp_no = '1'").as_deref(), Some("Countess"));
    assert_eq!(int("SELECT count(*) FROM mesh.mesh_object WHERE NOT deleted"), before - 1);
    assert_eq!(
        one::<String>("SELECT updated_at::text FROM mesh.mesh_object WHERE attrs->>'employee_id' = '20'").unwrap(),
        untouched
    );
    // The engine's memory budget and JIT setting held only while it ran.
    assert_eq!(one::<String>("SELECT current_setting('work_mem')").as_deref(), Some("64MB"));
    assert_eq!(one::<String>("SELECT current_setting('jit')").as_deref(), Some("on"));
}

/// NULL, JSON null, "" and [] are the values that mean "no value"; everything else counts.
#[pg_test]
fn emptiness_is_read_from_the_value_itself() {
    let got = js(r#"SELECT jsonb_agg(mesh.is_empty(v) ORDER BY n)
                    FROM unnest(ARRAY[NULL, 'null', '""', '[]', '"a"', '0', 'false', '{}', '[null]', '[""]', '" "',
                                      '{"a": null}']::jsonb[]) WITH ORDINALITY u(v, n)"#);
    assert_eq!(got, json!([true, true, true, true, false, false, false, false, false, false, false, false]));
    // as stored in a table (short varlena headers) and as built by an expression
    run(r#"CREATE TEMP TABLE vals AS SELECT '{"e": "", "n": null, "x": "x"}'::jsonb AS j"#);
    assert_eq!(
        js("SELECT jsonb_build_array(mesh.is_empty(j->'e'), mesh.is_empty(j->'n'), mesh.is_empty(j->'x'), mesh.is_empty(j), mesh.is_empty(j->'missing')) FROM vals"),
        json!([true, true, false, false, true])
    );
}

/// Scenario 3: delta imports read only rows past the watermark (minus the overlap), pick
/// up a late-committed row, and a deleted source row takes its contributions with it.
#[pg_test]
fn delta_watermark_late_rows_and_deletes() {
    hr_and_phonebook();
    run("SELECT mesh.add_import_flow('Phonebook', 'person', 'phone', 'phone', 80)");
    // Spread the rows over two days, so the watermark's overlap window holds only the newest.
    run("ALTER TABLE hr.employees DISABLE TRIGGER touch;
         UPDATE hr.employees SET modified_at = now() - interval '2 days' + employee_id * interval '1 hour';
         ALTER TABLE hr.employees ENABLE TRIGGER touch;");
    run(r#"SELECT mesh.alter_connector('HR', config => '{"source": "hr.employees", "anchor": ["employee_id"],
              "delta_column": "modified_at", "overlap": "10 minutes", "soft_delete_column": "terminated"}')"#);
    let full = js("SELECT to_jsonb(r) FROM mesh.run('HR', 'full_import') r");
    assert_eq!(full["added"], json!(3));
    let wm = full["watermark_after"]["high"].as_str().unwrap().to_string();
    run("SELECT mesh.sync()");

    // Nothing changed: only the newest row (inside the overlap) is read again, unchanged.
    let d = js("SELECT to_jsonb(r) FROM mesh.run('HR', 'delta_import') r");
    assert_eq!(d["details"]["seen"], json!(1), "{d}");
    assert_eq!(d["unchanged"], json!(1));
    assert_eq!(d["updated"], json!(0));

    // One change: the delta reads it and the row in the overlap, nothing else.
    run("UPDATE hr.employees SET title = 'Countess' WHERE employee_id = 1");
    let d = js("SELECT to_jsonb(r) FROM mesh.run('HR', 'delta_import') r");
    assert_eq!(d["updated"], json!(1), "{d}");
    assert_eq!(d["added"], json!(0));
    assert_eq!(d["details"]["seen"], json!(2), "{d}");
    let wm2 = d["watermark_after"]["high"].as_str().unwrap().to_string();
    assert_ne!(wm, wm2, "the watermark moved");

    // A row committed late, with a delta value just below the watermark: still read.
    run(&format!(
        "ALTER TABLE hr.employees DISABLE TRIGGER touch;
         INSERT INTO hr.employees (employee_id, first_name, last_name, title, modified_at)
              VALUES (4, 'Late', 'Commit', 'Clerk', '{wm2}'::timestamptz - interval '5 minutes');
         ALTER TABLE hr.employees ENABLE TRIGGER touch;"
    ));
    let d = js("SELECT to_jsonb(r) FROM mesh.run('HR', 'delta_import') r");
    assert_eq!(d["added"], json!(1), "late row picked up by the overlap: {d}");
    // Read again: idempotent.
    let d = js("SELECT to_jsonb(r) FROM mesh.run('HR', 'delta_import') r");
    assert_eq!(d["added"], json!(0));
    assert_eq!(d["updated"], json!(0));

    // A row older than the overlap is not a delta; a full import finds it.
    run(&format!(
        "ALTER TABLE hr.employees DISABLE TRIGGER touch;
         INSERT INTO hr.employees (employee_id, first_name, last_name, modified_at)
              VALUES (5, 'Very', 'Late', '{wm2}'::timestamptz - interval '1 day');
         ALTER TABLE hr.employees ENABLE TRIGGER touch;"
    ));
    assert_eq!(js("SELECT to_jsonb(r) FROM mesh.run('HR', 'delta_import') r")["added"], json!(0));
    assert_eq!(js("SELECT to_jsonb(r) FROM mesh.run('HR', 'full_import') r")["added"], json!(1));
    let s = js("SELECT to_jsonb(r) FROM mesh.sync() r");
    assert_eq!(s["added"], json!(2), "two people projected: {s}");
    assert_eq!(attrs(1)["title"], json!("Countess"));

    // Hard delete in the phonebook: the full import sees it gone; its phone disappears.
    run("SELECT mesh.run('Phonebook', 'full_import')");
    run("SELECT mesh.sync()");
    assert_eq!(attrs(2)["phone"], json!("+1 200"));
    run("DELETE FROM pb.entries WHERE emp_no = '2'");
    assert_eq!(js("SELECT to_jsonb(r) FROM mesh.run('Phonebook', 'full_import') r")["deleted"], json!(1));
    run("SELECT mesh.sync()");
    assert!(attrs(2).get("phone").is_none(), "{}", attrs(2));
    assert_eq!(attrs(2)["title"], json!("Admiral"), "HR's contributions stay");

    // Soft delete in HR (the authoritative, projecting source): the person leaves the mesh.
    run("UPDATE hr.employees SET terminated = true WHERE employee_id = 3");
    let d = js("SELECT to_jsonb(r) FROM mesh.run('HR', 'delta_import') r");
    assert_eq!(d["deleted"], json!(1), "{d}");
    let s = js("SELECT to_jsonb(r) FROM mesh.sync() r");
    assert_eq!(s["deleted"], json!(1), "{s}");
    assert_eq!(attrs(3), Value::Null);
    assert_eq!(int("SELECT count(*) FROM mesh.contributions WHERE anchor = '3'"), 0);
    // The phonebook entry is disconnected, not lost.
    assert_eq!(int("SELECT count(*) FROM mesh.connector_object c JOIN mesh.connector n ON n.id = c.connector_id
                    WHERE n.name = 'Phonebook' AND c.anchor = '3' AND c.mesh_id IS NULL"), 1);
}

/// Scenario 4: manager references resolve across connectors, also when the manager
/// arrives after the people who report to them, and are written to the phonebook in its
/// own identifiers.
#[pg_test]
fn manager_references_resolve_late() {
    hr_and_phonebook();
    run("SELECT mesh.add_import_flow('HR', 'person', 'manager_id', 'manager', 90, reference => true)");
    run("SELECT mesh.add_export_flow('Phonebook', 'person', 'manager', 'manager', reference => true)");
    // Alan reports to someone HR has not sent yet.
    run("UPDATE hr.employees SET manager_id = 7 WHERE employee_id = 3");
    cycle();
    let ada = int("SELECT id FROM mesh.mesh_object WHERE attrs->>'employee_id' = '1'");
    assert_eq!(attrs(2)["manager"], json!(ada), "Grace's manager is Ada's mesh object");
    assert!(attrs(3).get("manager").is_none(), "manager 7 not imported yet: {}", attrs(3));
    assert_eq!(int("SELECT count(*) FROM mesh.unresolved_reference"), 1);
    assert_eq!(one::<String>("SELECT manager FROM pb.entries WHERE emp_no = '2'").as_deref(), Some("1"));

    // The manager arrives (HR and phonebook): the reference resolves, and the phonebook
    // gets the manager's phonebook number.
    run("INSERT INTO hr.employees (employee_id, first_name, last_name, title) VALUES (7, 'Charles', 'Babbage', 'Director');
         INSERT INTO pb.entries (emp_no, display) VALUES ('7', 'C. Babbage');");
    let runs = cycle();
    let babbage = int("SELECT id FROM mesh.mesh_object WHERE attrs->>'employee_id' = '7'");
    assert_eq!(attrs(3)["manager"], json!(babbage), "{runs}");
    assert_eq!(int("SELECT count(*) FROM mesh.unresolved_reference"), 0);
    // The phonebook entry of Babbage joined in the same cycle; Alan's manager is written next cycle at the latest.
    cycle();
    assert_eq!(one::<String>("SELECT manager FROM pb.entries WHERE emp_no = '3'").as_deref(), Some("7"));
    let quiet = cycle();
    assert_eq!(quiet["/sync"]["updated"], json!(0), "{quiet}");
    assert_eq!(quiet["Phonebook/export"]["updated"], json!(0), "{quiet}");
}

/// Two candidates is an error on that object, never a guess; the others join.
#[pg_test]
fn ambiguous_join_is_an_object_error() {
    hr_and_phonebook();
    // Two HR people with the same employee number in the mesh: impossible from one HR
    // anchor, so give the mesh a second person by hand-made projection from another source.
    run("CREATE TABLE hr.contractors (cid text PRIMARY KEY, employee_id integer)");
    run("INSERT INTO hr.contractors VALUES ('c1', 1)");
    run(r#"SELECT mesh.create_connector('Contractors', 'table', '{"source": "hr.contractors", "anchor": "cid"}')"#);
    run("SELECT mesh.set_projection('Contractors', 'person', true)");
    run("SELECT mesh.add_import_flow('Contractors', 'person', 'employee_id', 'employee_id', 10)");
    run("SELECT mesh.run('HR', 'full_import')");
    run("SELECT mesh.run('Contractors', 'full_import')");
    run("SELECT mesh.sync()");
    run("SELECT mesh.run('Phonebook', 'full_import')");
    let s = js("SELECT to_jsonb(r) FROM mesh.sync() r");
    assert_eq!(s["details"]["joined"], json!(2), "{s}");
    assert_eq!(s["errors"], json!(1), "{s}");
    assert_eq!(s["status"], json!("warning"));
    let e = js("SELECT to_jsonb(e) FROM mesh.errors e WHERE connector = 'Phonebook'");
    assert_eq!(e["anchor"], json!("1"));
    assert!(e["message"].as_str().unwrap().contains("matches 2 mesh objects"), "{e}");
    assert_eq!(int("SELECT count(*) FROM mesh.connector_object WHERE anchor = '1' AND mesh_id IS NULL"), 1);
}

/// `hr_and_phonebook`, and an Accounts table (login `u<employee_id>`, display) that the
/// export flows write and a join rule reads back; no provisioning yet.
fn hr_phonebook_and_accounts() {
    hr_and_phonebook();
    run("CREATE TABLE pb.accounts (login text PRIMARY KEY, display text, active boolean NOT NULL DEFAULT true)");
    run(r#"SELECT mesh.create_connector('Accounts', 'table', '{"source": "pb.accounts", "anchor": "login",
              "export_table": "pb.accounts"}')"#);
    run("SELECT mesh.add_join_rule('Accounts', 'person', $$substr(login, 2)$$, 'employee_id')");
    run("SELECT mesh.add_export_flow('Accounts', 'person', $$'u' || employee_id$$, 'login')");
    run("SELECT mesh.add_export_flow('Accounts', 'person', 'display_name', 'display')");
}

/// Provisioning into a table and deprovisioning by policy.
#[pg_test]
fn provisioning_and_deprovisioning() {
    hr_phonebook_and_accounts();
    // What an add writes to re-enable an account that a "disable" left behind.
    run("SELECT mesh.add_export_flow('Accounts', 'person', '(true)', 'active')");
    run(r#"SELECT mesh.set_provisioning('Accounts', 'person', $$department = 'R&D'$$,
              '{"deprovision": "disable", "disable": {"active": false}}')"#);
    let runs = cycle();
    assert_eq!(runs["Accounts/export"]["added"], json!(2), "Ada and Alan are in R&D: {runs}");
    assert_eq!(int("SELECT count(*) FROM pb.accounts WHERE active"), 2);
    assert_eq!(one::<String>("SELECT display FROM pb.accounts WHERE login = 'u3'").as_deref(), Some("Alan Turing"));
    // Read back: the new accounts are joined to their people.
    assert_eq!(int("SELECT count(*) FROM mesh.objects WHERE connectors ? 'Accounts'"), 2);
    assert_eq!(cycle()["Accounts/export"]["added"], json!(0));

    // Alan leaves R&D: out of scope, disabled by policy, not deleted.
    run("UPDATE hr.employees SET department = 'Bletchley' WHERE employee_id = 3");
    let runs = cycle();
    assert_eq!(runs["Accounts/export"]["updated"], json!(1), "{runs}");
    assert_eq!(one::<bool>("SELECT active FROM pb.accounts WHERE login = 'u3'"), Some(false));
    assert_eq!(int("SELECT count(*) FROM pb.accounts"), 2);
    // Nothing more to do on the next cycle.
    let quiet = cycle();
    assert_eq!(quiet["Accounts/export"]["updated"], json!(0), "{quiet}");
    assert_eq!(int("SELECT count(*) FROM mesh.connector_object WHERE anchor = 'u3' AND disconnected"), 1);

    // Alan comes back to R&D: provisioned again. The add takes over the row left behind
    // (same login), and the next import joins that row to Alan by the anchor the add
    // wrote, left by policy or not: the engine wrote it for him, so it is his again.
    run("UPDATE hr.employees SET department = 'R&D' WHERE employee_id = 3");
    let back = cycle();
    assert_eq!(back["Accounts/export"]["added"], json!(1), "{back}");
    let joined = cycle();
    assert_eq!(joined["Accounts/export"]["added"], json!(0), "{joined}");
    assert_eq!(int("SELECT count(*) FROM mesh.pending_export"), 0, "the add is confirmed");
    assert_eq!(
        int("SELECT count(*) FROM mesh.connector_object c JOIN mesh.mesh_object o ON o.id = c.mesh_id
             WHERE c.anchor = 'u3' AND NOT c.disconnected AND o.attrs->>'employee_id' = '3'"),
        1
    );
    assert_eq!(int("SELECT count(*) FROM mesh.objects WHERE connectors ? 'Accounts'"), 2);
    assert_eq!(one::<bool>("SELECT active FROM pb.accounts WHERE login = 'u3'"), Some(true), "enabled again");
}

/// Bad input gets a clear error with a fitting SQLSTATE and changes nothing.
#[pg_test]
fn bad_input_is_refused_and_changes_nothing() {
    hr_and_phonebook();
    assert!(outcome("SELECT mesh.add_import_flow('Nope', 'person', 'title', 'title', 50)").starts_with("42704"));
    assert!(outcome("SELECT mesh.add_import_flow('HR', 'robot', 'title', 'title', 50)").starts_with("42704"));
    assert!(outcome("SELECT mesh.add_import_flow('HR', 'person', 'title', 'title2', 101)").starts_with("22003"));
    assert!(outcome("SELECT mesh.add_import_flow('HR', 'person', 'lower(title', 'x', 50)").starts_with("42601"));
    let typo = outcome("SELECT mesh.add_import_flow('HR', 'person', 'titel', 'x', 50)");
    assert!(typo.starts_with("42703") && typo.contains("titel"), "{typo}");
    assert!(outcome("SELECT mesh.add_import_flow('HR', 'person', 'title', 'bad name', 50)").starts_with("42602"));
    assert!(outcome("SELECT mesh.add_export_flow('HR', 'person', 'phone', 'no_such_column')").starts_with("42703"));
    assert!(outcome("SELECT mesh.add_join_rule('Phonebook', 'person', 'emp_no', 'employee_id')").starts_with("42710"));
    assert!(outcome("SELECT mesh.add_join_rule('Phonebook', 'person', 'emp_no', 'employe_id')").starts_with("42703"));
    let source = outcome("SELECT mesh.add_export_flow('HR', 'person', 'titel', 'title')");
    assert!(source.starts_with("42703") && source.contains("titel"), "{source}");
    assert!(outcome("SELECT mesh.run('HR', 'fastest_import')").starts_with("22023"));
    assert!(outcome(r#"SELECT mesh.create_connector('X', 'table', '{"source": "hr.nope", "anchor": "id"}')"#).starts_with("42P01"));
    assert!(outcome(r#"SELECT mesh.create_connector('X', 'table', '{"source": "hr.employees", "anchor": "nope"}')"#).starts_with("42703"));
    assert!(outcome(r#"SELECT mesh.create_connector('X', 'table', '{"source": "hr.employees", "anchor": "employee_id", "delta_column": "title"}')"#).starts_with("42804"));
    assert!(outcome(r#"SELECT mesh.create_connector('X', 'warp_drive', '{}')"#).starts_with("22023"));
    assert!(outcome(r#"SELECT mesh.create_connector('HR', 'table', '{"source": "hr.employees", "anchor": "employee_id"}')"#).starts_with("42710"));
    assert!(outcome("SELECT mesh.set_provisioning('HR', 'person', $$department$$)").starts_with("42804"));
    assert!(outcome(r#"SELECT mesh.set_provisioning('HR', 'person', NULL, '{"deprovision": "shred"}')"#).starts_with("22023"));
    assert!(outcome(r#"SELECT mesh.set_provisioning('HR', 'person', NULL, '{"deprovison": "delete"}')"#).starts_with("22023"));
    let scope = outcome(r#"SELECT mesh.set_provisioning('HR', 'person', 'departmnt IS NOT NULL', '{"deprovision": "delete"}')"#);
    assert!(scope.starts_with("42703") && scope.contains("departmnt"), "{scope}");
    assert!(outcome("SELECT * FROM mesh.explain(424242, 'title')").starts_with("42704"));
    let bg = outcome("SELECT mesh.enqueue('HR', 'delta_import')");
    assert!(bg.starts_with("55000") && bg.contains("shared_preload_libraries"), "{bg}");
    assert_eq!(int("SELECT count(*) FROM mesh.connector"), 2);
    assert_eq!(int("SELECT count(*) FROM mesh.flow_rule"), 5);

    // A successful import, then sources that break the rules: the run fails, nothing moves.
    run("SELECT mesh.run('HR', 'full_import')");
    let before = js("SELECT jsonb_build_object('wm', (SELECT value FROM mesh.watermark), 'objects',
                     (SELECT jsonb_agg(attrs ORDER BY anchor) FROM mesh.connector_object), 'runs', (SELECT count(*) FROM mesh.run))");
    run("CREATE VIEW hr.broken AS SELECT * FROM hr.employees UNION ALL SELECT * FROM hr.employees WHERE employee_id = 2");
    run(r#"SELECT mesh.alter_connector('HR', config => '{"source": "hr.broken", "anchor": "employee_id", "delta_column": "modified_at"}')"#);
    let dup = outcome("SELECT mesh.run('HR', 'full_import')");
    assert!(dup.starts_with("23505") && dup.contains("\"2\""), "{dup}");
    run("CREATE OR REPLACE VIEW hr.broken AS SELECT * FROM hr.employees UNION ALL
         SELECT NULL::int, 'No', 'Anchor', NULL, NULL, NULL, NULL, false, now()");
    let missing = outcome("SELECT mesh.run('HR', 'full_import')");
    assert!(missing.starts_with("23502"), "{missing}");
    let after = js("SELECT jsonb_build_object('wm', (SELECT value FROM mesh.watermark), 'objects',
                    (SELECT jsonb_agg(attrs ORDER BY anchor) FROM mesh.connector_object), 'runs', (SELECT count(*) FROM mesh.run))");
    assert_eq!(before, after, "failed runs changed nothing");
    assert_eq!(int("SELECT count(*) FROM mesh.staging"), 0);
}

/// The first full import of a connector lands its rows straight in its empty connector
/// space, with the outcome the merge gives: an anchor that repeats fails the run naming
/// it and leaves nothing, and the next import classifies against what landed. A source
/// with a soft-delete column stages and merges (the merge checks deleted rows too).
#[pg_test]
fn a_first_import_lands_in_the_empty_space_as_the_merge_would() {
    hr_and_phonebook();
    run("CREATE VIEW hr.twice AS SELECT * FROM hr.employees UNION ALL SELECT * FROM hr.employees WHERE employee_id = 2");
    run(r#"SELECT mesh.alter_connector('HR', config => '{"source": "hr.twice", "anchor": "employee_id",
              "delta_column": "modified_at"}')"#);
    let dup = outcome("SELECT mesh.run('HR', 'full_import')");
    assert!(dup.starts_with("23505") && dup.contains(r#"anchor "2" more than once"#), "{dup}");
    assert_eq!(int("SELECT count(*) FROM mesh.connector_object"), 0);
    assert_eq!(int("SELECT count(*) FROM mesh.watermark"), 0);

    run(r#"SELECT mesh.alter_connector('HR', config => '{"source": "hr.employees", "anchor": "employee_id",
              "delta_column": "modified_at"}')"#);
    let first = js("SELECT to_jsonb(r) FROM mesh.run('HR', 'full_import') r");
    assert_eq!((first["added"].clone(), first["deleted"].clone()), (json!(3), json!(0)), "{first}");
    assert_eq!(first["details"]["landed"], json!(true), "{first}");
    assert_eq!(int("SELECT count(*) FROM mesh.connector_object WHERE NOT deleted"), 3);
    assert_eq!(int("SELECT count(*) FROM mesh.staging"), 0);
    // Names, name keys and hashes are what the merge computes: nothing reads as changed.
    let again = js("SELECT to_jsonb(r) FROM mesh.run('HR', 'full_import') r");
    assert_eq!(
        (again["added"].clone(), again["updated"].clone(), again["unchanged"].clone()),
        (json!(0), json!(0), json!(3)),
        "{again}"
    );
    assert_eq!(again["details"].get("landed"), None, "{again}");
    assert_eq!(
        int("SELECT count(*) FROM mesh.connector_object WHERE name = anchor AND name_key = anchor AND hash = md5(attrs::text)"),
        3
    );
    run("UPDATE hr.employees SET title = 'Countess' WHERE employee_id = 1");
    let delta = js("SELECT to_jsonb(r) FROM mesh.run('HR', 'delta_import') r");
    assert_eq!(delta["updated"], json!(1), "{delta}");
    let synced = cycle();
    assert_eq!(synced["/full_sync"]["status"], json!("success"), "{synced}");
    assert_eq!(attrs(1)["title"], json!("Countess"));

    // The phonebook has no soft-delete column but objects already: it is merged, not landed.
    let pb = js("SELECT to_jsonb(r) FROM mesh.run('Phonebook', 'full_import') r");
    assert_eq!(pb["details"].get("landed"), None, "{pb}");
    // A source with a soft-delete column, imported first: staged and merged; the row marked
    // deleted is not added.
    run("CREATE TABLE hr.contractors (id integer PRIMARY KEY, gone boolean NOT NULL DEFAULT false)");
    run("INSERT INTO hr.contractors VALUES (1, false), (2, true)");
    run(r#"SELECT mesh.create_connector('Contractors', 'table', '{"source": "hr.contractors", "anchor": "id",
              "soft_delete_column": "gone"}')"#);
    let soft = js("SELECT to_jsonb(r) FROM mesh.run('Contractors', 'full_import') r");
    assert_eq!(soft["added"], json!(1), "{soft}");
    assert_eq!(soft["details"].get("landed"), None, "{soft}");
}

/// An export to a table that is also the connector's source stages the rows it wrote in
/// the same statement: columns named like the statement's aliases (`x`, `s`) are data,
/// the connector space holds each row as an import stages it, and a change that moves a
/// row's anchor is that change's error, never a failed run.
#[pg_test]
fn an_export_to_its_own_source_stages_what_it_wrote() {
    hr_and_phonebook();
    run("CREATE TABLE pb.users (login text PRIMARY KEY, x text, s text, display text)");
    run("INSERT INTO pb.users VALUES ('u1', 'a', 'b', NULL), ('u2', 'a', 'b', NULL)");
    run(r#"SELECT mesh.create_connector('Users', 'table', '{"source": "pb.users", "anchor": "login",
              "export_table": "pb.users", "export_mode": "update"}')"#);
    run("SELECT mesh.add_join_rule('Users', 'person', $$substr(login, 2)$$, 'employee_id')");
    let login = int("SELECT mesh.add_export_flow('Users', 'person', $$'u' || employee_id$$, 'login')::bigint");
    run("SELECT mesh.add_export_flow('Users', 'person', 'display_name', 'display')");
    let first = cycle();
    assert_eq!(first["Users/export"]["updated"], json!(2), "{first}");
    assert_eq!(first["Users/export"]["errors"], json!(0), "{first}");
    assert_eq!(one::<String>("SELECT display FROM pb.users WHERE login = 'u2'").as_deref(), Some("Grace Hopper"));
    assert_eq!(int("SELECT count(*) FROM mesh.pending_export"), 0, "confirmed by the staged rows");
    assert_eq!(
        int("SELECT count(*) FROM mesh.connector_object c JOIN pb.users u ON c.anchor = u.login
             WHERE c.attrs = to_jsonb(u.*) AND c.hash = md5(to_jsonb(u.*)::text) AND c.mesh_id IS NOT NULL"),
        2
    );
    let again = js("SELECT to_jsonb(r) FROM mesh.run('Users', 'full_import') r");
    assert_eq!((again["updated"].clone(), again["unchanged"].clone()), (json!(0), json!(2)), "{again}");
    assert_eq!(int("SELECT count(*) FROM mesh.staging"), 0);

    // A flow that rewrites the anchor column: the rows are written under the new anchors the
    // changes set, and found under them (not reported missing); the next import reads them.
    run(&format!("SELECT mesh.remove_flow({login})"));
    run("SELECT mesh.add_export_flow('Users', 'person', $$'user' || employee_id$$, 'login')");
    let moved = cycle();
    assert_eq!(moved["Users/export"]["errors"], json!(0), "{moved}");
    assert_eq!(moved["Users/export"]["updated"], json!(2), "{moved}");
    assert_eq!(int("SELECT count(*) FROM pb.users WHERE login LIKE 'user%'"), 2);
    assert_eq!(int("SELECT count(*) FROM mesh.staging"), 0);
    assert_eq!(int("SELECT count(*) FROM mesh.run_error"), 0);
    assert_eq!(int("SELECT count(*) FROM mesh.pending_export WHERE status = 'applied'"), 2);
}

/// One bad row in an export is an error on that object; the others are written.
#[pg_test]
fn one_bad_export_row_does_not_stop_the_others() {
    hr_and_phonebook();
    run("ALTER TABLE pb.entries ADD CONSTRAINT short_titles CHECK (length(title) < 9) NOT VALID");
    run("SELECT mesh.add_export_flow('Phonebook', 'person', 'title', 'title')");
    let runs = cycle();
    // Engineer and Admiral fit; Researcher (10 letters) does not.
    assert_eq!(runs["Phonebook/export"]["updated"], json!(2), "{runs}");
    assert_eq!(runs["Phonebook/export"]["errors"], json!(1), "{runs}");
    assert_eq!(runs["Phonebook/export"]["status"], json!("warning"));
    let e = js("SELECT to_jsonb(e) FROM mesh.errors e WHERE connector = 'Phonebook'");
    assert_eq!(e["sqlstate"], json!("23514"), "{e}");
    assert_eq!(e["operation"], json!("update"));
    assert_eq!(one::<String>("SELECT title FROM pb.entries WHERE emp_no = '1'").as_deref(), Some("Engineer"));
    assert_eq!(js("SELECT to_jsonb(p) FROM mesh.pending_exports p")["status"], json!("failed"));
    // Fixed at the source: retried and cleared.
    run("UPDATE hr.employees SET title = 'Scholar' WHERE employee_id = 3");
    let runs = cycle();
    assert_eq!(runs["Phonebook/export"]["errors"], json!(0), "{runs}");
    assert_eq!(int("SELECT count(*) FROM mesh.errors"), 0);
    assert_eq!(int("SELECT count(*) FROM mesh.pending_export"), 0);
    assert_eq!(js("SELECT to_jsonb(d) FROM mesh.dashboard d WHERE flow = 'Mesh -> Phonebook'")["status"], json!("Healthy"));
}

/// An export the target does not show when it is next read is written again: changed
/// back by someone, it is put right; undone each time (a trigger), it becomes an error
/// that names the attribute after the third write. Before, it stayed "applied" for good and
/// the same change was never written again.
#[pg_test]
fn an_export_the_target_undoes_is_written_again_then_reported() {
    hr_and_phonebook();
    // Read through a view, the phonebook's written rows wait for its next import to
    // confirm them (they are not read back at once).
    run("CREATE VIEW pb.entries_v AS SELECT * FROM pb.entries");
    run(r#"SELECT mesh.alter_connector('Phonebook', config => '{"source": "pb.entries_v", "anchor": "emp_no",
              "delta_column": "modified_at", "export_table": "pb.entries", "export_mode": "update"}')"#);
    run("SELECT mesh.add_export_flow('Phonebook', 'person', 'title', 'title')");
    let first = cycle();
    assert_eq!(first["Phonebook/export"]["updated"], json!(3), "{first}");
    assert_eq!(int("SELECT count(*) FROM mesh.pending_export WHERE status = 'applied'"), 3);
    cycle();
    assert_eq!(int("SELECT count(*) FROM mesh.pending_export"), 0, "confirmed by the import");

    // Someone puts the old title back after the export: the next cycle writes it again.
    run("UPDATE hr.employees SET title = 'Countess' WHERE employee_id = 1");
    let written = cycle();
    assert_eq!(written["Phonebook/export"]["updated"], json!(1), "{written}");
    run("UPDATE pb.entries SET title = 'Developer' WHERE emp_no = '1'");
    let again = cycle();
    assert_eq!(again["Phonebook/export"]["updated"], json!(1), "written again: {again}");
    assert_eq!(one::<String>("SELECT title FROM pb.entries WHERE emp_no = '1'").as_deref(), Some("Countess"));
    cycle();
    assert_eq!(int("SELECT count(*) FROM mesh.pending_export"), 0, "confirmed at last");
    assert_eq!(int("SELECT count(*) FROM mesh.errors"), 0);

    // A trigger undoes every write of Grace's title: written three times, then an error.
    run("CREATE FUNCTION pb.keep_title() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF NEW.emp_no = '2' THEN NEW.title := OLD.title; END IF; RETURN NEW; END $$;
         CREATE TRIGGER keep_title BEFORE UPDATE ON pb.entries FOR EACH ROW EXECUTE FUNCTION pb.keep_title()");
    run("UPDATE hr.employees SET title = 'Rear Admiral' WHERE employee_id = 2");
    let mut writes = Vec::new();
    for _ in 0..5 {
        writes.push(cycle()["Phonebook/export"]["updated"].clone());
    }
    assert_eq!(writes, vec![json!(1), json!(1), json!(1), json!(0), json!(0)], "three writes, then held");
    let e = js("SELECT to_jsonb(e) FROM mesh.errors e WHERE connector = 'Phonebook'");
    assert_eq!(e["operation"], json!("update"), "{e}");
    let message = e["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("written 3 times, and each time the next import showed another value for title"),
        "{message}"
    );
    let held = js("SELECT to_jsonb(p) FROM mesh.pending_exports p");
    assert_eq!((&held["status"], &held["undone"]), (&json!("failed"), &json!(3)), "{held}");
    assert_eq!(one::<String>("SELECT title FROM pb.entries WHERE emp_no = '2'").as_deref(), Some("Admiral"));
    // What counts as another value: not an attribute the import does not read, not an empty
    // value for an empty one, not 5.00 for 5.
    assert_eq!(
        one::<String>(r#"SELECT mesh.contradicted('{"a": 5.00, "b": "", "c": "x", "e": ["q", "p"]}',
                                                  '{"a": 5, "b": null, "c": "y", "d": 1, "e": ["p", "q"]}')"#)
            .as_deref(),
        Some("c")
    );
}

/// A set-returning function as the source, the user's own SQL functions as the export, and
/// deprovisioning by delete.
#[pg_test]
fn function_source_export_functions_and_delete() {
    hr_and_phonebook();
    run("CREATE FUNCTION hr.active_people() RETURNS SETOF hr.employees LANGUAGE sql STABLE
             AS $$ SELECT * FROM hr.employees WHERE NOT terminated $$");
    run("CREATE TABLE pb.badges (badge_for integer PRIMARY KEY, holder text)");
    run("CREATE TABLE pb.badge_log (op text, attrs jsonb, current jsonb)");
    run("CREATE FUNCTION pb.issue_badge(a jsonb, c jsonb) RETURNS void LANGUAGE sql AS $$
             INSERT INTO pb.badges VALUES ((a->>'badge_for')::int, a->>'holder');
             INSERT INTO pb.badge_log VALUES ('add', a, c) $$");
    run("CREATE FUNCTION pb.revoke_badge(a jsonb, c jsonb) RETURNS void LANGUAGE sql AS $$
             DELETE FROM pb.badges WHERE badge_for = (c->>'badge_for')::int;
             INSERT INTO pb.badge_log VALUES ('delete', a, c) $$");
    run(r#"SELECT mesh.create_connector('Active HR', 'table', '{"source": "hr.active_people()", "anchor": "employee_id"}')"#);
    run(r#"SELECT mesh.create_connector('Badges', 'table', '{"source": "pb.badges", "anchor": "badge_for",
              "export_functions": {"add": "pb.issue_badge", "delete": "pb.revoke_badge"}}')"#);
    run("SELECT mesh.set_projection('Active HR', 'person', true)");
    run("SELECT mesh.add_import_flow('Active HR', 'person', 'employee_id', 'badge_number', 100)");
    run("SELECT mesh.add_import_flow('Active HR', 'person', 'last_name', 'surname', 100)");
    run("SELECT mesh.add_join_rule('Badges', 'person', 'badge_for', 'badge_number')");
    run("SELECT mesh.add_export_flow('Badges', 'person', 'badge_number', 'badge_for')");
    run("SELECT mesh.add_export_flow('Badges', 'person', 'surname', 'holder')");
    run(r#"SELECT mesh.set_provisioning('Badges', 'person', NULL, '{"deprovision": "delete"}')"#);
    // The HR and phonebook connectors of the fixture stay out of this test.
    run("SELECT mesh.alter_connector('HR', enabled => false)");
    run("SELECT mesh.alter_connector('Phonebook', enabled => false)");

    let runs = cycle();
    assert_eq!(runs["Active HR/delta_import"]["added"], json!(3), "{runs}");
    assert_eq!(runs["Badges/export"]["added"], json!(3), "{runs}");
    assert_eq!(int("SELECT count(*) FROM pb.badges"), 3);
    assert_eq!(one::<String>("SELECT holder FROM pb.badges WHERE badge_for = 2").as_deref(), Some("Hopper"));
    // No read-back through functions: the next import confirms, and joins the badges.
    let runs = cycle();
    assert_eq!(runs["Badges/delta_import"]["added"], json!(3), "{runs}");
    assert_eq!(runs["Badges/export"]["added"], json!(0), "{runs}");
    assert_eq!(int("SELECT count(*) FROM mesh.pending_export"), 0);

    // Grace leaves: the function source stops returning her, the badge is revoked.
    run("UPDATE hr.employees SET terminated = true WHERE employee_id = 2");
    let runs = cycle();
    assert_eq!(runs["Active HR/delta_import"]["deleted"], json!(1), "{runs}");
    assert_eq!(runs["Badges/export"]["deleted"], json!(1), "{runs}");
    assert_eq!(int("SELECT count(*) FROM pb.badges WHERE badge_for = 2"), 0);
    let log = js("SELECT current FROM pb.badge_log WHERE op = 'delete'");
    assert_eq!(log["badge_for"], json!(2), "the delete function got the badge's current attributes: {log}");
    let runs = cycle();
    assert_eq!(runs["Badges/delta_import"]["deleted"], json!(1), "{runs}");
    assert_eq!(int("SELECT count(*) FROM mesh.mesh_object"), 2, "Grace's mesh object is gone");
    assert_eq!(int("SELECT count(*) FROM mesh.pending_export"), 0);
}

/// A value reads the same whoever runs the engine: a client whose session sets another
/// time zone, float digits, interval, bytea or date style (JDBC sets the JVM's time zone)
/// sees the engine write UTC and exact digits, in imports and in flow expressions alike,
/// and gets its own settings back; the next run from a default session finds nothing
/// changed.
#[pg_test]
fn values_read_the_same_whatever_the_callers_settings() {
    run(r#"CREATE SCHEMA z;
         CREATE TABLE z.people (id integer PRIMARY KEY, stamp timestamptz, span interval, f double precision,
                                raw bytea, day date, dtext text);
         INSERT INTO z.people VALUES (1, '2026-01-02 03:04:05.678+02', '1 day 2 hours 3 minutes 4 seconds',
                                      0.1::float8 + 0.2::float8, '\x0102', '2026-03-04', '03/04/2026')"#);
    run(r#"SELECT mesh.create_connector('Zoned', 'table', '{"source": "z.people", "anchor": "id"}')"#);
    run("SELECT mesh.set_projection('Zoned', 'person', true)");
    run("SELECT mesh.add_import_flow('Zoned', 'person', a, a, 90) FROM unnest(ARRAY['id', 'stamp', 'span', 'f', 'raw', 'day']) a");
    run("SELECT mesh.add_import_flow('Zoned', 'person', 'stamp::timestamptz::text || '' '' || day::date::text', 'stamp_text', 90)");
    run("SELECT mesh.add_import_flow('Zoned', 'person', 'dtext::date', 'dparsed', 90)");
    run("SET TimeZone = 'Asia/Tokyo'; SET IntervalStyle = 'iso_8601'; SET extra_float_digits = -3;
         SET bytea_output = 'escape'; SET DateStyle = 'SQL, DMY'");
    let runs = cycle();
    assert_eq!(runs["Zoned/delta_import"]["added"], json!(1), "{runs}");
    let got = js("SELECT attrs FROM mesh.mesh_object WHERE NOT deleted");
    assert_eq!(got["stamp"], json!("2026-01-02T01:04:05.678+00:00"), "{got}");
    assert_eq!(got["span"], json!("1 day 02:03:04"), "{got}");
    assert_eq!(got["f"].to_string(), "0.30000000000000004", "{got}");
    assert_eq!(got["raw"], json!("\\x0102"), "{got}");
    assert_eq!(got["stamp_text"], json!("2026-01-02 01:04:05.678+00 2026-03-04"), "{got}");
    assert_eq!(got["dparsed"], json!("2026-03-04"), "month first, whatever the caller's DateStyle: {got}");
    // explain evaluates the flow expression again, as the sync did
    let explained = js("SELECT e.value FROM mesh.mesh_object o, mesh.explain(o.id, 'stamp_text') e WHERE NOT o.deleted");
    assert_eq!(explained, got["stamp_text"]);
    assert_eq!(
        one::<String>("SELECT current_setting('TimeZone') || ' ' || current_setting('extra_float_digits')"),
        Some("Asia/Tokyo -3".into()),
        "the caller's settings come back"
    );
    run("RESET TimeZone; RESET IntervalStyle; RESET extra_float_digits; RESET bytea_output; RESET DateStyle");
    let again = js("SELECT to_jsonb(r) FROM mesh.run('Zoned', 'full_import') r");
    assert_eq!((again["updated"].clone(), again["unchanged"].clone()), (json!(0), json!(1)), "{again}");
}

/// An attribute nothing contributes is left out of the object, and only that: a null
/// member inside a value (a jsonb column's `{"z": null}`) is part of the value, kept in
/// the mesh and written to targets as it was read.
#[pg_test]
fn null_members_inside_values_are_kept() {
    run(r#"CREATE SCHEMA j;
         CREATE TABLE j.src (id integer PRIMARY KEY, doc jsonb, note text);
         INSERT INTO j.src VALUES (1, '{"x": 1.50, "z": null, "n": {"a": null, "b": [null, {"c": null}]}}', NULL),
                                  (2, '{"x": 2}', 'plain');
         CREATE TABLE j.dst (id integer PRIMARY KEY, doc jsonb, note text)"#);
    run(r#"SELECT mesh.create_connector('Docs', 'table', '{"source": "j.src", "anchor": "id"}')"#);
    run(r#"SELECT mesh.create_connector('Copy', 'table', '{"source": "j.dst", "anchor": "id", "export_table": "j.dst"}')"#);
    run("SELECT mesh.set_projection('Docs', 'person', true)");
    run("SELECT mesh.add_import_flow('Docs', 'person', a, a, 90) FROM unnest(ARRAY['id', 'doc', 'note']) a");
    run("SELECT mesh.add_export_flow('Copy', 'person', a, a) FROM unnest(ARRAY['id', 'doc', 'note']) a");
    run("SELECT mesh.set_provisioning('Copy', 'person', NULL, '{}')");
    let runs = cycle();
    assert_eq!(runs["Copy/export"]["added"], json!(2), "{runs}");
    let first = js("SELECT attrs FROM mesh.mesh_object WHERE attrs->>'id' = '1'");
    assert_eq!(
        int(r#"SELECT count(*) FROM mesh.mesh_object
               WHERE attrs = '{"id": 1, "doc": {"x": 1.50, "z": null, "n": {"a": null, "b": [null, {"c": null}]}}}'"#),
        1,
        "{first}"
    );
    assert_eq!(int("SELECT count(*) FROM j.dst d JOIN j.src s USING (id) WHERE d.doc = s.doc AND d.note IS NOT DISTINCT FROM s.note"), 2);
    // Read back and compared: nothing left to do.
    let again = cycle();
    assert_eq!(again["Copy/export"]["added"], json!(0), "{again}");
    assert_eq!(int("SELECT count(*) FROM mesh.pending_export"), 0);
}

/// Rules are listed in one view with the ids the remove functions take. Removing
/// provisioning stops creating objects without deprovisioning the ones it created: an add
/// not yet written is dropped, the accounts written stay joined and kept up to date.
#[pg_test]
fn rules_are_listed_and_provisioning_is_removed_without_deprovisioning() {
    hr_phonebook_and_accounts();
    run(r#"SELECT mesh.set_provisioning('Accounts', 'person', $$department = 'R&D'$$, '{"deprovision": "delete"}')"#);
    let listed = js("SELECT jsonb_object_agg(rule, n) FROM (SELECT rule, count(*) AS n FROM mesh.rules GROUP BY rule) r");
    assert_eq!(listed, json!({"import flow": 5, "export flow": 2, "join rule": 2, "projection": 1, "provisioning": 1}));
    assert_eq!(cycle()["Accounts/export"]["added"], json!(2), "Ada and Alan");
    cycle();
    // Grace joins R&D: her add is planned, then provisioning is removed before it is written.
    run("UPDATE hr.employees SET department = 'R&D' WHERE employee_id = 2");
    run("SELECT mesh.run('HR', 'delta_import')");
    run("SELECT mesh.sync()");
    assert_eq!(int("SELECT count(*) FROM mesh.pending_export WHERE operation = 'add'"), 1);
    // The scope reads department: its only import flow stays while the scope does.
    let department = int("SELECT id FROM mesh.rules WHERE rule = 'import flow' AND target = 'department'");
    let kept = outcome(&format!("SELECT mesh.remove_flow({department})"));
    assert!(kept.starts_with("2BP01") && kept.contains("provisioning scope of Accounts"), "{kept}");
    run("SELECT mesh.remove_provisioning('Accounts', 'person')");
    assert_eq!(int("SELECT count(*) FROM mesh.pending_export WHERE operation = 'add'"), 0, "dropped at once");
    assert!(outcome("SELECT mesh.remove_provisioning('Accounts', 'person')").starts_with("42704"));
    run("UPDATE hr.employees SET first_name = 'Augusta Ada' WHERE employee_id = 1");
    let runs = cycle();
    assert_eq!(runs["Accounts/export"]["added"], json!(0), "{runs}");
    assert_eq!(runs["Accounts/export"]["deleted"], json!(0), "{runs}");
    assert_eq!(runs["Accounts/export"]["updated"], json!(1), "Ada's display still flows: {runs}");
    assert_eq!(int("SELECT count(*) FROM pb.accounts"), 2);
    assert_eq!(one::<String>("SELECT display FROM pb.accounts WHERE login = 'u1'").as_deref(), Some("Augusta Ada Lovelace"));
    let join = int("SELECT id FROM mesh.rules WHERE rule = 'join rule' AND connector = 'Accounts'");
    run(&format!("SELECT mesh.remove_join_rule({join})"));
    assert!(outcome(&format!("SELECT mesh.remove_join_rule({join})")).starts_with("42704"));
    assert_eq!(int("SELECT count(*) FROM mesh.rules WHERE rule IN ('join rule', 'provisioning') AND connector = 'Accounts'"), 0);
    // Rules over attributes are checked against the import flows, so those come first.
    run("SELECT mesh.create_object_type('robot')");
    let early = outcome("SELECT mesh.set_provisioning('Accounts', 'robot', $$serial IS NOT NULL$$)");
    assert!(early.starts_with("42703") && early.contains("no import flow of robot"), "{early}");
    // Words that are no attribute (functions without parentheses, type names, fields of
    // extract) are not taken for one: the server says which names are columns.
    let words = outcome(
        "SELECT mesh.set_provisioning('Accounts', 'person',
             $$department = 'R&D' AND extract(year from current_date) > 2000 AND CAST(employee_id AS integer) > 0$$)",
    );
    assert_eq!(words, "ok");
    let source = outcome(
        "SELECT mesh.add_export_flow('Phonebook', 'person', $$CAST(employee_id AS text) || ' ' || current_user$$, 'phone')",
    );
    assert_eq!(source, "ok");
    let typo = outcome("SELECT mesh.set_provisioning('Accounts', 'person', $$departmnt = 'R&D' AND current_date > date '2020-01-01'$$)");
    assert!(typo.starts_with("42703") && typo.contains("departmnt"), "{typo}");
}

/// A flow expression that fails on one source value fails the cycle's sync, and says so:
/// the imports stay, the sync is a failed run with the server's message, nothing is
/// exported, and the dashboard shows the error; once the value is fixed the next cycle
/// goes through.
#[pg_test]
fn a_failing_flow_expression_fails_the_sync_visibly() {
    hr_and_phonebook();
    let sync_status = |runs: &Value| runs.get("/sync").or(runs.get("/full_sync")).map(|r| r["status"].clone());
    run("SELECT mesh.add_import_flow('Phonebook', 'person', $$CASE WHEN phone LIKE '+%' THEN 0 ELSE phone::integer END$$, 'badge', 10)");
    assert_eq!(sync_status(&cycle()), Some(json!("success")));
    run("UPDATE pb.entries SET phone = 'x4' WHERE emp_no = '1'");
    let preview = js("SELECT jsonb_agg(jsonb_build_array(operation, status)) FROM mesh.preview_cycle()");
    assert_eq!(preview[0][0], json!("sync failed"), "{preview}");
    assert!(preview[0][1].as_str().is_some_and(|m| m.contains("x4")), "{preview}");
    let runs = cycle();
    assert_eq!(runs["Phonebook/delta_import"]["status"], json!("success"), "{runs}");
    assert_eq!(sync_status(&runs), Some(json!("failed")), "{runs}");
    assert!(runs.as_object().unwrap().keys().all(|k| !k.ends_with("/export")), "nothing exported: {runs}");
    let message = one::<String>("SELECT message FROM mesh.run WHERE profile = 'sync' AND status = 'failed'").unwrap();
    assert!(message.contains("x4"), "{message}");
    assert_eq!(one::<String>("SELECT status FROM mesh.run WHERE profile = 'cycle' ORDER BY id DESC LIMIT 1").as_deref(), Some("failed"));
    run("UPDATE pb.entries SET phone = '+44 101' WHERE emp_no = '1'");
    let fixed = cycle();
    assert_eq!(sync_status(&fixed), Some(json!("success")), "{fixed}");
}
