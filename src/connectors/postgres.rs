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
//! stream in batches. Exports send a batch of adds as one text array per column, each
//! value cast to its column's type (`add_as_text`), and anything else as one JSON array the
//! target types.

use super::rows::{
    changed_rows, connection_lost, forced_full, no_statement, pg_batch, pg_results, statement_values, written_result, RowShape,
};
use crate::error::invalid;
use idmesh_core::delta::DeltaKind;
use idmesh_core::export_sql::{postgres_text_add, Mode, Returning};
use idmesh_core::value_text::{text_of, TextColumn};
use idmesh_core::sql::{
    has_placeholder, ident, named_parameters, numbered, qualified_ident, render, replace_placeholder, Dialect, Piece,
};
use idmesh_sdk::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::str::FromStr;

const BATCH: usize = 5000;
/// A batch also goes once its rows' text reaches this size: wide rows (a photo, a long
/// description) keep the memory a batch takes bounded, not just its row count.
const BATCH_BYTES: usize = 16 << 20;

/// The settings that say where the secret is sent and how it is protected on the way:
/// changing one needs the secret given again (`connectors::secret_destination`).
pub const SECRET_DESTINATION: &[&str] = &["dsn"];

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
    /// The attributes the connector's export flows write (set when it is opened for a run):
    /// the names its export statements may use besides the anchor and the object's own.
    pub written: Vec<String>,
}

fn text(config: &Value, key: &str) -> Option<String> {
    super::string_setting(config, "postgres", key).map(str::to_string)
}

impl PostgresConfig {
    /// The settings besides the anchor that name a column of the import query.
    fn named_columns(&self) -> [(&'static str, &Option<String>); 3] {
        super::rows::column_settings(&self.delta_column, &self.name_column, &self.soft_delete_column)
    }

    pub fn parse(config: &Value) -> PostgresConfig {
        const KNOWN: &[&str] = &[
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
        super::known_settings(config, "postgres", &[SECRET_DESTINATION, KNOWN]);
        let dsn = text(config, "dsn").unwrap_or_else(|| {
            invalid(
                "postgres connector: \"dsn\" is required",
                "e.g. {\"dsn\": \"host=hr-db port=5432 dbname=hr user=mesh\"}",
            )
        });
        // sslmode and sslrootcert are the connector's to read (checked here, the file too).
        let tls_free = match tls_of(&dsn) {
            Ok((rest, _)) => rest,
            Err(e) => invalid(format!("postgres connector: {e}"), ""),
        };
        match tokio_postgres::Config::from_str(&tls_free) {
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
        // It runs as a subquery: a closing `;` would end it early.
        let import_query = import_query.trim_end().trim_end_matches(';').trim_end().to_string();
        let anchor = super::rows::anchor_setting(config, "postgres");
        let delta_column = text(config, "delta_column");
        super::rows::watermark_settings("postgres", uses_watermark(&import_query), delta_column.as_deref());
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
            export_statements: super::rows::export_statements(config, "postgres"),
            written: Vec::new(),
            export_mode: super::rows::export_mode(config, "postgres"),
        }
    }
}

/// Whether the query has the `@watermark` placeholder where SQL code is (not in a literal,
/// a quoted name or a comment).
fn uses_watermark(query: &str) -> bool {
    has_placeholder(query, Dialect::Postgres, '@', "watermark")
}

/// `@watermark` where SQL code is, replaced by `with`.
fn bind_watermark(query: &str, with: &str) -> String {
    replace_placeholder(query, Dialect::Postgres, '@', "watermark", with)
}

/// The import query as a subquery `q` (on lines of its own: it may end in a comment).
fn subquery(query: &str) -> String {
    format!("(\n{query}\n) q")
}

/// The lowest value of a delta column's type: a full import binds it for `@watermark`.
fn lowest(ty: &str) -> &'static str {
    match ty {
        "int2" => "-32768",
        "int4" => "-2147483648",
        "int8" => "-9223372036854775808",
        "float4" | "float8" => "-Infinity",
        "numeric" | "money" => "-1e1000",
        _ => "-infinity",
    }
}

/// The source's "now" for a delta column of a time type: a high mark never passes it, so a
/// row dated in the future (or `infinity`) cannot hold the watermark there and hide the
/// changes that come after it (the future row is read again, unchanged, each time).
fn now_of(ty: &str) -> Option<&'static str> {
    match ty {
        "timestamptz" => Some("now()"),
        "timestamp" => Some("localtimestamp"),
        "date" => Some("current_date"),
        _ => None,
    }
}

