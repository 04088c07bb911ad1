//! The `sqlserver` connector kind: Microsoft SQL Server over its wire protocol (TDS, crate
//! tiberius), with SQL authentication and the password from the connector's encrypted
//! secret. Imports here; exports are generated as one MERGE per batch
//! (`idmesh_core::export_sql::sqlserver_merge`) and verified only against a real SQL
//! Server (tests gated on IDMESH_SQLSERVER_URL).
//!
//! Config keys: `host`, `port` (1433), `database`, `user`, `trust_cert` (false; true for
//! self-signed test servers), `encrypt` (`required` | `off`, default required),
//! `import_query` (may use `@watermark`, always bound as `@P1`), `anchor`, `object_type`,
//! `name_column`, `delta_column`, `delta_type` (`datetime` | `integer`, default datetime),
//! `soft_delete_column`.

use super::rows::{forced_full, RowShape};
use idmesh_core::export_sql::Mode;
use idmesh_core::sql::{has_placeholder, named_parameters, numbered, replace_placeholder, Dialect};
use crate::error::invalid;
use idmesh_sdk::*;
use serde_json::{json, Value};
use tiberius::{AuthMethod, Client, ColumnData, Config, EncryptionLevel, FromSql};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

const BATCH: usize = 5000;

#[derive(Clone, Debug)]
pub struct SqlServerConfig {
    pub host: String,
    pub port: u16,
    pub database: Option<String>,
    pub user: String,
    pub trust_cert: bool,
    pub encrypt: bool,
    pub import_query: String,
    pub anchor: Vec<String>,
    pub object_type: String,
    pub name_column: Option<String>,
    pub delta_column: Option<String>,
    pub delta_is_integer: bool,
    /// How far behind the watermark a delta reads again: seconds for a datetime delta
    /// column (default 300), units for an integer one (default 0).
    pub overlap: i64,
    pub soft_delete_column: Option<String>,
    /// `schema.table` exports write to and delete from.
    pub export_table: Option<String>,
    /// How adds are written: MERGE on the anchor (upsert), INSERT, or not at all (update).
    pub export_mode: Mode,
    /// The user's own statement per operation, with named parameters `:attribute`.
    pub export_statements: std::collections::HashMap<String, String>,
    /// The attributes the connector's export flows write (set when it is opened for a run).
    pub written: Vec<String>,
}

/// The settings that say where the secret is sent and how it is protected on the way:
/// changing one needs the secret given again (`connectors::secret_destination`).
pub const SECRET_DESTINATION: &[&str] = &["host", "port", "user", "encrypt", "trust_cert"];

fn text(config: &Value, key: &str) -> Option<String> {
    super::string_setting(config, "sqlserver", key).map(str::to_string)
}

impl SqlServerConfig {
    pub fn parse(config: &Value) -> SqlServerConfig {
        const KNOWN: &[&str] = &[
            "database",
            "import_query",
            "anchor",
            "object_type",
            "name_column",
            "delta_column",
            "delta_type",
            "overlap",
            "soft_delete_column",
            "export_table",
            "export_mode",
            "export_statements",
        ];
        super::known_settings(config, "sqlserver", &[SECRET_DESTINATION, KNOWN]);
        let need = |k: &str| {
            text(config, k)
                .unwrap_or_else(|| invalid(format!("sqlserver connector: \"{k}\" is required"), ""))
        };
        let anchor = super::rows::anchor_setting(config, "sqlserver");
        let import_query = need("import_query");
        let delta_column = text(config, "delta_column");
        super::rows::watermark_settings("sqlserver", uses_watermark(&import_query), delta_column.as_deref());
        SqlServerConfig {
            host: need("host"),
            port: config.get("port").and_then(Value::as_u64).unwrap_or(1433) as u16,
            database: text(config, "database"),
            user: need("user"),
            trust_cert: config.get("trust_cert").and_then(Value::as_bool).unwrap_or(false),
            encrypt: match text(config, "encrypt").as_deref().unwrap_or("required") {
                "required" => true,
                "off" => false,
                other => invalid(format!("sqlserver connector: encrypt \"{other}\": use required or off"), ""),
            },
            import_query,
            anchor,
            object_type: text(config, "object_type").unwrap_or_else(|| "person".into()),
            name_column: text(config, "name_column"),
            delta_column,
            delta_is_integer: match text(config, "delta_type").as_deref().unwrap_or("datetime") {
                "datetime" => false,
                "integer" => true,
                other => invalid(format!("sqlserver connector: delta_type \"{other}\": use datetime or integer"), ""),
            },
            overlap: match config.get("overlap") {
                None | Some(Value::Null) => -1,
                Some(v) => v.as_i64().filter(|n| *n >= 0).unwrap_or_else(|| {
                    invalid("sqlserver connector: \"overlap\" is a number (seconds, or units of an integer delta column)", "")
                }),
            },
            soft_delete_column: text(config, "soft_delete_column"),
            export_table: text(config, "export_table"),
            export_mode: super::rows::export_mode(config, "sqlserver"),
            export_statements: super::rows::export_statements(config, "sqlserver"),
            written: Vec::new(),
        }
    }
}

