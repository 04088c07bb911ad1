//! The in-database connector (`table`): imports from a table, view or set-returning
//! function of this database, exports into a table (upsert / insert / update / delete) or
//! through the user's own SQL functions. The zero-network connector and the embedded default.
//!
//! Config keys:
//! `source` (table, view or `schema.fn(args)`), `object_type` (default person),
//! `anchor` (column or array of columns), `name_column`, `delta_column`, `overlap`
//! (default 5 minutes for times), `soft_delete_column`, `export_table`, `export_mode`
//! (upsert | insert | update), `export_functions` ({"add"|"update"|"disable"|"delete": "schema.fn"},
//! each `fn(attributes jsonb, current jsonb)`).

use super::rows;
use crate::error::{invalid, raise};
use crate::store::{self, subxact};
use idmesh_core::delta::{predicate, DeltaKind};
use idmesh_core::export_sql;
use idmesh_core::sql::ident;
use idmesh_sdk::*;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Value};
use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq)]
pub enum ExportMode {
    Upsert,
    Insert,
    Update,
}

/// How a soft-delete column reads: a boolean (true = deleted), a number (not 0 = deleted, as
/// the usual 0/1 flags), anything else (set = deleted, as a `deleted_at`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SoftDelete {
    Flag,
    Number,
    Set,
}

#[derive(Clone, Debug)]
pub struct TableConfig {
    /// A relation (canonical quoted name) or a function call.
    pub source: String,
    pub object_type: String,
    pub anchor: Vec<String>,
    pub name_column: Option<String>,
    pub delta_column: Option<(String, String, DeltaKind)>,
    pub overlap: String,
    pub soft_delete_column: Option<(String, SoftDelete)>,
    pub export_table: Option<String>,
    pub export_mode: ExportMode,
    pub export_functions: HashMap<String, String>,
}

fn opt_str<'a>(config: &'a Value, key: &str) -> Option<&'a str> {
    super::string_setting(config, "table", key)
}

/// A relation name as PostgreSQL spells it, or None when it does not exist.
fn regclass(name: &str) -> Option<String> {
    store::one::<String>("SELECT to_regclass($1)::text", &[name.into()])
}

