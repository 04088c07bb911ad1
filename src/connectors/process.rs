//! The `process` connector kind: a connector program, started from the directory named by
//! `idmesh.connector_directory`, speaking the JSON-lines protocol of `idmesh_sdk::protocol`
//! (docs/connector-protocol.md) over its stdin and stdout.
//!
//! Config keys: `program` (a file in the connector directory), `args` (array of strings),
//! `settings` (any JSON, handed to the program in its hello), `timeout_seconds` (default
//! `idmesh.connector_timeout`).
//!
//! A program that crashes, hangs, writes something that is not the protocol, or exits
//! before ending its answer fails the run with a message saying which, plus the tail of its
//! stderr; it is killed, and the database backend is untouched.

use crate::error::raise;
use crate::guc;
use idmesh_sdk::protocol::{Reply, Request, PROTOCOL_VERSION};
use idmesh_sdk::*;
use pgrx::prelude::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// Longest line a program may write (one batch of objects).
const MAX_LINE: u64 = 64 * 1024 * 1024;
/// How much of a program's stderr an error message quotes.
const STDERR_TAIL: usize = 2000;

#[derive(Clone, Debug)]
pub struct ProcessConfig {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub settings: Value,
    pub timeout: Duration,
}

impl ProcessConfig {
    pub fn parse(config: &Value) -> ProcessConfig {
        const KNOWN: &[&str] = &["program", "args", "settings", "timeout_seconds"];
        super::known_settings(config, "process", &[KNOWN]);
        let program = config.get("program").and_then(Value::as_str).unwrap_or_else(|| {
            crate::error::invalid(
                "process connector: \"program\" is required: a program in idmesh.connector_directory",
                "",
            )
        });
        let args = match config.get("args") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
                a.iter().map(|v| v.as_str().unwrap().to_string()).collect()
            }
            Some(_) => crate::error::invalid(
                "process connector: \"args\" must be an array of strings",
                "",
            ),
        };
        let timeout = match config.get("timeout_seconds") {
            None | Some(Value::Null) => guc::CONNECTOR_TIMEOUT.get() as u64,
            Some(v) => match v.as_u64() {
                Some(s) if (1..=86400).contains(&s) => s,
                _ => crate::error::invalid(
                    "process connector: \"timeout_seconds\" must be 1 to 86400",
                    "",
                ),
            },
        };
        ProcessConfig {
            program: allowed_program(program),
            args,
            settings: config
                .get("settings")
                .cloned()
                .unwrap_or(Value::Object(Default::default())),
            timeout: Duration::from_secs(timeout),
        }
    }
}

/// The program's real path, if it lies inside the connector directory and can be run.
fn allowed_program(program: &str) -> PathBuf {
    let dir = guc::CONNECTOR_DIRECTORY
        .get()
        .and_then(|d| d.into_string().ok())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| {
            raise(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "idmesh.connector_directory is not set: no connector program may be started",
                "A superuser sets it (ALTER SYSTEM SET idmesh.connector_directory = '/path'; SELECT pg_reload_conf()) \
                 to the directory that holds the connector programs.",
            )
        });
    let dir = Path::new(&dir).canonicalize().unwrap_or_else(|_| {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_FILE,
            "idmesh.connector_directory names a directory that does not exist",
            "",
        )
    });
    let path = dir.join(program).canonicalize().unwrap_or_else(|_| {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_FILE,
            format!("connector program \"{program}\" does not exist in idmesh.connector_directory"),
            "",
        )
    });
    if !path.starts_with(&dir) || path == dir {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("connector program \"{program}\" is outside idmesh.connector_directory"),
            "Only programs inside that directory may be started; copy the program there.",
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let executable =
        std::fs::metadata(&path).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if executable.ok() != Some(true) {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("connector program \"{program}\" is not an executable file"),
            "",
        );
    }
    path
}

/// A started program.
struct Running {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: Arc<Mutex<String>>,
}

pub struct ProcessConnector {
    name: String,
    config: ProcessConfig,
    running: Option<Running>,
}