/// A cell as JSON, in the form SQL Server's own FOR JSON would give it.
fn cell(data: &ColumnData<'static>) -> Value {
    use ColumnData::*;
    let chrono_text = |d: &ColumnData<'static>| -> Value {
        if let Ok(Some(v)) = chrono::NaiveDateTime::from_sql(d) {
            // A legacy datetime counts 1/300 s: kept to the millisecond, as SQL Server
            // writes it and reads it back (a longer fraction would not convert).
            let v = match d {
                DateTime(_) | SmallDateTime(_) => chrono::SubsecRound::trunc_subsecs(v, 3),
                _ => v,
            };
            return json!(idmesh_core::delta::datetime_text(v, 'T'));
        }
        if let Ok(Some(v)) = chrono::DateTime::<chrono::FixedOffset>::from_sql(d) {
            return json!(idmesh_core::delta::datetimeoffset_text(v));
        }
        if let Ok(Some(v)) = chrono::NaiveDate::from_sql(d) {
            return json!(v.to_string());
        }
        if let Ok(Some(v)) = chrono::NaiveTime::from_sql(d) {
            return json!(v.to_string());
        }
        Value::Null
    };
    match data {
        U8(v) => v.map_or(Value::Null, |v| json!(v)),
        I16(v) => v.map_or(Value::Null, |v| json!(v)),
        I32(v) => v.map_or(Value::Null, |v| json!(v)),
        I64(v) => v.map_or(Value::Null, |v| json!(v)),
        F32(v) => v.map_or(Value::Null, |v| json!(v)),
        F64(v) => v.map_or(Value::Null, |v| json!(v)),
        Bit(v) => v.map_or(Value::Null, |v| json!(v)),
        String(v) => v.as_ref().map_or(Value::Null, |v| json!(v.as_ref())),
        Guid(v) => v.map_or(Value::Null, |v| json!(v.to_string())),
        // Written from its digits and scale (the library's own text of a negative value
        // below 1 is not a number).
        Numeric(v) => v.map_or(Value::Null, |v| {
            let text = idmesh_core::sql::decimal_text(v.value(), v.scale());
            serde_json::from_str(&text).unwrap_or(json!(text))
        }),
        Binary(v) => v.as_ref().map_or(Value::Null, |v| {
            json!(v
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<std::string::String>())
        }),
        Xml(v) => v.as_ref().map_or(Value::Null, |v| json!(v.to_string())),
        other => chrono_text(other),
    }
}

/// The full import's `@watermark` for a time column: `datetime`'s first day, within the
/// range of `datetime`, `datetime2`, `date` and `datetimeoffset` (a `smalldatetime` column
/// compares with `CAST(@watermark AS datetime2)`), and before 1900-01-01, the zero of
/// `datetime` that legacy rows hold as a value. Bound as text: a typed datetime2 would
/// suit every type, but the project's TDS test server cannot take one.
const LOWEST_TIME: &str = "1753-01-01T00:00:00";

/// `@watermark`'s value: an integer mark as a bigint (as text it would have to convert to
/// the column's type, and the lowest bigint fits no int column), a time as text.
fn bind_low(q: &mut tiberius::Query<'_>, low: &str, integer: bool) {
    match low.parse::<i64>() {
        Ok(n) if integer => q.bind(n),
        _ => q.bind(low.to_string()),
    }
}

