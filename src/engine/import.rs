//! The import driver: the connector streams batches; each batch is staged with one
//! statement; one set-based merge classifies added / updated / renamed / deleted /
//! unchanged; the watermark moves only when the whole run succeeded.

use super::{finish_run, start_run, Connector, Counters};
use crate::connectors;
use crate::error::raise;
use crate::store;
use idmesh_sdk::*;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::Value;

/// Stages batches into `mesh.staging` for one run.
pub struct StagingSink {
    pub run_id: i64,
    pub seen: u64,
    pub total: Option<u64>,
    /// Each batch is a checkpoint (progress, and in a worker a commit and a cancel check).
    pub checkpoints: bool,
    /// Mesh object each staged object belongs to (export read-back), by position.
    pub mesh_ids: Option<Vec<i64>>,
}

impl ImportSink for StagingSink {
    fn accept(&mut self, batch: Vec<SourceObject>) -> Result<(), ConnectorError> {
        if batch.is_empty() {
            return Ok(());
        }
        let rows: Vec<Value> = batch
            .into_iter()
            .enumerate()
            .map(|(i, o)| {
                let mesh_id = self.mesh_ids.as_ref().and_then(|m| m.get(i).copied());
                serde_json::json!({
                    "anchor": o.anchor,
                    "name": o.name.unwrap_or_else(|| o.anchor.clone()),
                    "object_type": o.object_type,
                    "attrs": Value::Object(o.attributes),
                    "deleted": o.deleted,
                    "mesh_id": mesh_id,
                })
            })
            .collect();
        if let Some(bad) = rows
            .iter()
            .find(|r| r["anchor"].as_str().map_or(true, str::is_empty))
        {
            return Err(ConnectorError::data(format!(
                "an object without an anchor (name {})",
                bad["name"]
            )));
        }
        self.seen += rows.len() as u64;
        // The batch's datum lives in a context of its own, freed with the batch: memory stays
        // flat however many batches an import has.
        store::in_batch_context(|| {
            store::exec(
                "INSERT INTO mesh.staging (run_id, anchor, name, object_type, attrs, deleted, mesh_id, hash, name_key) \
                 SELECT $1, x.anchor, x.name, x.object_type, x.attrs, x.deleted, x.mesh_id, md5(x.attrs::text), mesh.name_key(x.name) \
                 FROM jsonb_to_recordset($2) AS x(anchor text, name text, object_type text, attrs jsonb, deleted boolean, mesh_id bigint)",
                &[self.run_id.into(), JsonB(Value::Array(rows)).into()],
            )
        });

        if self.checkpoints {
            super::checkpoint(self.run_id, "reading", self.seen, self.total)?;
        }
        Ok(())
    }

    fn expect_total(&mut self, total: u64) {
        self.total = Some(total);
    }

    fn stage_query(
        &mut self,
        sql: &str,
        params: &[Option<String>],
        object_type: &str,
    ) -> Option<Result<u64, ConnectorError>> {
        let k = params.len();
        let stage = format!(
            "INSERT INTO mesh.staging (run_id, anchor, name, object_type, attrs, deleted, hash, name_key) \
             SELECT ${}, coalesce(nullif(q.anchor, ''), mesh._missing_anchor(${})), coalesce(q.name, q.anchor), ${}, q.attrs, q.deleted, \
                    md5(q.attrs::text), mesh.name_key(coalesce(q.name, q.anchor)) \
             FROM ({sql}) q",
            k + 1,
            k + 2,
            k + 3
        );
        let mut args: Vec<pgrx::datum::DatumWithOid> =
            params.iter().map(|p| p.clone().into()).collect();
        args.push(self.run_id.into());
        args.push(object_type.to_string().into());
        args.push(object_type.to_string().into());
        let n = store::exec(&stage, &args);
        self.seen += n;
        if self.checkpoints {
            if let Err(e) = super::checkpoint(self.run_id, "reading", self.seen, Some(self.seen)) {
                return Some(Err(e));
            }
        }
        Some(Ok(n))
    }
}

/// A current-thread runtime: network I/O in futures, every SPI call on this thread.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

pub fn fail(err: ConnectorError, connector: &Connector) -> ! {
    let code = match err.kind {
        ErrorKind::Config => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        ErrorKind::Connection => PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
        ErrorKind::Data => PgSqlErrorCode::ERRCODE_DATA_EXCEPTION,
        ErrorKind::Cancelled => PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
    };
    let code = if err.message.contains("without an anchor") || err.message.contains("has no anchor")
    {
        PgSqlErrorCode::ERRCODE_NOT_NULL_VIOLATION
    } else {
        code
    };
    raise(
        code,
        format!("connector \"{}\": {}", connector.name, err.message),
        "Nothing was imported and the watermark did not move; fix the source and run again.",
    )
}

pub fn counters_of(merged: &Value) -> Counters {
    let g = |k: &str| merged.get(k).and_then(Value::as_i64).unwrap_or(0);
    Counters {
        added: g("added"),
        updated: g("updated"),
        renamed: g("renamed"),
        deleted: g("deleted"),
        unchanged: g("unchanged"),
        confirmed: g("confirmed"),
        errors: 0,
    }
}

pub fn run(connector: &Connector, full: bool, parent: Option<i64>, existing: Option<i64>) -> i64 {
    let profile = if full { "full_import" } else { "delta_import" };
    let run_id = start_run(connector, profile, parent, existing);
    let before = store::json(
        "SELECT value FROM mesh.watermark WHERE connector_id = $1",
        &[connector.id.into()],
    );
    let mut conn = connectors::open(
        connector.id,
        &connector.kind,
        &connector.name,
        &connector.config,
    );
    let mut sink = StagingSink {
        run_id,
        seen: 0,
        total: None,
        mesh_ids: None,
        checkpoints: true,
    };
    let watermark = Watermark(before.clone());
    let ended = {
        let rt = runtime();
        if full || watermark.is_empty() {
            rt.block_on(conn.full_import(&mut sink)).map(|mut e| {
                e.forced_full = !full;
                if !full && e.note.is_none() {
                    e.note = Some("first import of this connector: full import".into());
                }
                e
            })
        } else {
            rt.block_on(conn.delta_import(&watermark, &mut sink))
        }
    };
    let end = ended.unwrap_or_else(|e| fail(e, connector));
    let read_everything = full || end.forced_full;
    store::exec(
        "UPDATE mesh.run SET phase = 'merging' WHERE id = $1",
        &[run_id.into()],
    );
    let merged = store::json(
        "SELECT to_jsonb(m) FROM mesh._merge_import($1, $2, $3) m",
        &[run_id.into(), connector.id.into(), read_everything.into()],
    );
    let counters = counters_of(&merged);
    let after = match &end.watermark {
        Some(w) => {
            store::exec(
                "INSERT INTO mesh.watermark (connector_id, value, run_id, updated_at) VALUES ($1, $2, $3, now()) \
                 ON CONFLICT (connector_id) DO UPDATE SET value = EXCLUDED.value, run_id = EXCLUDED.run_id, updated_at = now()",
                &[connector.id.into(), JsonB(w.0.clone()).into(), run_id.into()],
            );
            w.0.clone()
        }
        None => before.clone(),
    };
    let details = serde_json::json!({ "seen": sink.seen, "forced_full": end.forced_full && !full });
    finish_run(
        run_id,
        &counters,
        "success",
        details,
        Some((&before, &after)),
        end.note,
    );
    run_id
}