/// How the connection is protected, from the dsn's `sslmode` and `sslrootcert`, as libpq
/// reads them.
enum Tls {
    Off,
    On {
        /// `require` and stricter: no session without TLS.
        required: bool,
        connector: native_tls::TlsConnector,
    },
}

/// The dsn without its TLS settings, and the link they ask for: `disable`; `allow` and
/// `prefer` (the default: TLS when the server offers it, its certificate unchecked);
/// `require` (unchecked, unless an `sslrootcert` is given: then as `verify-ca`);
/// `verify-ca` (the certificate chains to `sslrootcert`, or the system's roots);
/// `verify-full` (and names the host).
fn tls_of(dsn: &str) -> Result<(String, Tls), String> {
    let (rest, mode, root) =
        idmesh_core::sql::split_tls_settings(dsn).map_err(|e| format!("dsn: {e}"))?;
    // A URL keeps its sslmode in its query (disable, prefer, require: what the client
    // library reads there); a key=value dsn's was taken out above.
    let from_url = || {
        use tokio_postgres::config::SslMode;
        tokio_postgres::Config::from_str(&rest).ok().map(|c| match c.get_ssl_mode() {
            SslMode::Disable => "disable".to_string(),
            SslMode::Require => "require".to_string(),
            _ => "prefer".to_string(),
        })
    };
    let mode = mode.or_else(from_url).unwrap_or_else(|| "prefer".into());
    let (required, check_chain, check_host) = match mode.as_str() {
        "disable" => return Ok((rest, Tls::Off)),
        "allow" | "prefer" => (false, false, false),
        "require" => (true, root.is_some(), false),
        "verify-ca" => (true, true, false),
        "verify-full" => (true, true, true),
        other => {
            return Err(format!(
                "dsn: unknown sslmode \"{other}\" (disable, allow, prefer, require, verify-ca, verify-full)"
            ))
        }
    };
    let mut builder = native_tls::TlsConnector::builder();
    builder.danger_accept_invalid_certs(!check_chain);
    builder.danger_accept_invalid_hostnames(!check_host);
    if let Some(path) = root.filter(|_| check_chain) {
        // These authorities and no other (the system's would let any certificate a public
        // authority signed pass for this server).
        let pem = std::fs::read(&path).map_err(|e| format!("dsn: cannot read sslrootcert {path}: {e}"))?;
        let certs = native_tls::Certificate::stack_from_pem(&pem)
            .map_err(|e| format!("dsn: sslrootcert {path} is not a PEM certificate: {e}"))?;
        if certs.is_empty() {
            return Err(format!("dsn: sslrootcert {path} holds no certificate"));
        }
        builder.disable_built_in_roots(true);
        for cert in certs {
            builder.add_root_certificate(cert);
        }
    }
    let connector = builder.build().map_err(|e| format!("TLS: {e}"))?;
    Ok((rest, Tls::On { required, connector }))
}

/// A client over `tls`, its connection driven by the runtime.
async fn connect<T>(
    cfg: &tokio_postgres::Config,
    tls: T,
    what: &str,
) -> Result<tokio_postgres::Client, ConnectorError>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = cfg.connect(tls).await.map_err(|e| connection_error(what, e))?;
    tokio::spawn(connection);
    Ok(client)
}

/// The import query ready to run (see `prepared_query`).
struct PreparedImport {
    query: String,
    /// The type of `@watermark` as the server infers it, when the query has one.
    param_type: Option<String>,
    /// The type of the delta column.
    delta_type: Option<String>,
}

pub struct PostgresConnector {
    name: String,
    config: PostgresConfig,
    password: Option<String>,
    client: Option<tokio_postgres::Client>,
    /// Statements prepared on this connection, by text: a batch's statement is parsed by
    /// the target once a run, and each later batch takes one round trip instead of two.
    statements: HashMap<String, tokio_postgres::Statement>,
    /// Whether a write of this run reached the target (see `rows::connection_lost`).
    wrote: bool,
    /// Adds by text arrays, by column set: the statement and how each column takes its
    /// values; None where that set goes as JSON (see `add_as_text`).
    text_adds: HashMap<Vec<String>, Option<TextAdd>>,
}

