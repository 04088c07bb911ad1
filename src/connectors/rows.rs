//! What the SQL connector kinds (table, postgres, sqlserver) share: the anchor setting, how
//! a row in JSON becomes a source object, and how a batch of export changes becomes one
//! statement and one result per change.

use crate::error::invalid;
use idmesh_core::export_sql::{self, Mode, Op, Returning};
use idmesh_sdk::*;
use serde_json::Value;
use std::collections::HashMap;

/// A JSON scalar as the text PostgreSQL's `::text` gives for it (None for null).
pub fn json_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The `anchor` setting: a column, or an array of columns, that identifies a row.
pub fn anchor_setting(config: &Value, kind: &str) -> Vec<String> {
    match config.get("anchor") {
        Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(|v| v.as_str().is_some_and(|s| !s.is_empty())) => {
            a.iter().map(|v| v.as_str().unwrap().to_string()).collect()
        }
        _ => invalid(
            format!("{kind} connector: \"anchor\" is required: the column (or array of columns) that identifies a row"),
            "e.g. {\"anchor\": [\"employee_id\"]}",
        ),
    }
}

/// The delta, name and soft-delete settings, each with the column it names (if any).
pub fn column_settings<'a>(
    delta_column: &'a Option<String>,
    name_column: &'a Option<String>,
    soft_delete_column: &'a Option<String>,
) -> [(&'static str, &'a Option<String>); 3] {
    [
        ("delta_column", delta_column),
        ("name_column", name_column),
        ("soft_delete_column", soft_delete_column),
    ]
}

