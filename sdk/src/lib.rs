//! # idmesh-sdk: the connector SDK
//!
//! An idmesh connector moves identities between one connected system and the engine. It
//! implements [`IdentityConnector`]: `full_import` reads every object, `delta_import` reads
//! what changed since a [`Watermark`], and `export` applies changes the engine computed.
//! Imports stream: the connector hands objects to an [`ImportSink`] in batches, so memory
//! stays flat however large the directory is.
//!
//! The engine drives a connector from the PostgreSQL backend thread with a tokio
//! current-thread runtime (`block_on`), so the futures need not be `Send`. A connector
//! never sees the mesh: it only reads and writes its own system.
//!
//! ```
//! use idmesh_sdk::*;
//!
//! /// A connector over a fixed list of people (a stand-in for a CSV drop or an API).
//! struct StaticPeople(Vec<(String, String)>);
//!
//! impl IdentityConnector for StaticPeople {
//!     fn kind(&self) -> &str { "static" }
//!     fn full_import<'a>(&'a mut self, sink: &'a mut dyn ImportSink) -> BoxFuture<'a, Result<ImportEnd, ConnectorError>> {
//!         Box::pin(async move {
//!             let batch: Vec<SourceObject> = self.0.iter().map(|(id, title)| {
//!                 let mut attrs = Attributes::new();
//!                 attrs.insert("title".into(), title.clone().into());
//!                 SourceObject::new(id.clone(), "person", attrs)
//!             }).collect();
//!             sink.accept(batch)?;
//!             Ok(ImportEnd { watermark: None, forced_full: false, note: None })
//!         })
//!     }
//!     fn delta_import<'a>(&'a mut self, _from: &'a Watermark, sink: &'a mut dyn ImportSink) -> BoxFuture<'a, Result<ImportEnd, ConnectorError>> {
//!         // No change tracking in this source: a delta is a full read.
//!         self.full_import(sink)
//!     }
//!     fn export<'a>(&'a mut self, changes: &'a [ExportChange]) -> BoxFuture<'a, Result<Vec<ExportResult>, ConnectorError>> {
//!         Box::pin(async move {
//!             Ok(changes.iter().map(|c| ExportResult::failed(c.mesh_id, "read-only source")).collect())
//!         })
//!     }
//! }
//! ```

pub mod protocol;
pub use protocol::serve;

use serde::{Deserialize, Serialize};
use std::fmt;
use std::future::Future;
use std::pin::Pin;

/// Attribute name to JSON value. Multi-valued attributes are JSON arrays.
pub type Attributes = serde_json::Map<String, serde_json::Value>;

/// A boxed future that may borrow the connector; not `Send` (current-thread runtime).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// A connector's delta position, opaque to the engine: AD keeps DC host, invocationId and
/// highestCommittedUSN; a SQL source keeps the delta column's high value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Watermark(pub serde_json::Value);

impl Watermark {
    pub fn is_empty(&self) -> bool {
        self.0.is_null()
    }
}

/// One object as the connected system holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceObject {
    /// Immutable identity in the connected system (objectGUID, key columns).
    pub anchor: String,
    /// DN or external name; may change (rename) while the anchor stays.
    pub name: Option<String>,
    /// Object type in the mesh's terms (person, group, ...).
    pub object_type: String,
    pub attributes: Attributes,
    /// The source reports this object as deleted (tombstone, soft-delete column).
    #[serde(default)]
    pub deleted: bool,
}

impl SourceObject {
    pub fn new(
        anchor: impl Into<String>,
        object_type: impl Into<String>,
        attributes: Attributes,
    ) -> Self {
        SourceObject {
            anchor: anchor.into(),
            name: None,
            object_type: object_type.into(),
            attributes,
            deleted: false,
        }
    }
}

/// Where an import puts its batches. The engine stages each batch with one statement.
pub trait ImportSink {
    fn accept(&mut self, batch: Vec<SourceObject>) -> Result<(), ConnectorError>;
    /// Total number of objects expected, where the source knows it (for progress).
    fn expect_total(&mut self, _total: u64) {}
    /// For connectors that live in the engine's own database only: stage the rows of an
    /// SQL query (columns `anchor, name, deleted, attrs`; `$1..` bound to `params`) in one
    /// set-based statement instead of moving them through batches. Returns the number of
    /// rows staged, or None when this sink cannot (then send batches).
    fn stage_query(
        &mut self,
        _sql: &str,
        _params: &[Option<String>],
        _object_type: &str,
    ) -> Option<Result<u64, ConnectorError>> {
        None
    }
    /// For SQL sources whose rows arrive as JSON object texts: stage one batch of them with
    /// `select` (`idmesh_core::sql::json_rows_select`, which gives `anchor, name, deleted,
    /// attrs, hash`), without parsing them on the way. Takes the rows and returns the
    /// number staged, or None (rows left in place) when this sink cannot: then parse them
    /// and send batches.
    fn stage_json_rows(
        &mut self,
        _rows: &mut Vec<String>,
        _select: &str,
        _object_type: &str,
    ) -> Option<Result<u64, ConnectorError>> {
        None
    }
}

