// The process connector kind: connector programs over the JSON-lines protocol.
// Included into `mod tests` after scenarios.rs (its helpers are in scope). The example CSV
// connector is built by `make pgrx-test` (cargo build -p idmesh-csv-connector) first.

const CSV_CONNECTOR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/debug/idmesh-csv-connector");
const PYTHON_CONNECTOR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python/json_people.py");

/// A fresh connector directory for one test (written by the backend, user postgres), set
/// as idmesh.connector_directory for this transaction.
fn connector_dir(test: &str) -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(format!("/tmp/idmesh-connectors-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    run(&format!("SET LOCAL idmesh.connector_directory = '{}'", dir.display()));
    dir
}

fn install(dir: &std::path::Path, from: &str, name: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::copy(from, dir.join(name)).unwrap_or_else(|e| {
        panic!("{from}: {e} (build the example connectors first: cargo build -p idmesh-csv-connector)")
    });
    std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn script(dir: &std::path::Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(dir.join(name), format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Test 1: the example connector through the process kind: full import, delta, export,
/// confirmed on the next import.
#[pg_test]
fn csv_connector_imports_deltas_and_exports() {
    let dir = connector_dir("csv");
    install(&dir, CSV_CONNECTOR, "csv-connector");
    let file = dir.join("people.csv");
    std::fs::write(&file, "employee_id,name,title,phone\n1,Ada,Engineer,\n2,Grace,Admiral,\n3,Alan,Researcher,\n").unwrap();
    run(&format!(
        r#"SELECT mesh.create_connector('HR Drop', 'process', '{{"program": "csv-connector",
              "settings": {{"file": "{}", "anchor": "employee_id"}}}}')"#,
        file.display()
    ));
    run("CREATE SCHEMA pb; CREATE TABLE pb.phones (emp text PRIMARY KEY, phone text);
         INSERT INTO pb.phones VALUES ('1', '+44 100'), ('2', '+1 200');");
    run(r#"SELECT mesh.create_connector('Phones', 'table', '{"source": "pb.phones", "anchor": "emp"}')"#);
    run("SELECT mesh.set_projection('HR Drop', 'person', true)");
    run("SELECT mesh.add_import_flow('HR Drop', 'person', 'employee_id', 'employee_id', 100)");
    run("SELECT mesh.add_import_flow('HR Drop', 'person', 'title', 'title', 90)");
    run("SELECT mesh.add_join_rule('Phones', 'person', 'emp', 'employee_id')");
    run("SELECT mesh.add_import_flow('Phones', 'person', 'phone', 'phone', 80)");
    run("SELECT mesh.add_export_flow('HR Drop', 'person', 'phone', 'phone')");

    let first = cycle();
    assert_eq!(first["HR Drop/delta_import"]["added"], json!(3), "{first}");
    assert_eq!(first["HR Drop/export"]["updated"], json!(2), "{first}");
    let csv = std::fs::read_to_string(&file).unwrap();
    assert!(csv.contains("1,Ada,Engineer,+44 100") && csv.contains("2,Grace,Admiral,+1 200"), "{csv}");
    assert_eq!(int("SELECT count(*) FROM mesh.pending_export"), 0, "read back: confirmed");
    assert_eq!(attrs(1)["title"], json!("Engineer"));

    // The next import reads the file the export wrote: nothing new, no echo.
    let again = cycle();
    assert_eq!(again["HR Drop/delta_import"]["updated"], json!(0), "{again}");
    assert_eq!(again["HR Drop/delta_import"]["unchanged"], json!(3), "{again}");
    assert_eq!(again["HR Drop/export"]["updated"], json!(0), "{again}");
    // An unchanged file: the delta sends nothing at all.
    let quiet = js("SELECT to_jsonb(r) FROM mesh.run('HR Drop', 'delta_import') r");
    assert_eq!(quiet["details"]["seen"], json!(0), "{quiet}");
    assert_eq!(quiet["message"], json!("file unchanged"));

    // HR drops a new file: a new title, a leaver.
    std::fs::write(&file, "employee_id,name,title,phone\n1,Ada,Countess,+44 100\n3,Alan,Researcher,\n").unwrap();
    let next = cycle();
    assert_eq!(next["HR Drop/delta_import"]["updated"], json!(1), "{next}");
    assert_eq!(next["HR Drop/delta_import"]["deleted"], json!(1), "{next}");
    assert_eq!(attrs(1)["title"], json!("Countess"));
    assert_eq!(attrs(2), Value::Null, "Grace left");
}

/// Test 2: misbehaving programs fail the run cleanly: clear message, mesh and watermark
/// unchanged, the backend alive.
#[pg_test]
fn misbehaving_connector_programs_fail_cleanly() {
    let dir = connector_dir("bad");
    let hello = r#"read line; echo '{"type":"hello","protocol":1,"name":"bad","capabilities":[]}'; read line"#;
    let one = r#"echo '{"type":"objects","objects":[{"anchor":"1","name":null,"object_type":"person","attributes":{"x":"1"}}]}'"#;
    script(&dir, "crash", &format!("{hello}\n{one}\necho 'segfault in module x' >&2\nexit 3"));
    script(&dir, "garbage", &format!("{hello}\necho 'this is not json'\nsleep 5"));
    script(&dir, "hang", &format!("{hello}\nsleep 30"));
    script(&dir, "no-end", &format!("{hello}\n{one}\nexit 0"));
    script(&dir, "wrong-version", r#"read line; echo '{"type":"hello","protocol":9,"name":"bad","capabilities":[]}'; sleep 5"#);
    for (name, expect) in [
        ("crash", "exited before finishing its answer (exit status: 3); its stderr ends: segfault in module x"),
        ("garbage", "wrote something that is not the protocol"),
        ("hang", "wrote nothing for 1 s (timeout)"),
        ("no-end", "exited before finishing its answer"),
        ("wrong-version", "speaks protocol 9"),
    ] {
        run(&format!(
            r#"SELECT mesh.create_connector('{name}', 'process', '{{"program": "{name}", "timeout_seconds": 1}}')"#
        ));
        run(&format!("SELECT mesh.set_projection('{name}', 'person', true)"));
        let before = int("SELECT count(*) FROM mesh.run") + int("SELECT count(*) FROM mesh.connector_object");
        let o = outcome(&format!("SELECT mesh.run('{name}', 'full_import')"));
        assert!(o.starts_with("08006"), "{name}: {o}");
        assert!(o.contains(expect), "{name}: {o}");
        assert!(o.contains("watermark did not move") || o.contains("Nothing was imported") || o.contains(name), "{o}");
        let after = int("SELECT count(*) FROM mesh.run") + int("SELECT count(*) FROM mesh.connector_object");
        assert_eq!(before, after, "{name}: nothing written");
        assert_eq!(int("SELECT count(*) FROM mesh.watermark"), 0);
    }
    // The backend is fine, and a good program still runs.
    assert_eq!(int("SELECT 1::bigint"), 1);
}

/// Test 2b: a session merges each batch as it arrives; an anchor that comes again in a
/// later batch still fails the whole run (23505), and nothing of it stays: no connector
/// objects, no watermark. A good run afterwards counts each batch's objects once.
#[pg_test]
fn an_anchor_repeated_in_a_later_batch_fails_the_run_and_leaves_nothing() {
    let dir = connector_dir("batches");
    let hello = r#"read line; echo '{"type":"hello","protocol":1,"name":"batches","capabilities":[]}'; read line"#;
    let batch = |anchors: &[&str]| {
        let objects: Vec<String> = anchors
            .iter()
            .map(|a| format!(r#"{{"anchor":"{a}","name":null,"object_type":"person","attributes":{{"id":"{a}"}}}}"#))
            .collect();
        format!(r#"echo '{{"type":"objects","objects":[{}]}}'"#, objects.join(","))
    };
    let end = r#"echo '{"type":"end","watermark":{"at":1}}'"#;
    script(&dir, "repeats", &format!("{hello}\n{}\n{}\n{end}", batch(&["1", "2"]), batch(&["3", "1"])));
    script(&dir, "distinct", &format!("{hello}\n{}\n{}\n{end}", batch(&["1", "2"]), batch(&["3", "4"])));
    for name in ["repeats", "distinct"] {
        run(&format!(r#"SELECT mesh.create_connector('{name}', 'process', '{{"program": "{name}"}}')"#));
    }
    let o = outcome("SELECT mesh.run('repeats', 'full_import')");
    assert!(o.starts_with("23505") && o.contains(r#"anchor "1" more than once"#), "{o}");
    assert_eq!(int("SELECT count(*) FROM mesh.connector_object"), 0, "batch 1 was merged, and rolled back");
    assert_eq!(int("SELECT count(*) FROM mesh.watermark"), 0);
    assert_eq!(int("SELECT count(*) FROM mesh.staging"), 0);

    let good = js("SELECT to_jsonb(r) FROM mesh.run('distinct', 'full_import') r");
    assert_eq!(good["added"], json!(4), "{good}");
    assert_eq!(good["unchanged"], json!(0), "{good}");
    let again = js("SELECT to_jsonb(r) FROM mesh.run('distinct', 'full_import') r");
    assert_eq!((again["added"].clone(), again["unchanged"].clone()), (json!(0), json!(4)), "{again}");
    assert_eq!(int("SELECT count(*) FROM mesh.connector_object WHERE NOT deleted"), 4);
}

/// Test 3: a program path outside the allowed directory is refused; so is any program when
/// no directory is set.
#[pg_test]
fn programs_outside_the_connector_directory_are_refused() {
    let dir = connector_dir("outside");
    script(&dir, "ok", "exit 0");
    for program in ["../../bin/sh", "/bin/sh", "missing"] {
        let o = outcome(&format!(r#"SELECT mesh.create_connector('X', 'process', '{{"program": "{program}"}}')"#));
        let code = if program == "missing" { "58P01" } else { "42501" };
        assert!(o.starts_with(code), "{program}: {o}");
    }
    std::os::unix::fs::symlink("/bin/sh", dir.join("link")).unwrap();
    assert!(outcome(r#"SELECT mesh.create_connector('X', 'process', '{"program": "link"}')"#).starts_with("42501"));
    std::fs::write(dir.join("plain"), "not executable").unwrap();
    assert!(outcome(r#"SELECT mesh.create_connector('X', 'process', '{"program": "plain"}')"#).starts_with("42501"));
    assert_eq!(outcome(r#"SELECT mesh.create_connector('X', 'process', '{"program": "ok"}')"#), "ok");
    run("RESET idmesh.connector_directory");
    assert!(outcome(r#"SELECT mesh.create_connector('Y', 'process', '{"program": "ok"}')"#).starts_with("55000"));
    // A regular role cannot point the directory elsewhere.
    run("CREATE ROLE idm_dir_t; SET LOCAL ROLE idm_dir_t");
    assert!(outcome("SET idmesh.connector_directory = '/'").starts_with("42501"));
    run("RESET ROLE");
}

/// Test 4: the Python example (no Rust SDK) passes the same import test.
#[pg_test]
fn python_connector_imports_and_deltas() {
    let dir = connector_dir("python");
    install(&dir, PYTHON_CONNECTOR, "json-people");
    let file = dir.join("people.json");
    std::fs::write(&file, r#"[{"id": 1, "name": "Ada", "title": "Engineer"}, {"id": 2, "name": "Grace", "title": "Admiral"}]"#)
        .unwrap();
    run(&format!(
        r#"SELECT mesh.create_connector('People JSON', 'process', '{{"program": "json-people",
              "settings": {{"file": "{}", "anchor": "id"}}}}')"#,
        file.display()
    ));
    run("SELECT mesh.set_projection('People JSON', 'person', true)");
    run("SELECT mesh.add_import_flow('People JSON', 'person', 'id', 'employee_id', 100)");
    run("SELECT mesh.add_import_flow('People JSON', 'person', 'title', 'title', 90)");
    let first = cycle();
    assert_eq!(first["People JSON/delta_import"]["added"], json!(2), "{first}");
    assert_eq!(attrs(2)["title"], json!("Admiral"));
    let quiet = js("SELECT to_jsonb(r) FROM mesh.run('People JSON', 'delta_import') r");
    assert_eq!(quiet["details"]["seen"], json!(0), "{quiet}");
    std::fs::write(&file, r#"[{"id": 1, "name": "Ada", "title": "Countess"}]"#).unwrap();
    let next = cycle();
    assert_eq!(next["People JSON/delta_import"]["updated"], json!(1), "{next}");
    assert_eq!(next["People JSON/delta_import"]["deleted"], json!(1), "{next}");
    assert_eq!(attrs(1)["title"], json!("Countess"));
}
