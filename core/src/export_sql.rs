//! SQL that applies a batch of export changes to a table, for PostgreSQL targets (the
//! in-database `table` kind through SPI, the `postgres` kind over the network) and the
//! MERGE for SQL Server targets. The batch travels as ONE bound JSON parameter (`$1`: an
//! array of `{"attributes": {...}, "key": {...}}`); the target server types every value
//! itself (`jsonb_populate_record`), so nothing is ever spliced into the text but quoted
//! identifiers. A PostgreSQL batch of adds may instead travel as one text array per column
//! (`postgres_text_add`), each value cast to its column's type.

use crate::sql::{ident, literal};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Upsert,
    Insert,
    Update,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Add,
    /// Update and disable: write some columns of existing rows.
    Update,
    Delete,
}

/// Why an add is refused in `update` mode, and what to do.
pub const UPDATE_MODE: &str = "this connector exports in update mode and does not add rows: set its export_mode to upsert \
                               or insert, or give it no provisioning (a join rule then finds the rows it updates)";

/// What a statement returns for each row it wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Returning<'a> {
    /// The row as stored: the engine reads it back as the object it now is.
    Rows,
    /// Its anchor columns only: enough to tell which changes were written, and a fraction
    /// of the work (the row's JSON costs more on the target than the write itself).
    Anchors,
    /// Its anchor columns, and the row as stored staged as the run's read-back in the same
    /// statement (a target in the engine's own database that is also the import source):
    /// the row never travels as JSON to the engine and back.
    Staged(&'a ReadBack),
}

/// How a written row is staged as read back, as the connector's import would stage it.
/// The SQL expressions read the row under the alias `w`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadBack {
    pub run_id: i64,
    pub object_type: String,
    /// The anchor text, the name, and whether the row reads as deleted.
    pub anchor_sql: String,
    /// The anchor text of a change's key (the same expression under the alias `p`), to
    /// find the change each written row belongs to.
    pub change_anchor_sql: String,
    pub name_sql: String,
    pub deleted_sql: String,
}

/// The data-modifying step that stages the rows of `done` as read back: each with its
/// change's mesh object, its attributes as `to_jsonb` gives them (as the import reads the
/// source), and their hash. A row belongs to the change whose key has its anchor, as the
/// engine matches results; a row whose anchor the change itself moved is not staged (the
/// next import reads it). Names are qualified
/// throughout: the table's columns are in scope next to them.
fn staged_read_back(table: &str, read_back: &ReadBack) -> String {
    format!(
        "INSERT INTO mesh.staging (run_id, batch, anchor, name, object_type, attrs, deleted, mesh_id, hash, name_key) \
         SELECT {run}, 0, a.anchor, a.name, {object_type}, a.attrs, a.deleted, k.mesh_id, md5(a.attrs::text), mesh.name_key(a.name) \
           FROM (SELECT {anchor} AS anchor, {name} AS name, {deleted} AS deleted, to_jsonb(w.*) AS attrs \
                   FROM done w OFFSET 0) a \
           JOIN (SELECT (idmesh_change.change->>'mesh_id')::bigint AS mesh_id, {change_anchor} AS anchor \
                   FROM jsonb_array_elements($1::jsonb) AS idmesh_change(change) \
                   CROSS JOIN LATERAL jsonb_populate_record(NULL::{table}, idmesh_change.change->'key') p) k \
             ON k.anchor = a.anchor",
        run = read_back.run_id,
        object_type = literal(&read_back.object_type),
        anchor = read_back.anchor_sql,
        name = read_back.name_sql,
        deleted = read_back.deleted_sql,
        change_anchor = read_back.change_anchor_sql,
    )
}

