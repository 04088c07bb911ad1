//! The `postgres` connector kind: a PostgreSQL database reached over the network like any
//! client (tokio-postgres), with the password from the connector's encrypted secret.
//!
//! Config keys: `dsn` (libpq-style, without a password), `import_query` (may use
//! `@watermark`, always bound as a parameter, never spliced), `anchor`, `object_type`,
//! `name_column`, `delta_column`, `overlap`, `soft_delete_column`, `export_table`,
//! `export_mode` (upsert | insert | update).
//!
//! Rows are read as the server renders them in JSON (`to_jsonb`), so every type keeps its
//! own faithful form (numerics exact, timestamps with their offset, uuids, NULLs), and they
//! stream in batches. Exports send one JSON array per batch; the target types each value.

use super::rows::{forced_full, pg_batch, pg_results, RowShape};
use crate::error::invalid;
use idmesh_core::delta::DeltaKind;
use idmesh_core::export_sql::{Mode, Returning};
use idmesh_core::sql::ident;
use idmesh_sdk::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::str::FromStr;

const BATCH: usize = 5000;

#[derive(Clone, Debug)]
pub struct PostgresConfig {
    pub dsn: String,
    pub import_query: String,
    pub anchor: Vec<String>,
    pub object_type: String,
    pub name_column: Option<String>,
    pub delta_column: Option<String>,
    pub overlap: Option<String>,
    pub soft_delete_column: Option<String>,
    pub export_table: Option<String>,
    pub export_mode: Mode,
    /// The user's own statement per operation (add, update, disable, delete), with named
    /// parameters `:attribute` (the new value, else the current one).
    pub export_statements: std::collections::HashMap<String, String>,
}

fn text(config: &Value, key: &str) -> Option<String> {
    super::string_setting(config, "postgres", key).map(str::to_string)
}

impl PostgresConfig {
    pub fn parse(config: &Value) -> PostgresConfig {
        const KNOWN: &[&str] = &[
            "dsn",
            "import_query",
            "anchor",
            "object_type",
            "name_column",
            "delta_column",
            "overlap",
            "soft_delete_column",
            "export_table",
            "export_mode",
            "export_statements",
        ];
        super::known_settings(config, "postgres", KNOWN);
        let dsn = text(config, "dsn").unwrap_or_else(|| {
            invalid(
                "postgres connector: \"dsn\" is required",
                "e.g. {\"dsn\": \"host=hr-db port=5432 dbname=hr user=mesh\"}",
            )
        });
        match tokio_postgres::Config::from_str(&dsn) {
            Err(e) => invalid(format!("postgres connector: dsn is not valid: {e}"), ""),
            Ok(c) if c.get_password().is_some() => invalid(
                "postgres connector: the dsn must not hold a password",
                "Give the password as the connector's secret: it is stored encrypted and never shown.",
            ),
            Ok(_) => {}
        }
        let import_query = text(config, "import_query").unwrap_or_else(|| {
            invalid(
                "postgres connector: \"import_query\" is required",
                "e.g. SELECT * FROM employees WHERE modified_at > @watermark",
            )
        });
        let anchor = super::rows::anchor_setting(config, "postgres");
        let delta_column = text(config, "delta_column");
        if import_query.contains("@watermark") && delta_column.is_none() {
            invalid(
                "postgres connector: an import_query with @watermark needs a \"delta_column\"",
                "",
            );
        }
        PostgresConfig {
            dsn,
            import_query,
            anchor,
            object_type: text(config, "object_type").unwrap_or_else(|| "person".into()),
            name_column: text(config, "name_column"),
            delta_column,
            overlap: text(config, "overlap"),
            soft_delete_column: text(config, "soft_delete_column"),
            export_table: text(config, "export_table"),
            export_statements: match config.get("export_statements") {
                None | Some(Value::Null) => Default::default(),
                Some(Value::Object(o)) => o
                    .iter()
                    .map(|(op, sql)| {
                        if !["add", "update", "disable", "delete"].contains(&op.as_str()) {
                            invalid(format!("postgres connector: export_statements has unknown operation \"{op}\""), "");
                        }
                        match sql.as_str() {
                            Some(t) if !t.trim().is_empty() => (op.clone(), t.to_string()),
                            _ => invalid(format!("postgres connector: export_statements.{op} must be an SQL statement"), ""),
                        }
                    })
                    .collect(),
                Some(_) => invalid("postgres connector: \"export_statements\" must be an object", ""),
            },
            export_mode: match text(config, "export_mode").as_deref().unwrap_or("upsert") {
                "upsert" => Mode::Upsert,
                "insert" => Mode::Insert,
                "update" => Mode::Update,
                other => invalid(
                    format!("postgres connector: unknown export_mode \"{other}\""),
                    "Use upsert, insert or update.",
                ),
            },
        }
    }
}

