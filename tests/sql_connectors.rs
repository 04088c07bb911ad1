//! The postgres connector against a second database of the project's cluster, reached over
//! TCP with password authentication (scram-sha-256), and the encryption of its secret.

use idmesh_integration_tests::*;
use postgres::Client;
use serde_json::{json, Value};

const PASSWORD: &str = "Hr-p4ss-word!";

/// The HR source database, owned by a login that needs a password over TCP.
fn hr_source() -> Client {
    let mut hr = database_with_login("idmesh_it_hr", "hr_app", PASSWORD);
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

fn connector(c: &mut Client, name: &str, config: Value) {
    c.execute(
        "SELECT mesh.create_connector($1, 'postgres', $2, secret => $3)",
        &[&name, &config, &PASSWORD],
    )
    .unwrap();
}

fn hr_config() -> Value {
    json!({"dsn": format!("host=127.0.0.1 port={} dbname=idmesh_it_hr user=hr_app", port()),
           "import_query": "SELECT * FROM employees WHERE modified_at > @watermark",
           "anchor": ["employee_id"], "delta_column": "modified_at", "soft_delete_column": "deleted"})
}

#[test]
fn typed_import_delta_late_rows_deletes_and_export() {
    let mut hr = hr_source();
    let mut c = fresh_database_with_own_key("idmesh_it_pg");
    connector(&mut c, "HR Database", hr_config());
    let checks: Vec<(String, bool)> = pairs(&mut c, "SELECT step, ok FROM mesh.test_connection('HR Database')");
    assert_eq!(
        checks,
        vec![
            ("connect".to_string(), true),
            ("import_query".to_string(), true)
        ]
    );

    // A first import lands straight in the empty connector space (a source without a
    // soft-delete column); an anchor the source returns twice still fails it, naming the
    // anchor, and leaves nothing behind.
    let mut plain = hr_config();
    plain.as_object_mut().unwrap().remove("soft_delete_column");
    let mut twice = plain.clone();
    twice["import_query"] = json!(
        "SELECT * FROM employees WHERE modified_at > @watermark UNION ALL SELECT * FROM employees WHERE employee_id = 2"
    );
    connector(&mut c, "HR twice", twice);
    let e = c
        .batch_execute("SELECT mesh.run('HR twice', 'full_import')")
        .unwrap_err();
    let e = e.as_db_error().expect("a server error");
    assert_eq!(e.code().code(), "23505");
    assert_eq!(
        e.message(),
        r#"the source returned anchor "2" more than once"#
    );
    let left: i64 = c
        .query_one("SELECT count(*) FROM mesh.connector_object", &[])
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "nothing of the failed first import stays");
    c.execute(
        "SELECT mesh.alter_connector('HR twice', config => $1)",
        &[&plain],
    )
    .unwrap();
    let landed = run(&mut c, "HR twice", "full_import");
    assert_eq!(landed["added"], json!(3), "{landed}");
    assert_eq!(landed["details"]["landed"], json!(true), "{landed}");
    // What landed classifies like merged rows: a second full import (staged and merged)
    // finds every row unchanged.
    let again = run(&mut c, "HR twice", "full_import");
    assert_eq!(
        (
            again["added"].clone(),
            again["updated"].clone(),
            again["unchanged"].clone()
        ),
        (json!(0), json!(0), json!(3)),
        "{again}"
    );
    assert_eq!(again["details"].get("landed"), None, "{again}");
    c.batch_execute("SELECT mesh.drop_connector('HR twice')")
        .unwrap();

    // With a soft-delete column the first import stages and merges (the merge checks the
    // rows marked deleted too).
    let full = run(&mut c, "HR Database", "full_import");
    assert_eq!(full["added"], json!(3), "{full}");
    assert_eq!(full["details"].get("landed"), None, "{full}");
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
    let accounts: Vec<(String, String)> = pairs(&mut hr, "SELECT login, display FROM accounts ORDER BY login");
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
    let log_from = std::fs::metadata("/tmp/idmesh-run/postgres.log")
        .map(|m| m.len() as usize)
        .unwrap_or(0);
    let mut c = fresh_database_with_own_key("idmesh_it_secret");
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

    // The stored secret goes only where it was given for: another server needs it again.
    let mut elsewhere = hr_config();
    elsewhere["dsn"] = json!(format!("host=localhost port={} dbname=idmesh_it_hr user=hr_app", port()));
    assert_eq!(
        sqlstate_of(&mut c, &format!("SELECT mesh.alter_connector('HR Database', config => '{elsewhere}')")),
        "22023"
    );
    // A secret is sealed for its connector: copied to another, it does not open there.
    connector(&mut c, "Copy", hr_config());
    c.batch_execute(
        "UPDATE mesh.connector SET secret = (SELECT secret FROM mesh.connector WHERE name = 'HR Database') WHERE name = 'Copy'",
    )
    .unwrap();
    assert_eq!(sqlstate_of(&mut c, "SELECT mesh.run('Copy', 'full_import')"), "F0000");
    c.batch_execute("SELECT mesh.drop_connector('Copy')").unwrap();

    // Rotation re-encrypts; the connector still logs in.
    let key_file = "/tmp/idmesh-run/idmesh_it_secret.key";
    let before = std::fs::read(key_file).unwrap();
    // Not inside a savepoint: a rolled-back savepoint could not take back the new key file.
    c.batch_execute("BEGIN; SAVEPOINT s").unwrap();
    assert_eq!(sqlstate_of(&mut c, "SELECT mesh.rotate_secret_key()"), "25000");
    c.batch_execute("ROLLBACK").unwrap();
    assert_eq!(std::fs::read(key_file).unwrap(), before);
    // Twice in one transaction: the second would take the first's new key for a crashed
    // rotation's and move it in place before the commit.
    c.batch_execute("BEGIN; SELECT mesh.rotate_secret_key()").unwrap();
    assert_eq!(sqlstate_of(&mut c, "SELECT mesh.rotate_secret_key()"), "25000");
    c.batch_execute("ROLLBACK").unwrap();
    assert_eq!(std::fs::read(key_file).unwrap(), before);
    let rotated: i64 = c
        .query_one("SELECT mesh.rotate_secret_key()", &[])
        .unwrap()
        .get(0);
    assert_eq!(rotated, 1);
    assert_ne!(std::fs::read(key_file).unwrap(), before);
    assert_eq!(std::fs::read(format!("{key_file}.idmesh-previous")).unwrap(), before);
    assert_eq!(
        run(&mut c, "HR Database", "delta_import")["status"],
        json!("success")
    );
    // A damaged companion key file never stands in the way of the current key.
    std::fs::write(format!("{key_file}.idmesh-previous"), b"short").unwrap();
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
    // A missing key file is not made anew while secrets need the old one.
    assert!(!std::path::Path::new("/tmp/idmesh-run/idmesh_it_other.key").exists());
    let n: i64 = c
        .query_one("SELECT count(*) FROM mesh.dashboard", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    // In a cycle, that connector fails alone: the others still import.
    c.batch_execute(
        "CREATE TABLE local_people (id integer PRIMARY KEY, name text); INSERT INTO local_people VALUES (1, 'Ada');
         SELECT mesh.create_connector('Local', 'table', '{\"source\": \"local_people\", \"anchor\": \"id\"}');",
    )
    .unwrap();
    let steps: Vec<(Option<String>, String, String, Option<String>)> = c
        .query("SELECT connector, profile, status, message FROM mesh.cycle() ORDER BY run_id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let of = |name: &str| steps.iter().find(|s| s.0.as_deref() == Some(name)).cloned().unwrap();
    assert_eq!(of("HR Database").2, "failed", "{steps:?}");
    assert!(of("HR Database").3.unwrap_or_default().contains("key file"), "{steps:?}");
    assert_eq!((of("Local").1, of("Local").2), ("delta_import".to_string(), "success".to_string()), "{steps:?}");
}

fn tds_config(table: &str) -> Value {
    json!({"host": "127.0.0.1", "port": 14330, "user": "reader", "trust_cert": true,
           "import_query": format!("SELECT id, name, score, active, hired, modified_at FROM {table} WHERE modified_at > @watermark"),
           "anchor": "id", "delta_column": "modified_at"})
}

/// A fresh database `db` with the sqlserver connector `Payroll` reading `people` over TDS.
fn with_payroll(db: &str) -> Client {
    let mut c = fresh_database_with_own_key(db);
    c.execute(
        "SELECT mesh.create_connector('Payroll', 'sqlserver', $1, secret => $2)",
        &[&tds_config("people"), &"Tds-reader-1!"],
    )
    .unwrap();
    c
}

/// The sqlserver connector over the real SQL Server wire protocol (TDS), against the
/// pysqlbridge server scripts/tds.sh starts: login, full import, a delta with @watermark
/// bound as a parameter, types mapped.
#[test]
fn sqlserver_import_over_tds() {
    let mut c = with_payroll("idmesh_it_tds");
    let connect: bool = c
        .query_one(
            "SELECT ok FROM mesh.test_connection('Payroll') WHERE step = 'connect'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(connect);

    let full = run(&mut c, "Payroll", "full_import");
    assert_eq!(full["added"], json!(3), "{full}");
    let ada: Value = c
        .query_one(
            "SELECT attrs FROM mesh.connector_object WHERE anchor = '1'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(ada["id"].is_number(), "{ada}");
    assert_eq!(ada["name"], json!("Ada Lovelace"));
    assert_eq!(ada["score"].as_f64(), Some(99.5), "{ada}");
    let grace: Value = c
        .query_one(
            "SELECT attrs FROM mesh.connector_object WHERE anchor = '2'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        grace["hired"],
        Value::Null,
        "an empty cell is NULL: {grace}"
    );
    assert!(
        full["watermark_after"]["high"]
            .as_str()
            .unwrap()
            .starts_with("2026-11-03"),
        "{full}"
    );

    // Nothing newer: only the newest row comes back (inside the 5-minute overlap), unchanged.
    let d = run(&mut c, "Payroll", "delta_import");
    assert_eq!(
        (
            d["added"].clone(),
            d["updated"].clone(),
            d["details"]["seen"].clone()
        ),
        (json!(0), json!(0), json!(1)),
        "{d}"
    );
    let log = std::fs::read_to_string("/tmp/idmesh-run/tds/log").unwrap_or_default();
    assert!(
        log.contains("@P1"),
        "the watermark went as a parameter, not spliced: {log}"
    );
    assert!(
        !log.contains("2026-11-03T12"),
        "the watermark value is not in the query text"
    );

    // The source a day later: a changed row, a new one, and one committed late with a
    // timestamp just under the watermark: the overlap window reads it too.
    let mut later = tds_config("people_later");
    later["import_query"] = json!("SELECT id, name, score, active, hired, modified_at FROM people_later WHERE modified_at > @watermark");
    c.execute(
        "SELECT mesh.alter_connector('Payroll', config => $1)",
        &[&later],
    )
    .unwrap();
    let d = run(&mut c, "Payroll", "delta_import");
    assert_eq!(
        (
            d["added"].clone(),
            d["updated"].clone(),
            d["unchanged"].clone()
        ),
        (json!(2), json!(1), json!(1)),
        "{d}"
    );

    // A wrong password: a clear error, without the password.
    c.execute(
        "SELECT mesh.alter_connector('Payroll', secret => $1)",
        &[&"not-the-password"],
    )
    .unwrap();
    let err = c
        .batch_execute("SELECT mesh.run('Payroll', 'full_import')")
        .unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "08006");
    assert!(db.message().contains("Login failed"), "{}", db.message());
    assert!(!db.message().contains("not-the-password"));

    // An integer delta column: the mark is bound as a bigint (the lowest one on a full
    // import), and a delta reads from the last mark minus the overlap.
    c.execute(
        "SELECT mesh.create_connector('Payroll ids', 'sqlserver', $1, secret => $2)",
        &[&json!({"host": "127.0.0.1", "port": 14330, "user": "reader", "trust_cert": true, "object_type": "group",
                  "import_query": "SELECT id, name FROM people WHERE id > @watermark",
                  "anchor": "id", "delta_column": "id", "delta_type": "integer", "overlap": 1}), &"Tds-reader-1!"],
    )
    .unwrap();
    let by_id = run(&mut c, "Payroll ids", "full_import");
    assert_eq!(by_id["status"], json!("success"), "{by_id}");
    let high = by_id["watermark_after"]["high"].as_str().unwrap().to_string();
    let again = run(&mut c, "Payroll ids", "delta_import");
    assert_eq!(again["unchanged"], json!(1), "only the row above the mark minus the overlap of 1: {again} (mark {high})");

    // The connection test runs the import query, without a run: a table that is not there
    // fails that step; a column the settings name that the query does not return, too.
    let checks = |c: &mut Client| -> Vec<(String, bool)> {
        pairs(c, "SELECT step, ok FROM mesh.test_connection('Payroll')")
    };
    c.execute(
        "SELECT mesh.alter_connector('Payroll', config => $1, secret => $2)",
        &[&json!({"host": "127.0.0.1", "port": 14330, "user": "reader", "trust_cert": true,
                  "import_query": "SELECT id FROM no_such_table", "anchor": "id"}), &"Tds-reader-1!"],
    )
    .unwrap();
    assert_eq!(checks(&mut c), vec![("connect".to_string(), true), ("import_query".to_string(), false)]);
    let mut misnamed = tds_config("people");
    misnamed["delta_column"] = json!("modified");
    c.execute("SELECT mesh.alter_connector('Payroll', config => $1)", &[&misnamed])
        .unwrap();
    assert_eq!(checks(&mut c), vec![("connect".to_string(), true), ("import_query".to_string(), false)]);
    // A run checks the same on the first row: a delta column named in another case would
    // silently leave every delta reading everything.
    let mut cased = tds_config("people");
    cased["delta_column"] = json!("MODIFIED_AT");
    c.execute("SELECT mesh.alter_connector('Payroll', config => $1)", &[&cased])
        .unwrap();
    let err = c.batch_execute("SELECT mesh.run('Payroll', 'full_import')").unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "22023");
    assert!(db.message().contains("names are matched exactly"), "{}", db.message());
    c.execute("SELECT mesh.alter_connector('Payroll', config => $1)", &[&tds_config("people")])
        .unwrap();
    assert_eq!(checks(&mut c), vec![("connect".to_string(), true), ("import_query".to_string(), true)]);
}

/// Exports to SQL Server need a real SQL Server (none can run on this machine). Set
/// IDMESH_SQLSERVER_URL=host:port:database:user:password for a login that can read and write
/// a table `dbo.idmesh_test_accounts (login nvarchar(64) PRIMARY KEY, display nvarchar(200))`,
/// then run `cargo test -p idmesh-integration-tests -- --ignored`.
#[test]
#[ignore = "needs a real SQL Server: set IDMESH_SQLSERVER_URL and run with --ignored"]
fn sqlserver_export_against_a_real_server() {
    let url = std::env::var("IDMESH_SQLSERVER_URL")
        .expect("IDMESH_SQLSERVER_URL=host:port:database:user:password");
    let parts: Vec<&str> = url.splitn(5, ':').collect();
    let mut c = fresh_database_with_own_key("idmesh_it_mssql");
    c.batch_execute(
        "CREATE SCHEMA hr; CREATE TABLE hr.people (id integer PRIMARY KEY, name text);
         INSERT INTO hr.people VALUES (1, 'Ada'), (2, 'Grace');",
    )
    .unwrap();
    c.batch_execute(
        r#"SELECT mesh.create_connector('HR', 'table', '{"source": "hr.people", "anchor": "id"}')"#,
    )
    .unwrap();
    let config = json!({"host": parts[0], "port": parts[1].parse::<u16>().unwrap(), "database": parts[2], "user": parts[3],
                        "trust_cert": true, "import_query": "SELECT login, display FROM dbo.idmesh_test_accounts",
                        "anchor": "login", "export_table": "dbo.idmesh_test_accounts"});
    c.execute(
        "SELECT mesh.create_connector('SQL Server', 'sqlserver', $1, secret => $2)",
        &[&config, &parts[4]],
    )
    .unwrap();
    c.batch_execute(
        r#"SELECT mesh.set_projection('HR', 'person', true);
           SELECT mesh.add_import_flow('HR', 'person', 'id', 'employee_id', 100);
           SELECT mesh.add_import_flow('HR', 'person', 'name', 'name', 100);
           SELECT mesh.add_join_rule('SQL Server', 'person', $$substr(login, 2)$$, 'employee_id');
           SELECT mesh.add_export_flow('SQL Server', 'person', $$'u' || employee_id$$, 'login');
           SELECT mesh.add_export_flow('SQL Server', 'person', 'name', 'display');
           SELECT mesh.set_provisioning('SQL Server', 'person', NULL, '{"deprovision": "delete"}');"#,
    )
    .unwrap();
    let added: i32 = c
        .query_one(
            "SELECT added FROM mesh.cycle() WHERE connector = 'SQL Server' AND profile = 'export'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(added, 2);
    // Read back from SQL Server: both rows, joined; then one leaves and is deleted there.
    c.batch_execute("SELECT count(*) FROM mesh.cycle()")
        .unwrap();
    let joined: i64 = c
        .query_one(
            "SELECT count(*) FROM mesh.objects WHERE connectors ? 'SQL Server'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(joined, 2);
    // Ada renamed at the source, two cycles (export, then the import reads it back): her
    // display as SQL Server now has it.
    let renamed = |c: &mut Client, name: &str| -> String {
        c.execute("UPDATE hr.people SET name = $1 WHERE id = 1", &[&name]).unwrap();
        c.batch_execute("SELECT count(*) FROM mesh.cycle(); SELECT count(*) FROM mesh.cycle();").unwrap();
        c.query_one("SELECT co.attrs->>'display' FROM mesh.connector_object co JOIN mesh.connector n ON n.id = co.connector_id \
                     WHERE n.name = 'SQL Server' AND co.anchor = 'u1'", &[])
            .unwrap()
            .get(0)
    };
    // An update writes the changed column only, by UPDATE.
    assert_eq!(renamed(&mut c, "Ada L."), "Ada L.");
    // The same through the user's own statement, its `:names` bound as @P1, @P2.
    let mut by_statement = config.clone();
    by_statement["export_statements"] =
        json!({"update": "UPDATE dbo.idmesh_test_accounts SET display = :display WHERE login = :login"});
    c.execute("SELECT mesh.alter_connector('SQL Server', config => $1)", &[&by_statement]).unwrap();
    assert_eq!(renamed(&mut c, "Ada Lovelace"), "Ada Lovelace");
    c.execute("SELECT mesh.alter_connector('SQL Server', config => $1)", &[&config]).unwrap();
    c.batch_execute("DELETE FROM hr.people WHERE id = 2; SELECT count(*) FROM mesh.cycle(); SELECT count(*) FROM mesh.cycle();").unwrap();
    let left: i64 = c.query_one("SELECT count(*) FROM mesh.connector_object co JOIN mesh.connector n ON n.id = co.connector_id WHERE n.name = 'SQL Server'", &[]).unwrap().get(0);
    assert_eq!(left, 1);
    c.batch_execute("DELETE FROM hr.people; SELECT count(*) FROM mesh.cycle();")
        .unwrap();
}

/// Exports through the user's own statements with named parameters: values are typed by the
/// target from where each parameter stands, and a failing change fails alone.
#[test]
fn export_through_user_statements_with_named_parameters() {
    let mut hr = hr_source();
    hr.batch_execute(
        "CREATE TABLE badges (badge_for integer PRIMARY KEY, holder text NOT NULL CHECK (holder <> 'Grace'));
         GRANT ALL ON badges TO hr_app;",
    )
    .unwrap();
    let mut c = fresh_database_with_own_key("idmesh_it_stmt");
    connector(&mut c, "HR Database", hr_config());
    connector(
        &mut c,
        "Badges",
        json!({"dsn": format!("host=127.0.0.1 port={} dbname=idmesh_it_hr user=hr_app", port()),
               "import_query": "SELECT * FROM badges", "anchor": "badge_for",
               "export_statements": {
                   "add": "INSERT INTO badges (badge_for, holder) VALUES (:badge_for, :holder)",
                   "update": "UPDATE badges SET holder = :holder WHERE badge_for = :badge_for",
                   "delete": "DELETE FROM badges WHERE badge_for = :badge_for"}}),
    );
    c.batch_execute(
        r#"SELECT mesh.set_projection('HR Database', 'person', true);
           SELECT mesh.add_import_flow('HR Database', 'person', 'employee_id', 'employee_id', 100);
           SELECT mesh.add_import_flow('HR Database', 'person', 'name', 'name', 100);
           SELECT mesh.add_join_rule('Badges', 'person', 'badge_for', 'employee_id');
           SELECT mesh.add_export_flow('Badges', 'person', 'employee_id', 'badge_for');
           SELECT mesh.add_export_flow('Badges', 'person', 'name', 'holder');
           SELECT mesh.set_provisioning('Badges', 'person', NULL, '{"deprovision": "delete"}');"#,
    )
    .unwrap();
    let added: i32 = c
        .query_one(
            "SELECT added FROM mesh.cycle() WHERE connector = 'Badges' AND profile = 'export'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(added, 2, "Ada and Alan; Grace is refused by the target");
    let rows: Vec<(i32, String)> = pairs(&mut hr, "SELECT badge_for, holder FROM badges ORDER BY 1");
    assert_eq!(rows, vec![(1, "Ada".to_string()), (3, "Alan".to_string())]);
    let e: Value = c
        .query_one(
            "SELECT to_jsonb(e) FROM mesh.errors e WHERE connector = 'Badges'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(e["sqlstate"], json!("23514"), "{e}");
    // The next cycle imports and joins the badges; an update goes through the update statement.
    c.batch_execute("SELECT count(*) FROM mesh.cycle()")
        .unwrap();
    hr.batch_execute("UPDATE employees SET name = 'Ada L.', modified_at = clock_timestamp() WHERE employee_id = 1").unwrap();
    c.batch_execute("SELECT count(*) FROM mesh.cycle()")
        .unwrap();
    let holder: String = hr
        .query_one("SELECT holder FROM badges WHERE badge_for = 1", &[])
        .unwrap()
        .get(0);
    assert_eq!(holder, "Ada L.");

    // An update whose row is gone from the target changed nothing: an error, not applied.
    hr.batch_execute("UPDATE employees SET name = 'Alan T.', modified_at = clock_timestamp() WHERE employee_id = 3")
        .unwrap();
    run(&mut c, "HR Database", "delta_import");
    c.batch_execute("SELECT mesh.sync()").unwrap();
    hr.batch_execute("DELETE FROM badges WHERE badge_for = 3").unwrap();
    assert_eq!(run(&mut c, "Badges", "export")["errors"], json!(1));
    let state: (String, Option<String>) = c
        .query_one(
            "SELECT pe.status, e.sqlstate FROM mesh.pending_exports pe \
             LEFT JOIN mesh.errors e ON e.connector = pe.connector AND e.mesh_id = pe.mesh_id \
             WHERE pe.connector = 'Badges' AND pe.operation = 'update' AND pe.changes->>'holder' = 'Alan T.'",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(state, ("failed".to_string(), Some("02000".to_string())));

    // A parameter no flow writes and the object does not have (a typo): an error per change,
    // never a silent NULL.
    c.execute(
        "SELECT mesh.alter_connector('Badges', config => $1)",
        &[&json!({"dsn": format!("host=127.0.0.1 port={} dbname=idmesh_it_hr user=hr_app", port()),
                  "import_query": "SELECT * FROM badges", "anchor": "badge_for",
                  "export_statements": {
                      "add": "INSERT INTO badges (badge_for, holder) VALUES (:badge_for, :holdr)",
                      "update": "UPDATE badges SET holder = :holdr WHERE badge_for = :badge_for"}})],
    )
    .unwrap();
    c.batch_execute("SELECT mesh.retry('Badges')").unwrap();
    run(&mut c, "Badges", "export");
    let codes: Vec<String> = c
        .query("SELECT DISTINCT sqlstate FROM mesh.errors WHERE connector = 'Badges'", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(codes, vec!["42703".to_string()]);
}

/// The import query is checked against the settings before a row is kept; a row dated in
/// the future cannot hold the watermark above later changes; integer delta columns of any
/// width work; a changed delta column reads everything once.
#[test]
fn import_settings_are_checked_and_the_watermark_stays_below_the_source_clock() {
    let mut hr = hr_source();
    hr.batch_execute(
        "CREATE TABLE versions (id integer PRIMARY KEY, name text, version integer NOT NULL);
         INSERT INTO versions VALUES (1, 'one', 10), (2, 'two', 20);
         GRANT ALL ON versions TO hr_app;
         UPDATE employees SET modified_at = now() + interval '1 hour' WHERE employee_id = 3;",
    )
    .unwrap();
    let mut c = fresh_database_with_own_key("idmesh_it_checks");
    connector(&mut c, "HR Database", hr_config());
    assert_eq!(run(&mut c, "HR Database", "full_import")["added"], json!(3));
    let live = |c: &mut Client| -> i64 {
        c.query_one("SELECT count(*) FROM mesh.connector_object WHERE NOT deleted", &[])
            .unwrap()
            .get(0)
    };

    // The high mark is the source's clock, not Alan's row an hour ahead: Ada's change now
    // is read by the next delta (it would hide below a mark an hour ahead).
    let high_is_past: bool = c
        .query_one(
            "SELECT (watermark_after->>'high')::timestamptz <= now() FROM mesh.run_history \
             WHERE connector = 'HR Database' ORDER BY run_id DESC LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(high_is_past);
    hr.batch_execute("UPDATE employees SET name = 'Ada L.', modified_at = clock_timestamp() WHERE employee_id = 1")
        .unwrap();
    let delta = run(&mut c, "HR Database", "delta_import");
    assert_eq!(delta["updated"], json!(1), "{delta}");

    // A soft-delete column the query does not return: refused before anything is kept
    // (every row would have read as deleted).
    let mut without = hr_config();
    without["import_query"] =
        json!("SELECT employee_id, name, modified_at FROM employees WHERE modified_at > @watermark");
    c.execute("SELECT mesh.alter_connector('HR Database', config => $1)", &[&without])
        .unwrap();
    assert_eq!(sqlstate_of(&mut c, "SELECT mesh.run('HR Database', 'full_import')"), "22023");
    assert_eq!(live(&mut c), 3);

    // A delta column that cannot be one (a boolean): said by the connection test and the
    // run alike, before anything is kept; a delta column without @watermark: refused.
    let mut boolean = hr_config();
    boolean["import_query"] = json!("SELECT * FROM employees WHERE deleted > @watermark");
    boolean["delta_column"] = json!("deleted");
    boolean["soft_delete_column"] = Value::Null;
    c.execute("SELECT mesh.alter_connector('HR Database', config => $1)", &[&boolean]).unwrap();
    let (ok, detail): (bool, String) = c
        .query_one("SELECT ok, detail FROM mesh.test_connection('HR Database') WHERE step = 'import_query'", &[])
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert!(!ok && detail.contains("delta_column \"deleted\" has type bool"), "{detail}");
    assert_eq!(sqlstate_of(&mut c, "SELECT mesh.run('HR Database', 'full_import')"), "22023");
    let mut unbound = hr_config();
    unbound["import_query"] = json!("SELECT * FROM employees");
    let refused = c.execute("SELECT mesh.alter_connector('HR Database', config => $1)", &[&unbound]).unwrap_err();
    let db = refused.as_db_error().unwrap();
    assert_eq!(db.code().code(), "22023");
    assert!(db.message().contains("a delta_column needs @watermark"), "{}", db.message());
    assert_eq!(live(&mut c), 3);

    // A query ending in `;`, with an apostrophe in a comment before @watermark: runs.
    let mut commented = hr_config();
    commented["import_query"] =
        json!("SELECT * FROM employees -- the employee's own rows\nWHERE modified_at > @watermark;");
    c.execute("SELECT mesh.alter_connector('HR Database', config => $1)", &[&commented])
        .unwrap();
    assert_eq!(run(&mut c, "HR Database", "full_import")["status"], json!("success"));
    assert_eq!(live(&mut c), 3);

    // An integer delta column (int4): full and delta imports.
    let dsn = format!("host=127.0.0.1 port={} dbname=idmesh_it_hr user=hr_app", port());
    connector(
        &mut c,
        "Versions",
        json!({"dsn": dsn, "import_query": "SELECT * FROM versions WHERE version > @watermark",
               "anchor": "id", "delta_column": "version", "object_type": "group"}),
    );
    assert_eq!(run(&mut c, "Versions", "full_import")["added"], json!(2));
    hr.batch_execute("UPDATE versions SET name = 'two b', version = 21 WHERE id = 2").unwrap();
    assert_eq!(run(&mut c, "Versions", "delta_import")["updated"], json!(1));
    // Another delta column: its first delta reads everything (the old mark is of another
    // column), and says so.
    c.execute(
        "SELECT mesh.alter_connector('Versions', config => $1)",
        &[&json!({"dsn": dsn, "import_query": "SELECT * FROM versions WHERE id > @watermark",
                  "anchor": "id", "delta_column": "id", "object_type": "group"})],
    )
    .unwrap();
    let changed = run(&mut c, "Versions", "delta_import");
    assert_eq!(changed["status"], json!("success"), "{changed}");
    assert_eq!(changed["unchanged"], json!(2), "{changed}");

    // Wide rows (1 MB each) go in batches by size too: all of them arrive, whole.
    hr.batch_execute(
        "CREATE TABLE photos (id integer PRIMARY KEY, photo text);
         INSERT INTO photos SELECT i, repeat(chr(64 + i), 1000000) FROM generate_series(1, 20) i;
         GRANT ALL ON photos TO hr_app;",
    )
    .unwrap();
    connector(
        &mut c,
        "Photos",
        json!({"dsn": dsn, "import_query": "SELECT * FROM photos", "anchor": "id", "object_type": "group"}),
    );
    assert_eq!(run(&mut c, "Photos", "full_import")["added"], json!(20));
    let whole: i64 = c
        .query_one(
            "SELECT count(*) FROM mesh.connector_object co JOIN mesh.connector n ON n.id = co.connector_id \
             WHERE n.name = 'Photos' AND length(co.attrs->>'photo') = 1000000 \
               AND co.attrs->>'photo' = repeat(chr(64 + co.anchor::int), 1000000)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(whole, 20);

    // Two columns of one name: refused (one would hide the other in the object).
    connector(
        &mut c,
        "Joined",
        json!({"dsn": dsn, "anchor": "id", "object_type": "group",
               "import_query": "SELECT v.id, v.name, e.name FROM versions v JOIN employees e ON e.employee_id = v.id"}),
    );
    assert_eq!(sqlstate_of(&mut c, "SELECT mesh.run('Joined', 'full_import')"), "22023");
}

/// A table in the HR database (`create` makes it, and grants it to the login) exported to
/// by a postgres connector of the same name in `mode`, each column an export flow of the
/// person attribute of its name, every person provisioned; then a sync plans the adds.
fn export_target(c: &mut Client, hr: &mut Client, table: &str, create: &str, columns: &[&str], mode: &str) {
    hr.batch_execute(&format!("{create}; GRANT ALL ON {table} TO hr_app;")).unwrap();
    connector(
        c,
        table,
        json!({"dsn": format!("host=127.0.0.1 port={} dbname=idmesh_it_hr user=hr_app", port()),
               "import_query": format!("SELECT * FROM {table}"), "anchor": "employee_id",
               "export_table": table, "export_mode": mode}),
    );
    for column in columns {
        c.execute("SELECT mesh.add_export_flow($1, 'person', $2, $2)", &[&table, column])
            .unwrap();
    }
    c.execute("SELECT mesh.set_provisioning($1, 'person', NULL, '{}')", &[&table])
        .unwrap();
    c.batch_execute("SELECT mesh.sync()").unwrap();
}

/// An add writes the columns it has values for, and no other: an upsert that meets an
/// existing row leaves its other columns alone, a new row takes the table's defaults. A
/// target that refuses the login fails the run, and its changes stay pending as they were.
#[test]
fn an_add_writes_only_its_own_columns_and_a_refused_login_leaves_exports_pending() {
    let mut hr = hr_source();
    hr.batch_execute("INSERT INTO employees (employee_id, name, note) VALUES (4, 'Edsger', NULL)")
        .unwrap();
    let mut c = fresh_database_with_own_key("idmesh_it_columns");
    connector(&mut c, "HR Database", hr_config());
    c.batch_execute(
        r#"SELECT mesh.set_projection('HR Database', 'person', true);
           SELECT mesh.add_import_flow('HR Database', 'person', 'employee_id', 'employee_id', 100);
           SELECT mesh.add_import_flow('HR Database', 'person', 'name', 'name', 100);
           SELECT mesh.add_import_flow('HR Database', 'person', 'note', 'note', 100);"#,
    )
    .unwrap();
    run(&mut c, "HR Database", "full_import");
    export_target(
        &mut c,
        &mut hr,
        "staff",
        "CREATE TABLE staff (employee_id integer PRIMARY KEY, name text, note text DEFAULT 'none');
         INSERT INTO staff VALUES (1, 'Ada (old)', 'keep me')",
        &["employee_id", "name", "note"],
        "upsert",
    );
    assert_eq!(run(&mut c, "staff", "export")["added"], json!(4));
    let rows: Vec<(i32, String, Option<String>)> = hr
        .query("SELECT employee_id, name, note FROM staff ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(rows[0], (1, "Ada".to_string(), Some("keep me".to_string())), "Ada has no note to write");
    assert_eq!(rows[2], (3, "Alan".to_string(), Some("ok".to_string())));
    assert_eq!(rows[3], (4, "Edsger".to_string(), Some("none".to_string())), "the column's default");

    // A refused login: the run fails with the connection's SQLSTATE; the change stays pending.
    c.execute("SELECT mesh.alter_connector('staff', secret => $1)", &[&"Wr0ng-guess"])
        .unwrap();
    hr.batch_execute("UPDATE employees SET name = 'Alan T.', modified_at = clock_timestamp() WHERE employee_id = 3")
        .unwrap();
    run(&mut c, "HR Database", "delta_import");
    c.batch_execute("SELECT mesh.sync()").unwrap();
    assert_eq!(sqlstate_of(&mut c, "SELECT mesh.run('staff', 'export')"), "08006");
    let pending: Vec<(String, i32)> = pairs(&mut c, "SELECT status, attempts FROM mesh.pending_exports WHERE connector = 'staff' AND status <> 'applied'");
    assert_eq!(pending, vec![("pending".to_string(), 0)]);
    let errors: i64 = c.query_one("SELECT count(*) FROM mesh.errors", &[]).unwrap().get(0);
    assert_eq!(errors, 0);
    // In a cycle the step fails alone, and the dashboard says why.
    c.batch_execute("SELECT count(*) FROM mesh.cycle()").unwrap();
    let (status, last_error): (String, Option<String>) = c
        .query_one("SELECT status, last_error FROM mesh.dashboard WHERE flow = 'Mesh -> staff'", &[])
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(status, "Error");
    assert!(last_error.as_deref().is_some_and(|e| e.contains("password authentication failed")), "{last_error:?}");
    assert!(!last_error.unwrap_or_default().contains("Wr0ng-guess"));
    c.execute("SELECT mesh.alter_connector('staff', secret => $1)", &[&PASSWORD]).unwrap();
    c.batch_execute("SELECT count(*) FROM mesh.cycle()").unwrap();

    // An upsert meeting a row that has a NOT NULL column the flows do not write: PostgreSQL
    // refuses the insert before it sees the conflict; the row that is there is updated.
    export_target(
        &mut c,
        &mut hr,
        "desks",
        "CREATE TABLE desks (employee_id integer PRIMARY KEY, name text, floor integer NOT NULL);
         INSERT INTO desks VALUES (1, 'Ada (old)', 3)",
        &["employee_id", "name"],
        "upsert",
    );
    let desks = run(&mut c, "desks", "export");
    assert_eq!((desks["added"].clone(), desks["errors"].clone()), (json!(1), json!(3)), "{desks}");
    let ada: (String, i32) = hr
        .query_one("SELECT name, floor FROM desks WHERE employee_id = 1", &[])
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(ada, ("Ada".to_string(), 3));
    let codes: Vec<String> = c
        .query("SELECT DISTINCT sqlstate FROM mesh.errors WHERE connector = 'desks'", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(codes, vec!["23502".to_string()], "the others have no floor: a real refusal");

    // The connection lost in the middle of an export: what was written before is recorded
    // as written; the changes not written stay pending as they were (no error, no backoff),
    // no further batch is sent, and the run ends failed with the reason.
    export_target(
        &mut c,
        &mut hr,
        "lockers",
        "CREATE TABLE lockers (employee_id integer PRIMARY KEY, name text, note text);
         CREATE FUNCTION lockers_drop_line() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.name = 'Grace' THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF; RETURN NEW; END $$;
         CREATE TRIGGER drop_line BEFORE INSERT ON lockers FOR EACH ROW EXECUTE FUNCTION lockers_drop_line()",
        &["employee_id", "name", "note"],
        "insert",
    );
    // Ada and Edsger (no note) go first, in one statement; Grace's drops the line.
    let lockers = run(&mut c, "lockers", "export");
    assert_eq!((lockers["added"].clone(), lockers["errors"].clone()), (json!(2), json!(0)), "{lockers}");
    assert_eq!(lockers["status"], json!("failed"), "{lockers}");
    assert!(lockers["message"].as_str().unwrap_or_default().contains("stay pending"), "{lockers}");
    let written: Vec<i32> = hr
        .query("SELECT employee_id FROM lockers ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(written, vec![1, 4]);
    let statuses: Vec<(String, Option<String>)> = pairs(&mut c, "SELECT pe.status, e.sqlstate FROM mesh.pending_exports pe \
             LEFT JOIN mesh.errors e ON e.connector = pe.connector AND e.mesh_id = pe.mesh_id \
             WHERE pe.connector = 'lockers' ORDER BY pe.mesh_id");
    assert_eq!(
        statuses,
        vec![
            ("applied".to_string(), None),
            ("pending".to_string(), None),
            ("pending".to_string(), None),
            ("applied".to_string(), None),
        ]
    );
}

/// TLS as the dsn's sslmode asks: `verify-full` against the cluster's certificate (the
/// source itself says the session was encrypted), a certificate from another authority
/// refused before any password is sent, `disable` plain.
#[test]
fn tls_is_used_and_checked_as_the_dsn_asks() {
    let _hr = hr_source();
    let other_ca = "/tmp/idmesh-run/idmesh_it_other_ca.crt";
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
               "-keyout", "/tmp/idmesh-run/idmesh_it_other_ca.key", "-out", other_ca])
        .output()
        .unwrap();
    assert!(made.status.success());
    let mut c = fresh_database_with_own_key("idmesh_it_tls");
    let config = |tls: &str| {
        json!({"dsn": format!("host=127.0.0.1 port={} dbname=idmesh_it_hr user=hr_app {tls}", port()),
               "import_query": "SELECT employee_id, (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()) AS tls FROM employees",
               "anchor": "employee_id"})
    };
    let tls_seen = |c: &mut Client| -> Vec<bool> {
        c.query("SELECT DISTINCT (attrs->>'tls')::boolean FROM mesh.connector_object", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    connector(&mut c, "Checked", config("sslmode=verify-full sslrootcert=/tmp/idmesh-run/server-ca.crt"));
    assert_eq!(run(&mut c, "Checked", "full_import")["added"], json!(3));
    assert_eq!(tls_seen(&mut c), vec![true]);

    c.execute(
        "SELECT mesh.alter_connector('Checked', config => $1, secret => $2)",
        &[&config(&format!("sslmode=verify-full sslrootcert={other_ca}")), &PASSWORD],
    )
    .unwrap();
    let err = c.batch_execute("SELECT mesh.run('Checked', 'full_import')").unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "08006");
    assert!(db.message().contains("certificate"), "{}", db.message());

    c.execute(
        "SELECT mesh.alter_connector('Checked', config => $1, secret => $2)",
        &[&config("sslmode=disable"), &PASSWORD],
    )
    .unwrap();
    assert_eq!(run(&mut c, "Checked", "full_import")["updated"], json!(3));
    assert_eq!(tls_seen(&mut c), vec![false]);
    assert_eq!(
        sqlstate_of(&mut c, &format!("SELECT mesh.alter_connector('Checked', config => '{}', secret => 'x')", config("sslmode=sometimes"))),
        "22023"
    );
}

// Issue 8, 3: schema discovery of a PostgreSQL source lists the import query's columns
// with their types; a misspelled flow source is refused, naming the right column.
#[test]
fn postgres_schema_discovery_and_checked_flows() {
    let _hr = hr_source();
    let mut c = fresh_database_with_own_key("idmesh_it_pg_schema");
    connector(&mut c, "HR Database", hr_config());
    let cols: Vec<(String, String)> = pairs(&mut c, "SELECT attribute, syntax FROM mesh.discover_schema('HR Database') ORDER BY attribute");
    for (name, ty) in [
        ("employee_id", "int4"),
        ("salary", "numeric"),
        ("badge", "uuid"),
        ("modified_at", "timestamptz"),
        ("active", "bool"),
    ] {
        assert!(
            cols.contains(&(name.to_string(), ty.to_string())),
            "{name} {ty} in {cols:?}"
        );
    }
    let err = c
        .batch_execute(
            "SELECT mesh.add_import_flow('HR Database', 'person', 'salry', 'salary', 50)",
        )
        .unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "42703");
    assert!(db.hint().unwrap_or("").contains("salary"), "{db:?}");
    c.batch_execute("SELECT mesh.add_import_flow('HR Database', 'person', 'salary', 'salary', 50)")
        .unwrap();
}

/// Every common type goes through an import and an export unchanged: the target's rows
/// equal the source's, numerics beyond a double's precision included. The anchor column
/// is called `d`, a name the export statement's own SQL must not confuse with its rows.
#[test]
fn typed_values_survive_import_and_export() {
    let mut hr = hr_source();
    hr.batch_execute(
        r#"CREATE TABLE typed_src (d integer PRIMARY KEY, big numeric(40,10), small numeric(10,2), n bigint,
               f double precision, flag boolean, day date, stamp timestamptz, badge uuid, note text);
           INSERT INTO typed_src VALUES
               (1, 123456789012345678901234567890.1234567891, 12.50, 9223372036854775807, 0.1, true,
                '2026-01-02', '2026-01-02 03:04:05.678+02', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
                E'two\nlines, "quoted", back\\slash, é'),
               (2, -0.0000000001, 0, -1, -1.5e300, false, NULL, NULL, NULL, NULL);
           CREATE TABLE typed_dst (LIKE typed_src);
           ALTER TABLE typed_dst ADD PRIMARY KEY (d);
           GRANT ALL ON typed_src, typed_dst TO hr_app;"#,
    )
    .unwrap();
    let mut c = fresh_database_with_own_key("idmesh_it_typed");
    let dsn = format!(
        "host=127.0.0.1 port={} dbname=idmesh_it_hr user=hr_app",
        port()
    );
    connector(
        &mut c,
        "Typed",
        json!({"dsn": dsn, "import_query": "SELECT * FROM typed_src", "anchor": "d"}),
    );
    connector(
        &mut c,
        "Copy",
        json!({"dsn": dsn, "import_query": "SELECT * FROM typed_dst", "anchor": "d", "export_table": "typed_dst"}),
    );
    c.batch_execute(
        "SELECT mesh.set_projection('Typed', 'person', true);
         SELECT mesh.add_import_flow('Typed', 'person', a, a, 90)
           FROM unnest(ARRAY['d', 'big', 'small', 'n', 'f', 'flag', 'day', 'stamp', 'badge', 'note']) a;
         SELECT mesh.add_export_flow('Copy', 'person', a, a)
           FROM unnest(ARRAY['d', 'big', 'small', 'n', 'f', 'flag', 'day', 'stamp', 'badge', 'note']) a;
         SELECT mesh.set_provisioning('Copy', 'person', NULL, '{}');
         SELECT count(*) FROM mesh.cycle();",
    )
    .unwrap();
    let errors: i64 = c
        .query_one("SELECT count(*) FROM mesh.errors", &[])
        .unwrap()
        .get(0);
    assert_eq!(errors, 0, "every row written and recorded");
    let rows: i64 = hr
        .query_one("SELECT count(*) FROM typed_dst", &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 2);
    let differ: Vec<String> = hr
        .query(
            "SELECT x::text FROM ((TABLE typed_src EXCEPT TABLE typed_dst) UNION ALL (TABLE typed_dst EXCEPT TABLE typed_src)) x",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        differ.is_empty(),
        "rows that differ between source and target: {differ:?}"
    );
}

/// `{table}_src` of the HR database imported by a postgres connector `table` (each of
/// `columns` an import flow of the attribute of its name, its objects projected as
/// `object_type`) and exported to `{table}_dst` by a connector `table out` (each column an
/// export flow, and `more` besides: attribute, column), every object provisioned; then an
/// import, a sync and an export.
fn copy_through(c: &mut Client, table: &str, object_type: &str, columns: &[&str], more: &[(&str, &str)]) {
    let dsn = format!("host=127.0.0.1 port={} dbname=idmesh_it_hr user=hr_app", port());
    let (source, target) = (table.to_string(), format!("{table} out"));
    connector(c, &source, json!({"dsn": dsn, "import_query": format!("SELECT * FROM {table}_src"), "anchor": "id",
                                  "object_type": object_type}));
    connector(c, &target, json!({"dsn": dsn, "import_query": format!("SELECT * FROM {table}_dst"), "anchor": "id",
                                  "object_type": object_type, "export_table": format!("{table}_dst")}));
    c.execute("SELECT mesh.set_projection($1, $2, true)", &[&source, &object_type]).unwrap();
    for column in columns {
        c.execute("SELECT mesh.add_import_flow($1, $2, $3, $3, 90)", &[&source, &object_type, column]).unwrap();
        c.execute("SELECT mesh.add_export_flow($1, $2, $3, $3)", &[&target, &object_type, column]).unwrap();
    }
    for (attribute, column) in more {
        c.execute("SELECT mesh.add_export_flow($1, $2, $3, $4)", &[&target, &object_type, attribute, column]).unwrap();
    }
    c.execute("SELECT mesh.set_provisioning($1, $2, NULL, '{}')", &[&target, &object_type]).unwrap();
    c.execute("SELECT mesh.run($1, 'full_import')", &[&source]).unwrap();
    c.batch_execute("SELECT mesh.sync()").unwrap();
    c.execute("SELECT mesh.run($1, 'export')", &[&target]).unwrap();
}

/// A batch of adds travels as one text array per column, each value read by its column's
/// input function: what it stores must be what the JSON statement would have stored, for
/// every type and awkward value (compared with `jsonb_populate_record` of each change, on
/// the target itself). A row a trigger skips is reported, not taken as written.
#[test]
fn a_batch_of_adds_stores_exactly_what_the_json_statement_would() {
    let mut hr = hr_source();
    hr.batch_execute(
        r#"CREATE TYPE mood AS ENUM ('calm', 'very "odd", mood');
           CREATE DOMAIN short_code AS text CHECK (length(VALUE) <= 12);
           CREATE TABLE wide_src (id integer PRIMARY KEY, note text, amount numeric(14,3), big bigint, flag boolean,
               day date, stamp timestamptz, badge uuid, doc jsonb, tags text[], nums integer[], feel mood,
               code short_code, blob bytea);
           -- No NULL or empty columns: a change leaves them out, and adds go in batches by the columns they carry.
           INSERT INTO wide_src VALUES
             (1, E'tab\there, new\nline, cr\rhere, back\\slash, "quotes", é, 😀', -12.345, 9223372036854775807, true,
              '2026-02-28', '2026-02-28 23:59:59.123456-11', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
              '{"k": "v\\w", "nested": {"a": [1, "two", null]}, "t": "tab\there"}',
              ARRAY['x,y', 'q"uote', NULL, 'NULL', '', '{brace}', E'back\\slash'], ARRAY[1, NULL, -3],
              'very "odd", mood', 'ok-code', '\x00ff10'),
             (2, ' lead and trail ', 0.000, -1, false, '0001-01-01', 'infinity', '00000000-0000-0000-0000-000000000000',
              '"just a string"', ARRAY['', ' '], '{0}', 'calm', '\', '\x'),
             (3, 'NULL', 123456789.5, 0, false, '2000-02-29', '2000-01-01 00:00:00+00', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12',
              '[[]]', ARRAY['solo'], ARRAY[7], 'calm', 'x', '\x5c'),
             (4, 'skip me', 1, 1, true, '2026-01-01', '2026-01-01 00:00:00+00', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a13',
              '1', ARRAY['a'], ARRAY[1], 'calm', 'y', '\x01');
           CREATE TABLE wide_dst (LIKE wide_src INCLUDING ALL);
           -- What each statement writing the table was: the text path must be the one taken.
           CREATE TABLE wide_statements (query text);
           CREATE FUNCTION wide_seen() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN INSERT INTO wide_statements VALUES (current_query()); RETURN NULL; END $$;
           CREATE TRIGGER wide_seen AFTER INSERT ON wide_dst FOR EACH STATEMENT EXECUTE FUNCTION wide_seen();
           -- A row a trigger skips is not written, though its batch succeeds.
           CREATE FUNCTION wide_skip() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN RETURN CASE WHEN NEW.note = 'skip me' THEN NULL ELSE NEW END; END $$;
           CREATE TRIGGER wide_skip BEFORE INSERT ON wide_dst FOR EACH ROW EXECUTE FUNCTION wide_skip();
           GRANT ALL ON wide_src, wide_dst, wide_statements TO hr_app;"#,
    )
    .unwrap();
    let mut c = fresh_database_with_own_key("idmesh_it_wide");
    let columns = [
        "id", "note", "amount", "big", "flag", "day", "stamp", "badge", "doc", "tags", "nums", "feel", "code", "blob",
    ];
    copy_through(&mut c, "wide", "person", &columns, &[]);
    // The rows the adds carried (every attribute, NULLs as JSON nulls: one column set).
    let changes: Vec<Value> = c
        .query(
            "SELECT pe.changes FROM mesh.pending_export pe JOIN mesh.connector k ON k.id = pe.connector_id
              WHERE k.name = 'wide out' AND pe.operation = 'add' ORDER BY (pe.changes->>'id')::int",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(changes.len(), 4, "{changes:?}");
    assert!(changes.iter().all(|ch| ch.as_object().unwrap().len() == columns.len()), "{changes:?}");
    let statements: Vec<String> = column(&mut hr, "SELECT query FROM wide_statements");
    assert_eq!(statements.len(), 1, "one statement for the batch: {statements:?}");
    assert!(statements[0].contains("unnest($1::text[]"), "{}", statements[0]);
    // Each stored row, in its text form, is the JSON statement's reading of its change.
    let differ: Vec<String> = hr
        .query(
            "SELECT x->>'id' FROM jsonb_array_elements($1::jsonb) x
              WHERE x->>'note' <> 'skip me'
                AND (SELECT d::text FROM wide_dst d WHERE d.id = (x->>'id')::int)
                    IS DISTINCT FROM jsonb_populate_record(NULL::wide_dst, x)::text",
            &[&Value::Array(changes)],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(differ.is_empty(), "rows stored otherwise than the JSON statement would: {differ:?}");
    let not_copied: Vec<i32> = hr
        .query(
            "SELECT id FROM ((TABLE wide_src EXCEPT TABLE wide_dst) UNION ALL (TABLE wide_dst EXCEPT TABLE wide_src)) x ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(not_copied, vec![4], "every row but the skipped one stored as the source has it");
    // The skipped row is an error of its own (no such row), the others are written.
    let errors: Vec<(String, String)> = pairs(&mut c, "SELECT sqlstate, message FROM mesh.errors");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, "02000");
    assert!(errors[0].1.ends_with("has anchor 4"), "{errors:?}");
    let applied = count(&mut c, "SELECT count(*) FROM mesh.pending_export WHERE status = 'applied'");
    assert_eq!(applied, 3);

    // An interval column with fields reads `10:30` as ten minutes and `3` as three years,
    // which a cast to interval does not: such a batch goes as JSON, and stores what it says.
    hr.batch_execute(
        "CREATE TABLE spans_src (id integer PRIMARY KEY, clock text, age text);
         INSERT INTO spans_src VALUES (1, '10:30', '3'), (2, '2:05', '40');
         CREATE TABLE spans_dst (id integer PRIMARY KEY, clock interval minute to second, age interval year);
         GRANT ALL ON spans_src, spans_dst TO hr_app;",
    )
    .unwrap();
    copy_through(&mut c, "spans", "group", &["id", "clock", "age"], &[]);
    let spans: Vec<(String, String)> = pairs(&mut hr, "SELECT clock::text, age::text FROM spans_dst ORDER BY id");
    assert_eq!(
        spans,
        vec![("00:10:30".to_string(), "3 years".to_string()), ("00:02:05".to_string(), "40 years".to_string())]
    );

    // A trigger that gives a row another key: every row is written, but not under the
    // anchor its change sent, so that change is not found there (02000), as a single add's.
    // A hostile column name is an identifier, quoted, and a hostile value a value.
    hr.batch_execute(
        r#"CREATE TABLE renum_src (id integer PRIMARY KEY, note text);
         INSERT INTO renum_src VALUES (1, 'as is''); DROP TABLE renum_src; --'), (2, 'renumber me');
         CREATE TABLE renum_dst (id integer PRIMARY KEY, note text, "n""; DROP TABLE renum_dst; --" text);
         CREATE FUNCTION renum() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN IF NEW.note = 'renumber me' THEN NEW.id := NEW.id + 100; END IF; RETURN NEW; END $$;
         CREATE TRIGGER renum BEFORE INSERT ON renum_dst FOR EACH ROW EXECUTE FUNCTION renum();
         GRANT ALL ON renum_src, renum_dst TO hr_app;"#,
    )
    .unwrap();
    copy_through(&mut c, "renum", "contact", &["id", "note"], &[("note", "n\"; DROP TABLE renum_dst; --")]);
    let ids: Vec<i32> = column(&mut hr, "SELECT id FROM renum_dst ORDER BY id");
    assert_eq!(ids, vec![1, 102]);
    let (note, odd): (String, String) = hr
        .query_one(r#"SELECT note, "n""; DROP TABLE renum_dst; --" FROM renum_dst WHERE id = 1"#, &[])
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((note.as_str(), odd.as_str()), ("as is'); DROP TABLE renum_src; --", "as is'); DROP TABLE renum_src; --"));
    assert_eq!(count(&mut hr, "SELECT count(*) FROM wide_statements"), 1, "nothing else wrote wide_dst");
    let renum_errors: Vec<(String, String)> =
        pairs(&mut c, "SELECT sqlstate, message FROM mesh.errors WHERE connector = 'renum out'");
    assert_eq!(renum_errors.len(), 1, "{renum_errors:?}");
    assert_eq!(renum_errors[0].0, "02000");
    assert!(renum_errors[0].1.ends_with("has anchor 2"), "{renum_errors:?}");
}

/// The sqlserver kind's own export statements, over the real wire protocol: each change's
/// `:name` parameters bound as `@P1`, `@P2`, ... and never spliced, each change alone. The
/// TDS server here only reads, so the statements are reads of the rows the changes name,
/// and a write shows the per-change failure.
#[test]
fn sqlserver_export_statements_over_tds() {
    let mut c = with_payroll("idmesh_it_tds_statements");
    let mut out = tds_config("people");
    out["export_statements"] = json!({
        "add": "SELECT id FROM people WHERE name = :name AND id = :id -- :not_a_parameter",
        "update": "UPDATE people SET name = :name WHERE id = :id"});
    c.execute(
        "SELECT mesh.create_connector('Payroll out', 'sqlserver', $1, secret => $2)",
        &[&out, &"Tds-reader-1!"],
    )
    .unwrap();
    c.batch_execute(
        "SELECT mesh.set_projection('Payroll', 'person', true);
         SELECT mesh.add_import_flow('Payroll', 'person', a, a, 90) FROM unnest(ARRAY['id', 'name', 'score']) a;
         SELECT mesh.add_export_flow('Payroll out', 'person', a, a) FROM unnest(ARRAY['id', 'name']) a;
         SELECT mesh.set_provisioning('Payroll out', 'person', NULL, '{}');
         SELECT mesh.run('Payroll', 'full_import'); SELECT mesh.sync();",
    )
    .unwrap();
    let log_before = std::fs::read_to_string("/tmp/idmesh-run/tds/log").unwrap_or_default().len();
    let export = run(&mut c, "Payroll out", "export");
    assert_eq!((export["status"].clone(), export["added"].clone()), (json!("success"), json!(3)), "{export}");
    let log = std::fs::read_to_string("/tmp/idmesh-run/tds/log").unwrap_or_default()[log_before..].to_string();
    assert!(log.contains("WHERE name = @P1 AND id = @P2 -- :not_a_parameter"), "bound, not spliced: {log}");
    assert!(!log.contains("Ada Lovelace"), "no value in the statement text: {log}");
    assert!(log.contains("SET DATEFORMAT ymd"), "dates read in ISO order whatever the login's language: {log}");

    // A name no flow writes and the object does not have: 42703 for each change, and
    // nothing sent. A statement the server refuses (this one only reads): each change
    // fails alone with the server's words, and the run goes on.
    out["export_statements"] = json!({"add": "SELECT id FROM people WHERE name = :nickname",
                                      "update": "UPDATE people SET name = :name WHERE id = :id"});
    c.execute("SELECT mesh.alter_connector('Payroll out', config => $1)", &[&out]).unwrap();
    c.batch_execute("UPDATE mesh.pending_export SET status = 'pending'").unwrap();
    let export = run(&mut c, "Payroll out", "export");
    assert_eq!((export["status"].clone(), export["errors"].clone()), (json!("warning"), json!(3)), "{export}");
    let codes: Vec<(String, String)> = pairs(&mut c, "SELECT DISTINCT sqlstate, message FROM mesh.errors");
    assert_eq!(codes.len(), 1, "{codes:?}");
    assert_eq!(codes[0].0, "42703");
    assert!(codes[0].1.contains(":nickname"), "{codes:?}");
    c.batch_execute(
        "UPDATE mesh.pending_export SET status = 'pending', operation = 'update', retry_at = NULL;
         DELETE FROM mesh.run_error;",
    )
    .unwrap();
    let export = run(&mut c, "Payroll out", "export");
    assert_eq!((export["status"].clone(), export["errors"].clone()), (json!("warning"), json!(3)), "{export}");
    let messages: Vec<String> = column(&mut c, "SELECT message FROM mesh.errors");
    assert_eq!(messages.len(), 3, "{messages:?}");
    assert!(messages.iter().all(|m| m.starts_with("the export statement failed: ")), "{messages:?}");
}

/// A composite anchor joins its values with U+001F; a value that holds that separator (or
/// a backslash) is escaped, so two rows never share an anchor, and the postgres kind, the
/// table kind and the engine's own encoding write the same text.
#[test]
fn composite_anchors_never_collide() {
    let rows = r#"(E'a\x1fb', 'c', 'one'), ('a', E'b\x1fc', 'two'), (E'x\\', '_y', 'three'), ('x', E'\\_y', 'four')"#;
    let mut hr = hr_source();
    hr.batch_execute(&format!(
        "CREATE TABLE pairs_src (org text, emp text, note text, PRIMARY KEY (org, emp));
         INSERT INTO pairs_src VALUES {rows};
         CREATE TABLE pairs_dst (LIKE pairs_src INCLUDING ALL);
         GRANT ALL ON pairs_src, pairs_dst TO hr_app;"
    ))
    .unwrap();
    let mut c = fresh_database_with_own_key("idmesh_it_pairs");
    c.batch_execute(&format!(
        "CREATE TABLE pairs_here (org text, emp text, note text, PRIMARY KEY (org, emp));
         INSERT INTO pairs_here VALUES {rows};"
    ))
    .unwrap();
    let dsn = format!("host=127.0.0.1 port={} dbname=idmesh_it_hr user=hr_app", port());
    connector(&mut c, "Pairs", json!({"dsn": dsn, "import_query": "SELECT * FROM pairs_src", "anchor": ["org", "emp"]}));
    connector(
        &mut c,
        "Pairs out",
        json!({"dsn": dsn, "import_query": "SELECT * FROM pairs_dst", "anchor": ["org", "emp"], "export_table": "pairs_dst"}),
    );
    c.batch_execute(
        r#"SELECT mesh.create_connector('Pairs here', 'table', '{"source": "pairs_here", "anchor": ["org", "emp"], "object_type": "group"}');
           SELECT mesh.set_projection('Pairs', 'person', true);
           SELECT mesh.add_import_flow('Pairs', 'person', a, a, 90) FROM unnest(ARRAY['org', 'emp', 'note']) a;
           SELECT mesh.add_export_flow('Pairs out', 'person', a, a) FROM unnest(ARRAY['org', 'emp', 'note']) a;
           SELECT mesh.set_provisioning('Pairs out', 'person', NULL, '{}');"#,
    )
    .unwrap();
    for name in ["Pairs", "Pairs here"] {
        let full = run(&mut c, name, "full_import");
        assert_eq!((full["status"].clone(), full["added"].clone()), (json!("success"), json!(4)), "{name}: {full}");
    }
    let anchors = |c: &mut Client, connector: &str| -> Vec<String> {
        c.query(
            "SELECT co.anchor FROM mesh.connector_object co JOIN mesh.connector k ON k.id = co.connector_id
              WHERE k.name = $1 ORDER BY co.anchor",
            &[&connector],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    let mut expected = vec![
        "a\\_b\u{1f}c".to_string(),
        "a\u{1f}b\\_c".to_string(),
        "x\\\\\u{1f}_y".to_string(),
        "x\u{1f}\\\\_y".to_string(),
    ];
    expected.sort();
    assert_eq!(anchors(&mut c, "Pairs"), expected);
    assert_eq!(anchors(&mut c, "Pairs here"), expected);

    // Exported (one batch of adds), found by their anchors, then confirmed by an import.
    c.batch_execute("SELECT mesh.sync()").unwrap();
    let export = run(&mut c, "Pairs out", "export");
    assert_eq!((export["status"].clone(), export["added"].clone()), (json!("success"), json!(4)), "{export}");
    let copied = count(&mut hr, "SELECT count(*) FROM pairs_dst JOIN pairs_src USING (org, emp, note)");
    assert_eq!(copied, 4);
    // No join rule: the rows join the objects they were written for by the anchors the
    // adds gave them, and that confirms the adds; a sync meanwhile (which plans the same
    // adds again) keeps those anchors.
    c.batch_execute("SELECT count(*) FROM mesh.sync(full => true)").unwrap();
    let confirm = run(&mut c, "Pairs out", "full_import");
    assert_eq!(confirm["confirmed"], json!(4), "{confirm}");
    assert_eq!(anchors(&mut c, "Pairs out"), expected);
    let (unjoined, pending): (i64, i64) = c
        .query_one(
            "SELECT (SELECT count(*) FROM mesh.connector_object co JOIN mesh.connector k ON k.id = co.connector_id
                      WHERE k.name = 'Pairs out' AND co.mesh_id IS NULL),
                    (SELECT count(*) FROM mesh.pending_exports WHERE connector = 'Pairs out')",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((unjoined, pending), (0, 0));
    let again = count(&mut c, "SELECT count(*) FROM mesh.cycle() WHERE added + updated + deleted > 0");
    assert_eq!(again, 0, "nothing left to do");

    // Two adds that write the same key (the second over the first): the row is no one's
    // to guess, and stays unjoined; the adds stay applied, in sight.
    hr.batch_execute("CREATE TABLE firsts (k text PRIMARY KEY, note text); GRANT ALL ON firsts TO hr_app;").unwrap();
    connector(
        &mut c,
        "Firsts",
        json!({"dsn": dsn, "import_query": "SELECT * FROM firsts", "anchor": "k", "export_table": "firsts"}),
    );
    c.batch_execute(
        "SELECT mesh.add_export_flow('Firsts', 'person', 'left(org, 1)', 'k');
         SELECT mesh.add_export_flow('Firsts', 'person', 'note', 'note');
         SELECT mesh.set_provisioning('Firsts', 'person', NULL, '{}');
         SELECT mesh.sync(); SELECT mesh.run('Firsts', 'export'); SELECT mesh.run('Firsts', 'full_import');",
    )
    .unwrap();
    let (rows, joined, applied): (i64, i64, i64) = c
        .query_one(
            "SELECT count(*), count(co.mesh_id),
                    (SELECT count(*) FROM mesh.pending_exports WHERE connector = 'Firsts' AND status = 'applied')
               FROM mesh.connector_object co JOIN mesh.connector k ON k.id = co.connector_id WHERE k.name = 'Firsts'",
            &[],
        )
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .unwrap();
    assert_eq!((rows, joined, applied), (2, 0, 4));
}

/// `mesh.test_connection` checks the export side without writing: the table has the
/// columns the export flows write, the login may write it as the export mode needs, no
/// NOT NULL column without a default is left out of adds; or the export statements prepare.
#[test]
fn test_connection_checks_the_export_side() {
    let mut hr = hr_source();
    hr.batch_execute(
        "CREATE TABLE checked (employee_id integer PRIMARY KEY, display text, badge text NOT NULL);
         GRANT SELECT, INSERT ON checked TO hr_app;",
    )
    .unwrap();
    let mut c = fresh_database_with_own_key("idmesh_it_checked");
    let dsn = format!("host=127.0.0.1 port={} dbname=idmesh_it_hr user=hr_app", port());
    let config = json!({"dsn": dsn, "import_query": "SELECT * FROM checked", "anchor": "employee_id",
                        "export_table": "checked"});
    connector(&mut c, "Checked", config.clone());
    c.batch_execute(
        "SELECT mesh.add_import_flow('Checked', 'person', a, a, 50) FROM unnest(ARRAY['employee_id', 'display']) a;
         SELECT mesh.add_export_flow('Checked', 'person', a, a) FROM unnest(ARRAY['employee_id', 'display']) a;
         SELECT mesh.set_provisioning('Checked', 'person', NULL, '{}');",
    )
    .unwrap();
    let export = |c: &mut Client| -> (bool, String) {
        c.query_one("SELECT ok, detail FROM mesh.test_connection('Checked') WHERE step = 'export'", &[])
            .map(|r| (r.get(0), r.get(1)))
            .unwrap()
    };
    let (ok, detail) = export(&mut c);
    assert!(!ok);
    assert!(detail.contains("may not UPDATE checked (GRANT UPDATE ON checked"), "{detail}");
    assert!(detail.contains("adds would be refused: badge NOT NULL"), "{detail}");
    // Privileges are read column by column: UPDATE on some columns is not enough for an
    // upsert that sets the anchor too.
    hr.batch_execute("GRANT UPDATE (display) ON checked TO hr_app").unwrap();
    let (ok, detail) = export(&mut c);
    assert!(!ok);
    assert!(
        detail.contains(r#"may not UPDATE column(s) "employee_id" of checked (GRANT UPDATE ("employee_id") ON checked"#),
        "{detail}"
    );
    hr.batch_execute("GRANT UPDATE ON checked TO hr_app; ALTER TABLE checked ALTER COLUMN badge SET DEFAULT 'none';")
        .unwrap();
    let (ok, detail) = export(&mut c);
    assert!(ok, "{detail}");
    assert!(detail.contains("may not DELETE"), "{detail}");
    // Provisioning that deletes needs DELETE; in update mode it could add nothing.
    c.batch_execute(r#"SELECT mesh.set_provisioning('Checked', 'person', NULL, '{"deprovision": "delete"}')"#).unwrap();
    let (ok, detail) = export(&mut c);
    assert!(!ok && detail.contains("may not DELETE checked and read its deleted rows (GRANT SELECT, DELETE ON checked"), "{detail}");
    hr.batch_execute("GRANT DELETE ON checked TO hr_app").unwrap();
    assert!(export(&mut c).0);
    let mut update_mode = config.clone();
    update_mode["export_mode"] = json!("update");
    c.execute("SELECT mesh.alter_connector('Checked', config => $1)", &[&update_mode]).unwrap();
    let (ok, detail) = export(&mut c);
    assert!(!ok && detail.contains("exports in update mode and does not add rows"), "{detail}");
    c.execute("SELECT mesh.alter_connector('Checked', config => $1)", &[&config]).unwrap();
    // A flow to a column the table does not have.
    c.batch_execute("SELECT mesh.add_export_flow('Checked', 'person', 'display', 'nickname')").unwrap();
    let (ok, detail) = export(&mut c);
    assert!(!ok);
    assert!(detail.contains("nickname"), "{detail}");
    // Export statements: each must prepare (nothing runs).
    let mut by_statement = config.clone();
    by_statement["export_statements"] = json!({
        "add": "INSERT INTO checked (employee_id, display) VALUES (:employee_id, :display)",
        "delete": "DELETE FROM chekced WHERE employee_id = :employee_id"});
    c.execute("SELECT mesh.alter_connector('Checked', config => $1)", &[&by_statement]).unwrap();
    let (ok, detail) = export(&mut c);
    assert!(!ok);
    assert!(detail.contains("\"delete\" does not prepare") && detail.contains("chekced"), "{detail}");
    let rows = count(&mut hr, "SELECT count(*) FROM checked");
    assert_eq!(rows, 0, "nothing was written");
    // Grants on the columns an export uses are enough: updates in update mode set the
    // columns the flows write and read the anchor, nothing else.
    hr.batch_execute(
        "CREATE TABLE narrow (employee_id integer PRIMARY KEY, display text, salary numeric);
         GRANT SELECT (employee_id, display), UPDATE (display) ON narrow TO hr_app;",
    )
    .unwrap();
    connector(&mut c, "Narrow", json!({"dsn": dsn, "import_query": "SELECT employee_id, display FROM narrow",
                                       "anchor": "employee_id", "export_table": "narrow", "export_mode": "update"}));
    c.batch_execute("SELECT mesh.add_export_flow('Narrow', 'person', 'display', 'display')").unwrap();
    let narrow = |c: &mut Client| -> (bool, String) {
        c.query_one("SELECT ok, detail FROM mesh.test_connection('Narrow') WHERE step = 'export'", &[])
            .map(|r| (r.get(0), r.get(1)))
            .unwrap()
    };
    let (ok, detail) = narrow(&mut c);
    assert!(ok, "{detail}");
    // Without provisioning nothing is added: upsert mode asks no INSERT either.
    c.execute(
        "SELECT mesh.alter_connector('Narrow', config => config || '{\"export_mode\": \"upsert\"}') FROM mesh.connector WHERE name = 'Narrow'",
        &[],
    )
    .unwrap();
    let (ok, detail) = narrow(&mut c);
    assert!(ok, "{detail}");
    c.batch_execute("SELECT mesh.set_provisioning('Narrow', 'person', NULL, '{}')").unwrap();
    let (ok, detail) = narrow(&mut c);
    assert!(!ok && detail.contains("may not INSERT narrow"), "{detail}");
    // The columns a disable writes are checked too.
    c.batch_execute(r#"SELECT mesh.set_provisioning('Narrow', 'person', NULL, '{"deprovision": "disable", "disable": {"enabled": false}}')"#)
        .unwrap();
    let (ok, detail) = narrow(&mut c);
    assert!(!ok && detail.contains("enabled"), "{detail}");
}

/// An add whose row is gone from the target by the next full import (deleted there before
/// it was confirmed) is written again, as an undone change is, not left applied unseen.
#[test]
fn an_add_whose_row_is_gone_is_written_again() {
    let mut hr = hr_source();
    hr.batch_execute(
        "CREATE TABLE gone_src (id integer PRIMARY KEY, note text);
         INSERT INTO gone_src VALUES (1, 'stays'), (2, 'goes');
         CREATE TABLE gone_dst (id integer PRIMARY KEY, note text);
         GRANT ALL ON gone_src, gone_dst TO hr_app;",
    )
    .unwrap();
    let mut c = fresh_database_with_own_key("idmesh_it_gone");
    copy_through(&mut c, "gone", "person", &["id", "note"], &[]);
    hr.batch_execute("DELETE FROM gone_dst WHERE id = 2").unwrap();
    let import = run(&mut c, "gone out", "full_import");
    assert_eq!(import["confirmed"], json!(1), "{import}");
    let left: Vec<(String, i32)> = pairs(&mut c, "SELECT status, undone FROM mesh.pending_exports WHERE connector = 'gone out'");
    assert_eq!(left, vec![("pending".to_string(), 1)], "written again");
    c.batch_execute("SELECT mesh.run('gone out', 'export'); SELECT mesh.run('gone out', 'full_import');").unwrap();
    let notes: Vec<String> = column(&mut hr, "SELECT note FROM gone_dst ORDER BY id");
    assert_eq!(notes, vec!["stays".to_string(), "goes".to_string()]);
    let pending = count(&mut c, "SELECT count(*) FROM mesh.pending_exports");
    assert_eq!(pending, 0, "both confirmed");
}

/// The settings a source's login or database gives its sessions never change a value: the
/// connector pins how the server writes values (UTC, exact floats, standard interval and
/// bytea spellings), so a DBA who sets another TimeZone for the login does not make every
/// object read as changed, and a double is never rounded.
#[test]
fn a_sources_session_settings_never_change_its_values() {
    let mut src = database_with_login("idmesh_it_zoned_src", "zoned_app", PASSWORD);
    src.batch_execute(
        r#"CREATE TABLE people (id integer PRIMARY KEY, stamp timestamptz, span interval, f double precision,
                                raw bytea, day date);
           INSERT INTO people VALUES (1, '2026-01-02 03:04:05.678+02', '1 day 2 hours 3 minutes 4 seconds',
                                      0.1::float8 + 0.2::float8, '\x0102', '2026-03-04');
           GRANT SELECT ON people TO zoned_app;"#,
    )
    .unwrap();
    let mut admin = connect("postgres");
    let settle = |admin: &mut Client, zone: &str, style: &str, digits: i32, bytea: &str| {
        admin
            .batch_execute(&format!(
                "ALTER ROLE zoned_app IN DATABASE idmesh_it_zoned_src SET TimeZone = '{zone}';
                 ALTER ROLE zoned_app IN DATABASE idmesh_it_zoned_src SET IntervalStyle = '{style}';
                 ALTER ROLE zoned_app IN DATABASE idmesh_it_zoned_src SET extra_float_digits = {digits};
                 ALTER ROLE zoned_app IN DATABASE idmesh_it_zoned_src SET bytea_output = '{bytea}';
                 ALTER ROLE zoned_app IN DATABASE idmesh_it_zoned_src SET DateStyle = 'SQL, DMY';"
            ))
            .unwrap()
    };
    settle(&mut admin, "Asia/Tokyo", "iso_8601", -3, "escape");
    let mut c = fresh_database_with_own_key("idmesh_it_zoned");
    connector(
        &mut c,
        "Zoned",
        json!({"dsn": format!("host=127.0.0.1 port={} dbname=idmesh_it_zoned_src user=zoned_app", port()),
               "import_query": "SELECT * FROM people", "anchor": "id"}),
    );
    let first = run(&mut c, "Zoned", "full_import");
    assert_eq!(first["added"], json!(1), "{first}");
    let attrs: Value = c
        .query_one("SELECT attrs FROM mesh.connector_object", &[])
        .unwrap()
        .get(0);
    assert_eq!(attrs["stamp"], json!("2026-01-02T01:04:05.678+00:00"), "{attrs}");
    assert_eq!(attrs["span"], json!("1 day 02:03:04"), "{attrs}");
    assert_eq!(attrs["f"].to_string(), "0.30000000000000004", "{attrs}");
    assert_eq!(attrs["raw"], json!("\\x0102"), "{attrs}");
    assert_eq!(attrs["day"], json!("2026-03-04"), "{attrs}");
    settle(&mut admin, "America/New_York", "sql_standard", 0, "hex");
    let again = run(&mut c, "Zoned", "full_import");
    assert_eq!(
        (again["updated"].clone(), again["unchanged"].clone()),
        (json!(0), json!(1)),
        "{again}"
    );
    admin
        .batch_execute("ALTER ROLE zoned_app IN DATABASE idmesh_it_zoned_src RESET ALL")
        .unwrap();
}

/// An object that leaves a target's scope under a "leave" policy keeps its row there,
/// disconnected; when it comes back, its add takes that row over (same key), and the next
/// import joins the row to it by the anchor the add wrote: the add is confirmed, never left
/// waiting for a row the policy would not join.
#[test]
fn an_object_back_in_scope_takes_its_row_back() {
    let mut hr = hr_source();
    hr.batch_execute(
        "CREATE TABLE back_src (id integer PRIMARY KEY, note text, dept text);
         INSERT INTO back_src VALUES (1, 'Ada', 'R&D'), (2, 'Alan', 'R&D');
         CREATE TABLE back_dst (id integer PRIMARY KEY, note text);
         GRANT ALL ON back_src, back_dst TO hr_app;",
    )
    .unwrap();
    let mut c = fresh_database_with_own_key("idmesh_it_back");
    let dsn = format!("host=127.0.0.1 port={} dbname=idmesh_it_hr user=hr_app", port());
    connector(&mut c, "Back", json!({"dsn": dsn, "import_query": "SELECT * FROM back_src", "anchor": "id"}));
    connector(&mut c, "Back out", json!({"dsn": dsn, "import_query": "SELECT * FROM back_dst", "anchor": "id",
                                         "export_table": "back_dst"}));
    c.batch_execute(
        r#"SELECT mesh.set_projection('Back', 'person', true);
           SELECT mesh.add_import_flow('Back', 'person', a, a, 90) FROM unnest(ARRAY['id', 'note', 'dept']) a;
           SELECT mesh.add_export_flow('Back out', 'person', a, a) FROM unnest(ARRAY['id', 'note']) a;
           SELECT mesh.set_provisioning('Back out', 'person', $$dept = 'R&D'$$, '{"deprovision": "leave"}');
           SELECT count(*) FROM mesh.cycle(); SELECT count(*) FROM mesh.cycle();"#,
    )
    .unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM mesh.pending_exports"), 0, "both adds confirmed");
    let row_of_2 = "SELECT count(*) FROM mesh.connector_object c JOIN mesh.connector k ON k.id = c.connector_id
                    WHERE k.name = 'Back out' AND c.anchor = '2'";
    hr.batch_execute("UPDATE back_src SET dept = 'Ops' WHERE id = 2").unwrap();
    c.batch_execute("SELECT count(*) FROM mesh.cycle()").unwrap();
    assert_eq!(count(&mut c, &format!("{row_of_2} AND c.disconnected AND c.mesh_id IS NULL")), 1, "left by policy");
    assert_eq!(count(&mut hr, "SELECT count(*) FROM back_dst"), 2, "the row stays");

    hr.batch_execute("UPDATE back_src SET dept = 'R&D' WHERE id = 2").unwrap();
    c.batch_execute("SELECT count(*) FROM mesh.cycle(); SELECT count(*) FROM mesh.cycle();").unwrap();
    let left: Vec<(String, String)> = pairs(&mut c, "SELECT operation, status FROM mesh.pending_exports");
    assert!(left.is_empty(), "the add is confirmed: {left:?}");
    assert_eq!(
        count(&mut c, &format!("{row_of_2} AND NOT c.disconnected
                                 AND c.mesh_id = (SELECT id FROM mesh.mesh_object WHERE attrs->>'id' = '2')")),
        1,
        "the row is Alan's again"
    );
}