/// A PostgreSQL statement for one operation over a batch; it returns a JSON array with an
/// object per row written (see `Returning`; a deleted row always comes back whole). `table`
/// is an already quoted, qualified name.
pub fn postgres_statement(
    table: &str,
    anchors: &[String],
    cols: &[&str],
    op: Op,
    mode: Mode,
    returning: Returning,
) -> Result<String, String> {
    if anchors.is_empty() {
        return Err("a target table needs its anchor column(s)".into());
    }
    let returned = match (returning, op) {
        (Returning::Anchors, Op::Add | Op::Update) => anchors
            .iter()
            .map(|a| format!("t.{}", ident(a)))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "t.*".to_string(),
    };
    let key_match: Vec<String> = anchors
        .iter()
        .map(|a| format!("t.{0} = (e.k).{0}", ident(a)))
        .collect();
    let sql = match op {
        Op::Add => {
            if mode == Mode::Update {
                return Err(UPDATE_MODE.into());
            }
            let from = format!(
                "jsonb_array_elements($1::jsonb) x CROSS JOIN LATERAL jsonb_populate_record(NULL::{table}, x->'attributes') r"
            );
            insert(table, &from, anchors, cols, mode, &returned)
        }
        Op::Update => {
            if cols.is_empty() {
                return Err("nothing to update".into());
            }
            let sets: Vec<String> = cols
                .iter()
                .map(|c| format!("{0} = CASE WHEN e.ch ? {1} THEN (e.r).{0} ELSE t.{0} END", ident(c), literal(c)))
                .collect();
            format!(
                "UPDATE {table} AS t SET {} FROM (SELECT x->'attributes' AS ch, \
                 jsonb_populate_record(NULL::{table}, x->'attributes') AS r, \
                 jsonb_populate_record(NULL::{table}, x->'key') AS k FROM jsonb_array_elements($1::jsonb) x) e \
                 WHERE {} RETURNING {returned}",
                sets.join(", "),
                key_match.join(" AND ")
            )
        }
        Op::Delete => format!(
            "DELETE FROM {table} AS t USING (SELECT jsonb_populate_record(NULL::{table}, x->'key') AS k \
             FROM jsonb_array_elements($1::jsonb) x) e WHERE {} RETURNING t.*",
            key_match.join(" AND ")
        ),
    };
    Ok(match (returning, op) {
        (Returning::Staged(read_back), Op::Add | Op::Update) => {
            let keys: Vec<String> = anchors
                .iter()
                .map(|a| format!("{}, idmesh_written.{}", literal(a), ident(a)))
                .collect();
            format!(
                "WITH done AS ({sql}), staged AS ({}) \
                 SELECT coalesce(jsonb_agg(jsonb_build_object({})), '[]'::jsonb) FROM done idmesh_written",
                staged_read_back(table, read_back),
                keys.join(", ")
            )
        }
        _ => written_as_json(&sql),
    })
}

/// A data-modifying statement's RETURNING rows as one JSON array (one value per batch).
/// `alias.*`: a bare alias would name a column first, were the table to have one so called.
fn written_as_json(sql: &str) -> String {
    format!("WITH done AS ({sql}) SELECT coalesce(jsonb_agg(to_jsonb(idmesh_written.*)), '[]'::jsonb) FROM done idmesh_written")
}

/// The insert (or upsert, by `mode`) of the rows `from` gives under the alias `r`.
fn insert(table: &str, from: &str, anchors: &[String], cols: &[&str], mode: Mode, returned: &str) -> String {
    let col_list: Vec<String> = cols.iter().map(|c| ident(c)).collect();
    let values: Vec<String> = cols.iter().map(|c| format!("r.{}", ident(c))).collect();
    let conflict = if mode == Mode::Upsert {
        let sets: Vec<String> = cols.iter().map(|c| format!("{0} = EXCLUDED.{0}", ident(c))).collect();
        let keys: Vec<String> = anchors.iter().map(|a| ident(a)).collect();
        format!(" ON CONFLICT ({}) DO UPDATE SET {}", keys.join(", "), sets.join(", "))
    } else {
        String::new()
    };
    format!(
        "INSERT INTO {table} AS t ({}) SELECT {} FROM {from}{conflict} RETURNING {returned}",
        col_list.join(", "),
        values.join(", ")
    )
}

