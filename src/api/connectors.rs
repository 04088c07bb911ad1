//! create / alter / drop connectors.

use crate::connectors;
use crate::engine;
use crate::error::raise;
use crate::store;
use pgrx::prelude::*;
use pgrx::JsonB;

/// Creates a connector; the configuration is checked before anything is written.
#[pg_extern(volatile)]
fn create_connector(
    name: &str,
    kind: &str,
    config: default!(JsonB, "'{}'"),
    secret: default!(Option<&str>, "NULL"),
) -> i32 {
    store::lock();
    if name.trim().is_empty() {
        crate::error::invalid("a connector needs a name", "");
    }
    let exists: Option<bool> = store::one(
        "SELECT EXISTS (SELECT 1 FROM mesh.connector WHERE name = $1)",
        &[name.into()],
    );
    if exists == Some(true) {
        raise(
            PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
            format!("connector \"{name}\" already exists"),
            "Change it with mesh.alter_connector, or drop it first with mesh.drop_connector.",
        );
    }
    if !config.0.is_object() {
        crate::error::invalid("connector config must be a JSON object", "");
    }
    refuse_empty(secret);
    connectors::validate(kind, &config.0, secret.is_some());
    let id = store::one::<i32>(
        "INSERT INTO mesh.connector (name, kind, config) VALUES ($1, $2, $3) RETURNING id",
        &[name.into(), kind.into(), config.into()],
    )
    .expect("connector id");
    if let Some(s) = secret {
        // Sealed for this connector's id: the ciphertext opens for no other.
        store::exec(
            "UPDATE mesh.connector SET secret = $2 WHERE id = $1",
            &[id.into(), crate::secrets::encrypt(id, s).into()],
        );
    }
    id
}

/// An empty secret is no secret: a directory may take an empty password as an anonymous
/// bind, and report a login that never happened.
fn refuse_empty(secret: Option<&str>) {
    if secret == Some("") {
        crate::error::invalid(
            "a connector secret cannot be empty",
            "Leave it out (NULL) for a connector that needs none.",
        );
    }
}

/// Changes a connector's config, secret or enabled flag (NULL keeps the current one).
#[pg_extern(volatile)]
fn alter_connector(
    name: &str,
    config: default!(Option<JsonB>, "NULL"),
    secret: default!(Option<&str>, "NULL"),
    enabled: default!(Option<bool>, "NULL"),
) {
    store::lock();
    let c = engine::connector(name);
    refuse_empty(secret);
    if let Some(cfg) = &config {
        if !cfg.0.is_object() {
            crate::error::invalid("connector config must be a JSON object", "");
        }
        // The secret already stored counts: changing the config keeps it.
        let stored: Option<bool> = store::one(
            "SELECT secret IS NOT NULL FROM mesh.connector WHERE id = $1",
            &[c.id.into()],
        );
        connectors::validate(&c.kind, &cfg.0, secret.is_some() || stored == Some(true));
        // The stored secret goes only where it was given for: a config that sends it to
        // another server (or over a weaker link) must come with the secret again.
        if secret.is_none() && stored == Some(true) {
            if let Some(key) = connectors::secret_destination(&c.kind)
                .iter()
                .find(|k| c.config.get(**k) != cfg.0.get(**k))
            {
                raise(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("changing \"{key}\" of connector \"{name}\" would send its stored secret somewhere else"),
                    "Give the secret again in the same call: mesh.alter_connector(name, config => ..., secret => ...).",
                );
            }
        }
    } else if secret.is_some() {
        connectors::validate(&c.kind, &c.config, true);
    }
    let config_changed = config.is_some();
    if let Some(s) = secret {
        // Replaced, never shown.
        store::exec(
            "UPDATE mesh.connector SET secret = $2 WHERE id = $1",
            &[c.id.into(), crate::secrets::encrypt(c.id, s).into()],
        );
    }
    store::exec(
        "UPDATE mesh.connector SET config = coalesce($2, config), enabled = coalesce($3, enabled), updated_at = now() WHERE id = $1",
        &[c.id.into(), config.into(), enabled.into()],
    );
    if config_changed {
        store::exec("UPDATE mesh.sync_state SET rules_changed = true", &[]);
    }
}

