//! The export driver: pending exports go to the connector in batches; each result updates
//! its pending export (applied, confirmed by read-back, or failed with the system's
//! message) and objects read back land in the connector space as confirmations.

use super::import::{fail, runtime, StagingSink};
use super::{finish_run, start_run, Connector, Counters};
use crate::connectors;
use crate::store;
use idmesh_sdk::*;
use serde_json::{json, Value};

const BATCH: i64 = 1000;

pub fn run(connector: &Connector, parent: Option<i64>, existing: Option<i64>) -> i64 {
    let run_id = start_run(connector, "export", parent, existing);
    // Staging mode and deletion thresholds decide before anything is written.
    let gate = store::json(
        "SELECT to_jsonb(g) FROM mesh._export_gate($1) g",
        &[connector.id.into()],
    );
    let message = gate["message"].as_str().map(str::to_string);
    match gate["verdict"].as_str() {
        Some("staging") => {
            finish_run(
                run_id,
                &Counters::default(),
                "success",
                json!({"staging": true}),
                None,
                message,
            );
            return run_id;
        }
        Some("blocked") => {
            finish_run(
                run_id,
                &Counters::default(),
                "blocked",
                json!({"held": true}),
                None,
                message,
            );
            return run_id;
        }
        _ => {}
    }
    let mut conn = connectors::open(
        connector.id,
        &connector.kind,
        &connector.name,
        &connector.config,
    );
    // An in-database target stages what it writes as this run's read-back itself.
    conn.stage_read_back(run_id);
    let rt = runtime();
    let mut counters = Counters::default();
    let mut last_id: i64 = 0;
    let mut read_back = StagingSink::new(run_id, false, None);
    // Pipelined: a batch goes to the target, and while the target writes it the engine
    // records the outcomes of the batch before and reads the batch after (two servers at
    // work, not one waiting for the other).
    let mut written: Option<(Batch, Vec<ExportResult>)> = None;
    // The connection to the target lost after writes (a result of SQLSTATE class 08): no
    // further batch is sent, and the run ends failed with the reason; its changes stay
    // pending. What was written before is recorded (the run is not rolled back).
    let lost: std::cell::RefCell<Option<String>> = Default::default();
    let mut finish = |(batch, results): (Batch, Vec<ExportResult>)| {
        store::in_batch_context(|| {
            record(
                run_id,
                connector,
                &batch,
                results,
                &mut counters,
                &mut read_back,
                &lost,
            )
        });
        let done = counters.added + counters.updated + counters.deleted + counters.errors;
        super::checkpoint(run_id, "exporting", done as u64, None)
    };
    let mut read_ahead = store::in_batch_context(|| next_batch(connector.id, &mut last_id));
    loop {
        // Told to stop: nothing more is sent; the batch in flight is recorded below.
        let stopping = super::told_to_stop();
        let next = match (&stopping, lost.borrow().is_some()) {
            (None, false) => read_ahead.take(),
            _ => None,
        };
        // What a connector allocates in the server while it works on a batch lives in the
        // batch's own context, for every poll of its export, and goes with it.
        let mut batch_memory = store::BatchContext::new();
        let mut sending = next.as_ref().map(|batch| conn.export(&batch.changes));
        let done_at_once = sending
            .as_mut()
            .and_then(|f| batch_memory.run(|| send(&rt, f)));
        let stop = written.take().and_then(|w| finish(w).err()).or(stopping);
        if stop.is_none() && next.is_some() {
            read_ahead = store::in_batch_context(|| next_batch(connector.id, &mut last_id));
        }
        let results = match (done_at_once, sending) {
            (Some(r), _) => Some(r),
            (None, Some(f)) => Some(batch_memory.run(|| rt.block_on(f))),
            (None, None) => None,
        };
        drop(batch_memory);
        written = next
            .zip(results)
            .map(|(batch, r)| (batch, r.unwrap_or_else(|e| fail(e, connector))));
        if let Some(e) = stop {
            // Cancelled: the batch already sent was written, so its outcomes are kept too.
            if let Some(w) = written.take() {
                let _ = finish(w);
            }
            fail(e, connector);
        }
        if written.is_none() {
            break;
        }
    }
    // Rows a connector staged for a change it then reported failed merge too: the target
    // holds them, and the staging keeps nothing of a finished run.
    if read_back.seen > 0 || staged_rows(run_id) {
        // Objects read back from the target confirm their exports now.
        store::exec(
            "SELECT mesh._merge_import($1, $2, false)",
            &[run_id.into(), connector.id.into()],
        );
    }
    let lost = lost.into_inner();
    let status = if lost.is_some() {
        "failed"
    } else if counters.errors > 0 {
        "warning"
    } else {
        "success"
    };
    let message = lost.map(|m| format!("{m}; the changes not written stay pending"));
    finish_run(run_id, &counters, status, json!({}), None, message);
    run_id
}