/// A batch of adds bound as one text array per column (`$1` for the first of `cols`, and
/// so on), each value cast to its column's type (`cols`: name and quoted, qualified type),
/// and the changes' anchors after them: the insert or upsert, returning NULL when it wrote
/// every row under the anchor sent, else the anchors of the rows it wrote as
/// `postgres_statement` does. The target reads each value once with its type's input function, as COPY would,
/// instead of taking it out of a JSON document first (see `value_text`).
pub fn postgres_text_add(table: &str, anchors: &[String], cols: &[(&str, &str)], mode: Mode) -> Result<String, String> {
    if anchors.is_empty() {
        return Err("a target table needs its anchor column(s)".into());
    }
    if mode == Mode::Update {
        return Err(UPDATE_MODE.into());
    }
    let arrays: Vec<String> = (1..=cols.len()).map(|i| format!("${i}::text[]")).collect();
    let positions: Vec<String> = (1..=cols.len()).map(|i| format!("v{i}")).collect();
    let typed: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(i, (name, ty))| format!("u.v{}::{ty} AS {}", i + 1, ident(name)))
        .collect();
    let from = format!(
        "(SELECT {} FROM unnest({}) AS u({})) r",
        typed.join(", "),
        arrays.join(", "),
        positions.join(", ")
    );
    let names: Vec<&str> = cols.iter().map(|(name, _)| *name).collect();
    let returned: Vec<String> = anchors.iter().map(|a| format!("t.{}", ident(a))).collect();
    let sql = insert(table, &from, anchors, &names, mode, &returned.join(", "));
    // Every row came back under the anchor sent (`$n+1`: each change's anchor text, as the
    // engine spells it; the rows' spelled as JSON gives them, as the JSON batch compares
    // them): then each change was written as it says, and the anchors need not travel
    // (building them was a third of the work). Otherwise (a trigger skipped a row or changed
    // its key, a char(n) padded it) they do, and each change is found as for the JSON batch.
    let written_anchor = crate::sql::anchor_concat(
        &anchors
            .iter()
            .map(|a| format!("to_jsonb(d.{})#>>'{{}}'", ident(a)))
            .collect::<Vec<_>>(),
    );
    let sent = cols.len() + 1;
    Ok(format!(
        "WITH done AS ({sql}) SELECT CASE WHEN (SELECT count(*) FROM done d \
                                               WHERE {written_anchor} IN (SELECT unnest(${sent}::text[]))) \
                                            = cardinality(${sent}::text[]) THEN NULL \
         ELSE (SELECT coalesce(jsonb_agg(to_jsonb(idmesh_written.*)), '[]'::jsonb) FROM done idmesh_written) END"
    ))
}

/// `[name]` quoting for SQL Server identifiers (`]` doubled); dotted names quote each part.
pub fn tsql_ident(name: &str) -> String {
    name.split('.')
        .map(|p| format!("[{}]", p.replace(']', "]]")))
        .collect::<Vec<_>>()
        .join(".")
}