impl SqlServerConfig {
    /// The settings besides the anchor that name a column of the import query.
    fn named_columns(&self) -> [(&'static str, &Option<String>); 3] {
        super::rows::column_settings(&self.delta_column, &self.name_column, &self.soft_delete_column)
    }
}

/// Whether the query has the `@watermark` placeholder where T-SQL code is.
fn uses_watermark(query: &str) -> bool {
    has_placeholder(query, Dialect::TSql, '@', "watermark")
}

pub struct SqlServerConnector {
    name: String,
    config: SqlServerConfig,
    password: Option<String>,
    client: Option<Client<Compat<TcpStream>>>,
    /// Whether a write of this run reached the target (see `rows::connection_lost`).
    wrote: bool,
}

fn server_error(what: &str, e: tiberius::error::Error) -> ConnectorError {
    // tiberius errors carry the server's message and number, never the password.
    ConnectorError::connection(format!("{what}: {e}"))
}

impl SqlServerConnector {
    pub fn new(name: &str, config: SqlServerConfig, password: Option<String>) -> Self {
        SqlServerConnector {
            name: name.to_string(),
            config,
            password,
            client: None,
            wrote: false,
        }
    }

    async fn client(&mut self) -> Result<&mut Client<Compat<TcpStream>>, ConnectorError> {
        if self.client.is_none() {
            let mut cfg = Config::new();
            cfg.host(&self.config.host);
            cfg.port(self.config.port);
            if let Some(db) = &self.config.database {
                cfg.database(db);
            }
            cfg.authentication(AuthMethod::sql_server(
                &self.config.user,
                self.password.as_deref().unwrap_or(""),
            ));
            cfg.encryption(if self.config.encrypt {
                EncryptionLevel::Required
            } else {
                EncryptionLevel::Off
            });
            if self.config.trust_cert {
                cfg.trust_cert();
            }
            cfg.application_name("idmesh");
            // As the postgres kind: 30 seconds to reach the server, not the system's minutes.
            let reached = tokio::time::timeout(std::time::Duration::from_secs(30), TcpStream::connect(cfg.get_addr()))
                .await
                .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 30 seconds")));
            let tcp = reached.map_err(|e| {
                ConnectorError::connection(format!(
                    "cannot reach the SQL Server of \"{}\" at {}:{}: {e}",
                    self.name, self.config.host, self.config.port
                ))
            })?;
            tcp.set_nodelay(true).ok();
            let mut client = Client::connect(cfg, tcp.compat_write())
                .await
                .map_err(|e| {
                    server_error(
                        &format!("cannot log in to the SQL Server of \"{}\"", self.name),
                        e,
                    )
                })?;
            // A login's language sets how `datetime` reads '2026-03-04' (a German login
            // reads 3 April): exports send dates as ISO text, so the order is pinned.
            let pinned = match client.simple_query("SET DATEFORMAT ymd").await {
                Ok(stream) => stream.into_results().await.map(|_| ()),
                Err(e) => Err(e),
            };
            pinned.map_err(|e| server_error(&format!("the SQL Server of \"{}\"", self.name), e))?;
            self.client = Some(client);
        }
        Ok(self.client.as_mut().unwrap())
    }