/// What a connector's provisioning asks of its exports: adds (provisioning), deletes (a
/// `delete` deprovisioning).
#[derive(Clone, Debug, Default)]
pub struct ExportPlan {
    pub adds: bool,
    pub deletes: bool,
    /// The columns a `disable` deprovisioning writes.
    pub disables: Vec<String>,
}

/// A column set's adds bound as text arrays (`export_sql::postgres_text_add`).
#[derive(Clone)]
struct TextAdd {
    sql: String,
    columns: Vec<TextColumn>,
}

/// How a target column of type `ty` takes values as text as the JSON batch would store
/// them; None where the two could differ (json keeps its spelling, composites are built
/// from objects, intervals read by their fields), and that column set then goes as JSON.
fn text_column(ty: &tokio_postgres::types::Type) -> Option<TextColumn> {
    use tokio_postgres::types::{Kind, Type};
    match ty.kind() {
        Kind::Domain(base) => text_column(base),
        Kind::Array(element) => match text_column(element) {
            Some(TextColumn::Scalar) => Some(TextColumn::ScalarArray),
            _ => None,
        },
        Kind::Simple if *ty == Type::JSONB => Some(TextColumn::Jsonb),
        Kind::Simple if *ty == Type::JSON => None,
        // An interval column's fields (`interval minute to second`) change how its input is
        // read (`10:30` is ten minutes there, ten hours as a plain interval), and a cast
        // does not know them.
        Kind::Simple if *ty == Type::INTERVAL => None,
        Kind::Simple | Kind::Enum(_) | Kind::Range(_) => Some(TextColumn::Scalar),
        _ => None,
    }
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

/// What a change refused by the target reads as, before the target's own words.
const REFUSAL: &str = "the target refused the change";

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
    // tokio-postgres errors never carry the password; the server's message is kept, and
    // its class says whose the fault is: the query's (a setting), the data's, or the link's.
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            // A key's detail names the key at fault (`Key (login)=(u2) already exists.`);
            // other details may show a whole row of the target, columns idmesh does not
            // manage among them, and stay with the target.
            let detail = match code {
                "23505" | "23503" => db.detail().map(|d| format!(" {d}")).unwrap_or_default(),
                _ => String::new(),
            };
            let message = format!("{what}: {} ({code}){detail}", db.message());
            match &code[..2] {
                "42" | "0A" => ConnectorError::config(message),
                "22" | "23" => ConnectorError::data(message),
                _ => ConnectorError::connection(message),
            }
        }
        None => {
            // The cause says what failed (the certificate, the network); the client's own
            // text only that something did.
            let mut detail = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                detail.push_str(&format!(": {c}"));
                cause = c.source();
            }
            ConnectorError::connection(format!("{what}: {detail}"))
        }
    }
}

impl PostgresConnector {
    pub fn new(name: &str, config: PostgresConfig, password: Option<String>) -> Self {
        PostgresConnector {
            name: name.to_string(),
            config,
            password,
            client: None,
            statements: HashMap::new(),
            wrote: false,
            text_adds: HashMap::new(),
        }
    }