/// `[col] type '$.attributes."col"', ...`: how OPENJSON reads the batch's columns (each key
/// quoted in the path: a name with a space or a quote is a key like any other).
fn openjson_with(cols: &[(&str, &str)]) -> String {
    cols.iter()
        .map(|(c, ty)| format!("{} {ty} {}", tsql_ident(c), json_path("attributes", c)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `'$.object."key"'` as a T-SQL literal.
fn json_path(object: &str, key: &str) -> String {
    format!(
        "'$.{object}.\"{}\"'",
        key.replace('\\', "\\\\").replace('"', "\\\"").replace('\'', "''")
    )
}

/// The SQL Server update of a batch of changes that carry the same columns: each row found
/// by its anchor columns as the object has them now (`$.key`), set to the change's values;
/// a row no longer there is not made again (the caller compares the rows it changed).
pub fn sqlserver_update(
    table: &str,
    anchors: &[(&str, &str)],
    cols: &[(&str, &str)],
) -> Result<String, String> {
    if anchors.is_empty() {
        return Err("a target table needs its anchor column(s)".into());
    }
    if cols.is_empty() {
        return Err("nothing to update".into());
    }
    let keys: Vec<String> = anchors
        .iter()
        .enumerate()
        .map(|(i, (a, ty))| format!("[idmesh_key_{i}] {ty} {}", json_path("key", a)))
        .collect();
    let on: Vec<String> = anchors
        .iter()
        .enumerate()
        .map(|(i, (a, _))| format!("t.{} = s.[idmesh_key_{i}]", tsql_ident(a)))
        .collect();
    let sets: Vec<String> = cols
        .iter()
        .map(|(c, _)| format!("t.{0} = s.{0}", tsql_ident(c)))
        .collect();
    Ok(format!(
        "UPDATE t SET {} FROM {} AS t JOIN OPENJSON(@P1) WITH ({}, {}) AS s ON {};",
        sets.join(", "),
        tsql_ident(table),
        keys.join(", "),
        openjson_with(cols),
        on.join(" AND ")
    ))
}

/// The SQL Server upsert: one MERGE over the batch in `@P1` (the same JSON array), read with
/// OPENJSON using the given column types (no OUTPUT clause: a table with triggers refuses
/// one without INTO, and nothing reads it).
pub fn sqlserver_merge(
    table: &str,
    anchors: &[String],
    cols: &[(&str, &str)],
) -> Result<String, String> {
    if anchors.is_empty() {
        return Err("a target table needs its anchor column(s)".into());
    }
    for a in anchors {
        if !cols.iter().any(|(c, _)| c == a) {
            return Err(format!("the anchor column {a} must be among the columns"));
        }
    }
    let on: Vec<String> = anchors
        .iter()
        .map(|a| format!("t.{0} = s.{0}", tsql_ident(a)))
        .collect();
    let sets: Vec<String> = cols
        .iter()
        .filter(|(c, _)| !anchors.iter().any(|a| a == c))
        .map(|(c, _)| format!("t.{0} = s.{0}", tsql_ident(c)))
        .collect();
    let names: Vec<String> = cols.iter().map(|(c, _)| tsql_ident(c)).collect();
    let values: Vec<String> = cols
        .iter()
        .map(|(c, _)| format!("s.{}", tsql_ident(c)))
        .collect();
    let matched = if sets.is_empty() {
        String::new()
    } else {
        format!(" WHEN MATCHED THEN UPDATE SET {}", sets.join(", "))
    };
    Ok(format!(
        "MERGE INTO {} AS t USING (SELECT * FROM OPENJSON(@P1) WITH ({})) AS s ON {}{} \
         WHEN NOT MATCHED THEN INSERT ({}) VALUES ({});",
        tsql_ident(table),
        openjson_with(cols),
        on.join(" AND "),
        matched,
        names.join(", "),
        values.join(", ")
    ))
}

/// The SQL Server insert of a batch (export_mode `insert`): a row that is there already is
/// the target's refusal (its key), never an update.
pub fn sqlserver_insert(table: &str, cols: &[(&str, &str)]) -> String {
    let names: Vec<String> = cols.iter().map(|(c, _)| tsql_ident(c)).collect();
    format!(
        "INSERT INTO {} ({}) SELECT {} FROM OPENJSON(@P1) WITH ({}) AS s;",
        tsql_ident(table),
        names.join(", "),
        names.join(", "),
        openjson_with(cols)
    )
}

/// The SQL Server delete of a batch: rows whose anchor columns match a change's.
pub fn sqlserver_delete(table: &str, anchors: &[(&str, &str)]) -> String {
    let on: Vec<String> = anchors
        .iter()
        .map(|(a, _)| format!("t.{0} = k.{0}", tsql_ident(a)))
        .collect();
    format!(
        "DELETE t FROM {} AS t JOIN OPENJSON(@P1) WITH ({}) AS k ON {};",
        tsql_ident(table),
        openjson_with(anchors),
        on.join(" AND ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anchors() -> Vec<String> {
        vec!["employee_id".to_string()]
    }

    #[test]
    fn upsert_binds_one_json_parameter_and_quotes_identifiers() {
        let sql = postgres_statement(
            "hr.employees",
            &anchors(),
            &["employee_id", "e\"mail"],
            Op::Add,
            Mode::Upsert,
            Returning::Rows,
        )
        .unwrap();
        assert!(sql.contains("jsonb_array_elements($1::jsonb)"));
        assert!(sql.contains("RETURNING t.*"), "{sql}");
        assert!(sql.contains("(\"employee_id\", \"e\"\"mail\")"), "{sql}");
        assert!(sql.contains("ON CONFLICT (\"employee_id\") DO UPDATE SET \"employee_id\" = EXCLUDED.\"employee_id\""));
        assert!(sql.starts_with("WITH done AS (INSERT INTO hr.employees AS t"));
        assert!(!postgres_statement(
            "t",
            &anchors(),
            &["a"],
            Op::Add,
            Mode::Insert,
            Returning::Rows
        )
        .unwrap()
        .contains("ON CONFLICT"));
        assert!(postgres_statement(
            "t",
            &anchors(),
            &["a"],
            Op::Add,
            Mode::Update,
            Returning::Rows
        )
        .is_err());
    }

    #[test]
    fn update_writes_only_the_columns_each_change_has() {
        let sql = postgres_statement(
            "t",
            &anchors(),
            &["title"],
            Op::Update,
            Mode::Upsert,
            Returning::Rows,
        )
        .unwrap();
        assert!(
            sql.contains(
                "\"title\" = CASE WHEN e.ch ? 'title' THEN (e.r).\"title\" ELSE t.\"title\" END"
            ),
            "{sql}"
        );
        assert!(sql.contains("WHERE t.\"employee_id\" = (e.k).\"employee_id\""));
        assert!(postgres_statement(
            "t",
            &anchors(),
            &[],
            Op::Update,
            Mode::Upsert,
            Returning::Rows
        )
        .is_err());
        let del = postgres_statement(
            "t",
            &anchors(),
            &[],
            Op::Delete,
            Mode::Upsert,
            Returning::Rows,
        )
        .unwrap();
        assert!(del.contains("DELETE FROM t AS t USING"));
        assert!(
            postgres_statement("t", &[], &["a"], Op::Delete, Mode::Upsert, Returning::Rows)
                .is_err()
        );
    }

    #[test]
    fn a_statement_returns_only_the_anchors_when_asked_except_for_deletes() {
        let keys = vec!["id".to_string(), "we\"ird".to_string()];
        for op in [Op::Add, Op::Update] {
            let sql = postgres_statement("t", &keys, &["a"], op, Mode::Upsert, Returning::Anchors)
                .unwrap();
            assert!(
                sql.contains("RETURNING t.\"id\", t.\"we\"\"ird\")"),
                "{sql}"
            );
            assert!(!sql.contains("t.*"), "{sql}");
            assert!(
                sql.ends_with("SELECT coalesce(jsonb_agg(to_jsonb(idmesh_written.*)), '[]'::jsonb) FROM done idmesh_written")
            );
        }
        let del = postgres_statement(
            "t",
            &keys,
            &[],
            Op::Delete,
            Mode::Upsert,
            Returning::Anchors,
        )
        .unwrap();
        assert!(del.contains("RETURNING t.*)"), "{del}");
    }

    #[test]
    fn a_batch_of_text_arrays_is_inserted_as_the_json_batch_would_be() {
        let keys = vec!["id".to_string()];
        let cols = [("id", "\"pg_catalog\".\"int4\""), ("na\"me", "\"hr\".\"title\"")];
        let text = postgres_text_add("\"hr\".\"t\"", &keys, &cols, Mode::Upsert).unwrap();
        let json = postgres_statement("\"hr\".\"t\"", &keys, &["id", "na\"me"], Op::Add, Mode::Upsert, Returning::Anchors).unwrap();
        let from_json = "jsonb_array_elements($1::jsonb) x CROSS JOIN LATERAL jsonb_populate_record(NULL::\"hr\".\"t\", x->'attributes') r";
        let from_text = "(SELECT u.v1::\"pg_catalog\".\"int4\" AS \"id\", u.v2::\"hr\".\"title\" AS \"na\"\"me\" \
                         FROM unnest($1::text[], $2::text[]) AS u(v1, v2)) r";
        // The same statement but for where the rows come from and when the anchors come back.
        let all_written = "SELECT CASE WHEN (SELECT count(*) FROM done d \
                                               WHERE to_jsonb(d.\"id\")#>>'{}' IN (SELECT unnest($3::text[]))) \
                                            = cardinality($3::text[]) THEN NULL \
                           ELSE (SELECT coalesce(jsonb_agg(to_jsonb(idmesh_written.*)), '[]'::jsonb) FROM done idmesh_written) END";
        let json_result = "SELECT coalesce(jsonb_agg(to_jsonb(idmesh_written.*)), '[]'::jsonb) FROM done idmesh_written";
        assert_eq!(text.replace(from_text, from_json).replace(all_written, json_result), json, "{text}");
        assert!(text.contains(from_text), "{text}");
        let insert = postgres_text_add("t", &keys, &cols[..1], Mode::Insert).unwrap();
        assert!(!insert.contains("ON CONFLICT") && insert.contains("unnest($1::text[]) AS u(v1)"), "{insert}");
        assert!(insert.contains("cardinality($2::text[])"), "{insert}");
        // A composite anchor is compared in the engine's spelling of it.
        let two = postgres_text_add("t", &["org".to_string(), "emp".to_string()], &cols, Mode::Upsert).unwrap();
        assert!(two.contains("concat_ws(E'\\x1f', replace(replace(to_jsonb(d.\"org\")#>>'{}'"), "{two}");
        assert!(postgres_text_add("t", &keys, &cols, Mode::Update).is_err());
        assert!(postgres_text_add("t", &[], &cols, Mode::Upsert).is_err());
    }

    #[test]
    fn a_target_that_is_its_source_stages_its_rows_in_the_statement() {
        let read_back = ReadBack {
            run_id: 42,
            object_type: "per'son".into(),
            anchor_sql: "w.\"employee_id\"::text".into(),
            change_anchor_sql: "p.\"employee_id\"::text".into(),
            name_sql: "w.\"employee_id\"::text".into(),
            deleted_sql: "false".into(),
        };
        for op in [Op::Add, Op::Update] {
            let sql = postgres_statement(
                "hr.e",
                &anchors(),
                &["title"],
                op,
                Mode::Upsert,
                Returning::Staged(&read_back),
            )
            .unwrap();
            assert!(sql.contains("RETURNING t.*"), "{sql}");
            assert!(sql.contains("staged AS (INSERT INTO mesh.staging"), "{sql}");
            assert!(
                sql.contains("SELECT 42, 0, a.anchor, a.name, 'per''son', a.attrs"),
                "{sql}"
            );
            assert!(sql.contains("to_jsonb(w.*) AS attrs FROM done w"), "{sql}");
            assert!(sql.contains("md5(a.attrs::text)"), "{sql}");
            // Each row finds its change's mesh object by the change's key; names are qualified
            // (a column of the table could be called like an alias).
            assert!(
                sql.contains("jsonb_populate_record(NULL::hr.e, idmesh_change.change->'key') p"),
                "{sql}"
            );
            assert!(
                sql.contains("(idmesh_change.change->>'mesh_id')::bigint"),
                "{sql}"
            );
            assert!(sql.contains("ON k.anchor = a.anchor"), "{sql}");
            // What comes back is the anchors only.
            assert!(sql.ends_with("jsonb_build_object('employee_id', idmesh_written.\"employee_id\")), '[]'::jsonb) FROM done idmesh_written"), "{sql}");
        }
        // Deleted rows come back whole (as deleted objects), never staged here.
        let del = postgres_statement(
            "hr.e",
            &anchors(),
            &[],
            Op::Delete,
            Mode::Upsert,
            Returning::Staged(&read_back),
        )
        .unwrap();
        assert!(
            !del.contains("mesh.staging") && del.contains("to_jsonb(idmesh_written.*)"),
            "{del}"
        );
    }

    #[test]
    fn sqlserver_merge_upserts_on_the_anchor() {
        let sql = sqlserver_merge(
            "hr.employees",
            &anchors(),
            &[
                ("employee_id", "int"),
                ("mail", "nvarchar(256)"),
                ("it's", "nvarchar(10)"),
            ],
        )
        .unwrap();
        assert!(
            sql.starts_with(
                "MERGE INTO [hr].[employees] AS t USING (SELECT * FROM OPENJSON(@P1) WITH ("
            ),
            "{sql}"
        );
        assert!(sql.contains("[employee_id] int '$.attributes.\"employee_id\"'"));
        assert!(sql.contains("[it's] nvarchar(10) '$.attributes.\"it''s\"'"));
        assert!(sql.contains("ON t.[employee_id] = s.[employee_id]"));
        assert!(
            sql.contains("WHEN MATCHED THEN UPDATE SET t.[mail] = s.[mail], t.[it's] = s.[it's]")
        );
        assert!(
            !sql.contains("t.[employee_id] = s.[employee_id],"),
            "the anchor is not updated"
        );
        assert!(sql.contains("WHEN NOT MATCHED THEN INSERT ([employee_id], [mail], [it's]) VALUES (s.[employee_id], s.[mail], s.[it's])"));
        assert!(sql.ends_with("VALUES (s.[employee_id], s.[mail], s.[it's]);"));
        let odd = sqlserver_merge("t", &["first name".to_string()], &[("first name", "int"), ("a\"b", "int")]).unwrap();
        assert!(odd.contains("[first name] int '$.attributes.\"first name\"'"), "{odd}");
        assert!(odd.contains("[a\"b] int '$.attributes.\"a\\\"b\"'"), "{odd}");
        assert_eq!(tsql_ident("a]b"), "[a]]b]");
        assert_eq!(
            sqlserver_delete("dbo.accounts", &[("login", "nvarchar(64)")]),
            "DELETE t FROM [dbo].[accounts] AS t JOIN OPENJSON(@P1) WITH ([login] nvarchar(64) '$.attributes.\"login\"') AS k \
             ON t.[login] = k.[login];"
        );
        assert!(sqlserver_merge("t", &anchors(), &[("mail", "nvarchar(10)")]).is_err());
        assert_eq!(
            sqlserver_update("dbo.accounts", &[("login", "nvarchar(64)")], &[("login", "nvarchar(64)"), ("display", "nvarchar(200)")]).unwrap(),
            "UPDATE t SET t.[login] = s.[login], t.[display] = s.[display] FROM [dbo].[accounts] AS t JOIN OPENJSON(@P1) \
             WITH ([idmesh_key_0] nvarchar(64) '$.key.\"login\"', [login] nvarchar(64) '$.attributes.\"login\"', \
             [display] nvarchar(200) '$.attributes.\"display\"') AS s ON t.[login] = s.[idmesh_key_0];"
        );
        assert!(sqlserver_update("t", &[("login", "int")], &[]).is_err());
        assert_eq!(
            sqlserver_insert("dbo.accounts", &[("login", "nvarchar(64)")]),
            "INSERT INTO [dbo].[accounts] ([login]) SELECT [login] FROM OPENJSON(@P1) WITH ([login] nvarchar(64) '$.attributes.\"login\"') AS s;"
        );
    }
}