/// How an import ended.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImportEnd {
    /// The new delta position; `None` keeps the connector without one (no delta support).
    pub watermark: Option<Watermark>,
    /// A delta was asked for but the connector had to read everything (AD invocationId change).
    pub forced_full: bool,
    /// A line for the run's message.
    pub note: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportOperation {
    Add,
    Update,
    /// Deprovision by writing the policy's attribute values (a SQL `active = false`, AD's
    /// ACCOUNTDISABLE bit); `attributes` holds them.
    Disable,
    Delete,
}

impl ExportOperation {
    pub fn as_str(&self) -> &'static str {
        match self {
            ExportOperation::Add => "add",
            ExportOperation::Update => "update",
            ExportOperation::Disable => "disable",
            ExportOperation::Delete => "delete",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "add" => Some(ExportOperation::Add),
            "update" => Some(ExportOperation::Update),
            "disable" => Some(ExportOperation::Disable),
            "delete" => Some(ExportOperation::Delete),
            _ => None,
        }
    }
}

/// One change the engine wants applied to one object of the connected system.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExportChange {
    /// The mesh object this change is for; results refer back to it.
    pub mesh_id: i64,
    pub operation: ExportOperation,
    pub object_type: String,
    /// The object's anchor in the target (None for an add).
    pub anchor: Option<String>,
    /// The object's current DN / external name, or the one to create it under.
    pub name: Option<String>,
    /// Attribute values to write: all of them for an add, only the changed ones for an update.
    pub attributes: Attributes,
    /// The object's attributes as last imported (empty for an add).
    pub current: Attributes,
}

/// The outcome of one change. `object` is the object as now stored in the target, when the
/// connector can read it back cheaply; the engine then confirms the export at once instead
/// of waiting for the next import.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExportResult {
    pub mesh_id: i64,
    pub error: Option<String>,
    /// The system's own code for the error (SQLSTATE, LDAP result code), when it has one.
    #[serde(default)]
    pub code: Option<String>,
    pub object: Option<SourceObject>,
    /// The connector staged the object as it is now stored for the run itself (an
    /// in-database kind, see `IdentityConnector::stage_read_back`): the change is
    /// confirmed like one whose `object` came back, without the object travelling. Never
    /// part of the protocol: a connector program cannot stage anything.
    #[serde(skip)]
    pub staged: bool,
    /// The anchor the target now holds the object under, where the connector knows it
    /// without reading the object back (an add that wrote its anchor columns): the next
    /// import joins the row with that anchor to the object it was written for.
    #[serde(default)]
    pub anchor: Option<String>,
}

impl ExportResult {
    pub fn ok(mesh_id: i64, object: Option<SourceObject>) -> Self {
        ExportResult {
            mesh_id,
            error: None,
            code: None,
            object,
            staged: false,
            anchor: None,
        }
    }
    /// Written, and staged as read back by the connector itself.
    pub fn staged(mesh_id: i64) -> Self {
        ExportResult {
            staged: true,
            ..ExportResult::ok(mesh_id, None)
        }
    }
    pub fn failed(mesh_id: i64, message: impl Into<String>) -> Self {
        ExportResult {
            error: Some(message.into()),
            ..ExportResult::ok(mesh_id, None)
        }
    }
    /// A failure with the target's SQLSTATE where it gave one.
    pub fn refused(mesh_id: i64, code: Option<String>, message: impl Into<String>) -> Self {
        ExportResult {
            code,
            ..ExportResult::failed(mesh_id, message)
        }
    }

    pub fn failed_with_code(
        mesh_id: i64,
        code: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ExportResult {
            code: Some(code.into()),
            ..ExportResult::failed(mesh_id, message)
        }
    }
}

/// Why a connector call failed as a whole (per-object problems are `ExportResult`s).
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectorError {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The connector's configuration is wrong (fix it, then run again).
    Config,
    /// The connected system could not be reached or refused the login.
    Connection,
    /// The system answered with something the connector cannot take (missing anchor, duplicates).
    Data,
    /// The run was cancelled.
    Cancelled,
}

impl ConnectorError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ConnectorError {
            kind,
            message: message.into(),
        }
    }
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }
    pub fn data(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Data, message)
    }
    pub fn connection(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Connection, message)
    }
}

impl fmt::Display for ConnectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConnectorError {}

/// One attribute a connected system has, as schema discovery reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SchemaAttribute {
    pub name: String,
    /// The system's own type or syntax name (`text`, `integer`, `DN`, `Unicode String`).
    pub syntax: String,
    #[serde(default)]
    pub multi_valued: bool,
    /// The value names another object (a DN, a foreign key).
    #[serde(default)]
    pub reference: bool,
}