/// Removes a connector with its rules, connector space and watermark. Mesh objects lose its
/// contributions at the next sync.
#[pg_extern(volatile)]
fn drop_connector(name: &str) {
    store::lock();
    let c = engine::connector(name);
    // Mesh objects it contributed to are recomputed by the next (full) sync.
    store::exec(
        "DELETE FROM mesh.pending_export WHERE connector_id = $1",
        &[c.id.into()],
    );
    store::exec(
        "DELETE FROM mesh.connector_object WHERE connector_id = $1",
        &[c.id.into()],
    );
    store::exec(
        "UPDATE mesh.mesh_object SET projected_by = NULL WHERE projected_by = $1",
        &[c.id.into()],
    );
    store::exec("DELETE FROM mesh.connector WHERE id = $1", &[c.id.into()]);
    store::exec("UPDATE mesh.sync_state SET rules_changed = true", &[]);
    engine::compile::rebuild_views();
}

/// Checks a connector without running it: reachability, login, and whether its import
/// query runs. One row per check.
#[pg_extern(volatile)]
fn test_connection(
    name: &str,
) -> TableIterator<'static, (name!(step, String), name!(ok, bool), name!(detail, String))> {
    let c = engine::connector(name);
    let rows = match c.kind.as_str() {
        "postgres" => {
            let mut conn = connectors::postgres_connector(c.id, &c.name, &c.config);
            crate::engine::import::runtime().block_on(conn.check(connectors::export_plan(c.id)))
        }
        "sqlserver" => {
            let mut conn = connectors::sqlserver_connector(c.id, &c.name, &c.config);
            crate::engine::import::runtime().block_on(conn.check())
        }
        "active_directory" => {
            let mut conn = connectors::active_directory::AdConnector::new(
                &c.name,
                connectors::active_directory::AdConfig::parse(&c.config),
                crate::secrets::secret_of(c.id, &c.name),
            );
            crate::engine::import::runtime().block_on(conn.check())
        }
        _ => {
            connectors::validate(&c.kind, &c.config, false);
            vec![(
                "config".to_string(),
                true,
                "valid; this kind connects at run time".to_string(),
            )]
        }
    };
    TableIterator::new(rows)
}

/// Re-encrypts every connector secret under a new key (the key file is replaced when the
/// transaction commits). Returns how many secrets were re-encrypted.
#[pg_extern(volatile)]
fn rotate_secret_key() -> i64 {
    store::lock();
    crate::secrets::rotate()
}

/// Reads what the connected system holds (AD: the schema partition's classes and
/// attributes; SQL: the import query's columns) and keeps it in `mesh.connector_schema`,
/// replacing what an earlier discovery found. Flows are then checked against it.
#[pg_extern(volatile)]
#[allow(clippy::type_complexity)]
fn discover_schema(
    name: &str,
) -> TableIterator<
    'static,
    (
        name!(object_type, String),
        name!(source_class, String),
        name!(attribute, String),
        name!(syntax, String),
        name!(multi_valued, bool),
        name!(reference, bool),
    ),
> {
    store::lock();
    let c = engine::connector(name);
    let mut conn = connectors::open(c.id, &c.kind, &c.name, &c.config);
    let schema = match engine::import::runtime().block_on(conn.discover_schema()) {
        Ok(s) => s,
        Err(e) if e.message.contains("cannot describe its schema") => raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            e.message,
            "Schema discovery is available for active_directory, postgres and table connectors.",
        ),
        Err(e) => engine::import::fail(e, &c),
    };
    let rows: Vec<(String, String, String, String, bool, bool)> = schema
        .classes
        .iter()
        .flat_map(|k| {
            k.attributes.iter().map(move |a| {
                (
                    k.object_type.clone(),
                    k.source_class.clone(),
                    a.name.clone(),
                    a.syntax.clone(),
                    a.multi_valued,
                    a.reference,
                )
            })
        })
        .collect();
    let json: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({"object_type": r.0, "source_class": r.1, "attribute": r.2, "syntax": r.3,
                               "multi_valued": r.4, "reference": r.5})
        })
        .collect();
    store::exec(
        "DELETE FROM mesh.connector_schema WHERE connector_id = $1",
        &[c.id.into()],
    );
    store::exec(
        "INSERT INTO mesh.connector_schema (connector_id, object_type, source_class, attribute, syntax, multi_valued, reference) \
         SELECT DISTINCT ON (x.object_type, x.attribute) $1, x.object_type, x.source_class, x.attribute, x.syntax, x.multi_valued, x.reference \
         FROM jsonb_to_recordset($2) AS x(object_type text, source_class text, attribute text, syntax text, multi_valued boolean, reference boolean)",
        &[c.id.into(), JsonB(serde_json::Value::Array(json)).into()],
    );
    TableIterator::new(rows)
}
