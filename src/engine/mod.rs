//! Run drivers: imports (connector batches -> staging -> set-based merge -> watermark) and
//! exports (pending exports -> connector -> results -> connector space). Syncs are SQL
//! (`sql/sync.sql`) over statements compiled from the rules (`compile`).

pub mod compile;
pub mod export;
pub mod import;

use crate::error::{raise, undefined};
use crate::store;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::Value;

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
            "List connectors with: SELECT name, kind FROM mesh.dashboard;",
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

pub fn start_run(connector: &Connector, profile: &str, parent: Option<i64>) -> i64 {
    store::one::<i64>(
        "INSERT INTO mesh.run (parent_id, connector_id, connector_name, profile, status) \
         VALUES ($1, $2, $3, $4, 'running') RETURNING id",
        &[
            parent.into(),
            connector.id.into(),
            connector.name.clone().into(),
            profile.into(),
        ],
    )
    .expect("run id")
}

pub fn finish_run(
    run_id: i64,
    c: &Counters,
    status: &str,
    details: Value,
    watermark: Option<(&Value, &Value)>,
    message: Option<String>,
) {
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
        "full_import" => import::run(&connector, true, parent),
        "delta_import" => import::run(&connector, false, parent),
        "export" => export::run(&connector, parent),
        other => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unknown run profile \"{other}\""),
            "Profiles: full_import, delta_import, export (mesh.sync() and mesh.cycle() run the rest).",
        ),
    }
}