/// Why the import query's columns do not fit the settings, if they do not: no name may
/// come twice (a row is one JSON object: the second would hide the first), and every
/// column the anchor, delta, name and soft-delete settings name must be among them, as
/// written (its keys are matched exactly).
pub fn column_problem(
    anchor: &[String],
    others: [(&'static str, &Option<String>); 3],
    columns: &[&str],
) -> Option<String> {
    if let Some((_, twice)) = columns.iter().enumerate().find(|(i, c)| columns[..*i].contains(c)) {
        return Some(format!(
            "the import_query returns two columns named \"{twice}\": name them apart (AS ...)"
        ));
    }
    let named = anchor.iter().map(|a| ("anchor", a)).chain(
        others
            .into_iter()
            .filter_map(|(setting, c)| c.as_ref().map(|c| (setting, c))),
    );
    for (setting, column) in named {
        if columns.contains(&column.as_str()) {
            continue;
        }
        let near = columns
            .iter()
            .find(|c| c.eq_ignore_ascii_case(column))
            .map(|c| format!("; it returns \"{c}\": names are matched exactly"))
            .unwrap_or_default();
        return Some(format!(
            "{setting} \"{column}\" is not a column of the import_query (it returns {}){near}",
            columns.join(", ")
        ));
    }
    None
}

/// `@watermark` and `delta_column` come together: the placeholder needs the column whose
/// high mark it is, and a delta column without the placeholder would read everything at
/// every delta (and never see a row deleted, as a full import does).
pub fn watermark_settings(kind: &str, uses_watermark: bool, delta_column: Option<&str>) {
    match (uses_watermark, delta_column) {
        (true, None) => invalid(format!("{kind} connector: an import_query with @watermark needs a \"delta_column\""), ""),
        (false, Some(col)) => invalid(
            format!("{kind} connector: a delta_column needs @watermark in the import_query"),
            &format!("e.g. ... WHERE {col} > @watermark; without it every delta would read everything"),
        ),
        _ => {}
    }
}

/// The `export_mode` setting: `upsert` (the default), `insert` or `update` (never adds rows).
pub fn export_mode(config: &Value, kind: &str) -> Mode {
    match config.get("export_mode").and_then(Value::as_str).unwrap_or("upsert") {
        "upsert" => Mode::Upsert,
        "insert" => Mode::Insert,
        "update" => Mode::Update,
        other => invalid(
            format!("{kind} connector: unknown export_mode \"{other}\""),
            "Use upsert, insert or update.",
        ),
    }
}

/// The `export_statements` setting: the user's own statement per operation (add, update,
/// disable, delete) with named parameters `:attribute`, instead of an export table.
pub fn export_statements(config: &Value, kind: &str) -> HashMap<String, String> {
    match config.get("export_statements") {
        None | Some(Value::Null) => Default::default(),
        Some(Value::Object(o)) => o
            .iter()
            .map(|(op, sql)| {
                if ExportOperation::parse(op).is_none() {
                    invalid(format!("{kind} connector: export_statements has unknown operation \"{op}\""), "");
                }
                match sql.as_str() {
                    Some(t) if !t.trim().is_empty() => (op.clone(), t.to_string()),
                    _ => invalid(format!("{kind} connector: export_statements.{op} must be an SQL statement"), ""),
                }
            })
            .collect(),
        Some(_) => invalid(format!("{kind} connector: \"export_statements\" must be an object"), ""),
    }
}

/// A change whose operation has no statement in `export_statements` fails alone (22023:
/// the settings' doing, not the target's).
pub fn no_statement(c: &ExportChange) -> ExportResult {
    ExportResult::failed_with_code(
        c.mesh_id,
        "22023",
        format!(
            "no export statement for \"{0}\" in export_statements: add one (\"{0}\": \"...\") with mesh.alter_connector",
            c.operation.as_str()
        ),
    )
}

/// A change for a connector with nowhere to write it.
pub fn no_export_target(c: &ExportChange) -> ExportResult {
    ExportResult::failed_with_code(
        c.mesh_id,
        "22023",
        "this connector has neither an export_table nor export_statements: set one with mesh.alter_connector",
    )
}

/// The values a user's export statement binds for its `names`: each the change's new value,
/// else the object's current one. A name that no export flow writes (`written`), that is no
/// anchor column and that the object does not have is a mistake (a typo, another case),
/// not an empty value: `42703`.
pub fn statement_values(
    c: &ExportChange,
    names: &[String],
    anchor: &[String],
    written: &[String],
) -> Result<serde_json::Map<String, Value>, (Option<String>, String)> {
    let mut values = c.current.clone();
    for (k, v) in &c.attributes {
        values.insert(k.clone(), v.clone());
    }
    match names
        .iter()
        .find(|n| !values.contains_key(*n) && !anchor.contains(n) && !written.contains(n))
    {
        Some(unknown) => Err((
            Some("42703".to_string()),
            format!(
                "the export statement for \"{}\" uses :{unknown}, which is no attribute of this connector: a parameter \
                 names what its export flows write ({}) or its anchor ({}), not a mesh attribute",
                c.operation.as_str(),
                if written.is_empty() { "nothing yet".to_string() } else { written.join(", ") },
                anchor.join(", ")
            ),
        )),
        None => Ok(values),
    }
}

/// The outcome of a user's statement that changed `n` rows: an update or disable that
/// changed none wrote nothing, and says so (`02000`, as the table kinds do), where the
/// statement is one whose result counts rows.
pub fn changed_rows(c: &ExportChange, user_sql: &str, n: u64) -> Result<u64, (Option<String>, String)> {
    if n == 0
        && matches!(c.operation, ExportOperation::Update | ExportOperation::Disable)
        && idmesh_core::sql::counts_rows(user_sql)
    {
        return Err((
            Some("02000".to_string()),
            format!("the export statement for \"{}\" changed no row", c.operation.as_str()),
        ));
    }
    Ok(n)
}

/// How a connector's rows map to source objects.
#[derive(Clone, Debug)]
pub struct RowShape {
    pub anchor: Vec<String>,
    pub object_type: String,
    pub name_column: Option<String>,
    /// A boolean column (true = deleted), a number (not 0 = deleted) or any other column
    /// (set = deleted).
    pub soft_delete_column: Option<String>,
}

impl RowShape {
    pub fn anchor_of(&self, row: &Value) -> Option<String> {
        let parts: Option<Vec<String>> =
            self.anchor.iter().map(|a| json_text(row.get(a)?)).collect();
        parts.map(|p| encode_anchor(&p)).filter(|a| !a.is_empty())
    }

    pub fn object(&self, row: Value) -> Option<SourceObject> {
        let anchor = self.anchor_of(&row)?;
        let name = self
            .name_column
            .as_ref()
            .and_then(|n| row.get(n))
            .and_then(json_text);
        let deleted = match self.soft_delete_column.as_ref().and_then(|c| row.get(c)) {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            // 0/1 flags: not 0 is deleted
            Some(Value::Number(n)) => n.as_f64().map_or(true, |f| f != 0.0),
            Some(_) => true,
        };
        let Value::Object(attributes) = row else {
            return None;
        };
        Some(SourceObject {
            anchor,
            name,
            object_type: self.object_type.clone(),
            attributes,
            deleted,
        })
    }

    /// A row read from a source: an object, or the error of a row without its anchor.
    pub fn source_object(
        &self,
        connector: &str,
        row: Value,
    ) -> Result<SourceObject, ConnectorError> {
        self.object(row).ok_or_else(|| {
            ConnectorError::data(format!(
                "a row of \"{connector}\" has no anchor ({} is NULL)",
                self.anchor.join(", ")
            ))
        })
    }

    /// The anchor columns of a change: its new values for an add, its current ones otherwise.
    fn key(&self, op: ExportOperation, c: &ExportChange) -> Value {
        let src = if op == ExportOperation::Add {
            &c.attributes
        } else {
            &c.current
        };
        Value::Object(
            self.anchor
                .iter()
                .map(|a| (a.clone(), src.get(a).cloned().unwrap_or(Value::Null)))
                .collect(),
        )
    }

    /// The anchor columns of the row a change leaves: its key, with the anchor values the
    /// change itself sets (an update may rename the row).
    fn written_key(&self, op: ExportOperation, c: &ExportChange) -> Value {
        let mut key = self.key(op, c);
        if let Value::Object(k) = &mut key {
            for a in &self.anchor {
                if let Some(v) = c.attributes.get(a) {
                    k.insert(a.clone(), v.clone());
                }
            }
        }
        key
    }
}

/// One statement for a batch of changes of one operation to a PostgreSQL table, and its
/// single JSON parameter as text (written straight from the changes: no copy of their
/// values is built on the way). `returning`: what comes back for the rows written (see
/// `Returning`; staged read-backs also need each change's mesh object in the parameter).
pub fn pg_batch(
    table: &str,
    shape: &RowShape,
    mode: Mode,
    op: ExportOperation,
    changes: &[&ExportChange],
    returning: Returning,
) -> Result<(String, String), String> {
    let with_mesh_ids = matches!(returning, Returning::Staged(_));
    if op == ExportOperation::Add {
        if let Some(_) = changes.iter().find(|c| {
            shape
                .anchor
                .iter()
                .any(|a| c.attributes.get(a).map_or(true, Value::is_null))
        }) {
            return Err(anchor_not_written(&shape.anchor));
        }
    }
    let mut payload: Vec<u8> = Vec::with_capacity(changes.len() * 256);
    payload.push(b'[');
    for (i, c) in changes.iter().enumerate() {
        if i > 0 {
            payload.push(b',');
        }
        payload.extend_from_slice(b"{");
        if with_mesh_ids {
            payload.extend_from_slice(format!("\"mesh_id\":{},", c.mesh_id).as_bytes());
        }
        payload.extend_from_slice(b"\"attributes\":");
        serde_json::to_writer(&mut payload, &c.attributes).map_err(|e| e.to_string())?;
        payload.extend_from_slice(b",\"key\":");
        serde_json::to_writer(&mut payload, &shape.key(op, c)).map_err(|e| e.to_string())?;
        payload.push(b'}');
    }
    payload.push(b']');
    let payload = String::from_utf8(payload).map_err(|e| e.to_string())?;
    let mut cols: Vec<&str> = changes
        .iter()
        .flat_map(|c| c.attributes.keys().map(String::as_str))
        .collect();
    cols.sort();
    cols.dedup();
    let sql_op = match op {
        ExportOperation::Add => Op::Add,
        ExportOperation::Update | ExportOperation::Disable => Op::Update,
        ExportOperation::Delete => Op::Delete,
    };
    Ok((
        export_sql::postgres_statement(table, &shape.anchor, &cols, sql_op, mode, returning)?,
        payload,
    ))
}

/// Why an add cannot be written: its row's anchor columns have no value from the flows.
pub fn anchor_not_written(columns: &[impl AsRef<str>]) -> String {
    let names: Vec<&str> = columns.iter().map(AsRef::as_ref).collect();
    format!("a new row needs its anchor column(s) {}: add an export flow that writes it", names.join(", "))
}

/// A change written. An add carries the anchor its row now has (its anchor columns), so
/// the next import joins that row to the object even where no join rule would.
pub fn written_result(shape: &RowShape, op: ExportOperation, c: &ExportChange) -> ExportResult {
    ExportResult {
        anchor: (op == ExportOperation::Add)
            .then(|| shape.anchor_of(&shape.written_key(op, c)))
            .flatten(),
        ..ExportResult::ok(c.mesh_id, None)
    }
}

/// One result per change from the rows the batch wrote (the statement's `returning`).
/// Deleted rows come back as deleted objects (the connector space learns at once); rows
/// returned whole come back as the objects they are now, staged ones as staged, so the
/// export is confirmed at once where the table is also the import source; anchors only
/// leave the confirmation to the next import.
pub fn pg_results(
    table: &str,
    shape: &RowShape,
    op: ExportOperation,
    changes: &[&ExportChange],
    written: Vec<Value>,
    returning: Returning,
) -> Vec<ExportResult> {
    let mut by_anchor: HashMap<String, Value> = HashMap::new();
    for row in written {
        if let Some(a) = shape.anchor_of(&row) {
            by_anchor.insert(a, row);
        }
    }
    changes
        .iter()
        .map(|c| {
            let anchor = shape.anchor_of(&shape.key(op, c));
            // An update that sets an anchor column renames the row: it is found under its
            // new anchor, and was not staged under its change's key (the next import
            // confirms it).
            let sets_anchor = matches!(op, ExportOperation::Update | ExportOperation::Disable)
                && shape.anchor.iter().any(|a| c.attributes.contains_key(a));
            let moved_to = sets_anchor
                .then(|| shape.anchor_of(&shape.written_key(op, c)))
                .filter(|w| *w != anchor);
            let renamed = moved_to.is_some();
            let anchor = moved_to.unwrap_or(anchor);
            let row = anchor.as_ref().and_then(|a| by_anchor.remove(a));
            match (op, row) {
                (ExportOperation::Delete, row) => {
                    // Gone either way: the row deleted now, or one already gone.
                    let mut gone = row.and_then(|r| shape.object(r)).or_else(|| {
                        anchor.clone().map(|a| {
                            SourceObject::new(a, shape.object_type.clone(), Attributes::new())
                        })
                    });
                    if let Some(o) = gone.as_mut() {
                        o.deleted = true;
                    }
                    ExportResult::ok(c.mesh_id, gone)
                }
                (_, Some(row)) => match returning {
                    Returning::Anchors => written_result(shape, op, c),
                    Returning::Rows => ExportResult::ok(c.mesh_id, shape.object(row)),
                    Returning::Staged(_) if renamed => ExportResult::ok(c.mesh_id, None),
                    Returning::Staged(_) => ExportResult::staged(c.mesh_id),
                },
                (_, None) => ExportResult::failed_with_code(
                    c.mesh_id,
                    "02000",
                    format!(
                        "no row of {table} has anchor {}",
                        anchor.unwrap_or_default()
                    ),
                ),
            }
        })
        .collect()
}

/// A delta import of a source without a delta column or watermark reads everything, and
/// says so (the engine then sees missing rows as deleted).
pub fn forced_full(mut end: ImportEnd) -> ImportEnd {
    end.forced_full = true;
    end.note = Some("no delta column or watermark: read everything".into());
    end
}

/// What an export returns when the connection to the target is lost (or the login is
/// refused): before anything was written in the run, the run fails and its changes stay
/// pending as they were; after, what was written is reported, and every change not yet
/// answered with SQLSTATE 08006: the engine keeps those pending, sends no further batch
/// and ends the run failed, so no write the target kept is forgotten.
pub fn connection_lost(
    wrote: bool,
    changes: &[ExportChange],
    mut results: Vec<ExportResult>,
    error: ConnectorError,
) -> Result<Vec<ExportResult>, ConnectorError> {
    if !wrote {
        return Err(error);
    }
    let answered: std::collections::HashSet<i64> = results.iter().map(|r| r.mesh_id).collect();
    let rest: Vec<ExportResult> = changes
        .iter()
        .filter(|c| !answered.contains(&c.mesh_id))
        .map(|c| ExportResult::failed_with_code(c.mesh_id, "08006", error.message.clone()))
        .collect();
    results.extend(rest);
    Ok(results)
}

/// An add as the update of the row that already has its anchor: an upsert whose insert a
/// NOT NULL column the flows do not write refuses (PostgreSQL checks it before it sees the
/// conflict) can still write the columns it has into the row that is there.
pub fn add_as_update(shape: &RowShape, c: &ExportChange) -> ExportChange {
    let mut update = c.clone();
    update.operation = ExportOperation::Update;
    for a in &shape.anchor {
        if let Some(v) = c.attributes.get(a) {
            update.current.insert(a.clone(), v.clone());
        }
    }
    update
}

/// The results of an add written as an update (`add_as_update`): still an add's, with the
/// anchor it wrote (the row it took over joins the object by it).
pub fn results_of_add(shape: &RowShape, c: &ExportChange, results: Vec<ExportResult>) -> Vec<ExportResult> {
    let anchor = written_result(shape, ExportOperation::Add, c).anchor;
    results
        .into_iter()
        .map(|r| ExportResult { anchor: anchor.clone(), ..r })
        .collect()
}

/// Whether a failed add is tried again as an update (see `add_as_update`).
pub fn retry_as_update(op: ExportOperation, upsert: bool, sqlstate: Option<&str>) -> bool {
    op == ExportOperation::Add && upsert && sqlstate == Some("23502")
}

/// Changes grouped by operation, in the order exports apply them (adds first, deletes last).
/// Adds are grouped further by the attributes they carry: an insert names just those
/// columns, so a column an add has no value for takes the table's default, and an upsert
/// that meets an existing row leaves that column as it is (a batch-mate's column would
/// otherwise come as NULL for it).
pub fn by_operation(changes: &[ExportChange]) -> Vec<(ExportOperation, Vec<&ExportChange>)> {
    let mut groups: Vec<(ExportOperation, Vec<&ExportChange>)> = Vec::new();
    for op in [
        ExportOperation::Add,
        ExportOperation::Update,
        ExportOperation::Disable,
        ExportOperation::Delete,
    ] {
        let of_op: Vec<&ExportChange> = changes.iter().filter(|c| c.operation == op).collect();
        if op != ExportOperation::Add {
            groups.push((op, of_op));
            continue;
        }
        groups.extend(by_columns(of_op).into_iter().map(|group| (op, group)));
    }
    groups.retain(|(_, group)| !group.is_empty());
    groups
}

/// Changes grouped by the attributes they carry, in the order first seen (the keys of an
/// object come in one order for one set: compared as they come, nothing is allocated).
pub fn by_columns(changes: Vec<&ExportChange>) -> Vec<Vec<&ExportChange>> {
    let mut groups: Vec<Vec<&ExportChange>> = Vec::new();
    for c in changes {
        match groups
            .iter_mut()
            .find(|g| g[0].attributes.keys().eq(c.attributes.keys()))
        {
            Some(group) => group.push(c),
            None => groups.push(vec![c]),
        }
    }
    groups
}
