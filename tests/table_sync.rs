//! The README's worked example on in-database sources, driven as a client would: over a
//! connection, statement by statement, each in its own transaction.

use idmesh_integration_tests::*;
use serde_json::Value;

fn setup_sources(c: &mut postgres::Client) {
    c.batch_execute(
        "CREATE SCHEMA hr;
         CREATE TABLE hr.employees (employee_id integer PRIMARY KEY, display_name text, title text,
             department text, email text, modified_at timestamptz NOT NULL DEFAULT clock_timestamp());
         INSERT INTO hr.employees (employee_id, display_name, title, department)
              SELECT g, 'Person ' || g, 'Title ' || (g % 7), 'Dept ' || (g % 3) FROM generate_series(1, 200) g;
         CREATE SCHEMA dir;
         CREATE TABLE dir.accounts (guid uuid PRIMARY KEY DEFAULT gen_random_uuid(), employee_id text,
             mail text, title text);
         INSERT INTO dir.accounts (employee_id, mail, title)
              SELECT g::text, 'p' || g || '@corp.local', 'Old title' FROM generate_series(1, 150) g;",
    )
    .unwrap();
}

#[test]
fn worked_example_cycle_dashboard_and_explain() {
    let mut c = fresh_database("idmesh_it_example");
    setup_sources(&mut c);
    c.batch_execute(
        r#"SELECT mesh.create_connector('HR Database', 'table', '{"source": "hr.employees", "anchor": ["employee_id"],
               "delta_column": "modified_at", "export_table": "hr.employees", "export_mode": "update"}');
           SELECT mesh.create_connector('Directory', 'table', '{"source": "dir.accounts", "anchor": "guid",
               "export_table": "dir.accounts", "export_mode": "update"}');
           SELECT mesh.set_projection('HR Database', 'person', true);
           SELECT mesh.add_import_flow('HR Database', 'person', 'employee_id', 'employee_id', 100);
           SELECT mesh.add_join_rule('Directory', 'person', 'employee_id', 'employee_id');
           SELECT mesh.add_import_flow('HR Database', 'person', 'title', 'title', 90);
           SELECT mesh.add_import_flow('Directory', 'person', 'title', 'title', 50);
           SELECT mesh.add_import_flow('Directory', 'person', 'mail', 'email', 80);
           SELECT mesh.add_export_flow('HR Database', 'person', 'email', 'email');
           SELECT mesh.add_export_flow('Directory', 'person', 'title', 'title');"#,
    )
    .unwrap();

    let steps = c
        .query(
            "SELECT connector, profile, status, added, updated, errors FROM mesh.cycle()",
            &[],
        )
        .unwrap();
    let step = |conn: &str, profile: &str| {
        steps
            .iter()
            .find(|r| {
                r.get::<_, Option<String>>(0).as_deref().unwrap_or("") == conn
                    && r.get::<_, String>(1) == profile
            })
            .unwrap_or_else(|| panic!("no {conn}/{profile} step"))
    };
    assert_eq!(step("HR Database", "delta_import").get::<_, i32>(3), 200);
    assert_eq!(step("Directory", "delta_import").get::<_, i32>(3), 150);
    assert_eq!(
        step("", "full_sync").get::<_, i32>(3),
        200,
        "200 people projected"
    );
    assert_eq!(
        step("HR Database", "export").get::<_, i32>(4),
        150,
        "150 emails written to HR"
    );
    assert_eq!(
        step("Directory", "export").get::<_, i32>(4),
        150,
        "150 titles written to the directory"
    );
    for r in &steps {
        assert_eq!(r.get::<_, String>(2), "success");
    }
    let (mails, titles): (i64, i64) = {
        let r = c
            .query_one(
                "SELECT (SELECT count(*) FROM hr.employees WHERE email LIKE 'p%@corp.local'),
                        (SELECT count(*) FROM dir.accounts a JOIN hr.employees e ON e.employee_id::text = a.employee_id
                          WHERE a.title = e.title)",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((mails, titles), (150, 150));

    // No change, no work: a second cycle is quiet everywhere.
    let quiet = c
        .query(
            "SELECT added + updated + deleted + errors FROM mesh.cycle()",
            &[],
        )
        .unwrap();
    assert!(quiet.iter().all(|r| r.get::<_, i32>(0) == 0));

    // The dashboard, as the product page shows it.
    let dash = c
        .query(
            "SELECT flow, status, summary FROM mesh.dashboard ORDER BY flow",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{} | {} | {}",
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(2)
            )
        })
        .collect::<Vec<_>>();
    assert_eq!(
        dash,
        vec![
            "Directory -> Mesh | Healthy | 150 objects imported",
            "HR Database -> Mesh | Healthy | 200 objects imported",
            "Mesh -> Directory | Healthy | 150 objects exported",
            "Mesh -> HR Database | Healthy | 200 objects exported",
        ]
    );

    // explain: why the title is what it is.
    let id: i64 = c
        .query_one(
            "SELECT id FROM mesh.objects WHERE attrs->>'employee_id' = '7'",
            &[],
        )
        .unwrap()
        .get(0);
    let rows = c
        .query(
            "SELECT connector, winner, reason FROM mesh.explain($1, 'title')",
            &[&id],
        )
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get::<_, String>(0), "HR Database");
    assert!(rows[0].get::<_, bool>(1));
    // After the export, both agree: the tie is on value, HR still wins on confidence.
    assert_eq!(
        rows[0].get::<_, String>(2),
        "highest confidence (90 over 50)"
    );

    // The compiled SQL is there to read.
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM mesh.compiled_sql WHERE step = 'resolve'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