/// Whether the run has rows in the staging table.
fn staged_rows(run_id: i64) -> bool {
    store::one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM mesh.staging WHERE run_id = $1)",
        &[run_id.into()],
    ) == Some(true)
}

/// Polls an export once, so its first request is on the wire, and lets the client's
/// connection task write it; the result when the export finished at once.
fn send<T>(rt: &tokio::runtime::Runtime, export: &mut BoxFuture<'_, T>) -> Option<T> {
    rt.block_on(async {
        match futures_util::poll!(export.as_mut()) {
            std::task::Poll::Ready(r) => Some(r),
            std::task::Poll::Pending => {
                tokio::task::yield_now().await;
                None
            }
        }
    })
}

/// A batch of pending exports as read: the changes for the connector, and for each the
/// run that planned it (its pending export's `run_id` then).
struct Batch {
    changes: Vec<ExportChange>,
    planned_by: Vec<Option<i64>>,
}

/// The next batch of pending exports after mesh object `last_id` (which moves on); None
/// when done. The queue is paged by its key, its only index.
/// Rows are read column by column and the changes from jsonb's binary form: a batch's
/// JSON text, written by the server and parsed here, was most of the time reading it took.
fn next_batch(connector_id: i32, last_id: &mut i64) -> Option<Batch> {
    let mut changes = Vec::with_capacity(BATCH as usize);
    let mut planned_by = Vec::with_capacity(BATCH as usize);
    let mut last = *last_id;
    store::each_row(
        "SELECT pe.mesh_id, pe.operation, pe.object_type, pe.anchor, pe.name, pe.changes, c.attrs, pe.run_id \
           FROM (SELECT connector_id, mesh_id, operation, object_type, name, changes, run_id, \
                        CASE WHEN operation = 'add' THEN NULL ELSE anchor END AS anchor \
                   FROM mesh.pending_export WHERE connector_id = $1 AND mesh_id > $2 \
                 AND (status IN ('pending', 'approved') \
                      OR (status = 'failed' AND coalesce(retry_at, '-infinity') <= clock_timestamp())) \
                 ORDER BY mesh_id LIMIT $3) pe \
           LEFT JOIN mesh.connector_object c ON c.connector_id = pe.connector_id AND c.anchor = pe.anchor \
          ORDER BY pe.mesh_id",
        &[connector_id.into(), (*last_id).into(), BATCH.into()],
        |row| {
            let Some(mesh_id) = row.int8(0) else {
                return;
            };
            last = last.max(mesh_id);
            let (Some(operation), Some(object_type)) = (
                row.text(1).as_deref().and_then(ExportOperation::parse),
                row.text(2),
            ) else {
                return;
            };
            changes.push(ExportChange {
                mesh_id,
                operation,
                object_type,
                anchor: row.text(3),
                name: row.text(4),
                attributes: attributes_of(row.jsonb(5)),
                current: attributes_of(row.jsonb(6)),
            });
            planned_by.push(row.int8(7));
        },
    );
    *last_id = last;
    (!changes.is_empty()).then_some(Batch {
        changes,
        planned_by,
    })
}