/// `@watermark` outside string literals, replaced by `with`.
fn bind_watermark(query: &str, with: &str) -> String {
    let mut out = String::with_capacity(query.len());
    let mut in_literal = false;
    let mut rest = query;
    while !rest.is_empty() {
        if !in_literal && rest.starts_with("@watermark") {
            out.push_str(with);
            rest = &rest["@watermark".len()..];
            continue;
        }
        let c = rest.chars().next().unwrap();
        if c == '\'' {
            in_literal = !in_literal;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

pub struct PostgresConnector {
    name: String,
    config: PostgresConfig,
    password: Option<String>,
    client: Option<tokio_postgres::Client>,
    /// Statements prepared on this connection, by text: a batch's statement is parsed by
    /// the target once a run, and each later batch takes one round trip instead of two.
    statements: HashMap<String, tokio_postgres::Statement>,
}

/// Whether a statement failed because it no longer fits the table it was prepared for
/// (a column or table gone or retyped since), rather than because of the data.
fn stale(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| {
        matches!(
            d.code().code(),
            "0A000" | "26000" | "42P01" | "42703" | "42804"
        )
    })
}

/// Statements a connection keeps prepared at most: one per column set in use; the
/// row-by-row retries of a failed batch bring more; past this many it starts over.
const PREPARED_MAX: usize = 64;

/// An error of the target server as (SQLSTATE, message).
fn refused(what: &str, e: tokio_postgres::Error) -> (Option<String>, String) {
    (
        e.as_db_error().map(|d| d.code().code().to_string()),
        connection_error(what, e).message,
    )
}

fn connection_error(what: &str, e: tokio_postgres::Error) -> ConnectorError {
    // tokio-postgres errors never carry the password; the server's message is kept.
    let detail = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    };
    ConnectorError::connection(format!("{what}: {detail}"))
}

impl PostgresConnector {
    pub fn new(name: &str, config: PostgresConfig, password: Option<String>) -> Self {
        PostgresConnector {
            name: name.to_string(),
            config,
            password,
            client: None,
            statements: HashMap::new(),
        }
    }

    async fn client(&mut self) -> Result<&tokio_postgres::Client, ConnectorError> {
        if self.client.is_none() {
            let mut cfg = tokio_postgres::Config::from_str(&self.config.dsn)
                .map_err(|e| ConnectorError::config(format!("dsn: {e}")))?;
            if let Some(p) = &self.password {
                cfg.password(p);
            }
            cfg.application_name("idmesh");
            cfg.connect_timeout(std::time::Duration::from_secs(30));
            let (client, connection) = cfg.connect(tokio_postgres::NoTls).await.map_err(|e| {
                connection_error(
                    &format!("cannot connect to the database of \"{}\"", self.name),
                    e,
                )
            })?;
            tokio::spawn(connection);
            self.client = Some(client);
        }
        Ok(self.client.as_ref().unwrap())
    }

    /// `sql` prepared once on this connection.
    async fn statement(
        &mut self,
        sql: &str,
        what: &str,
    ) -> Result<tokio_postgres::Statement, (Option<String>, String)> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let client = self.client().await.map_err(|e| (None, e.message))?;
        let prepared = client.prepare(sql).await.map_err(|e| refused(what, e))?;
        if self.statements.len() >= PREPARED_MAX {
            self.statements.clear();
        }
        self.statements.insert(sql.to_string(), prepared.clone());
        Ok(prepared)
    }

    /// The import query with `@watermark` as a typed parameter, and the text of the type.
    async fn prepared_query(&mut self) -> Result<(String, Option<String>), ConnectorError> {
        let query = self.config.import_query.clone();
        if !query.contains("@watermark") {
            return Ok((query, None));
        }
        let probe = bind_watermark(&query, "$1");
        let client = self.client().await?;
        let stmt = client
            .prepare(&probe)
            .await
            .map_err(|e| connection_error("the import_query does not prepare", e))?;
        let ty = stmt
            .params()
            .first()
            .map(|t| t.name().to_string())
            .unwrap_or_else(|| "text".into());
        Ok((
            bind_watermark(&query, &format!("($1::text)::{}", ident(&ty))),
            Some(ty),
        ))
    }

    async fn import(
        &mut self,
        from: Option<&Watermark>,
        sink: &mut dyn ImportSink,
    ) -> Result<ImportEnd, ConnectorError> {
        let (query, ty) = self.prepared_query().await?;
        let kind = ty.as_deref().and_then(DeltaKind::of_type);
        // The lowest value reads everything; a delta reads from the watermark minus the overlap.
        let low: Option<String> = match (
            &ty,
            from.and_then(|w| w.0.get("high")).and_then(Value::as_str),
        ) {
            (None, _) => None,
            (Some(t), Some(high)) => {
                let overlap = self.config.overlap.clone().unwrap_or_else(|| {
                    kind.map(|k| k.default_overlap()).unwrap_or("0").to_string()
                });
                let sub = match kind {
                    Some(DeltaKind::Time) => "($2::text)::interval",
                    _ => "($2::text)::numeric",
                };
                let sql = format!("SELECT ((($1::text)::{0}) - {sub})::{0}::text", ident(t));
                let row = self
                    .client()
                    .await?
                    .query_one(&sql, &[&high, &overlap])
                    .await
                    .map_err(|e| connection_error("watermark", e))?;
                row.get::<_, Option<String>>(0)
            }
            (Some(t), None) => Some(match kind {
                Some(DeltaKind::Time) => "-infinity".to_string(),
                Some(DeltaKind::Number) => "-9223372036854775808".to_string(),
                None => {
                    return Err(ConnectorError::config(format!(
                        "@watermark has type {t}: use a timestamp, date or integer"
                    )))
                }
            }),
        };
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = match &low {
            Some(v) => vec![v],
            None => vec![],
        };
        // The new high mark, read before the rows: what commits meanwhile is read next time.
        let high: Option<String> = match &self.config.delta_column {
            Some(col) => {
                let sql = format!("SELECT max(q.{})::text FROM ({query}) q", ident(col));
                self.client()
                    .await?
                    .query_one(&sql, &params)
                    .await
                    .map_err(|e| connection_error("the import_query failed", e))?
                    .get(0)
            }
            None => None,
        };
        // Rows travel as JSON texts (to_json renders every type in its own faithful form, at
        // twice the speed of to_jsonb) and are staged as they are, without parsing them here.
        let sql = format!("SELECT to_json(q)::text FROM ({query}) q");
        let client = self.client().await?;
        let stream = client
            .query_raw(&sql, params.iter().copied())
            .await
            .map_err(|e| connection_error("the import_query failed", e))?;
        futures_util::pin_mut!(stream);
        let shape = self.shape();
        let select = idmesh_core::sql::json_rows_select(
            &shape.anchor,
            shape.name_column.as_deref(),
            shape.soft_delete_column.as_deref(),
        );
        let mut batch: Vec<String> = Vec::with_capacity(BATCH);
        let mut stage = |mut rows: Vec<String>| -> Result<(), ConnectorError> {
            if rows.is_empty() {
                return Ok(());
            }
            match sink.stage_json_rows(&mut rows, &select, &shape.object_type) {
                Some(staged) => staged.map(|_| ()),
                None => Err(ConnectorError::config(
                    "a postgres connector stages its rows through the engine's import",
                )),
            }
        };
        use futures_util::StreamExt;
        while let Some(row) = stream.next().await {
            let row = row.map_err(|e| connection_error("reading rows failed", e))?;
            batch.push(row.get(0));
            if batch.len() == BATCH {
                stage(std::mem::take(&mut batch))?;
            }
        }
        stage(batch)?;
        let watermark = match (&self.config.delta_column, high) {
            (Some(col), Some(h)) => Some(Watermark(json!({"column": col, "high": h}))),
            (Some(_), None) => from.cloned(), // nothing read: keep the position
            (None, _) => None,
        };
        Ok(ImportEnd {
            watermark,
            forced_full: false,
            note: None,
        })
    }

    fn shape(&self) -> RowShape {
        RowShape {
            anchor: self.config.anchor.clone(),
            object_type: self.config.object_type.clone(),
            name_column: self.config.name_column.clone(),
            soft_delete_column: self.config.soft_delete_column.clone(),
        }
    }

    /// Reachability, login and whether the import query runs: (check, ok, detail) rows.
    pub async fn check(&mut self) -> Vec<(String, bool, String)> {
        let mut out = Vec::new();
        match self.client().await {
            Err(e) => {
                out.push(("connect".into(), false, e.message));
                return out;
            }
            Ok(_) => out.push((
                "connect".into(),
                true,
                "reached the server and logged in".into(),
            )),
        }
        match self.prepared_query().await {
            Ok((q, _)) => {
                let sql = format!("SELECT count(*) FROM ({q}) q WHERE false");
                let probe = if q.contains("$1") {
                    vec!["-infinity".to_string()]
                } else {
                    vec![]
                };
                let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = probe
                    .iter()
                    .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect();
                match self.client.as_ref().unwrap().query_one(&sql, &params).await {
                    Ok(_) => out.push(("import_query".into(), true, "runs".into())),
                    Err(e) => out.push((
                        "import_query".into(),
                        false,
                        connection_error("fails", e).message,
                    )),
                }
            }
            Err(e) => out.push(("import_query".into(), false, e.message)),
        }
        out
    }
}