impl ProcessConnector {
    pub fn new(name: &str, config: ProcessConfig) -> Self {
        ProcessConnector {
            name: name.to_string(),
            config,
            running: None,
        }
    }

    fn program_name(&self) -> String {
        self.config
            .program
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// A failure of the program, with its exit status and the tail of its stderr.
    async fn failure(&mut self, what: String) -> ConnectorError {
        let mut detail = String::new();
        if let Some(mut r) = self.running.take() {
            let _ = r.child.start_kill();
            if let Ok(Ok(status)) =
                tokio::time::timeout(Duration::from_secs(2), r.child.wait()).await
            {
                detail.push_str(&format!(" ({status})"));
            }
            // Let the stderr reader catch up with what the program wrote last.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let err = r
                .stderr
                .lock()
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            if !err.is_empty() {
                let tail: String = err
                    .chars()
                    .rev()
                    .take(STDERR_TAIL)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                detail.push_str(&format!("; its stderr ends: {tail}"));
            }
        }
        ConnectorError::connection(format!(
            "connector program \"{}\" {what}{detail}",
            self.program_name()
        ))
    }

    async fn start(&mut self) -> Result<(), ConnectorError> {
        if self.running.is_some() {
            return Ok(());
        }
        let mut child = tokio::process::Command::new(&self.config.program)
            .args(&self.config.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("IDMESH_CONNECTOR", &self.name)
            .kill_on_drop(true)
            // Its own process group: signals for the backend (pg_terminate_backend signals
            // the backend's group) reach the engine, which stops the program itself.
            .process_group(0)
            .spawn()
            .map_err(|e| {
                ConnectorError::connection(format!(
                    "connector program \"{}\" cannot start: {e}",
                    self.program_name()
                ))
            })?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let stderr_pipe = child.stderr.take().expect("piped stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr_pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                    if s.len() > 4 * STDERR_TAIL {
                        let cut = s.len() - 2 * STDERR_TAIL;
                        let cut = (cut..s.len())
                            .find(|i| s.is_char_boundary(*i))
                            .unwrap_or(s.len());
                        s.drain(..cut);
                    }
                }
            }
        });
        self.running = Some(Running {
            child,
            stdin,
            stdout,
            stderr,
        });
        let hello = Request::Hello {
            protocol: PROTOCOL_VERSION,
            settings: self.config.settings.clone(),
        };
        match self.call(&hello).await? {
            Reply::Hello { protocol, .. } if protocol == PROTOCOL_VERSION => Ok(()),
            Reply::Hello { protocol, .. } => Err(self
                .failure(format!(
                    "speaks protocol {protocol}; this engine speaks {PROTOCOL_VERSION}"
                ))
                .await),
            Reply::Error { message } => {
                Err(self.failure(format!("refused to start: {message}")).await)
            }
            other => Err(self
                .failure(format!("answered hello with {}", kind_of(&other)))
                .await),
        }
    }

    async fn send(&mut self, request: &Request) -> Result<(), ConnectorError> {
        let mut line =
            serde_json::to_vec(request).map_err(|e| ConnectorError::data(e.to_string()))?;
        line.push(b'\n');
        let r = self.running.as_mut().expect("started");
        let written = async {
            r.stdin.write_all(&line).await?;
            r.stdin.flush().await
        };
        match tokio::time::timeout(self.config.timeout, written).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self
                .failure(format!("stopped reading its input ({e})"))
                .await),
            Err(_) => Err(self
                .failure(format!(
                    "did not read its input within {} s",
                    self.config.timeout.as_secs()
                ))
                .await),
        }
    }

    /// The next message, within the timeout.
    async fn next(&mut self) -> Result<Reply, ConnectorError> {
        let timeout = self.config.timeout;
        let r = self.running.as_mut().expect("started");
        let mut buf = Vec::new();
        let read = tokio::time::timeout(timeout, async {
            loop {
                buf.clear();
                let n = (&mut r.stdout)
                    .take(MAX_LINE)
                    .read_until(b'\n', &mut buf)
                    .await?;
                if n == 0 || buf.iter().any(|b| !b.is_ascii_whitespace()) {
                    return Ok::<usize, std::io::Error>(n);
                }
            }
        })
        .await;
        match read {
            Err(_) => Err(self
                .failure(format!(
                    "wrote nothing for {} s (timeout)",
                    timeout.as_secs()
                ))
                .await),
            Ok(Err(e)) => Err(self.failure(format!("could not be read ({e})")).await),
            Ok(Ok(0)) => Err(self
                .failure("exited before finishing its answer".to_string())
                .await),
            Ok(Ok(_)) if buf.len() as u64 >= MAX_LINE && buf.last() != Some(&b'\n') => Err(self
                .failure("wrote a line longer than 64 MiB".to_string())
                .await),
            Ok(Ok(_)) => match serde_json::from_slice::<Reply>(&buf) {
                Ok(reply) => Ok(reply),
                Err(e) => {
                    let shown: String = String::from_utf8_lossy(&buf).chars().take(120).collect();
                    Err(self
                        .failure(format!(
                            "wrote something that is not the protocol ({e}): {}",
                            shown.trim()
                        ))
                        .await)
                }
            },
        }
    }

    async fn call(&mut self, request: &Request) -> Result<Reply, ConnectorError> {
        self.send(request).await?;
        self.next().await
    }

    async fn import(
        &mut self,
        request: Request,
        sink: &mut dyn ImportSink,
    ) -> Result<ImportEnd, ConnectorError> {
        self.start().await?;
        self.send(&request).await?;
        loop {
            match self.next().await? {
                Reply::Objects { objects } => sink.accept(objects)?,
                Reply::Total { count } => sink.expect_total(count),
                Reply::End {
                    watermark,
                    forced_full,
                    note,
                } => {
                    let watermark = if watermark.is_null() {
                        None
                    } else {
                        Some(Watermark(watermark))
                    };
                    return Ok(ImportEnd {
                        watermark,
                        forced_full,
                        note,
                    });
                }
                Reply::Error { message } => {
                    return Err(self.failure(format!("reported an error: {message}")).await)
                }
                other => {
                    return Err(self
                        .failure(format!("sent {} during an import", kind_of(&other)))
                        .await)
                }
            }
        }
    }
}