    async fn import(
        &mut self,
        from: Option<&Watermark>,
        sink: &mut dyn ImportSink,
    ) -> Result<ImportEnd, ConnectorError> {
        let q = self.import_statement(from);
        let delta = self.config.delta_column.clone();
        let delta_is_integer = self.config.delta_is_integer;
        let mut high: Option<Value> = from.and_then(|w| w.0.get("high")).cloned();
        // The client leaves `self` while its row stream is read, so each row becomes an
        // object at once and batches go out as they fill: memory stays flat.
        self.client().await?;
        let mut client = self.client.take().expect("connected");
        let shape = self.shape();
        let named = self.config.named_columns();
        let read = async {
            let mut stream = q
                .query(&mut client)
                .await
                .map_err(|e| server_error("the import_query failed", e))?;
            let mut batch = Vec::with_capacity(BATCH);
            let mut first = true;
            use futures_util::TryStreamExt;
            while let Some(item) = stream
                .try_next()
                .await
                .map_err(|e| server_error("reading rows failed", e))?
            {
                let tiberius::QueryItem::Row(row) = item else {
                    continue;
                };
                let names: Vec<std::string::String> =
                    row.columns().iter().map(|c| c.name().to_string()).collect();
                // The first row shows the query's columns: they must fit the settings (a
                // misspelt delta column would silently read everything every time).
                if first {
                    first = false;
                    let columns: Vec<&str> = names.iter().map(std::string::String::as_str).collect();
                    if let Some(why) = super::rows::column_problem(&shape.anchor, named, &columns) {
                        return Err(ConnectorError::config(why));
                    }
                }
                let mut attrs = serde_json::Map::new();
                for (name, data) in names.into_iter().zip(row.into_iter()) {
                    attrs.insert(name, cell(&data));
                }
                if let Some(v) = delta
                    .as_ref()
                    .and_then(|col| attrs.get(col))
                    .filter(|v| !v.is_null())
                {
                    let v = super::rows::json_text(v).unwrap_or_default();
                    let h = high.as_ref().and_then(Value::as_str).unwrap_or("");
                    let newer = match (&high, delta_is_integer) {
                        (None, _) => true,
                        // Integers as numbers; what does not parse (a rowversion's hex) by
                        // length, then text: the same order for digits of one width.
                        (Some(_), true) => match (v.parse::<i64>(), h.parse::<i64>()) {
                            (Ok(a), Ok(b)) => a > b,
                            _ => (v.len(), v.as_str()) > (h.len(), h),
                        },
                        (Some(_), false) => v.as_str() > h,
                    };
                    if newer {
                        high = Some(json!(v));
                    }
                }
                batch.push(shape.source_object(&self.name, Value::Object(attrs))?);
                if batch.len() == BATCH {
                    sink.accept(std::mem::take(&mut batch))?;
                }
            }
            sink.accept(batch)
        }
        .await;
        self.client = Some(client);
        read?;
        let watermark = match (&self.config.delta_column, high) {
            (Some(col), Some(h)) => Some(Watermark(json!({"column": col, "high": h}))),
            _ => None,
        };
        Ok(ImportEnd {
            watermark,
            forced_full: false,
            note: None,
        })
    }

    /// The import query as it runs: `@watermark` as `@P1`, bound to `low_value(from)`.
    fn import_statement(&self, from: Option<&Watermark>) -> tiberius::Query<'static> {
        let query = replace_placeholder(&self.config.import_query, Dialect::TSql, '@', "watermark", "@P1");
        let mut q = tiberius::Query::new(query);
        if uses_watermark(&self.config.import_query) {
            bind_low(&mut q, &self.low_value(from), self.config.delta_is_integer);
        }
        q
    }

    /// What `@watermark` is bound to: the lowest value on a full import; on a delta the
    /// last high mark minus the overlap, so a row committed late with an older value is
    /// still read (re-reads count as unchanged). Written back in the form the mark came in
    /// (a date, a date and time with `T` or a space, with or without an offset), so it
    /// also compares right against a text column.
    fn low_value(&self, from: Option<&Watermark>) -> String {
        match from.and_then(|w| w.0.get("high")).and_then(Value::as_str) {
            Some(h) if self.config.delta_is_integer => {
                let overlap = self.config.overlap.max(0);
                h.parse::<i64>()
                    .map(|n| n.saturating_sub(overlap).to_string())
                    .unwrap_or_else(|_| h.to_string())
            }
            Some(h) => {
                let overlap = if self.config.overlap < 0 {
                    300
                } else {
                    self.config.overlap
                };
                idmesh_core::delta::minus_seconds(h, overlap).unwrap_or_else(|| h.to_string())
            }
            None if self.config.delta_is_integer => i64::MIN.to_string(),
            None => LOWEST_TIME.to_string(),
        }
    }

    fn shape(&self) -> RowShape {
        RowShape {
            anchor: self.config.anchor.clone(),
            object_type: self.config.object_type.clone(),
            name_column: self.config.name_column.clone(),
            soft_delete_column: self.config.soft_delete_column.clone(),
        }
    }

    pub async fn check(&mut self) -> Vec<(String, bool, String)> {
        let mut out = Vec::new();
        if let Err(e) = self.client().await {
            out.push(("connect".into(), false, e.message));
            return out;
        }
        out.push(("connect".into(), true, "reached the server and logged in".into()));
        // The query runs as a full import would run it; its columns are read, no row.
        let q = self.import_statement(None);
        let client = self.client.as_mut().expect("connected");
        let columns = match q.query(client).await {
            Ok(mut stream) => stream.columns().await.map(|c| {
                c.map(|c| c.iter().map(|c| c.name().to_string()).collect::<Vec<_>>()).unwrap_or_default()
            }),
            Err(e) => Err(e),
        };
        // The rows were not read: this connection is done.
        self.client = None;
        out.push(match columns {
            Err(e) => ("import_query".into(), false, format!("fails: {e}")),
            Ok(columns) => {
                let names: Vec<&str> = columns.iter().map(String::as_str).collect();
                match super::rows::column_problem(&self.config.anchor, self.config.named_columns(), &names) {
                    Some(why) => ("import_query".into(), false, why),
                    None => ("import_query".into(), true, "runs".into()),
                }
            }
        });
        out
    }
}