impl IdentityConnector for PostgresConnector {
    /// The import query's columns and their types, as the server prepares it.
    fn discover_schema<'a>(&'a mut self) -> BoxFuture<'a, Result<Schema, ConnectorError>> {
        Box::pin(async move {
            let (query, _) = self.prepared_query().await?;
            let client = self.client().await?;
            let stmt = client
                .prepare(&query)
                .await
                .map_err(|e| connection_error("the import_query does not prepare", e))?;
            let attributes = stmt
                .columns()
                .iter()
                .map(|c| SchemaAttribute {
                    name: c.name().to_string(),
                    syntax: c.type_().name().to_string(),
                    multi_valued: matches!(c.type_().kind(), tokio_postgres::types::Kind::Array(_)),
                    reference: false,
                })
                .collect();
            Ok(Schema {
                classes: vec![SchemaClass {
                    object_type: self.config.object_type.clone(),
                    source_class: "import_query".into(),
                    attributes,
                }],
            })
        })
    }

    fn kind(&self) -> &str {
        "postgres"
    }

    fn full_import<'a>(
        &'a mut self,
        sink: &'a mut dyn ImportSink,
    ) -> BoxFuture<'a, Result<ImportEnd, ConnectorError>> {
        Box::pin(self.import(None, sink))
    }

    fn delta_import<'a>(
        &'a mut self,
        from: &'a Watermark,
        sink: &'a mut dyn ImportSink,
    ) -> BoxFuture<'a, Result<ImportEnd, ConnectorError>> {
        Box::pin(async move {
            if self.config.delta_column.is_none() || from.0.get("high").is_none() {
                return self.import(None, sink).await.map(forced_full);
            }
            self.import(Some(from), sink).await
        })
    }

    fn export<'a>(
        &'a mut self,
        changes: &'a [ExportChange],
    ) -> BoxFuture<'a, Result<Vec<ExportResult>, ConnectorError>> {
        Box::pin(async move {
            if !self.config.export_statements.is_empty() {
                return Ok(self.export_by_statements(changes).await);
            }
            let Some(table) = self.config.export_table.clone() else {
                return Ok(changes
                    .iter()
                    .map(|c| ExportResult::failed(c.mesh_id, "this connector has no export_table"))
                    .collect());
            };
            let table = table.split('.').map(ident).collect::<Vec<_>>().join(".");
            let mut results = Vec::with_capacity(changes.len());
            for (op, group) in super::rows::by_operation(changes) {
                // The whole group in one statement; if it fails, each change alone.
                match self.apply(&table, op, &group).await {
                    Ok(r) => results.extend(r),
                    Err(_) => {
                        for c in &group {
                            match self.apply(&table, op, &[*c]).await {
                                Ok(r) => results.extend(r),
                                Err((code, msg)) => results.push(match code {
                                    Some(code) => {
                                        ExportResult::failed_with_code(c.mesh_id, code, msg)
                                    }
                                    None => ExportResult::failed(c.mesh_id, msg),
                                }),
                            }
                        }
                    }
                }
            }
            Ok(results)
        })
    }
}

