//! The import driver: the connector streams batches; each batch is staged with one
//! statement; a set-based merge classifies added / updated / renamed / deleted /
//! unchanged (batch by batch in a session, once at the end in a background worker); the
//! watermark moves only when the whole run succeeded.

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
    /// Merge each batch of objects as it is staged, into this connector's space, while the
    /// source prepares the next page (a directory makes the engine wait for each): only
    /// where the run is one transaction (a session), so a failure still leaves nothing
    /// behind. Rows staged by query or as JSON texts come as fast as they are taken and
    /// merge at the end, in one statement, which costs less than many.
    pub merge_into: Option<i32>,
    /// Whether staged rows wait for the merge at the end.
    pub unmerged: bool,
    /// Rows go straight into this connector's space, not through the staging table: set
    /// for the first full import of a connector whose space is empty and whose source has
    /// no soft-delete column, in a session (one transaction, so a failure still leaves
    /// nothing behind). Every row is then new, and staging, classifying and the full
    /// import's difference would only cost time.
    pub land_into: Option<i32>,
    /// Rows landed so (a connector that hands over objects one batch at a time stages
    /// them even then: only statements land).
    pub landed: u64,
    /// Batches staged so far, and what their merges counted.
    pub batches: i32,
    pub merged: Counters,
}

impl StagingSink {
    pub fn new(run_id: i64, checkpoints: bool, merge_into: Option<i32>) -> Self {
        StagingSink {
            run_id,
            seen: 0,
            total: None,
            checkpoints,
            mesh_ids: None,
            merge_into,
            unmerged: false,
            land_into: None,
            landed: 0,
            batches: 0,
            merged: Counters::default(),
        }
    }

    /// The next batch number.
    fn next_batch(&mut self) -> i32 {
        self.batches += 1;
        self.batches
    }

    /// Merges one staged batch into the connector space (per-batch merging only).
    fn merge_batch(&mut self, batch: i32) {
        let Some(connector_id) = self.merge_into else {
            self.unmerged = true;
            return;
        };
        let m = store::json(
            "SELECT to_jsonb(m) FROM mesh._merge_rows($1, $2, $3) m",
            &[self.run_id.into(), connector_id.into(), batch.into()],
        );
        self.merged += &counters_of(&m);
    }
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
        let batch = self.next_batch();
        // The batch's datum lives in a context of its own, freed with the batch: memory stays
        // flat however many batches an import has.
        store::in_batch_context(|| {
            store::exec(
                "INSERT INTO mesh.staging (run_id, batch, anchor, name, object_type, attrs, deleted, mesh_id, hash, name_key) \
                 SELECT $1, $3, x.anchor, x.name, x.object_type, x.attrs, x.deleted, x.mesh_id, md5(x.attrs::text), mesh.name_key(x.name) \
                 FROM jsonb_to_recordset($2) AS x(anchor text, name text, object_type text, attrs jsonb, deleted boolean, mesh_id bigint)",
                &[self.run_id.into(), JsonB(Value::Array(rows)).into(), batch.into()],
            )
        });
        self.merge_batch(batch);
        self.progress(self.total)
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
        let args: Vec<pgrx::datum::DatumWithOid> =
            params.iter().map(|p| p.clone().into()).collect();
        let batch = self.next_batch();
        let staged = self.stage_select(sql, args, batch, object_type, "md5(q.attrs::text)");
        // One statement is the whole import: done when it is.
        Some(staged.and_then(|n| self.progress(Some(self.seen)).map(|_| n)))
    }

    fn stage_json_rows(
        &mut self,
        rows: &mut Vec<String>,
        select: &str,
        object_type: &str,
    ) -> Option<Result<u64, ConnectorError>> {
        // The batch's array lives in a context of its own, freed with the batch.
        let rows = std::mem::take(rows);
        let batch = self.next_batch();
        let staged = store::in_batch_context(|| {
            let args = crate::values::json_rows(&rows);
            self.stage_select(select, args, batch, object_type, "q.hash")
        });
        Some(staged.and_then(|n| self.progress(self.total).map(|_| n)))
    }
}