fn kind_of(reply: &Reply) -> &'static str {
    match reply {
        Reply::Hello { .. } => "hello",
        Reply::Objects { .. } => "objects",
        Reply::Total { .. } => "total",
        Reply::End { .. } => "end",
        Reply::Results { .. } => "results",
        Reply::Schema { .. } => "schema",
        Reply::Error { .. } => "error",
    }
}

impl Drop for ProcessConnector {
    fn drop(&mut self) {
        // Ask it to leave; kill_on_drop ends it if it does not.
        if let Some(r) = self.running.as_mut() {
            let _ = r.child.start_kill();
        }
    }
}

impl IdentityConnector for ProcessConnector {
    fn kind(&self) -> &str {
        "process"
    }

    fn full_import<'a>(
        &'a mut self,
        sink: &'a mut dyn ImportSink,
    ) -> BoxFuture<'a, Result<ImportEnd, ConnectorError>> {
        Box::pin(self.import(Request::FullImport, sink))
    }

    fn delta_import<'a>(
        &'a mut self,
        from: &'a Watermark,
        sink: &'a mut dyn ImportSink,
    ) -> BoxFuture<'a, Result<ImportEnd, ConnectorError>> {
        Box::pin(self.import(
            Request::DeltaImport {
                watermark: from.0.clone(),
            },
            sink,
        ))
    }

    fn export<'a>(
        &'a mut self,
        changes: &'a [ExportChange],
    ) -> BoxFuture<'a, Result<Vec<ExportResult>, ConnectorError>> {
        Box::pin(async move {
            self.start().await?;
            match self
                .call(&Request::Export {
                    changes: changes.to_vec(),
                })
                .await?
            {
                Reply::Results { results } => Ok(results),
                Reply::Error { message } => {
                    Err(self.failure(format!("reported an error: {message}")).await)
                }
                other => Err(self
                    .failure(format!("answered an export with {}", kind_of(&other)))
                    .await),
            }
        })
    }
}
