//! The postgres connector against a second database of the project's cluster, reached over
//! TCP with password authentication (scram-sha-256), and the encryption of its secret.

use idmesh_integration_tests::*;
use postgres::Client;
use serde_json::{json, Value};

const PASSWORD: &str = "Hr-p4ss-word!";

/// The HR source database, owned by a login that needs a password over TCP.
fn hr_source() -> Client {
    let mut admin = connect("postgres");
    admin.batch_execute("DROP DATABASE IF EXISTS idmesh_it_hr WITH (FORCE)").unwrap();
    admin.batch_execute("CREATE DATABASE idmesh_it_hr").unwrap();
    admin
        .batch_execute(&format!(
            "DO $$ BEGIN
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hr_app') THEN CREATE ROLE hr_app LOGIN; END IF;
             END $$;
             ALTER ROLE hr_app PASSWORD '{PASSWORD}';"
        ))
        .unwrap();
    let mut hr = connect("idmesh_it_hr");
    hr.batch_execute(
        "CREATE TABLE employees (employee_id integer PRIMARY KEY, name text, salary numeric(10,2), active boolean,
             hired date, badge uuid, note text, deleted boolean NOT NULL DEFAULT false,
             modified_at timestamptz NOT NULL DEFAULT clock_timestamp());
         INSERT INTO employees (employee_id, name, salary, active, hired, badge, note, modified_at) VALUES
             (1, 'Ada', 12.50, true, '2026-01-02', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', NULL, now() - interval '1 hour'),
             (2, 'Grace', 99999.99, false, '1999-12-31', NULL, $$'); DROP TABLE employees; --$$, now() - interval '2 hours'),
             (3, 'Alan', 0, true, NULL, NULL, 'ok', now() - interval '3 hours');
         CREATE TABLE accounts (login text PRIMARY KEY, display text);
         GRANT ALL ON employees, accounts TO hr_app;",
    )
    .unwrap();
    hr
}

fn mesh_db(name: &str) -> Client {
    let mut c = fresh_database(name);
    // A key file of this test's own, so rotating it touches nothing else.
    c.batch_execute(&format!(
        "SET idmesh.secret_key_file = '/tmp/idmesh-run/{name}.key'"
    ))
    .unwrap();
    let _ = std::fs::remove_file(format!("/tmp/idmesh-run/{name}.key"));
    c
}

fn connector(c: &mut Client, name: &str, config: Value) {
    c.execute(
        "SELECT mesh.create_connector($1, 'postgres', $2, secret => $3)",
        &[&name, &config, &PASSWORD],
    )
    .unwrap();
}

fn run(c: &mut Client, connector: &str, profile: &str) -> Value {
    c.query_one(
        "SELECT to_jsonb(r) FROM mesh.run($1, $2) r",
        &[&connector, &profile],
    )
    .unwrap()
    .get(0)
}

fn hr_config() -> Value {
    json!({"dsn": format!("host=127.0.0.1 port={} dbname=idmesh_it_hr user=hr_app", port()),
           "import_query": "SELECT * FROM employees WHERE modified_at > @watermark",
           "anchor": ["employee_id"], "delta_column": "modified_at", "soft_delete_column": "deleted"})
}

#[test]
fn typed_import_delta_late_rows_deletes_and_export() {
    let mut hr = hr_source();
    let mut c = mesh_db("idmesh_it_pg");
    connector(&mut c, "HR Database", hr_config());
    let checks: Vec<(String, bool)> = c
        .query(
            "SELECT step, ok FROM mesh.test_connection('HR Database')",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        checks,
        vec![
            ("connect".to_string(), true),
            ("import_query".to_string(), true)
        ]
    );

    let full = run(&mut c, "HR Database", "full_import");
    assert_eq!(full["added"], json!(3), "{full}");
    let ada: Value = c
        .query_one(
            "SELECT attrs FROM mesh.connector_object WHERE anchor = '1'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(ada["salary"], json!(12.50));
    assert_eq!(ada["active"], json!(true));
    assert_eq!(ada["hired"], json!("2026-01-02"));
    assert_eq!(ada["badge"], json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"));
    assert_eq!(ada["note"], Value::Null);
    assert!(
        ada["modified_at"].as_str().unwrap().contains('+'),
        "timestamps keep their offset: {ada}"
    );
    let grace: Value = c
        .query_one(
            "SELECT attrs FROM mesh.connector_object WHERE anchor = '2'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        grace["note"],
        json!("'); DROP TABLE employees; --"),
        "a hostile value is data"
    );
    assert_eq!(grace["salary"], json!(99999.99));
    let high = full["watermark_after"]["high"]
        .as_str()
        .unwrap()
        .to_string();

    // Delta: one change, and a row committed late with an older delta value.
    hr.batch_execute("UPDATE employees SET name = 'Ada L.', modified_at = clock_timestamp() WHERE employee_id = 1").unwrap();
    hr.execute(
        "INSERT INTO employees (employee_id, name, modified_at) VALUES (4, 'Late', $1::text::timestamptz - interval '1 minute')",
        &[&high],
    )
    .unwrap();
    let d = run(&mut c, "HR Database", "delta_import");
    assert_eq!(
        (d["added"].clone(), d["updated"].clone()),
        (json!(1), json!(1)),
        "{d}"
    );
    // Soft delete, then a hard delete seen by a full import.
    hr.batch_execute("UPDATE employees SET deleted = true, modified_at = clock_timestamp() WHERE employee_id = 3").unwrap();
    assert_eq!(
        run(&mut c, "HR Database", "delta_import")["deleted"],
        json!(1)
    );
    hr.batch_execute("DELETE FROM employees WHERE employee_id = 4")
        .unwrap();
    assert_eq!(
        run(&mut c, "HR Database", "delta_import")["deleted"],
        json!(0),
        "a delta cannot see a hard delete"
    );
    assert_eq!(
        run(&mut c, "HR Database", "full_import")["deleted"],
        json!(1)
    );

    // Export into the other table of the source database: upserts, then a delete.
    connector(
        &mut c,
        "Accounts",
        json!({"dsn": format!("host=127.0.0.1 port={} dbname=idmesh_it_hr user=hr_app", port()),
               "import_query": "SELECT * FROM accounts", "anchor": "login", "export_table": "accounts"}),
    );
    c.batch_execute(
        r#"SELECT mesh.set_projection('HR Database', 'person', true);
           SELECT mesh.add_import_flow('HR Database', 'person', 'employee_id', 'employee_id', 100);
           SELECT mesh.add_import_flow('HR Database', 'person', 'name', 'name', 100);
           SELECT mesh.add_join_rule('Accounts', 'person', $$substr(login, 2)$$, 'employee_id');
           SELECT mesh.add_export_flow('Accounts', 'person', $$'u' || employee_id$$, 'login');
           SELECT mesh.add_export_flow('Accounts', 'person', 'name', 'display');
           SELECT mesh.set_provisioning('Accounts', 'person', NULL, '{"deprovision": "delete"}');"#,
    )
    .unwrap();
    let steps: Vec<(String, String, i32)> = c
        .query(
            "SELECT coalesce(connector, ''), profile, added FROM mesh.cycle()",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert!(
        steps.contains(&("Accounts".into(), "export".into(), 2)),
        "{steps:?}"
    );
    let accounts: Vec<(String, String)> = hr
        .query("SELECT login, display FROM accounts ORDER BY login", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        accounts,
        vec![
            ("u1".into(), "Ada L.".into()),
            ("u2".into(), "Grace".into())
        ]
    );
    c.batch_execute("SELECT count(*) FROM mesh.cycle()")
        .unwrap(); // the accounts are imported and joined
    hr.batch_execute("DELETE FROM employees WHERE employee_id = 2")
        .unwrap();
    c.batch_execute(
        "SELECT mesh.run('HR Database', 'full_import'); SELECT count(*) FROM mesh.cycle();",
    )
    .unwrap();
    let logins: Vec<String> = hr
        .query("SELECT login FROM accounts ORDER BY login", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(logins, vec!["u1".to_string()], "deprovisioned by delete");

    // A hostile column name is an identifier, quoted: the export fails for that object only.
    c.batch_execute(r#"SELECT mesh.add_export_flow('Accounts', 'person', 'name', 'display"; DROP TABLE accounts; --')"#).unwrap();
    hr.batch_execute("UPDATE employees SET name = 'Ada King', modified_at = clock_timestamp() WHERE employee_id = 1").unwrap();
    c.batch_execute("SELECT count(*) FROM mesh.cycle()")
        .unwrap();
    let e: Value = c
        .query_one(
            "SELECT to_jsonb(e) FROM mesh.errors e WHERE connector = 'Accounts'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(e["sqlstate"], json!("42703"), "{e}");
    let still: i64 = hr
        .query_one("SELECT count(*) FROM accounts", &[])
        .unwrap()
        .get(0);
    assert_eq!(still, 1, "the accounts table is still there");
}

#[test]
fn secrets_are_encrypted_never_shown_and_need_their_key() {
    let _hr = hr_source();
    // What idmesh logs from here on (the test's own ALTER ROLE ... PASSWORD is not idmesh's).
    let log_from = std::fs::metadata("/tmp/idmesh-run/postgres.log").map(|m| m.len() as usize).unwrap_or(0);
    let mut c = mesh_db("idmesh_it_secret");
    connector(&mut c, "HR Database", hr_config());
    run(&mut c, "HR Database", "full_import");
    // Nowhere a reader could look, nor in the stored bytes.
    let everything: String = c
        .query_one(
            "SELECT concat_ws(' ', (SELECT jsonb_agg(d)::text FROM mesh.dashboard d), (SELECT jsonb_agg(r)::text FROM mesh.run_history r),
                    (SELECT jsonb_agg(a)::text FROM mesh.audit_log a), (SELECT jsonb_agg(e)::text FROM mesh.errors e),
                    (SELECT encode(secret, 'escape') FROM mesh.connector), (SELECT encode(secret, 'hex') FROM mesh.connector),
                    (SELECT string_agg(query, ' ') FROM pg_stat_activity))",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(!everything.contains(PASSWORD), "the secret leaked");
    assert!(everything.contains("secret_changed") || everything.contains("HR Database"));
    let log = std::fs::read("/tmp/idmesh-run/postgres.log").unwrap_or_default();
    let log = String::from_utf8_lossy(&log[log_from.min(log.len())..]).into_owned();
    assert!(!log.contains(PASSWORD), "the secret is in the server log");
    let key = std::fs::metadata("/tmp/idmesh-run/idmesh_it_secret.key").unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        key.permissions().mode() & 0o777,
        0o600,
        "owner-only key file"
    );

    // A wrong password: a clear error that does not repeat it.
    c.execute(
        "SELECT mesh.alter_connector('HR Database', secret => $1)",
        &[&"Wr0ng-guess"],
    )
    .unwrap();
    let err = c
        .batch_execute("SELECT mesh.run('HR Database', 'delta_import')")
        .unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "08006");
    assert!(
        db.message().contains("password authentication failed"),
        "{}",
        db.message()
    );
    assert!(!db.message().contains("Wr0ng-guess"));
    c.execute(
        "SELECT mesh.alter_connector('HR Database', secret => $1)",
        &[&PASSWORD],
    )
    .unwrap();

    // Rotation re-encrypts; the connector still logs in.
    let rotated: i64 = c
        .query_one("SELECT mesh.rotate_secret_key()", &[])
        .unwrap()
        .get(0);
    assert_eq!(rotated, 1);
    assert_eq!(
        run(&mut c, "HR Database", "delta_import")["status"],
        json!("success")
    );

    // The wrong key file: a clear error; everything else still works.
    c.batch_execute("SET idmesh.secret_key_file = '/tmp/idmesh-run/idmesh_it_other.key'")
        .unwrap();
    let _ = std::fs::remove_file("/tmp/idmesh-run/idmesh_it_other.key");
    assert_eq!(
        sqlstate_of(&mut c, "SELECT mesh.run('HR Database', 'delta_import')"),
        "F0000"
    );
    let n: i64 = c
        .query_one("SELECT count(*) FROM mesh.dashboard", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}