impl IdentityConnector for SqlServerConnector {
    fn kind(&self) -> &str {
        "sqlserver"
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
            // No watermark, or one of another delta column (the setting changed): read all.
            let same_column = from.0.get("column").and_then(Value::as_str) == self.config.delta_column.as_deref();
            if self.config.delta_column.is_none() || from.0.get("high").is_none() || !same_column {
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
                return self.export_by_statements(changes).await;
            }
            let Some(table) = self.config.export_table.clone() else {
                return Ok(changes
                    .iter()
                    .map(super::rows::no_export_target)
                    .collect());
            };
            let types = match self.column_types(&table).await {
                Ok(t) => t,
                Err(e) if e.kind == ErrorKind::Connection => {
                    return super::rows::connection_lost(self.wrote, changes, Vec::new(), e)
                }
                Err(e) => return Err(e),
            };
            let mut results = Vec::with_capacity(changes.len());
            // Each statement writes the columns its changes carry and no other: a column a
            // change does not touch is never written from an older import or as NULL.
            let mut groups = Vec::new();
            for (op, group) in super::rows::by_operation(changes) {
                match op {
                    ExportOperation::Delete | ExportOperation::Add => groups.push((op, group)),
                    _ => groups.extend(super::rows::by_columns(group).into_iter().map(|g| (op, g))),
                }
            }
            for (op, group) in groups {
                // The batch in one statement; if it fails (or an update missed a row), each
                // change alone. A lost connection ends the export (`rows::connection_lost`).
                match self.apply(&table, &types, &group, op).await {
                    Ok(()) => {
                        let shape = self.shape();
                        results.extend(group.iter().map(|c| super::rows::written_result(&shape, op, c)))
                    }
                    Err(Refusal::Connection(e)) => {
                        return super::rows::connection_lost(self.wrote, changes, results, e)
                    }
                    Err(_) => {
                        for c in &group {
                            results.push(match self.apply(&table, &types, &[*c], op).await {
                                Ok(()) => super::rows::written_result(&self.shape(), op, c),
                                Err(Refusal::Connection(e)) => {
                                    return super::rows::connection_lost(self.wrote, changes, results, e)
                                }
                                Err(Refusal::Change(message)) => ExportResult::failed(c.mesh_id, message),
                                Err(Refusal::Missing(message)) => {
                                    ExportResult::failed_with_code(c.mesh_id, "02000", message)
                                }
                            });
                        }
                    }
                }
            }
            Ok(results)
        })
    }
}

/// Why a statement did not write: the change (its row fails alone), or the connection.
enum Refusal {
    Change(String),
    /// An update found no row to change (SQLSTATE 02000, as the other SQL kinds say).
    Missing(String),
    Connection(ConnectorError),
}

/// Whether a tiberius error is the connection's, not the statement's.
fn connection_failed(e: &tiberius::error::Error) -> bool {
    matches!(
        e,
        tiberius::error::Error::Io { .. } | tiberius::error::Error::Tls(_) | tiberius::error::Error::Protocol(_)
    )
}

