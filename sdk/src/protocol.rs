//! The process-connector protocol, version 1: JSON lines over a connector program's stdin
//! and stdout. The full specification is `docs/connector-protocol.md`; these are its
//! messages, and [`serve`] runs any [`IdentityConnector`] as such a program.

use crate::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::{BufRead, Write};

pub const PROTOCOL_VERSION: u32 = 1;

/// What the engine sends, one per line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// First message: the protocol version and the connector's `settings` from its config.
    Hello {
        protocol: u32,
        settings: Value,
    },
    FullImport,
    DeltaImport {
        watermark: Value,
    },
    Export {
        changes: Vec<ExportChange>,
    },
    /// Last message: the program should exit.
    Bye,
}

/// What the program answers, one per line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Hello {
        protocol: u32,
        name: String,
        capabilities: Vec<String>,
    },
    /// A batch of an import; any number of these, then `End`.
    Objects { objects: Vec<SourceObject> },
    /// How many objects the import will send, where the source knows (for progress).
    Total { count: u64 },
    /// The import is complete; `watermark` is the new delta position (null: none).
    End {
        watermark: Value,
        #[serde(default)]
        forced_full: bool,
        #[serde(default)]
        note: Option<String>,
    },
    /// The answer to `Export`: one result per change.
    Results { results: Vec<ExportResult> },
    /// The answer to `DiscoverSchema`.
    Schema { schema: Schema },
    /// The request failed as a whole.
    Error { message: String },
}

struct LineSink<'w, W: Write> {
    out: &'w mut W,
}

impl<W: Write> ImportSink for LineSink<'_, W> {
    fn accept(&mut self, batch: Vec<SourceObject>) -> Result<(), ConnectorError> {
        write_reply(self.out, &Reply::Objects { objects: batch })
            .map_err(|e| ConnectorError::connection(e.to_string()))
    }
    fn expect_total(&mut self, total: u64) {
        let _ = write_reply(self.out, &Reply::Total { count: total });
    }
}

fn write_reply<W: Write>(out: &mut W, reply: &Reply) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, reply)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Runs a connector program: reads requests from stdin and answers on stdout until `Bye`
/// or end of input. `make` builds the connector from the `settings` of the hello message.
/// A Rust connector's `main` is one call:
///
/// ```no_run
/// # use idmesh_sdk::*;
/// # struct MyConnector;
/// # impl IdentityConnector for MyConnector {
/// #   fn kind(&self) -> &str { "mine" }
/// #   fn full_import<'a>(&'a mut self, _: &'a mut dyn ImportSink) -> BoxFuture<'a, Result<ImportEnd, ConnectorError>> { unimplemented!() }
/// #   fn delta_import<'a>(&'a mut self, _: &'a Watermark, _: &'a mut dyn ImportSink) -> BoxFuture<'a, Result<ImportEnd, ConnectorError>> { unimplemented!() }
/// #   fn export<'a>(&'a mut self, _: &'a [ExportChange]) -> BoxFuture<'a, Result<Vec<ExportResult>, ConnectorError>> { unimplemented!() }
/// # }
/// fn main() -> std::io::Result<()> {
///     idmesh_sdk::serve(|_settings| Ok(MyConnector))
/// }
/// ```
pub fn serve<C, F>(make: F) -> std::io::Result<()>
where
    C: IdentityConnector,
    F: FnOnce(&Value) -> Result<C, ConnectorError>,
{
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut make = Some(make);
    let mut connector: Option<C> = None;
    for line in stdin.lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let request: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                write_reply(
                    &mut out,
                    &Reply::Error {
                        message: format!("invalid request: {e}"),
                    },
                )?;
                continue;
            }
        };
        if let Request::Hello { settings, .. } = &request {
            match make.take().map(|m| m(settings)) {
                Some(Ok(c)) => {
                    let name = c.kind().to_string();
                    connector = Some(c);
                    write_reply(
                        &mut out,
                        &Reply::Hello {
                            protocol: PROTOCOL_VERSION,
                            name,
                            capabilities: vec![
                                "full_import".into(),
                                "delta_import".into(),
                                "export".into(),
                            ],
                        },
                    )?;
                }
                Some(Err(e)) => write_reply(&mut out, &Reply::Error { message: e.message })?,
                None => write_reply(
                    &mut out,
                    &Reply::Error {
                        message: "hello was already received".into(),
                    },
                )?,
            }
            continue;
        }
        if request == Request::Bye {
            break;
        }
        let Some(c) = connector.as_mut() else {
            write_reply(
                &mut out,
                &Reply::Error {
                    message: "hello first".into(),
                },
            )?;
            continue;
        };
        let reply = match request {
            Request::FullImport => rt
                .block_on(c.full_import(&mut LineSink { out: &mut out }))
                .map(end_reply),
            Request::DeltaImport { watermark } => {
                let w = Watermark(watermark);
                rt.block_on(c.delta_import(&w, &mut LineSink { out: &mut out }))
                    .map(end_reply)
            }
            Request::Export { changes } => rt
                .block_on(c.export(&changes))
                .map(|results| Reply::Results { results }),
            Request::Hello { .. } | Request::Bye => unreachable!("handled above"),
        };
        let reply = reply.unwrap_or_else(|e| Reply::Error { message: e.message });
        write_reply(&mut out, &reply)?;
    }
    Ok(())
}

fn end_reply(end: ImportEnd) -> Reply {
    Reply::End {
        watermark: end.watermark.map(|w| w.0).unwrap_or(Value::Null),
        forced_full: end.forced_full,
        note: end.note,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn messages_have_the_documented_shape() {
        let r: Request =
            serde_json::from_value(json!({"type": "delta_import", "watermark": {"usn": 5}}))
                .unwrap();
        assert_eq!(
            r,
            Request::DeltaImport {
                watermark: json!({"usn": 5})
            }
        );
        let r: Request =
            serde_json::from_value(json!({"type": "hello", "protocol": 1, "settings": {}}))
                .unwrap();
        assert!(matches!(r, Request::Hello { protocol: 1, .. }));
        let end = serde_json::to_value(Reply::End {
            watermark: json!(null),
            forced_full: false,
            note: None,
        })
        .unwrap();
        assert_eq!(
            end,
            json!({"type": "end", "watermark": null, "forced_full": false, "note": null})
        );
        let o: Reply = serde_json::from_value(json!({"type": "objects", "objects": [
            {"anchor": "1", "name": null, "object_type": "person", "attributes": {"title": "x"}}]}))
        .unwrap();
        match o {
            Reply::Objects { objects } => assert!(!objects[0].deleted, "deleted defaults to false"),
            _ => panic!(),
        }
        let e: Reply = serde_json::from_value(json!({"type": "end", "watermark": 7})).unwrap();
        assert_eq!(
            e,
            Reply::End {
                watermark: json!(7),
                forced_full: false,
                note: None
            }
        );
    }
}
