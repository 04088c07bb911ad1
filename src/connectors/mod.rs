//! Connector kinds. Each kind is one module behind `idmesh_sdk::IdentityConnector`.
//! Network connectors (AD, PostgreSQL, SQL Server) import no pgrx; the in-database
//! `table` kind reads and writes through SPI on the backend thread.

pub mod active_directory;
pub mod postgres;
pub mod process;
pub mod rows;
pub mod sqlserver;
pub mod table;

use crate::error::raise;
use idmesh_sdk::IdentityConnector;
use pgrx::prelude::*;
use serde_json::Value;

/// Refuses a setting a connector kind does not know, naming the ones it does (`known`: the
/// kind's groups of settings).
pub fn known_settings(config: &Value, kind: &str, known: &[&[&str]]) {
    let known = known.concat();
    if let Some(k) = config
        .as_object()
        .and_then(|o| o.keys().find(|k| !known.contains(&k.as_str())))
    {
        crate::error::invalid(
            format!("{kind} connector: unknown setting \"{k}\""),
            &format!("Settings: {}.", known.join(", ")),
        );
    }
}

/// A string setting, trimmed: absent or null is None; anything but a non-empty string is refused.
pub fn string_setting<'a>(config: &'a Value, kind: &str, key: &str) -> Option<&'a str> {
    match config.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim()),
        Some(_) => crate::error::invalid(
            format!("{kind} connector: \"{key}\" must be a non-empty string"),
            "",
        ),
    }
}

/// Checks a connector's configuration when it is created or altered: errors here stop
/// `create_connector` before anything is written.
pub fn validate(kind: &str, config: &Value, has_secret: bool) {
    match kind {
        "table" => {
            if has_secret {
                crate::error::invalid(
                    "a table connector reads its own database and takes no secret",
                    "Leave the secret out; grant the extension's user access to the source instead.",
                );
            }
            table::TableConfig::parse(config);
        }
        "process" => {
            if has_secret {
                crate::error::invalid(
                    "a process connector takes no secret in this version",
                    "Give the program its credentials through its own configuration.",
                );
            }
            process::ProcessConfig::parse(config);
        }
        "postgres" => postgres::validate(config),
        "sqlserver" => {
            sqlserver::SqlServerConfig::parse(config);
        }
        "active_directory" => active_directory::validate(config, has_secret),
        other => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unknown connector kind \"{other}\""),
            "Kinds: table, postgres, sqlserver, active_directory, process.",
        ),
    }
}

/// Opens a connector for a run.
pub fn open(id: i32, kind: &str, name: &str, config: &Value) -> Box<dyn IdentityConnector> {
    match kind {
        "postgres" => Box::new(postgres_connector(id, name, config)),
        "table" => Box::new(table::TableConnector::new(
            name,
            table::TableConfig::parse(config),
        )),
        "sqlserver" => Box::new(sqlserver_connector(id, name, config)),
        "active_directory" => {
            let mut cfg = active_directory::AdConfig::parse(config);
            for (object_type, names) in flow_reads(id) {
                cfg.read_also(&object_type, names);
            }
            Box::new(active_directory::AdConnector::new(
                name,
                cfg,
                crate::secrets::secret_of(id, name),
            ))
        }
        "process" => Box::new(process::ProcessConnector::new(
            name,
            process::ProcessConfig::parse(config),
        )),
        other => raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("connector kind \"{other}\" cannot run in this build"),
            "",
        ),
    }
}

/// A postgres connector as a run opens it (and its connection test): its settings, the
/// attributes its export flows write, its secret.
pub fn postgres_connector(id: i32, name: &str, config: &Value) -> postgres::PostgresConnector {
    let mut cfg = postgres::PostgresConfig::parse(config);
    cfg.written = flow_writes(id);
    postgres::PostgresConnector::new(name, cfg, crate::secrets::secret_of(id, name))
}

/// A sqlserver connector as a run opens it (and its connection test).
pub fn sqlserver_connector(id: i32, name: &str, config: &Value) -> sqlserver::SqlServerConnector {
    let mut cfg = sqlserver::SqlServerConfig::parse(config);
    cfg.written = flow_writes(id);
    sqlserver::SqlServerConnector::new(name, cfg, crate::secrets::secret_of(id, name))
}

/// What a connector's provisioning asks of its exports: adds at all, deletes by a
/// `delete` deprovisioning.
pub fn export_plan(id: i32) -> postgres::ExportPlan {
    let plan = crate::store::json(
        "SELECT jsonb_build_object('adds', count(*) > 0, \
                                   'deletes', coalesce(bool_or(options->>'deprovision' = 'delete'), false), \
                                   'disables', coalesce((SELECT jsonb_agg(DISTINCT k) FROM mesh.provisioning d, \
                                                                jsonb_object_keys(d.options->'disable') k \
                                                          WHERE d.connector_id = $1 \
                                                            AND d.options->>'deprovision' = 'disable'), '[]')) \
           FROM mesh.provisioning WHERE connector_id = $1",
        &[id.into()],
    );
    postgres::ExportPlan {
        adds: plan["adds"].as_bool() == Some(true),
        deletes: plan["deletes"].as_bool() == Some(true),
        disables: plan["disables"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default(),
    }
}

/// The settings that say where a connector's secret is sent and how it is protected on
/// the way: changing one needs the secret given again.
pub fn secret_destination(kind: &str) -> &'static [&'static str] {
    match kind {
        "postgres" => postgres::SECRET_DESTINATION,
        "sqlserver" => sqlserver::SECRET_DESTINATION,
        "active_directory" => active_directory::SECRET_DESTINATION,
        _ => &[],
    }
}

/// The attributes a connector's export flows write.
pub fn flow_writes(connector_id: i32) -> Vec<String> {
    let rows = crate::store::json(
        "SELECT coalesce(jsonb_agg(DISTINCT target), '[]') FROM mesh.flow_rule \
         WHERE connector_id = $1 AND direction = 'export'",
        &[connector_id.into()],
    );
    rows.as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str().map(str::to_string))
        .collect()
}

/// The attributes a connector's import flows and join rules read, per object type.
fn flow_reads(connector_id: i32) -> Vec<(String, Vec<String>)> {
    let rows = crate::store::json(
        "SELECT coalesce(jsonb_agg(jsonb_build_array(x.object_type, x.source)), '[]') FROM ( \
             SELECT object_type, source FROM mesh.flow_rule WHERE connector_id = $1 AND direction = 'import' \
             UNION ALL SELECT object_type, source FROM mesh.join_rule WHERE connector_id = $1) x",
        &[connector_id.into()],
    );
    rows.as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let t = r.get(0)?.as_str()?.to_string();
            let s = r.get(1)?.as_str()?;
            Some((t, idmesh_core::source::Source::parse(s).reads()))
        })
        .collect()
}

/// The target columns a connector's export flows may name (None: any name is accepted).
pub fn export_targets(kind: &str, config: &Value) -> Option<Vec<String>> {
    match kind {
        "table" => table::TableConfig::parse(config).export_columns(),
        _ => None,
    }
}

/// The attributes a connector's imports provide (None: not known before a run).
pub fn import_attributes(kind: &str, config: &Value) -> Option<Vec<String>> {
    match kind {
        "table" => Some(
            table::TableConfig::parse(config)
                .source_columns()
                .into_iter()
                .map(|(n, _)| n)
                .collect(),
        ),
        _ => None,
    }
}
