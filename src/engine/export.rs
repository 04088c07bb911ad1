//! The export driver: pending exports go to the connector in batches; each result updates
//! its pending export (applied, confirmed by read-back, or failed with the system's
//! message) and objects read back land in the connector space as confirmations.

use super::import::{fail, runtime, StagingSink};
use super::{finish_run, start_run, Connector, Counters};
use crate::connectors;
use crate::store;
use idmesh_sdk::*;
use pgrx::JsonB;
use serde_json::{json, Value};

const BATCH: i64 = 1000;

/// An object field of a pending export's row, taken out of it (no copy).
fn take_attrs(v: &mut Value) -> Attributes {
    match v.take() {
        Value::Object(m) => m,
        _ => Attributes::default(),
    }
}

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
    let rt = runtime();
    let mut counters = Counters::default();
    let mut last_id: i64 = 0;
    let mut read_back = StagingSink::new(run_id, false, None);
    loop {
        let more = store::in_batch_context(|| {
            let batch = store::json(
            "SELECT coalesce(jsonb_agg(jsonb_build_object('id', pe.id, 'mesh_id', pe.mesh_id, 'operation', pe.operation, \
                 'object_type', pe.object_type, 'anchor', pe.anchor, 'name', pe.name, 'changes', pe.changes, \
                 'current', coalesce(c.attrs, '{}'))), '[]') \
             FROM (SELECT * FROM mesh.pending_export WHERE connector_id = $1 AND id > $2 \
                   AND (status IN ('pending', 'approved') \
                        OR (status = 'failed' AND coalesce(retry_at, '-infinity') <= clock_timestamp())) \
                   ORDER BY id LIMIT $3) pe \
             LEFT JOIN mesh.connector_object c ON c.connector_id = pe.connector_id AND c.anchor = pe.anchor",
            &[connector.id.into(), last_id.into(), BATCH.into()],
        );
            let Value::Array(mut rows) = batch else {
                return false;
            };
            if rows.is_empty() {
                return false;
            }
            last_id = rows
                .iter()
                .filter_map(|r| r["id"].as_i64())
                .max()
                .unwrap_or(last_id);
            let changes: Vec<ExportChange> = rows
                .iter_mut()
                .filter_map(|r| {
                    Some(ExportChange {
                        mesh_id: r["mesh_id"].as_i64()?,
                        operation: ExportOperation::parse(r["operation"].as_str()?)?,
                        object_type: r["object_type"].as_str()?.to_string(),
                        anchor: r["anchor"].as_str().map(str::to_string),
                        name: r["name"].as_str().map(str::to_string),
                        attributes: take_attrs(&mut r["changes"]),
                        current: take_attrs(&mut r["current"]),
                    })
                })
                .collect();
            let results = rt
                .block_on(conn.export(&changes))
                .unwrap_or_else(|e| fail(e, connector));
            let mut outcomes = Vec::with_capacity(results.len());
            let mut staged: Vec<SourceObject> = Vec::new();
            let mut staged_ids: Vec<i64> = Vec::new();
            let by_mesh_id: std::collections::HashMap<i64, &ExportChange> =
                changes.iter().map(|c| (c.mesh_id, c)).collect();
            for res in results {
                let Some(change) = by_mesh_id.get(&res.mesh_id) else {
                    continue;
                };
                match &res.error {
                    None => {
                        match change.operation {
                            ExportOperation::Add => counters.added += 1,
                            ExportOperation::Delete => counters.deleted += 1,
                            _ => counters.updated += 1,
                        }
                        let confirmed = res.object.is_some();
                        if let Some(obj) = res.object {
                            counters.confirmed += 1;
                            staged_ids.push(res.mesh_id);
                            staged.push(obj);
                        }
                        outcomes.push(json!({"mesh_id": res.mesh_id, "status": if confirmed { "confirmed" } else { "applied" },
                                         "operation": change.operation.as_str()}));
                    }
                    Some(msg) => {
                        counters.errors += 1;
                        outcomes.push(json!({"mesh_id": res.mesh_id, "status": "failed", "error": msg, "code": res.code,
                                         "operation": change.operation.as_str(), "anchor": change.anchor}));
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
                "SELECT mesh._record_export_outcomes($1, $2, $3)",
                &[
                    run_id.into(),
                    connector.id.into(),
                    JsonB(Value::Array(outcomes)).into(),
                ],
            );
            true
        });
        if !more {
            break;
        }
        let done = counters.added + counters.updated + counters.deleted + counters.errors;
        super::checkpoint(run_id, "exporting", done as u64, None)
            .unwrap_or_else(|e| fail(e, connector));
    }
    if read_back.seen > 0 {
        // Objects read back from the target confirm their exports now.
        store::exec(
            "SELECT mesh._merge_import($1, $2, false)",
            &[run_id.into(), connector.id.into()],
        );
    }
    let status = if counters.errors > 0 {
        "warning"
    } else {
        "success"
    };
    finish_run(run_id, &counters, status, json!({}), None, None);
    run_id
}
