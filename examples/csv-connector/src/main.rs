//! An idmesh connector for the CSV file an HR system drops in a directory every night: the
//! worked example of the SDK. It imports the rows (the header names the attributes),
//! notices when the file changed, and writes exports back into the file.
//!
//! Settings: `file` (path of the CSV file), `anchor` (the column that identifies a row),
//! `object_type` (default `person`).
//!
//! A CSV file has no change tracking, so the watermark is a fingerprint of the file: a delta
//! import of an unchanged file returns nothing; of a changed file, every row (the engine
//! compares them with what it has, and sees deleted rows as deletes).

use idmesh_sdk::*;
use serde_json::{json, Value};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;

struct CsvConnector {
    file: PathBuf,
    anchor: String,
    object_type: String,
}

/// The file's header and rows.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl CsvConnector {
    fn from_settings(settings: &Value) -> Result<Self, ConnectorError> {
        let file = settings
            .get("file")
            .and_then(Value::as_str)
            .ok_or_else(|| ConnectorError::config("settings.file is required"))?;
        let anchor = settings
            .get("anchor")
            .and_then(Value::as_str)
            .ok_or_else(|| ConnectorError::config("settings.anchor is required"))?;
        Ok(CsvConnector {
            file: PathBuf::from(file),
            anchor: anchor.to_string(),
            object_type: settings
                .get("object_type")
                .and_then(Value::as_str)
                .unwrap_or("person")
                .to_string(),
        })
    }

    fn read(&self) -> Result<(Table, u64), ConnectorError> {
        let bytes = std::fs::read(&self.file).map_err(|e| {
            ConnectorError::connection(format!("cannot read {}: {e}", self.file.display()))
        })?;
        let mut hasher = DefaultHasher::new();
        bytes.hash(&mut hasher);
        let mut reader = csv::Reader::from_reader(bytes.as_slice());
        let header: Vec<String> = reader
            .headers()
            .map_err(|e| ConnectorError::data(format!("{}: {e}", self.file.display())))?
            .iter()
            .map(str::to_string)
            .collect();
        if !header.contains(&self.anchor) {
            return Err(ConnectorError::config(format!(
                "{} has no column {}",
                self.file.display(),
                self.anchor
            )));
        }
        let mut rows = Vec::new();
        for record in reader.records() {
            let record = record
                .map_err(|e| ConnectorError::data(format!("{}: {e}", self.file.display())))?;
            rows.push(record.iter().map(str::to_string).collect());
        }
        Ok((Table { header, rows }, hasher.finish()))
    }

    /// Writes the table next to the file and renames it over, so a reader never sees half a file.
    fn write(&self, table: &Table) -> Result<(), ConnectorError> {
        let tmp = self.file.with_extension("csv.idmesh-tmp");
        let io = |e: std::io::Error| {
            ConnectorError::connection(format!("cannot write {}: {e}", self.file.display()))
        };
        {
            let mut w = csv::Writer::from_path(&tmp)
                .map_err(|e| ConnectorError::connection(e.to_string()))?;
            w.write_record(&table.header)
                .map_err(|e| ConnectorError::connection(e.to_string()))?;
            for row in &table.rows {
                w.write_record(row)
                    .map_err(|e| ConnectorError::connection(e.to_string()))?;
            }
            w.flush().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.file).map_err(io)
    }

    fn object(&self, table: &Table, row: &[String]) -> SourceObject {
        let attributes: Attributes = table
            .header
            .iter()
            .zip(row)
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let anchor = attributes
            .get(&self.anchor)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        SourceObject::new(anchor, self.object_type.clone(), attributes)
    }

    fn send_all(&self, table: &Table, sink: &mut dyn ImportSink) -> Result<(), ConnectorError> {
        sink.expect_total(table.rows.len() as u64);
        for chunk in table.rows.chunks(1000) {
            sink.accept(chunk.iter().map(|r| self.object(table, r)).collect())?;
        }
        Ok(())
    }

    fn apply(
        &self,
        table: &mut Table,
        change: &ExportChange,
    ) -> Result<Option<SourceObject>, String> {
        let col = |name: &str| table.header.iter().position(|h| h == name);
        for k in change.attributes.keys() {
            if col(k).is_none() {
                return Err(format!("the file has no column {k}"));
            }
        }
        let text = |v: &Value| match v {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let anchor_col = col(&self.anchor).expect("checked on read");
        let anchor = match change.operation {
            ExportOperation::Add => change.attributes.get(&self.anchor).map(text),
            _ => change.anchor.clone(),
        }
        .ok_or_else(|| format!("the change has no {}", self.anchor))?;
        let at = table.rows.iter().position(|r| r[anchor_col] == anchor);
        match (change.operation, at) {
            (ExportOperation::Add, Some(_)) => Err(format!(
                "a row with {} {anchor} exists already",
                self.anchor
            )),
            (ExportOperation::Add, None) => {
                let mut row = vec![String::new(); table.header.len()];
                for (k, v) in &change.attributes {
                    row[col(k).unwrap()] = text(v);
                }
                table.rows.push(row);
                Ok(Some(self.object(table, table.rows.last().unwrap())))
            }
            (ExportOperation::Delete, Some(i)) => {
                let row = table.rows.remove(i);
                let mut gone = self.object(table, &row);
                gone.deleted = true;
                Ok(Some(gone))
            }
            (ExportOperation::Delete, None) => Ok(None),
            (_, Some(i)) => {
                for (k, v) in &change.attributes {
                    table.rows[i][col(k).unwrap()] = text(v);
                }
                Ok(Some(self.object(table, &table.rows[i])))
            }
            (_, None) => Err(format!("no row with {} {anchor}", self.anchor)),
        }
    }
}