/// The user's statement with `:name` parameters, as one statement taking the change as a
/// single jsonb parameter; each `:name` is typed as the server infers it from its place.
/// Returns (statement, the names in order).
fn named_parameters(sql: &str) -> (String, Vec<String>) {
    let mut names: Vec<String> = Vec::new();
    let mut out = String::new();
    let b = sql.as_bytes();
    let (mut i, mut in_literal) = (0, false);
    while i < b.len() {
        let c = b[i];
        if c == b'\'' {
            in_literal = !in_literal;
        }
        let starts_name = !in_literal
            && c == b':'
            && b.get(i + 1)
                .is_some_and(|n| n.is_ascii_alphabetic() || *n == b'_')
            && (i == 0 || b[i - 1] != b':');
        if starts_name {
            let start = i + 1;
            let mut j = start;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] == b'-') {
                j += 1;
            }
            let name = sql[start..j].to_string();
            let n = match names.iter().position(|x| *x == name) {
                Some(p) => p + 1,
                None => {
                    names.push(name);
                    names.len()
                }
            };
            out.push_str(&format!("${n}"));
            i = j;
            continue;
        }
        out.push(c as char);
        i += 1;
    }
    (out, names)
}

/// `$n` (as numbered by `named_parameters`) → the n-th name read from the one jsonb
/// parameter, cast to the type the server inferred for it.
fn typed_parameters(numbered: &str, names: &[String], types: &[String]) -> String {
    let b = numbered.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
            let mut j = i + 1;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            let n: usize = numbered[i + 1..j].parse().unwrap_or(0);
            if n >= 1 && n <= names.len() {
                let ty = types.get(n - 1).map(String::as_str).unwrap_or("text");
                out.push_str(&format!(
                    "(($1::jsonb)->>{})::{}",
                    idmesh_core::sql::literal(&names[n - 1]),
                    ident(ty)
                ));
                i = j;
                continue;
            }
        }
        let ch = numbered[i..].chars().next().unwrap();
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