impl SqlServerConnector {
    /// Runs the user's statement once per change, its `:name` parameters bound as `@P1`,
    /// `@P2`, ... (`idmesh_core::sql::tsql_parameter_text`); each change succeeds or fails alone, as for the postgres kind.
    async fn export_by_statements(
        &mut self,
        changes: &[ExportChange],
    ) -> Result<Vec<ExportResult>, ConnectorError> {
        if let Err(e) = self.client().await {
            return super::rows::connection_lost(self.wrote, changes, Vec::new(), e);
        }
        let parsed: std::collections::HashMap<String, (String, Vec<String>)> = self
            .config
            .export_statements
            .iter()
            .map(|(op, sql)| {
                let (pieces, names) = named_parameters(sql, Dialect::TSql);
                (op.clone(), (numbered(&pieces, &names, Dialect::TSql), names))
            })
            .collect();
        let mut results = Vec::with_capacity(changes.len());
        for c in changes {
            let Some(user_sql) = self.config.export_statements.get(c.operation.as_str()).cloned() else {
                results.push(super::rows::no_statement(c));
                continue;
            };
            let (sql, names) = &parsed[c.operation.as_str()];
            let values = match super::rows::statement_values(c, names, &self.config.anchor, &self.config.written) {
                Ok(v) => v,
                Err((code, msg)) => {
                    results.push(ExportResult::refused(c.mesh_id, code, msg));
                    continue;
                }
            };
            // A statement that changes rows reports how many itself (`tsql_with_row_count`).
            let counted = idmesh_core::sql::counts_rows(&user_sql);
            let mut query = tiberius::Query::new(match counted {
                true => idmesh_core::sql::tsql_with_row_count(sql),
                false => sql.clone(),
            });
            for name in names {
                query.bind(idmesh_core::sql::tsql_parameter_text(values.get(name)));
            }
            let client = match self.client().await {
                Ok(c) => c,
                Err(e) => return super::rows::connection_lost(self.wrote, changes, results, e),
            };
            let done: Result<u64, tiberius::error::Error> = if counted {
                match query.query(client).await {
                    Ok(stream) => stream.into_results().await.map(|sets| {
                        sets.last()
                            .and_then(|rows| rows.first())
                            .and_then(|r| r.try_get::<i64, _>(0).ok().flatten())
                            .unwrap_or(0) as u64
                    }),
                    Err(e) => Err(e),
                }
            } else {
                query.execute(client).await.map(|d| d.total())
            };
            results.push(match done {
                Ok(rows) => match super::rows::changed_rows(c, &user_sql, rows) {
                    // No anchor: the statement may write anywhere, or nothing.
                    Ok(_) => {
                        self.wrote = true;
                        ExportResult::ok(c.mesh_id, None)
                    }
                    Err((code, msg)) => ExportResult::refused(c.mesh_id, code, msg),
                },
                Err(e) if connection_failed(&e) => {
                    self.client = None;
                    let lost = server_error("the connection to the target was lost", e);
                    return super::rows::connection_lost(self.wrote, changes, results, lost);
                }
                Err(e) => ExportResult::failed(c.mesh_id, format!("the export statement failed: {e}")),
            });
        }
        Ok(results)
    }

