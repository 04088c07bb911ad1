// Safety and operations: deletion thresholds, approval, preview, staging, retries, roles.
// Included into `mod tests` after scenarios.rs (its helpers are in scope).

/// A people source (projects) and an accounts target provisioned from it.
fn people_and_accounts(n: i64, deprovision: &str) {
    run(&format!(
        "CREATE SCHEMA src;
         CREATE TABLE src.people (id integer PRIMARY KEY, name text, dept text, title text);
         INSERT INTO src.people SELECT g, 'Person ' || g, CASE WHEN g % 5 = 0 THEN 'Sales' ELSE 'R&D' END, 'Staff'
           FROM generate_series(1, {n}) g;
         CREATE SCHEMA dst;
         CREATE TABLE dst.accounts (login text PRIMARY KEY, display text, title text, active boolean NOT NULL DEFAULT true);"
    ));
    run(r#"SELECT mesh.create_connector('People', 'table', '{"source": "src.people", "anchor": "id"}')"#);
    run(r#"SELECT mesh.create_connector('Accounts', 'table', '{"source": "dst.accounts", "anchor": "login", "export_table": "dst.accounts"}')"#);
    run("SELECT mesh.set_projection('People', 'person', true)");
    run("SELECT mesh.add_import_flow('People', 'person', 'id', 'employee_id', 100)");
    run("SELECT mesh.add_import_flow('People', 'person', 'name', 'display_name', 100)");
    run("SELECT mesh.add_import_flow('People', 'person', 'dept', 'department', 100)");
    run("SELECT mesh.add_import_flow('People', 'person', 'title', 'title', 100)");
    run("SELECT mesh.add_join_rule('Accounts', 'person', $$substr(login, 2)$$, 'employee_id')");
    run("SELECT mesh.add_export_flow('Accounts', 'person', $$'u' || employee_id$$, 'login')");
    run("SELECT mesh.add_export_flow('Accounts', 'person', 'display_name', 'display')");
    run("SELECT mesh.add_export_flow('Accounts', 'person', 'title', 'title')");
    run(&format!(
        r#"SELECT mesh.set_provisioning('Accounts', 'person', NULL, '{{"deprovision": "{deprovision}", "disable": {{"active": false}}}}')"#
    ));
}

/// Test 1: a source losing 60% of its rows: the export is held, nothing is deleted; after
/// approval exactly those deletes happen.
#[pg_test]
fn deletion_threshold_holds_mass_delete_until_approved() {
    people_and_accounts(30, "delete");
    let first = cycle();
    assert_eq!(first["Accounts/export"]["added"], json!(30), "{first}");
    run("DELETE FROM src.people WHERE id <= 18");
    let held = cycle();
    assert_eq!(held["Accounts/export"]["status"], json!("blocked"), "{held}");
    assert_eq!(held["Accounts/export"]["deleted"], json!(0));
    assert_eq!(int("SELECT count(*) FROM dst.accounts"), 30, "nothing deleted");
    assert_eq!(int("SELECT count(*) FROM mesh.pending_export WHERE status = 'blocked'"), 18);
    let dash = js("SELECT to_jsonb(d) FROM mesh.dashboard d WHERE flow = 'Mesh -> Accounts'");
    assert_eq!(dash["status"], json!("Blocked"), "{dash}");
    // Still held on the next cycle: a threshold is not a one-time warning.
    assert_eq!(cycle()["Accounts/export"]["status"], json!("blocked"));
    assert_eq!(int("SELECT count(*) FROM dst.accounts"), 30);

    assert_eq!(int("SELECT mesh.approve('Accounts')"), 18);
    let released = cycle();
    assert_eq!(released["Accounts/export"]["deleted"], json!(18), "{released}");
    assert_eq!(released["Accounts/export"]["status"], json!("success"));
    assert_eq!(int("SELECT count(*) FROM dst.accounts"), 12);
    assert_eq!(int("SELECT count(*) FROM dst.accounts WHERE substr(login, 2)::int <= 18"), 0, "exactly those");
    let audit = js("SELECT to_jsonb(a) FROM mesh.audit_log a WHERE action = 'approve'");
    assert_eq!(audit["detail"]["changes"], json!(18), "{audit}");
    assert_eq!(audit["actor"], json!("postgres"));
    assert!(outcome("SELECT mesh.approve('Accounts')").starts_with("55000"), "nothing held any more");
}

/// Test 2: a scope change that would deprovision most objects is held the same way.
#[pg_test]
fn scope_change_counts_as_deletes() {
    people_and_accounts(25, "disable");
    cycle();
    assert_eq!(int("SELECT count(*) FROM dst.accounts WHERE active"), 25);
    // A typo in the scope: only Sales (5 of 25) stay in scope.
    run("SELECT mesh.set_provisioning('Accounts', 'person', $$department = 'Sales'$$, '{\"deprovision\": \"disable\", \"disable\": {\"active\": false}}')");
    let held = cycle();
    assert_eq!(held["Accounts/export"]["status"], json!("blocked"), "{held}");
    assert_eq!(int("SELECT count(*) FROM dst.accounts WHERE active"), 25, "nothing disabled");
    assert_eq!(int("SELECT count(*) FROM mesh.preview('Accounts') WHERE operation = 'disable'"), 20);
    // The fix: back to everyone in scope; the held disables are no longer planned.
    run("SELECT mesh.set_provisioning('Accounts', 'person', NULL, '{\"deprovision\": \"disable\", \"disable\": {\"active\": false}}')");
    let fixed = cycle();
    assert_eq!(fixed["Accounts/export"]["status"], json!("success"), "{fixed}");
    assert_eq!(int("SELECT count(*) FROM mesh.pending_export"), 0);
    assert_eq!(int("SELECT count(*) FROM dst.accounts WHERE active"), 25);
}

/// Test 3: preview rows equal what the following export does, change for change; a
/// whole-cycle preview shows the cascade of a source change and changes nothing.
#[pg_test]
fn preview_matches_the_export() {
    people_and_accounts(10, "delete");
    cycle();
    run("UPDATE src.people SET title = 'Lead' WHERE id IN (2, 3)");
    run("UPDATE src.people SET name = 'Renamed Four' WHERE id = 4");
    run("INSERT INTO src.people VALUES (11, 'Person 11', 'R&D', 'Intern')");
    run("DELETE FROM src.people WHERE id = 7");

    // Whole-cycle preview before anything is imported.
    let before = js("SELECT jsonb_build_object('wm', (SELECT jsonb_agg(value ORDER BY connector_id) FROM mesh.watermark),
                      'co', (SELECT jsonb_agg(attrs ORDER BY connector_id, anchor) FROM mesh.connector_object),
                      'runs', (SELECT count(*) FROM mesh.run))");
    let cascade = js("SELECT jsonb_agg(jsonb_build_array(connector, operation, anchor, attribute, new_value)
                      ORDER BY connector, operation, anchor, attribute) FROM mesh.preview_cycle()");
    let after = js("SELECT jsonb_build_object('wm', (SELECT jsonb_agg(value ORDER BY connector_id) FROM mesh.watermark),
                     'co', (SELECT jsonb_agg(attrs ORDER BY connector_id, anchor) FROM mesh.connector_object),
                     'runs', (SELECT count(*) FROM mesh.run))");
    assert_eq!(before, after, "preview_cycle changed nothing");
    assert_eq!(int("SELECT count(*) FROM mesh.pending_export"), 0);
    // A connector whose import fails is shown, and passed over as a cycle passes it over.
    run("CREATE VIEW src.gone AS SELECT 1 AS id");
    run(r#"SELECT mesh.create_connector('Broken', 'table', '{"source": "src.gone", "anchor": "id"}')"#);
    run("DROP VIEW src.gone");
    let failed = js("SELECT jsonb_agg(jsonb_build_array(operation, status)) FROM mesh.preview_cycle() WHERE connector = 'Broken'");
    assert_eq!(failed[0][0], json!("import failed"), "{failed}");
    assert!(failed[0][1].as_str().is_some_and(|m| m.contains("src.gone")), "{failed}");
    let others = js("SELECT jsonb_agg(jsonb_build_array(connector, operation, anchor, attribute, new_value)
                     ORDER BY connector, operation, anchor, attribute) FROM mesh.preview_cycle() WHERE connector <> 'Broken'");
    assert_eq!(others, cascade, "the other connectors' cascade is unchanged");
    run("SELECT mesh.drop_connector('Broken')");

    // Now import and sync for real, preview the export, then run it.
    run("SELECT mesh.run('People', 'delta_import')");
    run("SELECT mesh.sync()");
    let preview = js("SELECT jsonb_agg(jsonb_build_array('Accounts', operation, anchor, attribute, new_value)
                      ORDER BY operation, anchor, attribute) FROM mesh.preview('Accounts')");
    assert_eq!(cascade, preview, "the cycle preview showed the same cascade");
    let rows = preview.as_array().unwrap();
    assert_eq!(rows.len(), 2 + 1 + 3 + 1, "{preview}"); // 2 titles, 1 display, 3 attributes of the add, 1 delete
    let snapshot = "SELECT coalesce(jsonb_object_agg(login, to_jsonb(a) - 'login'), '{}') FROM dst.accounts a";
    let old = js(snapshot);
    run("SELECT mesh.run('Accounts', 'export')");
    let new = js(snapshot);
    // Every preview row happened, and nothing else did.
    let mut observed = Vec::new();
    for (login, row) in new.as_object().unwrap() {
        match old.get(login) {
            None => {
                for (k, v) in row.as_object().unwrap() {
                    if k != "active" {
                        observed.push(json!(["Accounts", "add", null, k, v]));
                    }
                }
                observed.push(json!(["Accounts", "add", null, "login", login]));
            }
            Some(prev) => {
                for (k, v) in row.as_object().unwrap() {
                    if prev.get(k) != Some(v) {
                        observed.push(json!(["Accounts", "update", login, k, v]));
                    }
                }
            }
        }
    }
    for login in old.as_object().unwrap().keys() {
        if new.get(login).is_none() {
            observed.push(json!(["Accounts", "delete", login, null, null]));
        }
    }
    let mut expected: Vec<Value> = rows.to_vec();
    let key = |v: &Value| v.to_string();
    expected.sort_by_key(key);
    observed.sort_by_key(key);
    assert_eq!(Value::Array(expected), Value::Array(observed));
}

/// Test 4: a staging connector never writes; switching staging off exports what was pending.
#[pg_test]
fn staging_mode_computes_but_never_writes() {
    people_and_accounts(5, "delete");
    run("SELECT mesh.set_safety('Accounts', staging => true)");
    let runs = cycle();
    assert_eq!(runs["Accounts/export"]["added"], json!(0), "{runs}");
    assert_eq!(int("SELECT count(*) FROM dst.accounts"), 0);
    assert_eq!(int("SELECT count(*) FROM mesh.pending_export WHERE operation = 'add'"), 5);
    assert_eq!(js("SELECT to_jsonb(d) FROM mesh.dashboard d WHERE flow = 'Mesh -> Accounts'")["status"], json!("Staging"));
    assert!(one::<String>("SELECT message FROM mesh.run_history WHERE profile = 'export' ORDER BY run_id DESC LIMIT 1")
        .unwrap()
        .contains("staging mode: 5 changes"));
    cycle();
    assert_eq!(int("SELECT count(*) FROM dst.accounts"), 0, "still nothing");
    run("SELECT mesh.set_safety('Accounts', staging => false)");
    let runs = cycle();
    assert_eq!(runs["Accounts/export"]["added"], json!(5), "{runs}");
    assert_eq!(int("SELECT count(*) FROM dst.accounts"), 5);
}

/// Test 5: one object with a constraint error does not stop the others; it backs off, is
/// retried, and clears when it succeeds.
#[pg_test]
fn failing_object_backs_off_retries_and_clears() {
    people_and_accounts(6, "delete");
    run("ALTER TABLE dst.accounts ADD CONSTRAINT no_six CHECK (login <> 'u6')");
    let runs = cycle();
    assert_eq!(runs["Accounts/export"]["added"], json!(5), "{runs}");
    assert_eq!(runs["Accounts/export"]["errors"], json!(1));
    assert_eq!(runs["Accounts/export"]["status"], json!("warning"));
    let e = js("SELECT to_jsonb(e) FROM mesh.errors e");
    assert_eq!(e["sqlstate"], json!("23514"), "{e}");
    assert_eq!(e["attempts"], json!(1));
    // Inside the backoff the failed add is not tried again.
    let runs = cycle();
    assert_eq!(runs["Accounts/export"]["errors"], json!(0), "{runs}");
    assert_eq!(int("SELECT attempts FROM mesh.run_error"), 1);
    // Retried on request: still failing, attempts count up.
    assert_eq!(int("SELECT mesh.retry('Accounts')"), 1);
    assert_eq!(cycle()["Accounts/export"]["errors"], json!(1));
    assert_eq!(int("SELECT attempts FROM mesh.run_error"), 2);
    // The obstacle is removed: the retry succeeds and the error clears.
    run("ALTER TABLE dst.accounts DROP CONSTRAINT no_six");
    run("SELECT mesh.retry('Accounts')");
    let runs = cycle();
    assert_eq!(runs["Accounts/export"]["added"], json!(1), "{runs}");
    assert_eq!(int("SELECT count(*) FROM mesh.errors"), 0);
    assert_eq!(int("SELECT count(*) FROM dst.accounts"), 6);
}

/// Test 6: a reader sees views only; an operator runs and approves but cannot change rules;
/// nobody reads secrets or the tables behind the views.
#[pg_test]
fn roles_separate_reading_running_and_configuring() {
    people_and_accounts(3, "delete");
    cycle();
    run("CREATE ROLE idm_reader_t; GRANT mesh_reader TO idm_reader_t;
         CREATE ROLE idm_operator_t; GRANT mesh_operator TO idm_operator_t;
         CREATE ROLE idm_admin_t; GRANT mesh_admin TO idm_admin_t;");
    outcome("SELECT 1"); // create the helper before switching roles

    run("SET LOCAL ROLE idm_reader_t");
    assert_eq!(int("SELECT count(*) FROM mesh.dashboard"), 3);
    assert_eq!(int("SELECT count(*) FROM mesh.objects"), 3);
    assert!(int("SELECT count(*) FROM mesh.run_history") > 0);
    let id = int("SELECT min(id) FROM mesh.objects");
    assert_eq!(int(&format!("SELECT count(*) FROM mesh.explain({id}, 'title')")), 1);
    for denied in [
        "SELECT * FROM mesh.run('People', 'delta_import')",
        "SELECT * FROM mesh.cycle()",
        "SELECT mesh.approve('Accounts')",
        "SELECT mesh.add_import_flow('People', 'person', 'name', 'nickname', 10)",
        "SELECT secret FROM mesh.connector",
        "SELECT * FROM mesh.connector_object",
        "SELECT * FROM mesh.preview('Accounts')",
    ] {
        let o = outcome(denied);
        assert!(o.starts_with("42501"), "reader: {denied} -> {o}");
    }

    run("RESET ROLE; SET LOCAL ROLE idm_operator_t");
    assert_eq!(int("SELECT count(*) FROM mesh.run('People', 'delta_import')"), 1);
    assert!(outcome("SELECT * FROM mesh.cycle()") == "ok");
    assert!(outcome("SELECT mesh.approve('Accounts')").starts_with("55000"), "may approve; nothing is held");
    for denied in [
        "SELECT mesh.add_import_flow('People', 'person', 'name', 'nickname', 10)",
        "SELECT mesh.set_safety('Accounts', staging => true)",
        "SELECT mesh.drop_connector('People')",
        "SELECT secret FROM mesh.connector",
    ] {
        let o = outcome(denied);
        assert!(o.starts_with("42501"), "operator: {denied} -> {o}");
    }

    run("RESET ROLE; SET LOCAL ROLE idm_admin_t");
    assert_eq!(outcome("SELECT mesh.add_import_flow('People', 'person', 'name', 'nickname', 10)"), "ok");
    assert!(outcome("SELECT secret FROM mesh.connector").starts_with("42501"), "not even an admin reads secrets");
    run("RESET ROLE");
    let audit = js("SELECT to_jsonb(a) FROM mesh.audit_log a WHERE object = 'flow_rule' ORDER BY id DESC LIMIT 1");
    assert_eq!(audit["actor"], json!("idm_admin_t"), "the acting role is recorded: {audit}");
    assert_eq!(audit["detail"]["new"]["target"], json!("nickname"));
}