impl PostgresConnector {
    /// Runs the user's statement once per change; each change succeeds or fails alone.
    async fn export_by_statements(&mut self, changes: &[ExportChange]) -> Vec<ExportResult> {
        let mut results = Vec::with_capacity(changes.len());
        for c in changes {
            let Some(user_sql) = self
                .config
                .export_statements
                .get(c.operation.as_str())
                .cloned()
            else {
                results.push(ExportResult::failed(
                    c.mesh_id,
                    format!(
                        "no export statement for \"{}\" in export_statements",
                        c.operation.as_str()
                    ),
                ));
                continue;
            };
            let outcome = async {
                let (numbered, names) = named_parameters(&user_sql);
                // Learn each parameter's type from the server, then send all values in one
                // jsonb parameter cast to those types: typed by the target, never spliced.
                let probe = self
                    .statement(&numbered, "the export statement does not prepare")
                    .await?;
                let types: Vec<String> = probe
                    .params()
                    .iter()
                    .map(|t| t.name().to_string())
                    .collect();
                let typed = typed_parameters(&numbered, &names, &types);
                let mut values = c.current.clone();
                for (k, v) in &c.attributes {
                    values.insert(k.clone(), v.clone());
                }
                let values = Value::Object(values);
                let failed = "the export statement failed";
                let statement = self.statement(&typed, failed).await?;
                let client = self.client().await.map_err(|e| (None, e.message))?;
                let done = client.execute(&statement, &[&values]).await;
                if done.as_ref().is_err_and(stale) {
                    // Probed and prepared again for the next change: the table changed.
                    self.statements.remove(&typed);
                    self.statements.remove(&numbered);
                }
                done.map_err(|e| refused(failed, e))
            }
            .await;
            results.push(match outcome {
                Ok(_) => ExportResult::ok(c.mesh_id, None),
                Err((Some(code), msg)) => ExportResult::failed_with_code(c.mesh_id, code, msg),
                Err((None, msg)) => ExportResult::failed(c.mesh_id, msg),
            });
        }
        results
    }