/// One object class or table of a connected system and its attributes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SchemaClass {
    /// The mesh object type its objects import as (person, group, ...).
    pub object_type: String,
    /// The system's own name for it (`user`, `hr.employees`).
    pub source_class: String,
    pub attributes: Vec<SchemaAttribute>,
}

/// What a connected system holds, so flow rules can be checked against it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Schema {
    pub classes: Vec<SchemaClass>,
}

/// A connected system. Implementations stream imports through the sink in batches
/// and answer every export change with one result.
pub trait IdentityConnector {
    /// The connector kind, as in `mesh.create_connector(name, kind, ...)`.
    fn kind(&self) -> &str;

    /// Read every object in scope.
    fn full_import<'a>(
        &'a mut self,
        sink: &'a mut dyn ImportSink,
    ) -> BoxFuture<'a, Result<ImportEnd, ConnectorError>>;

    /// Read what changed since `from` (re-reading some unchanged objects is allowed: the
    /// engine recognizes them by content and counts them unchanged).
    fn delta_import<'a>(
        &'a mut self,
        from: &'a Watermark,
        sink: &'a mut dyn ImportSink,
    ) -> BoxFuture<'a, Result<ImportEnd, ConnectorError>>;

    /// Apply changes; one result per change, in any order.
    fn export<'a>(
        &'a mut self,
        changes: &'a [ExportChange],
    ) -> BoxFuture<'a, Result<Vec<ExportResult>, ConnectorError>>;

    /// Called before an export by the engine in whose database the connector lives: an
    /// in-database kind whose target is also its import source may stage the rows it
    /// writes as run `run_id`'s read-back (`mesh.staging`, batch 0) in the statement that
    /// writes them, and answer `ExportResult::staged`; the rows then never leave the
    /// server. The default does nothing: written objects come back in `object`, or not.
    fn stage_read_back(&mut self, _run_id: i64) {}

    /// What the connected system holds: its object classes and their attributes, so flow
    /// rules can be checked against it. Optional: the default says the kind cannot tell.
    fn discover_schema<'a>(&'a mut self) -> BoxFuture<'a, Result<Schema, ConnectorError>> {
        let kind = self.kind().to_string();
        Box::pin(async move {
            Err(ConnectorError::config(format!(
                "connector kind \"{kind}\" cannot describe its schema"
            )))
        })
    }
}

/// Encodes multi-column anchors: values joined by the ASCII unit separator, so the same
/// row always gives the same anchor text. Each value of several has its `\` doubled and a
/// separator of its own written `\_`, so two rows never share an anchor (`a␟b`,`c` and
/// `a`,`b␟c` stay apart); a single value is the anchor as it is. The SQL side writes the
/// same (`idmesh_core::sql::anchor_concat`).
pub fn encode_anchor(parts: &[String]) -> String {
    if parts.len() == 1 {
        return parts[0].clone();
    }
    parts
        .iter()
        .map(|p| p.replace('\\', "\\\\").replace('\u{1f}', "\\_"))
        .collect::<Vec<_>>()
        .join("\u{1f}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchor_encoding_is_stable_and_unambiguous_for_single_values() {
        assert_eq!(encode_anchor(&["42".to_string()]), "42");
        assert_eq!(encode_anchor(&["a".into(), "b".into()]), "a\u{1f}b");
        assert_ne!(
            encode_anchor(&["a b".into()]),
            encode_anchor(&["a".into(), "b".into()])
        );
        // A separator or backslash inside a value of several cannot make two rows one.
        let one = encode_anchor(&["a\u{1f}b".into(), "c".into()]);
        let other = encode_anchor(&["a".into(), "b\u{1f}c".into()]);
        assert_ne!(one, other);
        assert_eq!(one, "a\\_b\u{1f}c");
        assert_ne!(encode_anchor(&["a\\".into(), "_b".into()]), encode_anchor(&["a".into(), "\\_b".into()]));
        assert_eq!(encode_anchor(&["x\u{1f}y".into()]), "x\u{1f}y", "one value stays as it is");
    }

    #[test]
    fn export_operation_round_trips() {
        for op in [
            ExportOperation::Add,
            ExportOperation::Update,
            ExportOperation::Disable,
            ExportOperation::Delete,
        ] {
            assert_eq!(ExportOperation::parse(op.as_str()), Some(op));
        }
        assert_eq!(ExportOperation::parse("rename"), None);
    }

    #[test]
    fn watermark_json_round_trip() {
        let w = Watermark(serde_json::json!({"high": "2026-01-01T00:00:00Z"}));
        let s = serde_json::to_string(&w).unwrap();
        let back: Watermark = serde_json::from_str(&s).unwrap();
        assert_eq!(back, w);
        assert!(Watermark::default().is_empty());
    }
}