impl TableConfig {
    pub fn parse(config: &Value) -> TableConfig {
        const KNOWN: &[&str] = &[
            "source",
            "object_type",
            "anchor",
            "name_column",
            "delta_column",
            "overlap",
            "soft_delete_column",
            "export_table",
            "export_mode",
            "export_functions",
        ];
        super::known_settings(config, "table", &[KNOWN]);
        let source_text = opt_str(config, "source").unwrap_or_else(|| {
            invalid(
                "table connector: \"source\" is required",
                "Name a table, a view or a set-returning function call, e.g. {\"source\": \"hr.employees\"}.",
            )
        });
        let source = if source_text.ends_with(')') {
            let text = source_text.to_string();
            if let Err(e) = subxact(|| store::columns_of(&format!("SELECT * FROM {text}"))) {
                raise(
                    PgSqlErrorCode::ERRCODE_UNDEFINED_FUNCTION,
                    format!(
                        "table connector: source \"{source_text}\" cannot be read: {}",
                        e.message
                    ),
                    "A function source must be a set-returning function call, e.g. hr.people().",
                );
            }
            text
        } else {
            regclass(source_text).unwrap_or_else(|| {
                raise(
                    PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                    format!("table connector: source \"{source_text}\" does not exist"),
                    "Name an existing table or view (schema-qualified), or a function call like hr.people().",
                )
            })
        };
        let object_type = opt_str(config, "object_type")
            .unwrap_or("person")
            .to_string();
        let known_type: Option<bool> = store::one(
            "SELECT EXISTS (SELECT 1 FROM mesh.object_type WHERE name = $1)",
            &[object_type.clone().into()],
        );
        if known_type != Some(true) {
            crate::error::undefined(
                "object type",
                &object_type,
                "Create it with mesh.create_object_type(name).",
            );
        }
        let anchor = rows::anchor_setting(config, "table");
        let mut cfg = TableConfig {
            source,
            object_type,
            anchor,
            name_column: opt_str(config, "name_column").map(str::to_string),
            delta_column: None,
            overlap: String::new(),
            soft_delete_column: None,
            export_table: None,
            export_mode: ExportMode::Upsert,
            export_functions: HashMap::new(),
        };
        let columns = cfg.source_columns();
        let column_type = |c: &str, what: &str| -> String {
            columns
                .iter()
                .find(|(n, _)| n == c)
                .map(|(_, t)| t.clone())
                .unwrap_or_else(|| {
                    raise(
                        PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                        format!(
                            "table connector: {what} column \"{c}\" is not a column of {}",
                            cfg.source
                        ),
                        &format!(
                            "Columns: {}.",
                            columns
                                .iter()
                                .map(|(n, _)| n.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                })
        };
        for a in &cfg.anchor {
            column_type(a, "anchor");
        }
        if let Some(n) = &cfg.name_column {
            column_type(n, "name");
        }
        if let Some(d) = opt_str(config, "delta_column") {
            let ty = column_type(d, "delta");
            let kind = DeltaKind::of_type(&ty).unwrap_or_else(|| {
                raise(
                    PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                    format!("table connector: delta column \"{d}\" has type {ty}"),
                    "A delta column is a timestamp, date or integer that grows when a row changes.",
                )
            });
            cfg.overlap = opt_str(config, "overlap")
                .unwrap_or(kind.default_overlap())
                .to_string();
            let overlap_ok = match kind {
                DeltaKind::Time => subxact(|| {
                    store::exec("SELECT $1::text::interval", &[cfg.overlap.clone().into()])
                }),
                DeltaKind::Number => subxact(|| {
                    store::exec("SELECT $1::text::numeric", &[cfg.overlap.clone().into()])
                }),
            };
            if overlap_ok.is_err() {
                invalid(
                    format!(
                        "table connector: overlap \"{}\" does not fit delta column type {ty}",
                        cfg.overlap
                    ),
                    "",
                );
            }
            cfg.delta_column = Some((d.to_string(), ty, kind));
        }
        if let Some(sd) = opt_str(config, "soft_delete_column") {
            let ty = column_type(sd, "soft-delete");
            let reads = if ty == "boolean" {
                SoftDelete::Flag
            } else if DeltaKind::of_type(&ty) == Some(DeltaKind::Number) || ty == "real" || ty == "double precision" {
                SoftDelete::Number
            } else {
                SoftDelete::Set
            };
            cfg.soft_delete_column = Some((sd.to_string(), reads));
        }
        if let Some(t) = opt_str(config, "export_table") {
            let table = regclass(t).unwrap_or_else(|| {
                raise(
                    PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                    format!("table connector: export_table \"{t}\" does not exist"),
                    "",
                )
            });
            let tcols = store::columns_of(&format!("SELECT * FROM {table}"));
            for a in &cfg.anchor {
                if !tcols.iter().any(|(n, _)| n == a) {
                    raise(
                        PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                        format!("table connector: anchor column \"{a}\" is not a column of export_table {table}"),
                        "Exports find rows by the anchor columns.",
                    );
                }
            }
            cfg.export_table = Some(table);
        }
        cfg.export_mode = match opt_str(config, "export_mode").unwrap_or("upsert") {
            "upsert" => ExportMode::Upsert,
            "insert" => ExportMode::Insert,
            "update" => ExportMode::Update,
            other => invalid(
                format!("table connector: unknown export_mode \"{other}\""),
                "Use upsert, insert or update.",
            ),
        };
        if let Some(f) = config.get("export_functions").filter(|v| !v.is_null()) {
            let obj = f.as_object().unwrap_or_else(|| {
                invalid(
                    "table connector: \"export_functions\" must be an object",
                    "",
                )
            });
            for (op, func) in obj {
                if !["add", "update", "disable", "delete"].contains(&op.as_str()) {
                    invalid(
                        format!("table connector: export_functions has unknown operation \"{op}\""),
                        "Operations: add, update, disable, delete.",
                    );
                }
                let func = func.as_str().unwrap_or_default();
                let sig = format!("{func}(jsonb, jsonb)");
                let found: Option<String> =
                    store::one("SELECT to_regprocedure($1)::text", &[sig.clone().into()]);
                if found.is_none() {
                    raise(
                        PgSqlErrorCode::ERRCODE_UNDEFINED_FUNCTION,
                        format!("table connector: export function {sig} does not exist"),
                        "Export functions take (attributes jsonb, current jsonb).",
                    );
                }
                cfg.export_functions.insert(op.clone(), func.to_string());
            }
        }
        cfg
    }

    pub fn source_columns(&self) -> Vec<(String, String)> {
        store::columns_of(&format!("SELECT * FROM {}", self.source))
    }

    /// Columns export flows may write: the export table's, or any for export functions.
    pub fn export_columns(&self) -> Option<Vec<String>> {
        if !self.export_functions.is_empty() {
            return None;
        }
        let t = self.export_table.as_ref()?;
        Some(
            store::columns_of(&format!("SELECT * FROM {t}"))
                .into_iter()
                .map(|(n, _)| n)
                .collect(),
        )
    }

    fn anchor_sql(&self, alias: &str) -> String {
        let parts: Vec<String> = self
            .anchor
            .iter()
            .map(|a| format!("{alias}.{}::text", ident(a)))
            .collect();
        idmesh_core::sql::anchor_concat(&parts)
    }

    /// A source row's name and whether it reads as deleted, the row under `alias`.
    fn name_and_deleted_sql(&self, alias: &str) -> (String, String) {
        let name = match &self.name_column {
            Some(n) => format!(
                "coalesce({alias}.{}::text, {})",
                ident(n),
                self.anchor_sql(alias)
            ),
            None => self.anchor_sql(alias),
        };
        let deleted = match &self.soft_delete_column {
            Some((c, SoftDelete::Flag)) => format!("coalesce({alias}.{}, false)", ident(c)),
            Some((c, SoftDelete::Number)) => format!("coalesce({alias}.{} <> 0, false)", ident(c)),
            Some((c, SoftDelete::Set)) => format!("{alias}.{} IS NOT NULL", ident(c)),
            None => "false".to_string(),
        };
        (name, deleted)
    }

    /// How a row this connector writes is staged as run `run_id`'s read-back: as `read_sql`
    /// stages the source's rows, so the next import finds it unchanged.
    fn read_back(&self, run_id: i64) -> export_sql::ReadBack {
        let (name_sql, deleted_sql) = self.name_and_deleted_sql("w");
        export_sql::ReadBack {
            run_id,
            object_type: self.object_type.clone(),
            anchor_sql: self.anchor_sql("w"),
            change_anchor_sql: self.anchor_sql("p"),
            name_sql,
            deleted_sql,
        }
    }

    fn read_sql(&self, delta: bool) -> String {
        let (name, deleted) = self.name_and_deleted_sql("s");
        let filter = match (&self.delta_column, delta) {
            (Some((col, ty, kind)), true) => format!(" WHERE {}", predicate(col, ty, *kind)),
            _ => String::new(),
        };
        format!(
            // `s.*`: a bare `s` would name a column first, were the source to have one so called.
            "SELECT {} AS anchor, {name} AS name, {deleted} AS deleted, to_jsonb(s.*) AS attrs FROM {} s{filter}",
            self.anchor_sql("s"),
            self.source
        )
    }

    /// How this source's rows become objects.
    fn shape(&self) -> rows::RowShape {
        rows::RowShape {
            anchor: self.anchor.clone(),
            object_type: self.object_type.clone(),
            name_column: self.name_column.clone(),
            soft_delete_column: self.soft_delete_column.as_ref().map(|(c, _)| c.clone()),
        }
    }
}

pub struct TableConnector {
    name: String,
    config: TableConfig,
    /// The export run whose read-back the export statements stage (see `stage_read_back`).
    read_back_run: Option<i64>,
}

impl TableConnector {
    pub fn new(name: &str, config: TableConfig) -> Self {
        TableConnector {
            name: name.to_string(),
            config,
            read_back_run: None,
        }
    }

    fn read(&self, sink: &mut dyn ImportSink, from: Option<&str>) -> Result<(), ConnectorError> {
        let sql = self.config.read_sql(from.is_some());
        // Same database as the engine: stage straight from the source in one statement.
        let params: Vec<Option<String>> = match from {
            Some(w) => vec![Some(w.to_string()), Some(self.config.overlap.clone())],
            None => vec![],
        };
        match sink.stage_query(&sql, &params, &self.config.object_type) {
            Some(staged) => staged.map(|_| ()),
            None => Err(ConnectorError::config(
                "a table connector runs only inside the engine's own database",
            )),
        }
    }

    /// The high value of the delta column now, read before the rows so a row changing
    /// during the read is read again next time rather than missed.
    fn high_watermark(&self) -> Option<Value> {
        let (col, _, _) = self.config.delta_column.as_ref()?;
        let high: Option<String> = store::one(
            &format!(
                "SELECT max(s.{})::text FROM {} s",
                ident(col),
                self.config.source
            ),
            &[],
        );
        Some(json!({ "column": col, "high": high }))
    }

    fn table(&self) -> Result<&str, String> {
        self.config.export_table.as_deref().ok_or_else(|| {
            format!(
                "connector \"{}\" has no export_table or export function for this operation",
                self.name
            )
        })
    }

    /// One set-based statement for a group of changes of one operation.
    fn apply(
        &self,
        op: ExportOperation,
        changes: &[&ExportChange],
    ) -> Result<Vec<ExportResult>, String> {
        if let Some(func) = self.config.export_functions.get(op.as_str()) {
            let payload: Vec<Value> = changes
                .iter()
                .map(|c| json!({"mesh_id": c.mesh_id, "attributes": c.attributes, "current": c.current}))
                .collect();
            store::exec(
                &format!(
                    "SELECT {func}(x->'attributes', x->'current') FROM jsonb_array_elements($1) x"
                ),
                &[JsonB(Value::Array(payload)).into()],
            );
            return Ok(changes
                .iter()
                .map(|c| ExportResult::ok(c.mesh_id, None))
                .collect());
        }
        let table = self.table()?;
        let read_back = self.config.export_table.as_deref() == Some(self.config.source.as_str());
        let mode = match self.config.export_mode {
            ExportMode::Upsert => export_sql::Mode::Upsert,
            ExportMode::Insert => export_sql::Mode::Insert,
            ExportMode::Update => export_sql::Mode::Update,
        };
        let shape = self.config.shape();
        // A target that is also the source is read back: staged by the statement itself
        // when the engine said for which run, else returned whole.
        let staging = self
            .read_back_run
            .filter(|_| read_back)
            .map(|run| self.config.read_back(run));
        let returning = match (&staging, read_back) {
            (Some(staging), _) => export_sql::Returning::Staged(staging),
            (None, true) => export_sql::Returning::Rows,
            (None, false) => export_sql::Returning::Anchors,
        };
        let (sql, payload) = rows::pg_batch(table, &shape, mode, op, changes, returning)
            .map_err(|e| format!("connector \"{}\": {e}", self.name))?;
        let written = match store::json(&sql, &[payload.into()]) {
            Value::Array(rows) => rows,
            _ => Vec::new(),
        };
        Ok(rows::pg_results(
            table, &shape, op, changes, written, returning,
        ))
    }
}

impl IdentityConnector for TableConnector {
    fn kind(&self) -> &str {
        "table"
    }

    fn stage_read_back(&mut self, run_id: i64) {
        self.read_back_run = Some(run_id);
    }

    /// The source's columns and their types.
    fn discover_schema<'a>(&'a mut self) -> BoxFuture<'a, Result<Schema, ConnectorError>> {
        let attributes = self
            .config
            .source_columns()
            .into_iter()
            .map(|(name, ty)| SchemaAttribute {
                multi_valued: ty.ends_with("[]"),
                syntax: ty,
                reference: false,
                name,
            })
            .collect();
        let class = SchemaClass {
            object_type: self.config.object_type.clone(),
            source_class: self.config.source.clone(),
            attributes,
        };
        Box::pin(async move {
            Ok(Schema {
                classes: vec![class],
            })
        })
    }

    fn full_import<'a>(
        &'a mut self,
        sink: &'a mut dyn ImportSink,
    ) -> BoxFuture<'a, Result<ImportEnd, ConnectorError>> {
        Box::pin(async move {
            let watermark = self.high_watermark().map(Watermark);
            self.read(sink, None)?;
            Ok(ImportEnd {
                watermark,
                forced_full: false,
                note: None,
            })
        })
    }

    fn delta_import<'a>(
        &'a mut self,
        from: &'a Watermark,
        sink: &'a mut dyn ImportSink,
    ) -> BoxFuture<'a, Result<ImportEnd, ConnectorError>> {
        Box::pin(async move {
            let Some((col, _, _)) = self.config.delta_column.clone() else {
                // No delta column: every import reads everything (and sees hard deletes).
                let mut end = self.full_import(sink).await?;
                end.forced_full = true;
                end.note = Some("no delta_column configured: read everything".into());
                return Ok(end);
            };
            let high = from
                .0
                .get("high")
                .and_then(Value::as_str)
                .map(str::to_string);
            let same_column = from.0.get("column").and_then(Value::as_str) == Some(col.as_str());
            match high {
                Some(h) if same_column => {
                    let watermark = self.high_watermark().map(|mut w| {
                        if w.get("high").is_some_and(Value::is_null) {
                            w["high"] = Value::String(h.clone()); // empty source: keep the position
                        }
                        Watermark(w)
                    });
                    self.read(sink, Some(&h))?;
                    Ok(ImportEnd {
                        watermark,
                        forced_full: false,
                        note: None,
                    })
                }
                _ => {
                    let mut end = self.full_import(sink).await?;
                    end.forced_full = true;
                    end.note = Some("no usable watermark: full import".into());
                    Ok(end)
                }
            }
        })
    }

    fn export<'a>(
        &'a mut self,
        changes: &'a [ExportChange],
    ) -> BoxFuture<'a, Result<Vec<ExportResult>, ConnectorError>> {
        Box::pin(async move {
            let mut results = Vec::with_capacity(changes.len());
            for (op, group) in super::rows::by_operation(changes) {
                // The whole group in one statement; if it fails, each change alone, so one
                // bad row is an error on that object and the others go through.
                match subxact(|| self.apply(op, &group)) {
                    Ok(Ok(r)) => results.extend(r),
                    Ok(Err(msg)) => results.extend(
                        group
                            .iter()
                            .map(|c| ExportResult::failed(c.mesh_id, msg.clone())),
                    ),
                    Err(_) => {
                        for c in &group {
                            let mut outcome = subxact(|| self.apply(op, &[*c]));
                            if let Err(e) = &outcome {
                                let upsert = self.config.export_mode == ExportMode::Upsert;
                                if super::rows::retry_as_update(op, upsert, Some(e.sqlstate().as_str())) {
                                    let shape = self.config.shape();
                                    let update = super::rows::add_as_update(&shape, c);
                                    let again = subxact(|| self.apply(ExportOperation::Update, &[&update]));
                                    if let Ok(Ok(r)) = again {
                                        if r.iter().all(|r| r.error.is_none()) {
                                            outcome = Ok(Ok(super::rows::results_of_add(&shape, c, r)));
                                        }
                                    }
                                }
                            }
                            match outcome {
                                Ok(Ok(r)) => results.extend(r),
                                Ok(Err(msg)) => results.push(ExportResult::failed(c.mesh_id, msg)),
                                Err(e) => results.push(ExportResult::failed_with_code(
                                    c.mesh_id,
                                    e.sqlstate(),
                                    e.message,
                                )),
                            }
                        }
                    }
                }
            }
            Ok(results)
        })
    }
}