    async fn apply(
        &mut self,
        table: &str,
        op: ExportOperation,
        changes: &[&ExportChange],
    ) -> Result<Vec<ExportResult>, (Option<String>, String)> {
        let shape = self.shape();
        let (sql, payload) = pg_batch(
            table,
            &shape,
            self.config.export_mode,
            op,
            changes,
            Returning::Anchors,
        )
        .map_err(|e| (None, e))?;
        let refusal = "the target refused the change";
        let statement = self.statement(&sql, refusal).await?;
        let client = self.client().await.map_err(|e| (None, e.message))?;
        let payload =
            serde_json::value::RawValue::from_string(payload).map_err(|e| (None, e.to_string()))?;
        let row = match client
            .query_one(&statement, &[&tokio_postgres::types::Json(&*payload)])
            .await
        {
            Ok(row) => row,
            Err(e) => {
                if stale(&e) {
                    // Prepared again next time: the table changed under the statement.
                    self.statements.remove(&sql);
                }
                return Err(refused(refusal, e));
            }
        };
        let written = match row.get::<_, Value>(0) {
            Value::Array(rows) => rows,
            _ => Vec::new(),
        };
        // The import is a query, not the table: confirmation comes with the next import.
        Ok(pg_results(
            table,
            &shape,
            op,
            changes,
            written,
            Returning::Anchors,
        ))
    }
}

/// Checks a postgres connector's configuration (and that a secret can be stored).
pub fn validate(config: &Value) {
    PostgresConfig::parse(config);
}

#[cfg(test)]
mod tests {
    use super::named_parameters;

    #[test]
    fn typed_parameters_read_one_json_parameter() {
        let t = super::typed_parameters(
            "VALUES ($1, $2, $1)",
            &["login".into(), "n".into()],
            &["text".into(), "int4".into()],
        );
        assert_eq!(
            t,
            "VALUES ((($1::jsonb)->>'login')::\"text\", (($1::jsonb)->>'n')::\"int4\", (($1::jsonb)->>'login')::\"text\")"
        );
    }

    #[test]
    fn named_parameters_number_once_and_skip_literals_and_casts() {
        let (sql, names) = named_parameters(
            "INSERT INTO t (a, b, c) VALUES (:login, ':not', :display::text || :login)",
        );
        assert_eq!(
            sql,
            "INSERT INTO t (a, b, c) VALUES ($1, ':not', $2::text || $1)"
        );
        assert_eq!(names, vec!["login", "display"]);
    }
}