/// An object value's attributes; none for anything else (no row joined, a JSON null).
fn attributes_of(v: Option<Value>) -> Attributes {
    match v {
        Some(Value::Object(m)) => m,
        _ => Attributes::default(),
    }
}

/// Records a batch's results: counters, each pending export's outcome, and the objects
/// read back staged as confirmations.
fn record(
    run_id: i64,
    connector: &Connector,
    batch: &Batch,
    results: Vec<ExportResult>,
    counters: &mut Counters,
    read_back: &mut StagingSink,
    lost: &std::cell::RefCell<Option<String>>,
) {
    let by_mesh_id: std::collections::HashMap<i64, (&ExportChange, Option<i64>)> = batch
        .changes
        .iter()
        .zip(&batch.planned_by)
        .map(|(c, p)| (c.mesh_id, (c, *p)))
        .collect();
    let mut outcomes = Outcomes::default();
    let mut staged: Vec<SourceObject> = Vec::new();
    let mut staged_ids: Vec<i64> = Vec::new();
    for res in results {
        let Some(&(change, planned_by)) = by_mesh_id.get(&res.mesh_id) else {
            continue;
        };
        match res.error {
            None => {
                match change.operation {
                    ExportOperation::Add => counters.added += 1,
                    ExportOperation::Delete => counters.deleted += 1,
                    _ => counters.updated += 1,
                }
                let status = match res.object {
                    Some(obj) => {
                        counters.confirmed += 1;
                        staged_ids.push(res.mesh_id);
                        staged.push(obj);
                        "confirmed"
                    }
                    None if res.staged => {
                        // Staged by the connector: merged with the rest at the end.
                        counters.confirmed += 1;
                        read_back.seen += 1;
                        "confirmed"
                    }
                    None => "applied",
                };
                // An add's row is known by the anchor it was written with, where the
                // connector says (the next import joins that row to the object).
                let anchor = res.anchor.or_else(|| change.anchor.clone());
                outcomes.push(res.mesh_id, status, None, None, change, anchor, planned_by);
            }
            // Not written for want of the connection: still pending, as it was.
            Some(msg) if res.code.as_deref().is_some_and(|c| c.starts_with("08")) => {
                lost.borrow_mut().get_or_insert(msg);
            }
            Some(msg) => {
                counters.errors += 1;
                outcomes.push(
                    res.mesh_id,
                    "failed",
                    Some(msg),
                    res.code,
                    change,
                    change.anchor.clone(),
                    planned_by,
                );
            }
        }
    }
    if !staged.is_empty() {
        read_back.mesh_ids = Some(staged_ids);
        read_back
            .accept(staged)
            .unwrap_or_else(|e| fail(e, connector));
    }
    store::exec(
        "SELECT mesh._record_export_outcomes($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            run_id.into(),
            connector.id.into(),
            outcomes.mesh_ids.into(),
            outcomes.statuses.into(),
            outcomes.errors.into(),
            outcomes.codes.into(),
            outcomes.operations.into(),
            outcomes.anchors.into(),
            outcomes.planned_by.into(),
        ],
    );
}

/// A batch's outcomes, a column each (the arrays `mesh._record_export_outcomes` takes).
#[derive(Default)]
struct Outcomes {
    mesh_ids: Vec<i64>,
    statuses: Vec<String>,
    errors: Vec<Option<String>>,
    codes: Vec<Option<String>>,
    operations: Vec<String>,
    anchors: Vec<Option<String>>,
    planned_by: Vec<Option<i64>>,
}

impl Outcomes {
    fn push(
        &mut self,
        mesh_id: i64,
        status: &str,
        error: Option<String>,
        code: Option<String>,
        change: &ExportChange,
        anchor: Option<String>,
        planned_by: Option<i64>,
    ) {
        self.mesh_ids.push(mesh_id);
        self.statuses.push(status.to_string());
        self.errors.push(error);
        self.codes.push(code);
        self.operations.push(change.operation.as_str().to_string());
        self.anchors.push(anchor);
        self.planned_by.push(planned_by);
    }
}
