//! Run drivers: imports (connector batches -> staging -> set-based merge -> watermark) and
//! exports (pending exports -> connector -> results -> connector space). Syncs are SQL
//! (`sql/sync.sql`) over statements compiled from the rules (`compile`).

pub mod compile;
pub mod export;
pub mod import;

use crate::error::{raise, undefined};
use crate::store;
use idmesh_sdk::{ConnectorError, ErrorKind};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};

/// A connector as stored.
pub struct Connector {
    pub id: i32,
    pub name: String,
    pub kind: String,
    pub config: Value,
    pub enabled: bool,
}

pub fn connector(name: &str) -> Connector {
    let row = store::json(
        "SELECT jsonb_build_object('id', id, 'name', name, 'kind', kind, 'config', config, 'enabled', enabled) \
         FROM mesh.connector WHERE name = $1",
        &[name.into()],
    );
    if row.is_null() {
        undefined(
            "connector",
            name,
            "List connectors with: SELECT DISTINCT connector, kind FROM mesh.dashboard;",
        );
    }
    Connector {
        id: row["id"].as_i64().unwrap_or_default() as i32,
        name: row["name"].as_str().unwrap_or_default().to_string(),
        kind: row["kind"].as_str().unwrap_or_default().to_string(),
        config: row["config"].clone(),
        enabled: row["enabled"].as_bool().unwrap_or(true),
    }
}

/// Counters of one run.
#[derive(Default, Debug, Clone)]
pub struct Counters {
    pub added: i64,
    pub updated: i64,
    pub renamed: i64,
    pub deleted: i64,
    pub unchanged: i64,
    pub confirmed: i64,
    pub errors: i64,
}

impl std::ops::AddAssign<&Counters> for Counters {
    fn add_assign(&mut self, other: &Counters) {
        self.added += other.added;
        self.updated += other.updated;
        self.renamed += other.renamed;
        self.deleted += other.deleted;
        self.unchanged += other.unchanged;
        self.confirmed += other.confirmed;
        self.errors += other.errors;
    }
}

/// The run row a run records itself in: a new one, or the queued one a worker executes.
pub fn start_run(
    connector: &Connector,
    profile: &str,
    parent: Option<i64>,
    existing: Option<i64>,
) -> i64 {
    if let Some(id) = existing {
        store::exec(
            "UPDATE mesh.run SET status = 'running', phase = 'starting' WHERE id = $1",
            &[id.into()],
        );
        log!(
            "idmesh: run {id} started: {profile} of \"{}\"",
            connector.name
        );
        return id;
    }
    let id = store::one::<i64>(
        "INSERT INTO mesh.run (parent_id, connector_id, connector_name, profile, status) \
         VALUES ($1, $2, $3, $4, 'running') RETURNING id",
        &[
            parent.into(),
            connector.id.into(),
            connector.name.clone().into(),
            profile.into(),
        ],
    )
    .expect("run id");
    log!(
        "idmesh: run {id} started: {profile} of \"{}\"",
        connector.name
    );
    id
}

/// Set by the background worker: checkpoints then commit (durable progress).
static IN_WORKER: AtomicBool = AtomicBool::new(false);

pub fn running_in_worker() {
    IN_WORKER.store(true, Ordering::Relaxed);
}

pub fn in_worker() -> bool {
    IN_WORKER.load(Ordering::Relaxed)
}

/// In a background worker told to stop (terminated, or the server shutting down), the
/// error that ends its run.
pub fn told_to_stop() -> Option<ConnectorError> {
    (in_worker() && pgrx::bgworkers::BackgroundWorker::sigterm_received()).then(|| {
        ConnectorError::new(
            ErrorKind::Cancelled,
            "cut short: its worker was told to stop (terminated, or the server is shutting down); the watermark did not move",
        )
    })
}

