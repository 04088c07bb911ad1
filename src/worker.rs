//! Background runs: the launcher (one per cluster, for `idmesh.database`) starts a dynamic
//! worker for each run the queue lets go (`mesh._next_runs`), and each worker executes
//! one run, committing at every batch boundary. Queue policy, crash recovery and
//! cancellation are SQL (sql/workers.sql); this module is the loop around them.

use crate::{engine, guc, store};
use pgrx::bgworkers::*;
use pgrx::prelude::*;
use std::time::Duration;

pub fn register_launcher() {
    BackgroundWorkerBuilder::new("idmesh launcher")
        .set_type("idmesh launcher")
        .set_library("idmesh")
        .set_function("idmesh_launcher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

fn database() -> String {
    guc::DATABASE
        .get()
        .and_then(|d| d.into_string().ok())
        .unwrap_or_else(|| "postgres".into())
}

fn in_recovery() -> bool {
    unsafe { pg_sys::RecoveryInProgress() }
}

/// Whether the extension is installed in the launcher's database.
fn installed() -> bool {
    store::one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'idmesh')",
        &[],
    )
    .unwrap_or(false)
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn idmesh_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(Some(&database()), None);
    log!("idmesh launcher started for database \"{}\"", database());
    while BackgroundWorker::wait_latch(Some(Duration::from_millis(
        guc::LAUNCHER_NAPTIME.get() as u64
    ))) {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        if in_recovery() {
            continue; // a standby runs nothing
        }
        let runs: Vec<i64> = BackgroundWorker::transaction(|| {
            if !installed() {
                return Vec::new();
            }
            let ids = store::json(
                "SELECT coalesce(jsonb_agg(id), '[]') FROM mesh._next_runs($1) id",
                &[guc::MAX_WORKERS.get().into()],
            );
            ids.as_array()
                .map(|a| a.iter().filter_map(|v| v.as_i64()).collect())
                .unwrap_or_default()
        });
        for run_id in runs {
            let started = BackgroundWorkerBuilder::new(&format!("idmesh run {run_id}"))
                .set_type("idmesh worker")
                .set_library("idmesh")
                .set_function("idmesh_run_main")
                .enable_spi_access()
                .set_argument(run_id.into_datum())
                .set_notify_pid(unsafe { pg_sys::MyProcPid })
                .load_dynamic();
            if let Err(e) = started {
                // No worker slot: the run goes back to the queue.
                log!("idmesh launcher: cannot start a worker for run {run_id} ({e:?}); it stays queued");
                BackgroundWorker::transaction(|| {
                    store::exec(
                        "UPDATE mesh.run SET status = 'queued', launched_at = NULL WHERE id = $1 AND worker_pid IS NULL",
                        &[run_id.into()],
                    );
                });
            }
        }
    }
    log!("idmesh launcher stopped");
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn idmesh_run_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(Some(&database()), None);
    let run_id =
        unsafe { i64::from_polymorphic_datum(arg, false, pg_sys::INT8OID) }.unwrap_or_default();
    engine::running_in_worker();
    let described = BackgroundWorker::transaction(|| {
        // For this worker's session: the settings `mesh.run` gives a run from a client.
        store::exec("SELECT set_config(name, value, false) FROM mesh._rendering_settings()", &[]);
        store::exec(
            "UPDATE mesh.run SET worker_pid = pg_backend_pid() WHERE id = $1",
            &[run_id.into()],
        );
        store::json(
            "SELECT jsonb_build_object('connector', connector_name, 'profile', profile) FROM mesh.run WHERE id = $1",
            &[run_id.into()],
        )
    });
    log!(
        "idmesh worker {} took run {run_id}: {} {}",
        unsafe { pg_sys::MyProcPid },
        described["profile"].as_str().unwrap_or(""),
        described["connector"].as_str().unwrap_or("")
    );
    let outcome = PgTryBuilder::new(|| {
        BackgroundWorker::transaction(|| engine::execute_queued(run_id));
        Ok(())
    })
    .catch_others(|e| Err(crate::error::report_of(&e).message().to_string()))
    .execute();
    match outcome {
        Ok(()) => {}
        Err(message) => {
            unsafe { pg_sys::AbortCurrentTransaction() };
            BackgroundWorker::transaction(|| {
                store::exec(
                    "UPDATE mesh.run SET status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'failed' END, \
                         finished_at = clock_timestamp(), phase = NULL, \
                         message = CASE WHEN cancel_requested THEN 'cancelled; the watermark did not move' ELSE $2 END \
                     WHERE (id = $1 OR parent_id = $1) AND status = 'running'",
                    &[run_id.into(), message.clone().into()],
                );
                store::exec(
                    "DELETE FROM mesh.staging WHERE run_id = $1 OR run_id IN \
                             (SELECT id FROM mesh.run WHERE parent_id = $1)",
                    &[run_id.into()],
                );
            });
            log!("idmesh run {run_id} did not finish: {message}");
        }
    }
}