#[test]
fn client_sees_sqlstates_and_nothing_changes() {
    let mut c = fresh_database("idmesh_it_errors");
    setup_sources(&mut c);
    assert_eq!(
        sqlstate_of(&mut c, "SELECT mesh.run('Nobody', 'full_import')"),
        "42704"
    );
    assert_eq!(
        sqlstate_of(
            &mut c,
            r#"SELECT mesh.create_connector('HR', 'table', '{"source": "hr.missing", "anchor": "x"}')"#
        ),
        "42P01"
    );
    assert_eq!(
        sqlstate_of(
            &mut c,
            r#"SELECT mesh.create_connector('AD', 'active_directory', '{"url": "ldaps://dc1"}')"#
        ),
        "22023"
    );
    c.batch_execute(r#"SELECT mesh.create_connector('HR', 'table', '{"source": "hr.employees", "anchor": "employee_id"}')"#)
        .unwrap();
    assert_eq!(
        sqlstate_of(
            &mut c,
            "SELECT mesh.add_import_flow('HR', 'person', 'title', 'title', -1)"
        ),
        "22003"
    );
    assert_eq!(
        sqlstate_of(
            &mut c,
            "SELECT mesh.add_import_flow('HR', 'person', 'title ||', 'title', 5)"
        ),
        "42601"
    );
    assert_eq!(
        sqlstate_of(&mut c, "SELECT mesh.run('HR', 'sideways')"),
        "22023"
    );
    let v: Value = c
        .query_one("SELECT jsonb_build_object('rules', (SELECT count(*) FROM mesh.flow_rule), 'runs', (SELECT count(*) FROM mesh.run))", &[])
        .unwrap()
        .get(0);
    assert_eq!(v, serde_json::json!({"rules": 0, "runs": 0}));
}

#[test]
fn roles_over_real_logins() {
    let mut c = fresh_database("idmesh_it_roles");
    setup_sources(&mut c);
    c.batch_execute(
        r#"DO $$ BEGIN
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'it_reader') THEN CREATE ROLE it_reader LOGIN; END IF;
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'it_operator') THEN CREATE ROLE it_operator LOGIN; END IF;
           END $$;
           GRANT mesh_reader TO it_reader;
           GRANT mesh_operator TO it_operator;
           SELECT mesh.create_connector('HR', 'table', '{"source": "hr.employees", "anchor": "employee_id"}');
           SELECT mesh.set_projection('HR', 'person', true);
           SELECT mesh.add_import_flow('HR', 'person', 'title', 'title', 90);"#,
    )
    .unwrap();
    let login = |user: &str| {
        postgres::Client::connect(
            &format!(
                "host={} port={} user={user} dbname=idmesh_it_roles",
                host(),
                port()
            ),
            postgres::NoTls,
        )
        .unwrap()
    };
    let mut operator = login("it_operator");
    let n: i64 = operator
        .query_one("SELECT count(*) FROM mesh.cycle()", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 2, "import and sync");
    assert_eq!(
        sqlstate_of(
            &mut operator,
            "SELECT mesh.add_import_flow('HR', 'person', 'department', 'dept', 1)"
        ),
        "42501"
    );

    let mut reader = login("it_reader");
    let objects: i64 = reader
        .query_one("SELECT count(*) FROM mesh.objects", &[])
        .unwrap()
        .get(0);
    assert_eq!(objects, 200);
    let status: String = reader
        .query_one("SELECT status FROM mesh.dashboard", &[])
        .unwrap()
        .get(0);
    assert_eq!(status, "Healthy");
    assert_eq!(
        sqlstate_of(&mut reader, "SELECT * FROM mesh.cycle()"),
        "42501"
    );
    assert_eq!(
        sqlstate_of(&mut reader, "SELECT config, secret FROM mesh.connector"),
        "42501"
    );
    assert_eq!(
        sqlstate_of(&mut reader, "SELECT * FROM mesh.connector_object"),
        "42501"
    );
}