/// A batch boundary: records the run's progress; in a background worker also commits what
/// the run did so far (progress is durable and visible), starts a new transaction, and
/// honours a cancel request. In a session everything stays in the caller's transaction.
pub fn checkpoint(
    run_id: i64,
    phase: &str,
    seen: u64,
    total: Option<u64>,
) -> Result<(), ConnectorError> {
    store::exec(
        "UPDATE mesh.run SET phase = $2, seen = $3, total = coalesce($4, total), progress_at = clock_timestamp() WHERE id = $1",
        &[run_id.into(), phase.into(), (seen as i64).into(), total.map(|t| t as i64).into()],
    );
    if !in_worker() {
        return Ok(());
    }
    // SAFETY: called between statements, with no SPI connection or portal open, from the
    // worker's own transaction (one active snapshot, pushed by BackgroundWorker::transaction).
    unsafe {
        pg_sys::PopActiveSnapshot();
        pg_sys::CommitTransactionCommand();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    // Told to stop: what was done so far is committed above (an export's outcomes must
    // outlive the run, as the target keeps what it was sent).
    if let Some(stop) = told_to_stop() {
        return Err(stop);
    }
    store::lock();
    let cancel: Option<bool> = store::one(
        "SELECT cancel_requested FROM mesh.run WHERE id = $1",
        &[run_id.into()],
    );
    if cancel == Some(true) {
        return Err(ConnectorError::new(ErrorKind::Cancelled, "cancelled"));
    }
    Ok(())
}

/// One step of a cycle: a connector's run (`Some(name)`), or the sync (`None`). Its failure
/// (unreachable, login refused, a key file that does not open its secret, a flow expression
/// that fails on a value) is its own: what it did is undone, it is recorded as a failed run
/// with the error, and the cycle goes on with the other connectors; it ends `failed`. A
/// cancel stops the whole cycle. Says whether the step succeeded.
fn cycle_step(name: Option<&str>, profile: &str, cycle_id: i64) -> bool {
    let work = || match name {
        Some(name) => {
            run(name, profile, Some(cycle_id));
        }
        None => {
            store::exec("SELECT mesh._sync(false, $1)", &[cycle_id.into()]);
        }
    };
    let failure: Option<(PgSqlErrorCode, String)> = if in_worker() {
        // The worker commits as it goes: a failure aborts the transaction, and the cycle
        // goes on in a new one (what earlier steps committed stays).
        let outcome = PgTryBuilder::new(|| {
            work();
            None
        })
        .catch_others(|e| {
            let r = crate::error::report_of(&e);
            Some((r.sql_error_code(), r.message().to_string()))
        })
        .execute();
        if outcome.is_some() {
            // SAFETY: as at the worker's top level: the error is caught, nothing of the
            // failed transaction is used again; a new one starts with a snapshot.
            unsafe {
                pg_sys::AbortCurrentTransaction();
                pg_sys::StartTransactionCommand();
                pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            }
            store::lock();
        }
        outcome
    } else {
        store::subxact(work).err().map(|e| (e.code, e.message))
    };
    let Some((code, message)) = failure else {
        return true;
    };
    if code == PgSqlErrorCode::ERRCODE_QUERY_CANCELED {
        raise(code, message, "");
    }
    let what = name.map(|n| format!(" of \"{n}\"")).unwrap_or_default();
    pgrx::log!("idmesh: cycle {cycle_id}: {profile}{what} failed: {message}");
    // A worker's run may have committed its row (and staged rows) before it failed.
    let marked: Option<i64> = store::one(
        "WITH f AS (UPDATE mesh.run SET status = 'failed', finished_at = clock_timestamp(), phase = NULL, message = $4 \
                     WHERE parent_id = $1 AND connector_name IS NOT DISTINCT FROM $2 AND profile = $3 \
                       AND status = 'running' RETURNING id), \
              s AS (DELETE FROM mesh.staging WHERE run_id IN (SELECT id FROM f)) \
         SELECT count(*) FROM f",
        &[cycle_id.into(), name.into(), profile.into(), message.clone().into()],
    );
    if marked == Some(0) {
        store::exec(
            "INSERT INTO mesh.run (parent_id, connector_id, connector_name, profile, status, finished_at, message) \
             SELECT $1, (SELECT id FROM mesh.connector WHERE name = $2), $2, $3, 'failed', clock_timestamp(), $4",
            &[cycle_id.into(), name.into(), profile.into(), message.into()],
        );
    }
    false
}

/// A whole cycle under an existing cycle run: delta import of every enabled connector,
/// sync, export to every connector with export flows or provisioning.
pub fn cycle(cycle_id: i64) {
    store::lock();
    let cancelled = |e: ConnectorError| -> ! {
        raise(
            PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
            format!("cycle {cycle_id}: {}", e.message),
            "",
        )
    };
    let names = |sql: &str| -> Vec<String> {
        store::json(sql, &[])
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let importers = names(
        "SELECT coalesce(jsonb_agg(name ORDER BY id), '[]') FROM mesh.connector WHERE enabled",
    );
    for (i, name) in importers.iter().enumerate() {
        cycle_step(Some(name), "delta_import", cycle_id);
        checkpoint(
            cycle_id,
            "importing",
            i as u64 + 1,
            Some(importers.len() as u64),
        )
        .unwrap_or_else(|e| cancelled(e));
    }
    // A sync that fails (a flow expression that fails on one value) is recorded, and the
    // cycle writes nothing: what it would export was planned by rules that no longer run.
    let synced = cycle_step(None, "sync", cycle_id);
    let phase = if synced { "synced" } else { "sync failed" };
    checkpoint(cycle_id, phase, 0, None).unwrap_or_else(|e| cancelled(e));
    let exporters = match synced {
        true => names(
            "SELECT coalesce(jsonb_agg(cn.name ORDER BY cn.id), '[]') FROM mesh.connector cn WHERE cn.enabled \
             AND (EXISTS (SELECT 1 FROM mesh.flow_rule f WHERE f.connector_id = cn.id AND f.direction = 'export') \
                  OR EXISTS (SELECT 1 FROM mesh.provisioning p WHERE p.connector_id = cn.id))",
        ),
        false => Vec::new(),
    };
    for (i, name) in exporters.iter().enumerate() {
        cycle_step(Some(name), "export", cycle_id);
        checkpoint(
            cycle_id,
            "exporting",
            i as u64 + 1,
            Some(exporters.len() as u64),
        )
        .unwrap_or_else(|e| cancelled(e));
    }
    // Objects created by this cycle's exports can now be referred to (a new user's manager,
    // a new group's members): one more sync and export writes those references now rather
    // than a cycle later.
    let created: Option<i64> = store::one(
        "SELECT sum(added)::bigint FROM mesh.run WHERE parent_id = $1 AND profile = 'export'",
        &[cycle_id.into()],
    );
    if created.unwrap_or(0) > 0 && cycle_step(None, "sync", cycle_id) {
        // Committed in a worker before the exports: one that fails must not take it back.
        checkpoint(cycle_id, "synced", 0, None).unwrap_or_else(|e| cancelled(e));
        let again = names(
            "SELECT coalesce(jsonb_agg(cn.name ORDER BY cn.id), '[]') FROM mesh.connector cn WHERE cn.enabled \
             AND EXISTS (SELECT 1 FROM mesh.pending_export pe WHERE pe.connector_id = cn.id AND pe.status IN ('pending', 'approved'))",
        );
        for name in again {
            cycle_step(Some(&name), "export", cycle_id);
            checkpoint(cycle_id, "exporting", 0, None).unwrap_or_else(|e| cancelled(e));
        }
    }
    store::exec(
        "UPDATE mesh.run r SET finished_at = clock_timestamp(), phase = NULL, \
             status = (SELECT CASE WHEN bool_or(k.status = 'failed') THEN 'failed' \
                                   WHEN bool_or(k.status = 'blocked') THEN 'blocked' \
                                   WHEN bool_or(k.status = 'warning') THEN 'warning' ELSE 'success' END \
                         FROM mesh.run k WHERE k.parent_id = $1), \
             errors = (SELECT coalesce(sum(k.errors), 0) FROM mesh.run k WHERE k.parent_id = $1) \
         WHERE r.id = $1",
        &[cycle_id.into()],
    );
}

/// Executes a queued run (background worker).
pub fn execute_queued(run_id: i64) {
    let row = store::json(
        "SELECT jsonb_build_object('connector', connector_name, 'profile', profile) FROM mesh.run WHERE id = $1",
        &[run_id.into()],
    );
    match row["profile"].as_str().unwrap_or_default() {
        "cycle" => cycle(run_id),
        "sync" => {
            store::exec("SELECT mesh._sync(false, NULL, $1)", &[run_id.into()]);
        }
        "full_sync" => {
            store::exec("SELECT mesh._sync(true, NULL, $1)", &[run_id.into()]);
        }
        profile => {
            let name = row["connector"].as_str().unwrap_or_default().to_string();
            run_as(&name, profile, None, Some(run_id));
        }
    }
}

pub fn finish_run(
    run_id: i64,
    c: &Counters,
    status: &str,
    details: Value,
    watermark: Option<(&Value, &Value)>,
    message: Option<String>,
) {
    log!(
        "idmesh: run {run_id} ended {status}: added {} updated {} renamed {} deleted {} unchanged {} confirmed {} errors {}{}",
        c.added,
        c.updated,
        c.renamed,
        c.deleted,
        c.unchanged,
        c.confirmed,
        c.errors,
        message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default()
    );
    let (before, after) = match watermark {
        Some((b, a)) => (Some(JsonB(b.clone())), Some(JsonB(a.clone()))),
        None => (None, None),
    };
    store::exec(
        "UPDATE mesh.run SET status = $2, finished_at = clock_timestamp(), added = $3, updated = $4, renamed = $5, \
         deleted = $6, unchanged = $7, confirmed = $8, errors = $9, details = $10, \
         watermark_before = coalesce($11, watermark_before), watermark_after = coalesce($12, watermark_after), message = $13 \
         WHERE id = $1",
        &[
            run_id.into(),
            status.into(),
            (c.added as i32).into(),
            (c.updated as i32).into(),
            (c.renamed as i32).into(),
            (c.deleted as i32).into(),
            (c.unchanged as i32).into(),
            (c.confirmed as i32).into(),
            (c.errors as i32).into(),
            JsonB(details).into(),
            before.into(),
            after.into(),
            message.into(),
        ],
    );
}

/// Runs one profile of one connector in this session; returns the run id.
pub fn run(name: &str, profile: &str, parent: Option<i64>) -> i64 {
    run_as(name, profile, parent, None)
}

fn run_as(name: &str, profile: &str, parent: Option<i64>, existing: Option<i64>) -> i64 {
    store::lock();
    let connector = connector(name);
    if !connector.enabled {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("connector \"{name}\" is disabled"),
            "Enable it with mesh.alter_connector(name, enabled => true).",
        );
    }
    match profile {
        "full_import" => import::run(&connector, true, parent, existing),
        "delta_import" => import::run(&connector, false, parent, existing),
        "export" => export::run(&connector, parent, existing),
        other => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unknown run profile \"{other}\""),
            "Profiles: full_import, delta_import, export (mesh.sync() and mesh.cycle() run the rest).",
        ),
    }
}
