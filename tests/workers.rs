//! Background runs against the project's cluster, where idmesh and pg_cron are preloaded
//! and the launcher serves database idmesh_workers (scripts/cluster.sh). Runs here are real
//! background workers: the tests commit, wait, and watch.

use idmesh_integration_tests::*;
use postgres::Client;
use std::time::{Duration, Instant};

/// A connector program that sends `n` objects one per batch, `pause` seconds apart.
fn slow_program(name: &str, n: u32, pause: &str) {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::path::PathBuf::from(
        std::env::var("IDMESH_RUN").unwrap_or_else(|_| "/tmp/idmesh-run".into()),
    )
    .join("connectors");
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            r#"#!/bin/sh
read line
echo '{{"type":"hello","protocol":1,"name":"slow","capabilities":["full_import","delta_import"]}}'
read line
i=1
while [ $i -le {n} ]; do
  echo "{{\"type\":\"objects\",\"objects\":[{{\"anchor\":\"$i\",\"name\":null,\"object_type\":\"person\",\"attributes\":{{\"n\":\"$i\"}}}}]}}"
  sleep {pause}
  i=$((i+1))
done
echo '{{"type":"end","watermark":{{"sent":{n}}}}}'
read line
"#
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The workers' database with a fresh extension and the given slow connectors.
fn setup(connectors: &[(&str, u32, &str)]) -> Client {
    let mut c = connect("idmesh_workers");
    c.batch_execute("DROP EXTENSION IF EXISTS pg_cron; DROP EXTENSION IF EXISTS idmesh CASCADE; CREATE EXTENSION idmesh;")
        .unwrap();
    for (name, n, pause) in connectors {
        slow_program(name, *n, pause);
        c.execute(
            "SELECT mesh.create_connector($1, 'process', jsonb_build_object('program', $1::text, 'timeout_seconds', 30))",
            &[name],
        )
        .unwrap();
        c.execute("SELECT mesh.set_projection($1, 'person', true)", &[name])
            .unwrap();
    }
    c
}

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn status(c: &mut Client, run: i64) -> String {
    c.query_one("SELECT status FROM mesh.run WHERE id = $1", &[&run])
        .unwrap()
        .get(0)
}

fn ended(c: &mut Client, run: i64, limit: u64) -> String {
    wait_for(
        &format!("run {run} to end"),
        Duration::from_secs(limit),
        || {
            let s = status(c, run);
            (s != "queued" && s != "running").then_some(s)
        },
    )
}

#[test]
fn parallel_connectors_serial_per_connector_and_progress() {
    let mut c = setup(&[("slow-a", 8, "0.3"), ("slow-b", 8, "0.3")]);
    let a1: i64 = c
        .query_one("SELECT mesh.enqueue('slow-a', 'full_import')", &[])
        .unwrap()
        .get(0);
    let b1: i64 = c
        .query_one("SELECT mesh.enqueue('slow-b', 'full_import')", &[])
        .unwrap()
        .get(0);
    let a2: i64 = c
        .query_one("SELECT mesh.enqueue('slow-a', 'delta_import')", &[])
        .unwrap()
        .get(0);
    // Both connectors run at the same time; the second run of slow-a waits for the first.
    let mut max_parallel = 0;
    let mut seen_progress: Vec<i64> = Vec::new();
    wait_for("the first two runs to end", Duration::from_secs(60), || {
        let rows = c
            .query(
                "SELECT run_id, seen FROM mesh.running WHERE parent_id IS NULL",
                &[],
            )
            .unwrap();
        let running: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        max_parallel = max_parallel.max(running.len());
        assert!(
            !(running.contains(&a1) && running.contains(&a2)),
            "two runs of one connector at once"
        );
        if let Some(r) = rows.iter().find(|r| r.get::<_, i64>(0) == a1) {
            seen_progress.push(r.get(1));
        }
        let done = status(&mut c, a1) == "success" && status(&mut c, b1) == "success";
        done.then_some(())
    });
    assert_eq!(max_parallel, 2, "slow-a and slow-b ran in parallel");
    assert!(
        seen_progress.windows(2).any(|w| w[1] > w[0]),
        "progress grew while running: {seen_progress:?}"
    );
    assert!(
        seen_progress.iter().any(|s| *s > 0 && *s < 8),
        "progress seen mid-run: {seen_progress:?}"
    );
    assert_eq!(ended(&mut c, a2, 60), "success");
    let (added, unchanged): (i32, i32) = {
        let r = c
            .query_one(
                "SELECT added, unchanged FROM mesh.run WHERE id = $1",
                &[&a2],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(
        (added, unchanged),
        (0, 8),
        "the second run of slow-a came after the first"
    );
    let objects: i64 = c
        .query_one("SELECT count(*) FROM mesh.connector_object", &[])
        .unwrap()
        .get(0);
    assert_eq!(objects, 16);
}

#[test]
fn cancel_a_long_import_midway() {
    let mut c = setup(&[("slow-c", 20, "0.3")]);
    let run: i64 = c
        .query_one("SELECT mesh.enqueue('slow-c', 'full_import')", &[])
        .unwrap()
        .get(0);
    wait_for(
        "the import to make progress",
        Duration::from_secs(30),
        || {
            let seen: i64 = c
                .query_one("SELECT seen FROM mesh.run WHERE id = $1", &[&run])
                .unwrap()
                .get(0);
            (seen >= 3).then_some(())
        },
    );
    let answer: String = c
        .query_one("SELECT mesh.cancel($1)", &[&run])
        .unwrap()
        .get(0);
    assert_eq!(answer, "cancelling");
    assert_eq!(ended(&mut c, run, 30), "cancelled");
    let (objects, watermarks, staged): (i64, i64, i64) = {
        let r = c
            .query_one(
                "SELECT (SELECT count(*) FROM mesh.connector_object), (SELECT count(*) FROM mesh.watermark),
                        (SELECT count(*) FROM mesh.staging)",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(
        (objects, watermarks, staged),
        (0, 0, 0),
        "nothing merged, no watermark, staging cleaned"
    );
    // A queued run cancels at once.
    let queued: i64 = c
        .query_one("SELECT mesh.enqueue('slow-c', 'delta_import')", &[])
        .unwrap()
        .get(0);
    let q2: i64 = c
        .query_one("SELECT mesh.enqueue('slow-c', 'delta_import')", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        c.query_one("SELECT mesh.cancel($1)", &[&q2])
            .unwrap()
            .get::<_, String>(0),
        "cancelled"
    );
    // A later run completes the work.
    assert_eq!(ended(&mut c, queued, 60), "success");
    let added: i32 = c
        .query_one("SELECT added FROM mesh.run WHERE id = $1", &[&queued])
        .unwrap()
        .get(0);
    assert_eq!(added, 20);
    assert_eq!(status(&mut c, q2), "cancelled");
}

#[test]
fn terminated_worker_fails_its_run_and_the_next_run_finishes() {
    let mut c = setup(&[("slow-t", 15, "0.3")]);
    let run: i64 = c
        .query_one("SELECT mesh.enqueue('slow-t', 'full_import')", &[])
        .unwrap()
        .get(0);
    let pid: i32 = wait_for("the worker", Duration::from_secs(30), || {
        let r = c
            .query_one(
                "SELECT worker_pid, seen FROM mesh.run WHERE id = $1",
                &[&run],
            )
            .unwrap();
        let pid: Option<i32> = r.get(0);
        let seen: i64 = r.get(1);
        pid.filter(|_| seen >= 2)
    });
    c.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    assert_eq!(ended(&mut c, run, 30), "failed");
    let message: String = c
        .query_one("SELECT message FROM mesh.run WHERE id = $1", &[&run])
        .unwrap()
        .get(0);
    assert!(message.contains("cut short"), "{message}");
    let (objects, watermarks): (i64, i64) = {
        let r = c.query_one("SELECT (SELECT count(*) FROM mesh.connector_object), (SELECT count(*) FROM mesh.watermark)", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((objects, watermarks), (0, 0));
    let next: i64 = c
        .query_one("SELECT mesh.enqueue('slow-t', 'delta_import')", &[])
        .unwrap()
        .get(0);
    assert_eq!(ended(&mut c, next, 60), "success");
    let r = c
        .query_one(
            "SELECT added, updated, deleted FROM mesh.run WHERE id = $1",
            &[&next],
        )
        .unwrap();
    assert_eq!(
        (r.get::<_, i32>(0), r.get::<_, i32>(1), r.get::<_, i32>(2)),
        (15, 0, 0)
    );
    let objects: i64 = c
        .query_one(
            "SELECT count(DISTINCT anchor) FROM mesh.connector_object",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(objects, 15, "no duplicates");
}

#[test]
fn enqueue_cycle_and_pg_cron_schedule() {
    let mut c = setup(&[("slow-k", 2, "0")]);
    let cycle: i64 = c
        .query_one("SELECT mesh.enqueue_cycle()", &[])
        .unwrap()
        .get(0);
    assert_eq!(ended(&mut c, cycle, 60), "success");
    let steps: Vec<String> = c
        .query(
            "SELECT profile FROM mesh.run WHERE parent_id = $1 ORDER BY id",
            &[&cycle],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert_eq!(steps[0], "delta_import");
    assert!(steps[1].ends_with("sync"), "{steps:?}");
    // pg_cron, minute resolution: a schedule calling mesh.enqueue produces runs.
    c.batch_execute("CREATE EXTENSION pg_cron").unwrap();
    let before: i64 = c
        .query_one(
            "SELECT count(*) FROM mesh.run WHERE profile = 'delta_import'",
            &[],
        )
        .unwrap()
        .get(0);
    c.execute("SELECT cron.schedule('idmesh-test', '* * * * *', $$SELECT mesh.enqueue('slow-k', 'delta_import')$$)", &[])
        .unwrap();
    wait_for(
        "pg_cron to enqueue a run that succeeds",
        Duration::from_secs(150),
        || {
            let n: i64 = c
            .query_one("SELECT count(*) FROM mesh.run WHERE profile = 'delta_import' AND status = 'success'", &[])
            .unwrap()
            .get(0);
            (n > before).then_some(())
        },
    );
    c.execute("SELECT cron.unschedule('idmesh-test')", &[])
        .unwrap();
}

/// A connector that fails in a background cycle fails alone: its run is recorded failed with
/// the reason, the other connectors import and the sync runs; the cycle ends failed.
#[test]
fn a_failing_connector_does_not_stop_a_background_cycle() {
    let mut c = setup(&[("slow-ok", 2, "0")]);
    let broken = std::path::PathBuf::from(std::env::var("IDMESH_RUN").unwrap_or_else(|_| "/tmp/idmesh-run".into()))
        .join("connectors")
        .join("broken-k");
    std::fs::write(
        &broken,
        "#!/bin/sh\nread line\necho '{\"type\":\"hello\",\"protocol\":1,\"name\":\"broken\",\"capabilities\":[\"full_import\",\"delta_import\"]}'\nread line\necho 'the HR system is down' >&2\nexit 3\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    c.execute(
        "SELECT mesh.create_connector('Broken', 'process', jsonb_build_object('program', 'broken-k', 'timeout_seconds', 30))",
        &[],
    )
    .unwrap();
    let cycle: i64 = c.query_one("SELECT mesh.enqueue_cycle()", &[]).unwrap().get(0);
    assert_eq!(ended(&mut c, cycle, 60), "failed");
    let steps: Vec<(Option<String>, String, String)> = c
        .query(
            "SELECT connector_name, profile, status FROM mesh.run WHERE parent_id = $1 ORDER BY id",
            &[&cycle],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert!(steps.contains(&(Some("slow-ok".into()), "delta_import".into(), "success".into())), "{steps:?}");
    assert!(steps.contains(&(Some("Broken".into()), "delta_import".into(), "failed".into())), "{steps:?}");
    assert!(steps.iter().any(|(_, p, s)| p.ends_with("sync") && s == "success"), "{steps:?}");
    let message: String = c
        .query_one("SELECT message FROM mesh.run WHERE parent_id = $1 AND connector_name = 'Broken'", &[&cycle])
        .unwrap()
        .get(0);
    assert!(message.contains("Broken"), "{message}");
    let people: i64 = c.query_one("SELECT count(*) FROM mesh.mesh_object", &[]).unwrap().get(0);
    assert_eq!(people, 2);
}

#[test]
fn enqueue_refuses_the_wrong_database_clearly() {
    let mut c = fresh_database("idmesh_it_not_workers");
    assert_eq!(sqlstate_of(&mut c, "SELECT mesh.enqueue_cycle()"), "55000");
}

/// `rows` people from an in-database table (`Staff`, projecting), each to be added as a row
/// of `accounts` in database `db` (made beforehand, writable by `role`) by a postgres
/// connector (`Accounts`), imported and synced: every row waits to be exported.
fn staff_exported_to_accounts(db: &str, role: &str, password: &str, rows: i64) -> Client {
    let mut c = setup(&[]);
    c.batch_execute(&format!(
        "DROP TABLE IF EXISTS public.staff;
         CREATE TABLE public.staff AS SELECT g AS id, 'Person ' || g AS name FROM generate_series(1, {rows}) g;
         SELECT mesh.create_connector('Staff', 'table', '{{\"source\": \"public.staff\", \"anchor\": \"id\"}}');
         SELECT mesh.set_projection('Staff', 'person', true);
         SELECT mesh.add_import_flow('Staff', 'person', a, a, 90) FROM unnest(ARRAY['id', 'name']) a;"
    ))
    .unwrap();
    c.execute(
        "SELECT mesh.create_connector('Accounts', 'postgres', $1, secret => $2)",
        &[
            &serde_json::json!({
                "dsn": format!("host=127.0.0.1 port={} dbname={db} user={role}", port()),
                "import_query": "SELECT * FROM accounts", "anchor": "id", "export_table": "accounts"}),
            &password,
        ],
    )
    .unwrap();
    c.batch_execute(
        "SELECT mesh.add_export_flow('Accounts', 'person', a, a) FROM unnest(ARRAY['id', 'name']) a;
         SELECT mesh.set_provisioning('Accounts', 'person', NULL, '{}');
         SELECT mesh.set_safety('Accounts', delete_threshold => 1000000);
         SELECT mesh.run('Staff', 'full_import');
         SELECT mesh.sync();",
    )
    .unwrap();
    c
}

/// A cancelled export to a PostgreSQL target: exports are pipelined (the next batch is on
/// the wire while the last one is recorded), so the batch already sent when the cancel is
/// seen is recorded too. Whatever the target holds, the engine knows it wrote.
#[test]
fn a_cancelled_export_records_every_row_the_target_has() {
    const ROWS: i64 = 20_000;
    const PASSWORD: &str = "Exp-p4ss-word!";
    let mut target = database_with_login("idmesh_it_export", "export_app", PASSWORD);
    // Each batch takes the target a while, so the run is still going when it is cancelled.
    target
        .batch_execute(
            "CREATE TABLE accounts (id integer PRIMARY KEY, name text);
             CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.3); RETURN NULL; END $$;
             CREATE TRIGGER slow AFTER INSERT ON accounts FOR EACH STATEMENT EXECUTE FUNCTION slow();
             GRANT ALL ON accounts TO export_app;",
        )
        .unwrap();
    let mut c = staff_exported_to_accounts("idmesh_it_export", "export_app", PASSWORD, ROWS);
    let run: i64 = c
        .query_one("SELECT mesh.enqueue('Accounts', 'export')", &[])
        .unwrap()
        .get(0);
    wait_for(
        "the export to record a batch",
        Duration::from_secs(60),
        || {
            let seen: i64 = c
                .query_one("SELECT seen FROM mesh.run WHERE id = $1", &[&run])
                .unwrap()
                .get(0);
            (seen > 0).then_some(())
        },
    );
    c.query_one("SELECT mesh.cancel($1)", &[&run]).unwrap();
    assert_eq!(ended(&mut c, run, 60), "cancelled");
    let written: Vec<i32> = target
        .query("SELECT id FROM accounts ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let applied: Vec<i32> = c
        .query(
            "SELECT (changes->>'id')::integer FROM mesh.pending_export WHERE status = 'applied' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        !written.is_empty() && (written.len() as i64) < ROWS,
        "cut short midway: {} rows written",
        written.len()
    );
    // Every row the target has is recorded as applied, and no other.
    assert_eq!(
        (
            written.len(),
            written.iter().zip(&applied).find(|(w, a)| w != a)
        ),
        (applied.len(), None),
        "rows in the target against exports recorded as applied (count, first difference)"
    );
    let pending: i64 = c
        .query_one(
            "SELECT count(*) FROM mesh.pending_export WHERE status = 'pending'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(pending, ROWS - written.len() as i64);
    // The next export writes the rest.
    let next: i64 = c
        .query_one("SELECT mesh.enqueue('Accounts', 'export')", &[])
        .unwrap()
        .get(0);
    assert_eq!(ended(&mut c, next, 120), "success");
    let total: i64 = target
        .query_one("SELECT count(*) FROM accounts", &[])
        .unwrap()
        .get(0);
    assert_eq!(total, ROWS);
    let left: i64 = c
        .query_one(
            "SELECT count(*) FROM mesh.pending_export WHERE status <> 'applied'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

/// A background export commits between batches, so a sync can plan another change for an
/// object whose batch is already on its way. The outcome of what was sent is not taken for
/// the new change: that stays pending, and the next export writes it. (Before, the new
/// change was marked applied and never written.) The sync is a full one, which plans the
/// same change again for every other object: their outcomes are recorded.
#[test]
fn a_change_planned_during_a_background_export_is_still_written() {
    const ROWS: i64 = 1_500; // two batches
    const PASSWORD: &str = "R4ce-p4ss-word!";
    const GATE: i64 = 4242;
    let mut target = database_with_login("idmesh_it_race", "race_app", PASSWORD);
    // The target's first statement waits for the test to open the gate.
    target
        .batch_execute(&format!(
            "CREATE TABLE accounts (id integer PRIMARY KEY, name text);
             CREATE FUNCTION gate() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN PERFORM pg_advisory_xact_lock_shared({GATE}); RETURN NULL; END $$;
             CREATE TRIGGER gate AFTER INSERT ON accounts FOR EACH STATEMENT EXECUTE FUNCTION gate();
             GRANT ALL ON accounts TO race_app;"
        ))
        .unwrap();
    let mut c = staff_exported_to_accounts("idmesh_it_race", "race_app", PASSWORD, ROWS);
    // The object of the last pending export: in the second batch.
    let late: i32 = c
        .query_one(
            "SELECT (changes->>'id')::integer FROM mesh.pending_export ORDER BY mesh_id DESC LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);

    let mut gate = connect("idmesh_it_race");
    gate.execute("SELECT pg_advisory_lock($1)", &[&GATE])
        .unwrap();
    let run: i64 = c
        .query_one("SELECT mesh.enqueue('Accounts', 'export')", &[])
        .unwrap()
        .get(0);
    // The first batch waits at the gate; the second is read by then.
    wait_for(
        "the first batch at the gate",
        Duration::from_secs(60),
        || {
            let n: i64 = gate
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1 AND NOT granted",
                &[&(GATE as i32 as u32)],
            )
            .unwrap()
            .get(0);
            (n > 0).then_some(())
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    // A change to that object, imported and planned in one transaction: it waits for the
    // engine's lock, which the export gives up when it commits its first batch.
    let sync = std::thread::spawn(move || {
        let mut s = connect("idmesh_workers");
        s.batch_execute(&format!(
            "SET application_name = 'idmesh-race-sync';
             UPDATE public.staff SET name = 'Renamed' WHERE id = {late};
             BEGIN;
             SELECT mesh.run('Staff', 'delta_import');
             SELECT mesh.sync(full => true);
             COMMIT;"
        ))
        .unwrap();
    });
    wait_for(
        "the sync to wait for the engine",
        Duration::from_secs(60),
        || {
            let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'idmesh-race-sync' AND wait_event_type = 'Lock'",
                &[],
            )
            .unwrap()
            .get(0);
            (n > 0).then_some(())
        },
    );
    gate.execute("SELECT pg_advisory_unlock($1)", &[&GATE])
        .unwrap();
    sync.join().unwrap();
    assert_eq!(ended(&mut c, run, 120), "success");

    // The target holds what was sent; the change planned meanwhile is still to be written.
    let name_there = |target: &mut postgres::Client| -> String {
        target
            .query_one("SELECT name FROM accounts WHERE id = $1", &[&late])
            .unwrap()
            .get(0)
    };
    assert_eq!(name_there(&mut target), format!("Person {late}"));
    let (status, name): (String, String) = c
        .query_one(
            "SELECT status, changes->>'name' FROM mesh.pending_export WHERE (changes->>'id')::integer = $1",
            &[&late],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((status.as_str(), name.as_str()), ("pending", "Renamed"));
    let applied: i64 = c
        .query_one(
            "SELECT count(*) FROM mesh.pending_export WHERE status = 'applied'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(applied, ROWS - 1, "every other object's write recorded");
    c.batch_execute("SELECT mesh.run('Accounts', 'export')")
        .unwrap();
    assert_eq!(name_there(&mut target), "Renamed");
}

/// A background run writes values as a run from a session does, whatever time zone the
/// database gives the worker's session.
#[test]
fn a_background_run_writes_values_as_a_session_run_does() {
    let mut c = setup(&[]);
    c.batch_execute(
        "ALTER DATABASE idmesh_workers SET TimeZone = 'Asia/Tokyo';
         DROP TABLE IF EXISTS public.zoned;
         CREATE TABLE public.zoned (id integer PRIMARY KEY, stamp timestamptz);
         INSERT INTO public.zoned VALUES (1, '2026-01-02 03:04:05+02');
         SELECT mesh.create_connector('Zoned', 'table', '{\"source\": \"public.zoned\", \"anchor\": \"id\"}');",
    )
    .unwrap();
    let run: i64 = c
        .query_one("SELECT mesh.enqueue('Zoned', 'full_import')", &[])
        .unwrap()
        .get(0);
    let outcome = ended(&mut c, run, 60);
    c.batch_execute("ALTER DATABASE idmesh_workers RESET TimeZone").unwrap();
    assert_eq!(outcome, "success");
    let stamp: String = c
        .query_one("SELECT attrs->>'stamp' FROM mesh.connector_object", &[])
        .unwrap()
        .get(0);
    assert_eq!(stamp, "2026-01-02T01:04:05+00:00");
}