impl IdentityConnector for CsvConnector {
    fn kind(&self) -> &str {
        "csv"
    }

    fn full_import<'a>(
        &'a mut self,
        sink: &'a mut dyn ImportSink,
    ) -> BoxFuture<'a, Result<ImportEnd, ConnectorError>> {
        Box::pin(async move {
            let (table, fingerprint) = self.read()?;
            self.send_all(&table, sink)?;
            Ok(ImportEnd {
                watermark: Some(Watermark(json!({ "fingerprint": fingerprint.to_string() }))),
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
            let (table, fingerprint) = self.read()?;
            let watermark = Some(Watermark(json!({ "fingerprint": fingerprint.to_string() })));
            if from.0.get("fingerprint").and_then(Value::as_str)
                == Some(fingerprint.to_string().as_str())
            {
                return Ok(ImportEnd {
                    watermark,
                    forced_full: false,
                    note: Some("file unchanged".into()),
                });
            }
            self.send_all(&table, sink)?;
            Ok(ImportEnd {
                watermark,
                forced_full: true,
                note: Some("file changed: read in full".into()),
            })
        })
    }

    fn export<'a>(
        &'a mut self,
        changes: &'a [ExportChange],
    ) -> BoxFuture<'a, Result<Vec<ExportResult>, ConnectorError>> {
        Box::pin(async move {
            let (mut table, _) = self.read()?;
            let results = changes
                .iter()
                .map(|c| match self.apply(&mut table, c) {
                    Ok(object) => ExportResult::ok(c.mesh_id, object),
                    Err(message) => ExportResult::failed(c.mesh_id, message),
                })
                .collect();
            self.write(&table)?;
            Ok(results)
        })
    }
}

fn main() -> std::io::Result<()> {
    idmesh_sdk::serve(CsvConnector::from_settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connector(name: &str, content: &str) -> CsvConnector {
        let file =
            std::env::temp_dir().join(format!("idmesh-csv-test-{name}-{}.csv", std::process::id()));
        std::fs::write(&file, content).unwrap();
        CsvConnector {
            file,
            anchor: "id".into(),
            object_type: "person".into(),
        }
    }

    fn change(op: ExportOperation, anchor: Option<&str>, attrs: Value) -> ExportChange {
        ExportChange {
            mesh_id: 1,
            operation: op,
            object_type: "person".into(),
            anchor: anchor.map(str::to_string),
            name: None,
            attributes: attrs.as_object().unwrap().clone(),
            current: Attributes::new(),
        }
    }

    #[test]
    fn export_adds_updates_and_deletes_rows_with_quoting() {
        let c = connector(
            "export",
            "id,name,title\n1,Ada,Engineer\n2,\"Hopper, Grace\",Admiral\n",
        );
        let (mut t, _) = c.read().unwrap();
        assert_eq!(t.rows[1][1], "Hopper, Grace");
        let up = c
            .apply(
                &mut t,
                &change(
                    ExportOperation::Update,
                    Some("1"),
                    json!({"title": "Countess"}),
                ),
            )
            .unwrap()
            .unwrap();
        assert_eq!(up.attributes["title"], json!("Countess"));
        let add = c
            .apply(
                &mut t,
                &change(ExportOperation::Add, None, json!({"id": 3, "name": "Alan"})),
            )
            .unwrap()
            .unwrap();
        assert_eq!(add.anchor, "3");
        let del = c
            .apply(
                &mut t,
                &change(ExportOperation::Delete, Some("2"), json!({})),
            )
            .unwrap()
            .unwrap();
        assert!(del.deleted);
        assert!(c
            .apply(
                &mut t,
                &change(ExportOperation::Update, Some("9"), json!({"title": "x"}))
            )
            .is_err());
        assert!(c
            .apply(
                &mut t,
                &change(ExportOperation::Update, Some("1"), json!({"nope": "x"}))
            )
            .unwrap_err()
            .contains("nope"));
        c.write(&t).unwrap();
        let written = std::fs::read_to_string(&c.file).unwrap();
        assert_eq!(written, "id,name,title\n1,Ada,Countess\n3,Alan,\n");
        std::fs::remove_file(&c.file).unwrap();
    }
}