    async fn client(&mut self) -> Result<&tokio_postgres::Client, ConnectorError> {
        if self.client.is_none() {
            let (dsn, tls) = tls_of(&self.config.dsn).map_err(ConnectorError::config)?;
            let mut cfg = tokio_postgres::Config::from_str(&dsn)
                .map_err(|e| ConnectorError::config(format!("dsn: {e}")))?;
            if let Some(p) = &self.password {
                cfg.password(p);
            }
            cfg.application_name("idmesh");
            cfg.connect_timeout(std::time::Duration::from_secs(30));
            let what = format!("cannot connect to the database of \"{}\"", self.name);
            let client = match tls {
                Tls::Off => {
                    cfg.ssl_mode(tokio_postgres::config::SslMode::Disable);
                    connect(&cfg, tokio_postgres::NoTls, &what).await?
                }
                Tls::On { required, connector } => {
                    cfg.ssl_mode(if required {
                        tokio_postgres::config::SslMode::Require
                    } else {
                        tokio_postgres::config::SslMode::Prefer
                    });
                    connect(&cfg, postgres_native_tls::MakeTlsConnector::new(connector), &what).await?
                }
            };
            // Values are read as the server writes them: pinned, so that a login's or a
            // database's TimeZone (or float digits, interval style) never changes them.
            client
                .batch_execute(&idmesh_core::sql::rendering_set_commands())
                .await
                .map_err(|e| connection_error(&what, e))?;
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

    /// The import query with `@watermark` as a typed parameter (and the text of its type),
    /// checked against the columns it returns: every column the settings name is there, and
    /// no name comes twice (a row is one JSON object: the second would hide the first).
    async fn prepared_query(&mut self) -> Result<PreparedImport, ConnectorError> {
        let query = self.config.import_query.clone();
        let watermark = uses_watermark(&query);
        let probe = if watermark { bind_watermark(&query, "$1") } else { query.clone() };
        let client = self.client().await?;
        let stmt = client
            .prepare(&probe)
            .await
            .map_err(|e| connection_error("the import_query does not prepare", e))?;
        let columns: Vec<(String, String)> = stmt
            .columns()
            .iter()
            .map(|c| (c.name().to_string(), c.type_().name().to_string()))
            .collect();
        let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
        if let Some(why) = super::rows::column_problem(&self.config.anchor, self.config.named_columns(), &names) {
            return Err(ConnectorError::config(why));
        }
        let delta_type = self.config.delta_column.as_ref().and_then(|d| {
            columns.iter().find(|(n, _)| n == d).map(|(_, t)| t.clone())
        });
        if let (Some(col), Some(t)) = (&self.config.delta_column, &delta_type) {
            if DeltaKind::of_type(t).is_none() {
                return Err(ConnectorError::config(format!(
                    "delta_column \"{col}\" has type {t}: a delta column is a timestamp, date or integer that grows when a row changes"
                )));
            }
        }
        if !watermark {
            return Ok(PreparedImport { query, param_type: None, delta_type });
        }
        let ty = stmt
            .params()
            .first()
            .map(|t| t.name().to_string())
            .unwrap_or_else(|| "text".into());
        Ok(PreparedImport {
            query: bind_watermark(&query, &format!("($1::text)::{}", ident(&ty))),
            param_type: Some(ty),
            delta_type,
        })
    }

    async fn import(
        &mut self,
        from: Option<&Watermark>,
        sink: &mut dyn ImportSink,
    ) -> Result<ImportEnd, ConnectorError> {
        let PreparedImport { query, param_type: ty, delta_type } = self.prepared_query().await?;
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
                // As JSON gives it (ISO 8601, a numeric offset): the same under any DateStyle.
                let sql = format!("SELECT to_json((($1::text)::{0} - {sub})::{0})#>>'{{}}'", ident(t));
                let row = self
                    .client()
                    .await?
                    .query_one(&sql, &[&high, &overlap])
                    .await
                    .map_err(|e| connection_error("watermark", e))?;
                row.get::<_, Option<String>>(0)
            }
            (Some(t), None) => Some(match kind {
                Some(_) => lowest(t).to_string(),
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
                let max = format!("max(q.{})", ident(col));
                let capped = match delta_type.as_deref().and_then(now_of) {
                    // (not least(): it would make "no rows" read as "now")
                    Some(now) => format!("CASE WHEN {max} > {now} THEN {now} ELSE {max} END"),
                    None => max,
                };
                let sql = format!("SELECT to_json({capped})#>>'{{}}' FROM {}", subquery(&query));
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
        let sql = format!("SELECT to_json(q)::text FROM {}", subquery(&query));
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
        let mut bytes = 0;
        while let Some(row) = stream.next().await {
            let row = row.map_err(|e| connection_error("reading rows failed", e))?;
            let text: String = row.get(0);
            bytes += text.len();
            batch.push(text);
            if batch.len() == BATCH || bytes >= BATCH_BYTES {
                stage(std::mem::take(&mut batch))?;
                bytes = 0;
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
    /// The connection test's steps (`mesh.test_connection`); `plan` says what the
    /// connector's provisioning will ask of its exports.
    pub async fn check(&mut self, plan: ExportPlan) -> Vec<(String, bool, String)> {
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
            Ok(prepared) => {
                let sql = format!("SELECT count(*) FROM {} WHERE false", subquery(&prepared.query));
                let probe: Vec<String> = prepared.param_type.iter().map(|t| lowest(t).to_string()).collect();
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
        if let Some(step) = self.check_export(plan).await {
            out.push(step);
        }
        out
    }

    /// The export side, without writing: what provisioning asks is possible (adds outside
    /// update mode, with the anchor written; deletes with somewhere to go); each of
    /// `export_statements` prepares; or the `export_table` has the columns the export flows
    /// write, the login may write it as needed, and no NOT NULL column without a default
    /// is left out of adds.
    async fn check_export(&mut self, plan: ExportPlan) -> Option<(String, bool, String)> {
        let step = |ok: bool, detail: String| Some(("export".to_string(), ok, detail));
        let mut problems: Vec<String> = Vec::new();
        if !self.config.export_statements.is_empty() {
            let statements = &self.config.export_statements;
            if plan.adds && !statements.contains_key("add") {
                problems.push("provisioning adds rows, and export_statements has no \"add\"".into());
            }
            if plan.deletes && !statements.contains_key("delete") {
                problems.push("deprovisioning deletes rows, and export_statements has no \"delete\"".into());
            }
            let mut ops: Vec<(String, String)> = statements.iter().map(|(o, s)| (o.clone(), s.clone())).collect();
            ops.sort();
            for (op, sql) in &ops {
                let (pieces, names) = named_parameters(sql, Dialect::Postgres);
                let client = self.client().await.ok()?;
                if let Err(e) = client.prepare(&numbered(&pieces, &names, Dialect::Postgres)).await {
                    problems.push(connection_error(&format!("the statement for \"{op}\" does not prepare"), e).message);
                }
            }
            let names: Vec<&str> = ops.iter().map(|(o, _)| o.as_str()).collect();
            return match problems.is_empty() {
                true => step(true, format!("the export statements prepare ({})", names.join(", "))),
                false => step(false, problems.join("; ")),
            };
        }
        let Some(table) = self.config.export_table.clone() else {
            return (plan.adds || !self.config.written.is_empty()).then(|| {
                let why = "this connector has export flows but neither an export_table nor export_statements";
                ("export".to_string(), false, why.to_string())
            });
        };
        // (export_mode is the table's: statements ignore it)
        if plan.adds && self.config.export_mode == Mode::Update {
            problems.push(idmesh_core::export_sql::UPDATE_MODE.to_string());
        }
        if plan.adds {
            let missing: Vec<&str> = self
                .config
                .anchor
                .iter()
                .filter(|a| !self.config.written.contains(a))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                problems.push(super::rows::anchor_not_written(&missing));
            }
        }
        let quoted = qualified_ident(&table);
        let mut cols: Vec<String> =
            self.config.written.iter().chain(&self.config.anchor).chain(&plan.disables).cloned().collect();
        cols.sort();
        cols.dedup();
        let listed = if cols.is_empty() {
            "1".to_string()
        } else {
            cols.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ")
        };
        // Adds happen where provisioning asks for them, outside update mode. They write the
        // flows' columns and the anchor (a disable's only where a flow writes them too).
        let adds = plan.adds && self.config.export_mode != Mode::Update;
        let inserted: Vec<String> =
            cols.iter().filter(|c| self.config.written.contains(c) || self.config.anchor.contains(c)).cloned().collect();
        // The columns updates set: those the flows write (an anchor only when it changes,
        // which is rare and then that change's error); an upsert's adds set the anchor too.
        let updated: Vec<String> = match self.config.export_mode {
            Mode::Upsert if adds => cols.clone(), // (a disable's columns are updated too)
            _ => cols
                .iter()
                .filter(|c| {
                    (!self.config.anchor.contains(c) && self.config.written.contains(c)) || plan.disables.contains(c)
                })
                .cloned()
                .collect(),
        };
        let client = self.client().await.ok()?;
        if let Err(e) = client.prepare(&format!("SELECT {listed} FROM {quoted} WHERE false")).await {
            return step(false, connection_error(&format!("export_table {table}"), e).message);
        }
        // Column by column, as the server checks them: a login may hold a privilege on some
        // columns only. Updates read the columns they keep and the anchors they match; a
        // deleted row comes back whole, so deletes read every column.
        let row = match client
            .query_one(
                "SELECT ARRAY(SELECT x FROM unnest($4::text[]) x WHERE NOT has_column_privilege(c.oid, x, 'INSERT')), \
                        ARRAY(SELECT x FROM unnest($3::text[]) x WHERE NOT has_column_privilege(c.oid, x, 'UPDATE')), \
                        ARRAY(SELECT x FROM unnest($2::text[]) x WHERE NOT has_column_privilege(c.oid, x, 'SELECT')), \
                        has_table_privilege(c.oid, 'DELETE') \
                          AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 \
                                            AND NOT a.attisdropped AND NOT has_column_privilege(c.oid, a.attnum, 'SELECT')), \
                        ARRAY(SELECT a.attname::text FROM pg_attribute a \
                               WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attnotnull \
                                 AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = '' \
                                 AND NOT a.attname::text = ANY($4) ORDER BY a.attnum) \
                   FROM pg_class c WHERE c.oid = $1::text::regclass",
                &[&quoted, &cols, &updated, &inserted],
            )
            .await
        {
            Ok(row) => row,
            Err(e) => return step(false, connection_error(&format!("export_table {table}"), e).message),
        };
        let (no_insert, no_update, no_select): (Vec<String>, Vec<String>, Vec<String>) =
            (row.get(0), row.get(1), row.get(2));
        let delete: bool = row.get(3);
        let left_out: Vec<String> = row.get(4);
        // updates and disables are UPDATEs in every mode
        let needed: &[(&str, &Vec<String>)] = match adds {
            true => &[("INSERT", &no_insert), ("UPDATE", &no_update), ("SELECT", &no_select)],
            false => &[("UPDATE", &no_update), ("SELECT", &no_select)],
        };
        for (what, lacking) in needed.iter().filter(|(_, lacking)| !lacking.is_empty()) {
            let checked = match *what {
                "UPDATE" => updated.len(),
                "INSERT" => inserted.len(),
                _ => cols.len(),
            };
            problems.push(if lacking.len() == checked {
                format!("this login may not {what} {table} (GRANT {what} ON {table} TO it)")
            } else {
                let listed = lacking.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
                format!("this login may not {what} column(s) {listed} of {table} (GRANT {what} ({listed}) ON {table} TO it)")
            });
        }
        if plan.deletes && !delete {
            problems.push(format!(
                "this login may not DELETE {table} and read its deleted rows (GRANT SELECT, DELETE ON {table} TO it)"
            ));
        }
        if adds && !left_out.is_empty() {
            problems.push(format!(
                "adds would be refused: {} NOT NULL without a default, and no export flow writes it (add a flow or a default)",
                left_out.join(", ")
            ));
        }
        if !problems.is_empty() {
            return step(false, problems.join("; "));
        }
        let deletes = if delete || plan.deletes { "" } else { "; it may not DELETE (deprovisioning by delete would need DELETE, and SELECT on every column)" };
        step(true, format!("{table} has every column the export flows, the anchor and deprovisioning use ({}){deletes}", cols.join(", ")))
    }
}

impl IdentityConnector for PostgresConnector {
    /// The import query's columns and their types, as the server prepares it.
    fn discover_schema<'a>(&'a mut self) -> BoxFuture<'a, Result<Schema, ConnectorError>> {
        Box::pin(async move {
            let query = self.prepared_query().await?.query;
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
            let table = qualified_ident(&table);
            // Unreachable or refused login: see `rows::connection_lost`.
            if let Err(e) = self.client().await {
                return connection_lost(self.wrote, changes, Vec::new(), e);
            }
            let mut results = Vec::with_capacity(changes.len());
            for (op, group) in super::rows::by_operation(changes) {
                // The whole group in one statement; if it fails, each change alone. A lost
                // connection ends the export (`rows::connection_lost`).
                match self.apply(&table, op, &group).await {
                    Ok(r) => results.extend(r),
                    Err((_, msg)) if self.lost() => {
                        return connection_lost(self.wrote, changes, results, ConnectorError::connection(msg))
                    }
                    Err(_) => {
                        for c in &group {
                            let mut outcome = self.apply(&table, op, &[*c]).await;
                            if let Err((code, _)) = &outcome {
                                let upsert = self.config.export_mode == Mode::Upsert;
                                if super::rows::retry_as_update(op, upsert, code.as_deref()) && !self.lost() {
                                    let shape = self.shape();
                                    let update = super::rows::add_as_update(&shape, c);
                                    match self.apply(&table, ExportOperation::Update, &[&update]).await {
                                        Ok(r) if r.iter().all(|r| r.error.is_none()) => {
                                            outcome = Ok(super::rows::results_of_add(&shape, c, r))
                                        }
                                        // No such row: the add's own refusal is the error.
                                        _ => {}
                                    }
                                }
                            }
                            match outcome {
                                Ok(r) => results.extend(r),
                                Err((_, msg)) if self.lost() => {
                                    return connection_lost(self.wrote, changes, results, ConnectorError::connection(msg))
                                }
                                Err((code, msg)) => results.push(ExportResult::refused(c.mesh_id, code, msg)),
                            }
                        }
                    }
                }
            }
            Ok(results)
        })
    }
}

/// A type's name as a cast writes it, with its schema (an enum or domain need not be on
/// the search path).
fn qualified_type(ty: &tokio_postgres::types::Type) -> String {
    format!("{}.{}", ident(ty.schema()), ident(ty.name()))
}

/// How one name is read from the change's single jsonb parameter as the type the server
/// inferred for it (qualified: an enum or domain need not be on the search path).
fn typed_value(name: &str, ty: &tokio_postgres::types::Type) -> String {
    use tokio_postgres::types::Kind;
    let qualified = qualified_type(ty);
    let key = idmesh_core::sql::literal(name);
    match ty.kind() {
        Kind::Array(_) => format!(
            "(CASE WHEN jsonb_typeof(($1::jsonb)->{key}) = 'array' \
             THEN ARRAY(SELECT jsonb_array_elements_text(($1::jsonb)->{key})) END)::{qualified}"
        ),
        _ if matches!(ty.name(), "json" | "jsonb") => {
            format!("nullif(($1::jsonb)->{key}, 'null'::jsonb)::{qualified}")
        }
        _ => format!("(($1::jsonb)->>{key})::{qualified}"),
    }
}

impl PostgresConnector {
    /// Whether the connection to the target is gone (a failure then says nothing of the
    /// change: see `rows::connection_lost`).
    fn lost(&self) -> bool {
        self.client.as_ref().map_or(true, |c| c.is_closed())
    }

    /// Runs the user's statement once per change; each change succeeds or fails alone.
    async fn export_by_statements(
        &mut self,
        changes: &[ExportChange],
    ) -> Result<Vec<ExportResult>, ConnectorError> {
        if let Err(e) = self.client().await {
            return connection_lost(self.wrote, changes, Vec::new(), e);
        }
        // Each operation's statement cut at its parameters once, not once per change.
        let parsed: HashMap<String, (Vec<Piece>, Vec<String>)> = self
            .config
            .export_statements
            .iter()
            .map(|(op, sql)| (op.clone(), named_parameters(sql, Dialect::Postgres)))
            .collect();
        let mut results = Vec::with_capacity(changes.len());
        for c in changes {
            let Some(user_sql) = self.config.export_statements.get(c.operation.as_str()).cloned() else {
                results.push(no_statement(c));
                continue;
            };
            let outcome = async {
                let (pieces, names) = &parsed[c.operation.as_str()];
                let values = statement_values(c, names, &self.config.anchor, &self.config.written)?;
                // Learn each parameter's type from the server, then send all values in one
                // jsonb parameter cast to those types: typed by the target, never spliced.
                let numbered = numbered(pieces, names, Dialect::Postgres);
                let probe = self
                    .statement(&numbered, "the export statement does not prepare")
                    .await?;
                let types = probe.params().to_vec();
                let typed = render(pieces, |n| {
                    let i = names.iter().position(|x| x == n).unwrap_or(0);
                    typed_value(n, &types[i])
                });
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
                match done {
                    Ok(n) => changed_rows(c, &user_sql, n),
                    Err(e) => Err(refused(failed, e)),
                }
            }
            .await;
            results.push(match outcome {
                // No anchor: the statement may write anywhere, or nothing (DO NOTHING).
                Ok(_) => {
                    self.wrote = true;
                    ExportResult::ok(c.mesh_id, None)
                }
                Err((_, msg)) if self.lost() => {
                    return connection_lost(self.wrote, changes, results, ConnectorError::connection(msg))
                }
                Err((code, msg)) => ExportResult::refused(c.mesh_id, code, msg),
            });
        }
        Ok(results)
    }

    /// A batch of adds as one text array per column (`export_sql::postgres_text_add`): a
    /// result per change, in one round trip as the JSON statement.
    /// None, having sent nothing, where the batch goes as JSON: a single change (a retry),
    /// a column set whose types take text otherwise than JSON (`text_column`), a value that
    /// cannot be written alike (`value_text`).
    async fn add_as_text(
        &mut self,
        table: &str,
        op: ExportOperation,
        changes: &[&ExportChange],
    ) -> Option<Result<Vec<ExportResult>, (Option<String>, String)>> {
        if op != ExportOperation::Add || changes.len() < 2 || self.config.export_mode == Mode::Update {
            return None;
        }
        let mut cols: Vec<String> = changes[0].attributes.keys().cloned().collect();
        cols.sort();
        // One column set (`rows::by_operation` groups adds so), anchors all there.
        let shape = self.shape();
        if changes.iter().any(|c| {
            c.attributes.len() != cols.len()
                || shape.anchor.iter().any(|a| c.attributes.get(a).map_or(true, Value::is_null))
        }) {
            return None;
        }
        let add = match self.text_adds.get(&cols) {
            Some(add) => add.clone()?,
            None => {
                let add = self.text_add(table, &cols).await;
                self.text_adds.insert(cols.clone(), add.clone());
                add?
            }
        };
        // A text array per column, then the changes' anchors.
        let mut arrays: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(changes.len()); cols.len() + 1];
        for c in changes {
            for ((name, column), array) in cols.iter().zip(&add.columns).zip(arrays.iter_mut()) {
                array.push(text_of(*column, Some(c.attributes.get(name)?)).ok()?);
            }
            arrays[cols.len()].push(written_result(&shape, op, c).anchor);
        }
        let statement = match self.statement(&add.sql, REFUSAL).await {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        let client = match self.client().await {
            Ok(c) => c,
            Err(e) => return Some(Err((None, e.message))),
        };
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            arrays.iter().map(|a| a as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
        Some(match client.query_one(&statement, &params).await {
            Ok(row) => {
                self.wrote = true;
                Ok(match row.get::<_, Option<Value>>(0) {
                    // Every row written.
                    None => changes.iter().map(|c| written_result(&shape, op, c)).collect(),
                    Some(written) => {
                        let written = match written {
                            Value::Array(rows) => rows,
                            _ => Vec::new(),
                        };
                        pg_results(table, &shape, op, changes, written, Returning::Anchors)
                    }
                })
            }
            Err(e) => {
                if stale(&e) {
                    // Made again next time: the table changed under the statement.
                    self.statements.remove(&add.sql);
                    self.text_adds.remove(&cols);
                }
                Err(refused(REFUSAL, e))
            }
        })
    }

    /// The text-array add of the column set `cols` (see `add_as_text`), from the types
    /// the target gives its columns; None where the set goes as JSON.
    async fn text_add(&mut self, table: &str, cols: &[String]) -> Option<TextAdd> {
        let probe = format!(
            "SELECT {} FROM {table}",
            cols.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ")
        );
        let client = self.client().await.ok()?;
        let probed = client.prepare(&probe).await.ok()?;
        let types: Vec<&tokio_postgres::types::Type> = probed.columns().iter().map(|c| c.type_()).collect();
        let columns = types.iter().map(|t| text_column(t)).collect::<Option<Vec<_>>>()?;
        let qualified: Vec<String> = types.iter().map(|t| qualified_type(t)).collect();
        let typed: Vec<(&str, &str)> = cols.iter().map(String::as_str).zip(qualified.iter().map(String::as_str)).collect();
        let sql = postgres_text_add(table, &self.shape().anchor, &typed, self.config.export_mode).ok()?;
        Some(TextAdd { sql, columns })
    }

    async fn apply(
        &mut self,
        table: &str,
        op: ExportOperation,
        changes: &[&ExportChange],
    ) -> Result<Vec<ExportResult>, (Option<String>, String)> {
        if let Some(results) = self.add_as_text(table, op, changes).await {
            return results;
        }
        let shape = self.shape();
        let (sql, payload) = pg_batch(
            table,
            &shape,
            self.config.export_mode,
            op,
            changes,
            Returning::Anchors,
        )
        // A refusal of the settings (update mode, no anchor flow), the same for every change.
        .map_err(|e| (Some("22023".to_string()), e))?;
        let statement = self.statement(&sql, REFUSAL).await?;
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
                return Err(refused(REFUSAL, e));
            }
        };
        let written = match row.get::<_, Value>(0) {
            Value::Array(rows) => rows,
            _ => Vec::new(),
        };
        self.wrote = true;
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