    /// The export table's columns with their T-SQL types, for OPENJSON.
    async fn column_types(&mut self, table: &str) -> Result<Vec<(String, String)>, ConnectorError> {
        let (schema, name) = table.split_once('.').unwrap_or(("dbo", table));
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT COLUMN_NAME, DATA_TYPE, CHARACTER_MAXIMUM_LENGTH, NUMERIC_PRECISION, NUMERIC_SCALE \
                 FROM INFORMATION_SCHEMA.COLUMNS WHERE TABLE_SCHEMA = @P1 AND TABLE_NAME = @P2 ORDER BY ORDINAL_POSITION",
                &[&schema, &name],
            )
            .await
            .map_err(|e| server_error("cannot read the export table's columns", e))?
            .into_first_result()
            .await
            .map_err(|e| server_error("cannot read the export table's columns", e))?;
        let types: Vec<(String, String)> = rows
            .iter()
            .filter_map(|r| {
                let col: &str = r.get(0)?;
                let ty: &str = r.get(1)?;
                let len: Option<i32> = r.get(2);
                let prec: Option<u8> = r.get(3);
                let scale: Option<i32> = r.get(4);
                let full = match ty {
                    "nvarchar" | "varchar" | "nchar" | "char" | "varbinary" | "binary" => match len
                    {
                        Some(-1) | None => format!("{ty}(max)"),
                        Some(n) => format!("{ty}({n})"),
                    },
                    "decimal" | "numeric" => {
                        format!("{ty}({},{})", prec.unwrap_or(18), scale.unwrap_or(0))
                    }
                    other => other.to_string(),
                };
                Some((col.to_string(), full))
            })
            .collect();
        if types.is_empty() {
            return Err(ConnectorError::config(format!(
                "export table {table} has no columns this login can see"
            )));
        }
        Ok(types)
    }

    /// One MERGE (adds, updates, disables) or one DELETE for a group of changes that carry
    /// the same attributes.
    async fn apply(
        &mut self,
        table: &str,
        types: &[(String, String)],
        changes: &[&ExportChange],
        op: ExportOperation,
    ) -> Result<(), Refusal> {
        let anchors = self.config.anchor.clone();
        let mut cols: Vec<&str> = changes
            .iter()
            .flat_map(|c| c.attributes.keys().map(String::as_str))
            .collect();
        cols.extend(anchors.iter().map(String::as_str));
        cols.sort();
        cols.dedup();
        let typed: Vec<(&str, &str)> = cols
            .iter()
            .map(|c| {
                types
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(c))
                    .map(|(_, t)| (*c, t.as_str()))
                    .ok_or_else(|| Refusal::Change(format!("export table {table} has no column {c}")))
            })
            .collect::<Result<_, _>>()?;
        // Each change with the columns it carries; the anchor columns, where the change does
        // not set them, as the object has them now (the row to match).
        let payload = Value::Array(
            changes
                .iter()
                .map(|c| {
                    let mut attrs = serde_json::Map::new();
                    for col in &cols {
                        let anchor = anchors.iter().any(|a| a == col);
                        let v = c
                            .attributes
                            .get(*col)
                            .or_else(|| anchor.then(|| c.current.get(*col)).flatten())
                            .cloned()
                            .unwrap_or(Value::Null);
                        attrs.insert(col.to_string(), v);
                    }
                    // The row to change, as the object has it now (an update may rename it).
                    let key: serde_json::Map<String, Value> = anchors
                        .iter()
                        .map(|a| (a.clone(), c.current.get(a).or_else(|| c.attributes.get(a)).cloned().unwrap_or(Value::Null)))
                        .collect();
                    json!({"attributes": attrs, "key": key})
                })
                .collect(),
        )
        .to_string();
        let keys: Vec<(&str, &str)> = typed
            .iter()
            .filter(|(c, _)| anchors.iter().any(|a| a == c))
            .cloned()
            .collect();
        let sql = match op {
            ExportOperation::Delete => idmesh_core::export_sql::sqlserver_delete(table, &keys),
            ExportOperation::Add => match self.config.export_mode {
                Mode::Upsert => idmesh_core::export_sql::sqlserver_merge(table, &anchors, &typed).map_err(Refusal::Change)?,
                Mode::Insert => idmesh_core::export_sql::sqlserver_insert(table, &typed),
                Mode::Update => {
                    return Err(Refusal::Change(idmesh_core::export_sql::UPDATE_MODE.into()))
                }
            },
            // Only the columns the changes set (the anchors are in `key`).
            _ => {
                let set: Vec<(&str, &str)> = typed
                    .iter()
                    .filter(|(c, _)| changes.iter().any(|ch| ch.attributes.contains_key(*c)))
                    .cloned()
                    .collect();
                idmesh_core::export_sql::sqlserver_update(table, &keys, &set).map_err(Refusal::Change)?
            }
        };
        let update = op != ExportOperation::Add && op != ExportOperation::Delete;
        let client = self.client().await.map_err(Refusal::Connection)?;
        // An update reports the rows it changed itself (@@ROWCOUNT: neither a trigger's
        // statements nor NOCOUNT change it), so a row gone from the target is seen.
        // An update that would change fewer rows than it has changes (a row gone from the
        // target) is taken back whole, so each change alone then says which, from the same
        // state (a change that renames its row would not find it again).
        let done: Result<Option<i64>, tiberius::error::Error> = if update {
            let counted = format!(
                "SET XACT_ABORT ON; BEGIN TRANSACTION; {sql} DECLARE @idmesh_n bigint = @@ROWCOUNT; \
                 IF @idmesh_n < @P2 ROLLBACK TRANSACTION ELSE COMMIT TRANSACTION; SELECT @idmesh_n;"
            );
            let expected = changes.len() as i64;
            match client.query(counted, &[&payload, &expected]).await {
                Ok(stream) => stream
                    .into_row()
                    .await
                    .map(|r| r.and_then(|r| r.try_get::<i64, _>(0).ok().flatten())),
                Err(e) => Err(e),
            }
        } else {
            client.execute(sql, &[&payload]).await.map(|_| None)
        };
        let missed = matches!(done, Ok(Some(n)) if (n as usize) < changes.len());
        if done.is_ok() && !missed {
            self.wrote = true;
        }
        match done {
            Ok(_) if missed => Err(Refusal::Missing(format!("no row of {table} has the anchor of this change"))),
            Ok(_) => Ok(()),
            Err(e) if connection_failed(&e) => {
                self.client = None;
                Err(Refusal::Connection(server_error("the connection to the target was lost", e)))
            }
            Err(e) => Err(Refusal::Change(format!("the target refused the change: {e}"))),
        }
    }
}