// Issue 8, 2: a source that goes away stops contributing at once, even while its mesh
// object waits out a grace period.
#[test]
fn gone_source_is_recalled_at_once_despite_a_grace_period() {
    let mut c = fresh_database("idmesh_it_recall");
    c.batch_execute(
        "CREATE TABLE hr (id int PRIMARY KEY, title text, phone text);
         CREATE TABLE badge (id int PRIMARY KEY, title text);
         INSERT INTO hr VALUES (1, 'HR title', '+1 555 0001'), (2, 'Other', NULL);
         INSERT INTO badge VALUES (1, 'Badge title');
         SELECT mesh.create_connector('HR', 'table', '{\"source\": \"hr\", \"anchor\": \"id\"}');
         SELECT mesh.create_connector('Badge', 'table', '{\"source\": \"badge\", \"anchor\": \"id\"}');
         SELECT mesh.set_projection('HR', 'person', true);
         SELECT mesh.add_import_flow('HR', 'person', 'id', 'employee_id', 100);
         SELECT mesh.add_import_flow('HR', 'person', 'title', 'title', 90);
         SELECT mesh.add_import_flow('HR', 'person', 'phone', 'phone', 90);
         SELECT mesh.add_join_rule('Badge', 'person', 'id', 'employee_id');
         SELECT mesh.add_import_flow('Badge', 'person', 'title', 'title', 50);
         SELECT mesh.set_deletion_rule('person', 'authoritative', interval '1 day');
         SELECT * FROM mesh.cycle();",
    )
    .unwrap();
    let title = |c: &mut postgres::Client| -> (Option<String>, Option<String>, bool) {
        let r = c
            .query_one("SELECT attrs->>'title', attrs->>'phone', delete_at IS NOT NULL FROM mesh.objects WHERE id = (SELECT mesh_id FROM mesh.connector_object WHERE anchor = '1' AND connector_id = (SELECT id FROM mesh.connector WHERE name = 'Badge'))", &[])
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(
        title(&mut c),
        (Some("HR title".into()), Some("+1 555 0001".into()), false)
    );
    c.batch_execute("DELETE FROM hr WHERE id = 1; SELECT * FROM mesh.cycle();")
        .unwrap();
    // HR's values are recalled now: the badge system's title wins, HR's phone is gone; the
    // object itself waits out the day.
    assert_eq!(title(&mut c), (Some("Badge title".into()), None, true));
    assert_eq!(
        sqlstate_of(
            &mut c,
            "SELECT mesh.set_deletion_rule('person', 'sometimes')"
        ),
        "22023"
    );
    assert_eq!(
        sqlstate_of(&mut c, "SELECT mesh.set_deletion_rule('persn', 'manual')"),
        "42704"
    );
    // Deleted by hand: goes at the next sync, whatever the rule.
    c.batch_execute(
        "SELECT mesh.set_deletion_rule('person', 'manual');
         SELECT mesh.delete_object(id) FROM mesh.objects WHERE attrs->>'employee_id' = '2';
         SELECT mesh.sync();",
    )
    .unwrap();
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM mesh.objects WHERE attrs->>'employee_id' = '2' AND NOT deleted",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

// Multi-valued attributes compare as sets: a directory returning members in another order
// is no change, a member more or less is.
#[test]
fn multi_valued_values_compare_as_sets() {
    let mut c = fresh_database("idmesh_it_sets");
    let row = c
        .query_one(
            r#"SELECT mesh.diff('{"member": ["a", "b"], "title": "x"}', '{"member": ["b", "a"], "title": "x"}', '{}'),
                      mesh.diff('{"member": ["a", "b"]}', '{"member": ["b", "c"]}', '{}'),
                      mesh.diff('{}', '{"member": ["a"]}', '{}'),
                      mesh.reflects('{"member": ["a", "b"]}', '{"member": ["b", "a"]}'),
                      mesh.reflects('{"member": ["a"]}', '{"member": ["a", "b"]}'),
                      mesh.reflects('{}', '{"member": ["a"]}')"#,
            &[],
        )
        .unwrap();
    let same: Value = row.get(0);
    let changed: Value = row.get(1);
    let added: Value = row.get(2);
    assert_eq!(same, serde_json::json!({}));
    assert_eq!(changed, serde_json::json!({"member": ["b", "c"]}));
    assert_eq!(added, serde_json::json!({"member": ["a"]}));
    assert_eq!(
        (
            row.get::<_, bool>(3),
            row.get::<_, bool>(4),
            row.get::<_, bool>(5)
        ),
        (true, false, false)
    );
}