impl StagingSink {
    /// Stages the rows of `sql` (columns `anchor, name, deleted, attrs`; `$1..` bound to
    /// `args`) in one statement: hash (the expression `hash`, over `q`) and name key
    /// computed on the way in. OFFSET 0 keeps
    /// the query a subquery of its own, so each row's attrs are built once, not once for
    /// every use (to_jsonb or a JSON parse, then again for the hash).
    fn stage_select(
        &mut self,
        sql: &str,
        mut args: Vec<pgrx::datum::DatumWithOid>,
        batch: i32,
        object_type: &str,
        hash: &str,
    ) -> Result<u64, ConnectorError> {
        let k = args.len();
        let (p1, p2, p3, p4) = (k + 1, k + 2, k + 3, k + 4);
        let anchor = format!("coalesce(nullif(q.anchor, ''), mesh._missing_anchor(${p3}))");
        let from = format!("FROM (SELECT * FROM ({sql}) q0 OFFSET 0) q");
        let name = "coalesce(q.name, q.anchor)";
        let stage = match self.land_into {
            // New objects only (a row deleted at the source is not added), as the merge
            // would add them; the primary key finds an anchor that repeats.
            Some(connector_id) => {
                args.push(connector_id.into());
                format!(
                    "INSERT INTO mesh.connector_object (connector_id, anchor, object_type, name, name_key, attrs, hash, \
                                                        deleted, observed_at, change_seq) \
                     SELECT ${p1}, {anchor}, ${p4}, {name}, mesh.name_key({name}), q.attrs, {hash}, \
                            false, statement_timestamp(), nextval('mesh.change_seq') \
                     {from} WHERE NOT q.deleted"
                )
            }
            None => {
                self.unmerged = true;
                args.push(self.run_id.into());
                format!(
                    "INSERT INTO mesh.staging (run_id, batch, anchor, name, object_type, attrs, deleted, hash, name_key) \
                     SELECT ${p1}, ${p2}, {anchor}, {name}, ${p4}, q.attrs, q.deleted, \
                            {hash}, mesh.name_key({name}) \
                     {from}"
                )
            }
        };
        args.push(batch.into());
        args.push(object_type.to_string().into());
        args.push(object_type.to_string().into());
        let n = match self.land_into {
            Some(_) => {
                let n = land(&stage, &args);
                if n > 0 {
                    // Raised after the insert: the error undoes it with the whole run.
                    known_object_type(object_type);
                }
                self.merged.added += n as i64;
                self.landed += n;
                n
            }
            None => store::exec(&stage, &args),
        };
        self.seen += n;
        Ok(n)
    }

    /// Each batch is a checkpoint: progress, and in a worker a commit and a cancel check.
    fn progress(&self, total: Option<u64>) -> Result<(), ConnectorError> {
        if self.checkpoints {
            super::checkpoint(self.run_id, "reading", self.seen, total)?;
        }
        Ok(())
    }
}

/// Lands rows in the connector space with `stage`; an anchor that repeats (the primary
/// key refuses it) fails the run with the error the merge gives for one.
fn land(stage: &str, args: &[pgrx::datum::DatumWithOid]) -> u64 {
    PgTryBuilder::new(|| store::exec(stage, args))
        .catch_when(PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION, |e| {
            let anchor = crate::error::report_of(&e)
                .detail()
                .and_then(idmesh_core::sql::repeated_anchor);
            raise(
                PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION,
                match anchor {
                    Some(a) => format!("the source returned anchor \"{a}\" more than once"),
                    None => "the source returned an anchor more than once".to_string(),
                },
                "An anchor must identify one object; fix the source or the connector's anchor setting. Nothing was imported.",
            )
        })
        .execute()
}

/// Rows landed without the merge are checked for their object type here, with the merge's
/// error (`mesh._unknown_object_type`).
fn known_object_type(object_type: &str) {
    store::exec(
        "SELECT mesh._unknown_object_type($1) WHERE NOT EXISTS (SELECT 1 FROM mesh.object_type WHERE name = $1)",
        &[object_type.into()],
    );
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
    let kept = "Nothing of the run was kept: the watermark did not move, and exports not written stay pending";
    let hint = match err.kind {
        ErrorKind::Connection => format!(
            "{kept}. Check the address and the login with mesh.test_connection(name); a new password goes in with \
             mesh.alter_connector(name, secret => ...)."
        ),
        _ => format!("{kept}; fix the cause and run again."),
    };
    raise(code, format!("connector \"{}\": {}", connector.name, err.message), &hint)
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

/// Whether the connector space holds nothing of this connector, not even a deleted object.
fn space_is_empty(connector_id: i32) -> bool {
    store::one::<bool>(
        "SELECT NOT EXISTS (SELECT 1 FROM mesh.connector_object WHERE connector_id = $1)",
        &[connector_id.into()],
    ) == Some(true)
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
    // A session's run is one transaction: batches merge as they arrive. A worker commits
    // between batches: it merges at the end, so a cancelled run merges nothing.
    let per_batch = !super::in_worker();
    let mut sink = StagingSink::new(run_id, true, per_batch.then_some(connector.id));
    let watermark = Watermark(before.clone());
    // Not with a soft-delete column: rows marked deleted are not landed, and the merge's
    // checks of them (their anchors, repeated or missing) would be skipped.
    let soft_deletes = connector
        .config
        .get("soft_delete_column")
        .is_some_and(|c| !c.is_null());
    let first = space_is_empty(connector.id);
    if per_batch && !soft_deletes && (full || watermark.is_empty()) && first {
        sink.land_into = Some(connector.id);
    }
    let ended = {
        let rt = runtime();
        if full || watermark.is_empty() {
            rt.block_on(conn.full_import(&mut sink)).map(|mut e| {
                e.forced_full = !full;
                if !full && e.note.is_none() {
                    let no_delta_column = matches!(connector.kind.as_str(), "table" | "postgres" | "sqlserver")
                        && connector.config.get("delta_column").is_none_or(|c| c.is_null());
                    e.note = Some(if no_delta_column {
                        "no delta_column: every import reads everything".into()
                    } else if first {
                        "first import of this connector: full import".into()
                    } else {
                        "no watermark kept yet: full import".into()
                    });
                }
                e
            })
        } else {
            rt.block_on(conn.delta_import(&watermark, &mut sink))
        }
    };
    let end = ended.unwrap_or_else(|e| fail(e, connector));
    // Landed rows were all new: a connector whose space was empty has nothing to find gone.
    let read_everything = (full || end.forced_full) && sink.land_into.is_none();
    if sink.landed > 0 {
        store::exec(
            "SELECT mesh._analyze_if('mesh.connector_object', $1)",
            &[(sink.landed as i64).into()],
        );
    }
    store::exec(
        "UPDATE mesh.run SET phase = 'merging' WHERE id = $1",
        &[run_id.into()],
    );
    // Whether the connector space now holds everything the source has (a full import, or
    // a first one that landed): an add whose row is not there is gone.
    let saw_all = full || end.forced_full;
    let merged = store::json(
        "SELECT to_jsonb(m) FROM mesh._merge_import($1, $2, $3, $4, $5) m",
        &[
            run_id.into(),
            connector.id.into(),
            read_everything.into(),
            (!sink.unmerged).into(),
            saw_all.into(),
        ],
    );
    let mut counters = counters_of(&merged);
    counters += &sink.merged;
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
    let mut details =
        serde_json::json!({ "seen": sink.seen, "forced_full": end.forced_full && !full });
    if sink.landed > 0 {
        // Said in the run's details: these rows were never staged or compared.
        details["landed"] = serde_json::Value::Bool(true);
    }
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
