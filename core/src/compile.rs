//! Flow, join and provisioning rules compiled into set-based SQL.
//!
//! Each statement handles every object of one object type (or of one connector) at once,
//! so a sync is a handful of statements whatever the number of objects, and a DBA can read
//! and EXPLAIN each one (`mesh.compiled_sql`). Confidence belongs to the rule, so the
//! winner of an attribute is a `CASE` over the rules in resolution order: no row per
//! attribute per source is ever materialized.
//!
//! Temporary tables the statements use (created by the engine for each sync):
//! `_mesh_affected(id)` the mesh objects to recompute, `_mesh_join` join candidates,
//! `_mesh_projected` the mesh objects this sync creates, `_mesh_plan` each target object's
//! operation and changes.

use crate::source::{expression_scope, Source};
use crate::sql::literal;
use serde_json::Value;

#[derive(Clone, Debug)]
pub struct ImportFlow {
    pub id: i32,
    pub connector_id: i32,
    pub connector_name: String,
    pub object_type: String,
    pub source: String,
    pub target: String,
    pub confidence: i32,
    pub empty_is_value: bool,
    pub reference: bool,
    /// The connector whose objects a reference names (usually `connector_id` itself).
    pub ref_connector_id: i32,
}

#[derive(Clone, Debug)]
pub struct ExportFlow {
    pub id: i32,
    pub connector_id: i32,
    pub object_type: String,
    pub source: String,
    pub target: String,
    pub empty_is_value: bool,
    pub reference: bool,
}

#[derive(Clone, Debug)]
pub struct JoinRule {
    pub connector_id: i32,
    pub object_type: String,
    pub position: i32,
    pub source: String,
    pub mesh_attribute: String,
}

/// What happens in a target to an object whose mesh object is deleted or leaves the scope.
#[derive(Clone, Debug, PartialEq)]
pub enum Deprovision {
    Delete,
    /// Write these attribute values (e.g. `{"active": false}`).
    Disable(Value),
    /// Keep the object, stop managing it (disconnect).
    Leave,
}

impl Deprovision {
    pub fn from_options(options: &Value) -> Result<Deprovision, String> {
        // A misspelled option would silently leave the policy at "leave".
        if let Some(m) = options.as_object() {
            if let Some(k) = m.keys().find(|k| !["deprovision", "disable"].contains(&k.as_str())) {
                return Err(format!("unknown provisioning option \"{k}\": the options are deprovision and disable"));
            }
        }
        let policy = match options.get("deprovision") {
            None => "leave",
            Some(Value::String(p)) => p.as_str(),
            Some(other) => return Err(format!("deprovision must be \"delete\", \"disable\" or \"leave\", not {other}")),
        };
        match policy {
            "delete" => Ok(Deprovision::Delete),
            "leave" => Ok(Deprovision::Leave),
            "disable" => match options.get("disable") {
                Some(v @ Value::Object(m)) if !m.is_empty() => Ok(Deprovision::Disable(v.clone())),
                _ => Err("deprovision \"disable\" needs \"disable\": an object of attribute values to write, \
                          e.g. {\"active\": false}"
                    .into()),
            },
            other => Err(format!("unknown deprovision policy \"{other}\": use delete, disable or leave")),
        }
    }
    fn name(&self) -> &'static str {
        match self {
            Deprovision::Delete => "delete",
            Deprovision::Disable(_) => "disable",
            Deprovision::Leave => "leave",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Provisioning {
    pub connector_id: i32,
    pub object_type: String,
    /// SQL condition over mesh attributes; None = every object of the type.
    pub scope: Option<String>,
    pub deprovision: Deprovision,
}

/// Which mesh objects a statement touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Only those in `_mesh_affected`.
    Affected,
    /// All of them (full sync).
    All,
}

/// The mesh objects `o` a statement reads. A delta's few objects are looked up by primary
/// key (OFFSET 0 keeps each lookup an index probe: the planner would rather scan them all);
/// `o.ctid` is the row either way.
fn mesh_objects(scope: Scope) -> &'static str {
    match scope {
        Scope::Affected => {
            "FROM _mesh_affected a\n\
             CROSS JOIN LATERAL (SELECT m0.*, m0.ctid AS ctid FROM mesh.mesh_object m0 WHERE m0.id = a.id OFFSET 0) o\n"
        }
        Scope::All => "FROM mesh.mesh_object o\n",
    }
}

fn slot(rule_id: i32) -> String {
    format!("v{rule_id}")
}

/// The jsonb value an import flow contributes for the connector object `c{cid}`.
fn import_value(f: &ImportFlow, src: &Source) -> String {
    let cid = f.connector_id;
    let raw = src.jsonb(&format!("c{cid}"), &format!("x{cid}"), &slot(f.id));
    if f.reference {
        format!("mesh.ref({}, {raw})", f.ref_connector_id)
    } else {
        raw
    }
}

fn import_counts(f: &ImportFlow, value: &str) -> String {
    let present = format!("c{}.anchor IS NOT NULL", f.connector_id);
    if f.empty_is_value {
        present
    } else {
        format!("{present} AND NOT mesh.is_empty({value})")
    }
}

/// The winner of one mesh attribute as a CASE over its flows in resolution order.
pub fn attribute_case(flows: &[&ImportFlow]) -> String {
    let mut sorted: Vec<&ImportFlow> = flows.to_vec();
    sorted.sort_by(|a, b| {
        b.confidence
            .cmp(&a.confidence)
            .then(a.connector_name.cmp(&b.connector_name))
    });
    let mut arms = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j < sorted.len() && sorted[j].confidence == sorted[i].confidence {
            j += 1;
        }
        let group = &sorted[i..j];
        let parts: Vec<(String, String, &ImportFlow)> = group
            .iter()
            .map(|f| {
                let v = import_value(f, &Source::parse(&f.source));
                let shown = if f.empty_is_value {
                    format!("mesh.nullif_empty({v})")
                } else {
                    v.clone()
                };
                (import_counts(f, &v), shown, *f)
            })
            .collect();
        if parts.len() == 1 {
            arms.push(format!("WHEN {} THEN {}", parts[0].0, parts[0].1));
        } else {
            // Equal confidence: most recent observation, then connector name.
            let any: Vec<String> = parts.iter().map(|p| format!("({})", p.0)).collect();
            let rows: Vec<String> = parts
                .iter()
                .map(|(ok, v, f)| {
                    format!(
                        "(({ok}), {v}, c{}.observed_at, {})",
                        f.connector_id,
                        literal(&f.connector_name)
                    )
                })
                .collect();
            arms.push(format!(
                "WHEN {} THEN (SELECT t.v FROM (VALUES {}) t(ok, v, observed_at, connector) \
                 WHERE t.ok ORDER BY t.observed_at DESC, t.connector LIMIT 1)",
                any.join(" OR "),
                rows.join(", ")
            ));
        }
        i = j;
    }
    format!("CASE {} END", arms.join(" "))
}

/// `jsonb_build_object` takes at most 100 arguments: build objects of 40 pairs and concatenate.
fn build_object(pairs: &[(String, String)]) -> String {
    if pairs.is_empty() {
        return "'{}'::jsonb".to_string();
    }
    let chunks: Vec<String> = pairs
        .chunks(40)
        .map(|chunk| {
            let args: Vec<String> = chunk
                .iter()
                .map(|(k, v)| format!("{}, {v}", literal(k)))
                .collect();
            format!("jsonb_build_object({})", args.join(", "))
        })
        .collect();
    chunks.join(" || ")
}

fn connector_ids<'a, I: Iterator<Item = i32>>(ids: I) -> Vec<i32> {
    let mut v: Vec<i32> = ids.collect();
    v.sort();
    v.dedup();
    v
}

/// LEFT JOIN of each contributing connector's object, and its expression scope.
fn connector_joins(flows: &[&ImportFlow], mesh_alias: &str) -> String {
    let mut sql = String::new();
    for cid in connector_ids(flows.iter().map(|f| f.connector_id)) {
        sql.push_str(&format!(
            "LEFT JOIN mesh.connector_object c{cid} ON c{cid}.connector_id = {cid} AND c{cid}.mesh_id = {mesh_alias}.id AND NOT c{cid}.deleted\n"
        ));
        let parsed: Vec<(String, Source)> = flows
            .iter()
            .filter(|f| f.connector_id == cid)
            .map(|f| (slot(f.id), Source::parse(&f.source)))
            .collect();
        let refs: Vec<(String, &Source)> = parsed.iter().map(|(s, src)| (s.clone(), src)).collect();
        if let Some(scope) = expression_scope(&format!("c{cid}"), &format!("x{cid}"), &refs) {
            sql.push_str(&scope);
            sql.push('\n');
        }
    }
    sql
}

/// The resolved attributes (a jsonb expression) of a mesh object `o` from the connector
/// objects `connector_joins` gives it, one CASE per attribute in resolution order.
fn resolved_attributes(flows: &[&ImportFlow]) -> String {
    let mut targets: Vec<&str> = flows.iter().map(|f| f.target.as_str()).collect();
    targets.sort();
    targets.dedup();
    let pairs: Vec<(String, String)> = targets
        .iter()
        .map(|t| {
            let group: Vec<&ImportFlow> =
                flows.iter().copied().filter(|f| f.target == *t).collect();
            (t.to_string(), attribute_case(&group))
        })
        .collect();
    format!("mesh.strip_null_attributes({})", build_object(&pairs))
}

/// Recomputes the attributes of the mesh objects of one type from the connector objects
/// joined to them; updates only objects whose attributes change. OFFSET 0 keeps `r` a
/// subquery of its own: flattened, each object's attributes would be resolved twice (for
/// the comparison and again for the SET). Each row is updated where it was read (ctid):
/// a delta touches its few objects without a pass over all of them.
pub fn resolution_sql(object_type: &str, flows: &[ImportFlow], scope: Scope) -> String {
    let flows: Vec<&ImportFlow> = flows
        .iter()
        .filter(|f| f.object_type == object_type)
        .collect();
    format!(
        "UPDATE mesh.mesh_object m SET attrs = r.attrs, updated_at = now()\nFROM (\n\
         SELECT o.ctid AS row_id, o.attrs AS old_attrs, {} AS attrs\n\
         {}{}\
         WHERE o.object_type = {} AND NOT o.deleted\nOFFSET 0\n) r\n\
         WHERE m.ctid = r.row_id AND r.old_attrs IS DISTINCT FROM r.attrs",
        resolved_attributes(&flows),
        mesh_objects(scope),
        connector_joins(&flows, "o"),
        literal(object_type)
    )
}

/// Creates the mesh objects of one type projected by this sync (listed in
/// `_mesh_projected`, their connector objects already linked) with the attributes join
/// rules compare, so objects of other connectors can join them in the same sync; the full
/// resolution follows. Written with its attributes, a new object is written once.
pub fn join_attributes_sql(
    object_type: &str,
    flows: &[ImportFlow],
    join_attributes: &[String],
) -> Option<String> {
    let flows: Vec<&ImportFlow> = flows
        .iter()
        .filter(|f| f.object_type == object_type && join_attributes.contains(&f.target))
        .collect();
    if flows.is_empty() {
        return None;
    }
    Some(format!(
        "INSERT INTO mesh.mesh_object (id, object_type, projected_by, attrs)\n\
         SELECT o.id, o.object_type, o.projected_by, {}\n\
         FROM _mesh_projected o\n{}\
         WHERE o.object_type = {}",
        resolved_attributes(&flows),
        connector_joins(&flows, "o"),
        literal(object_type)
    ))
}

/// The lifecycle of the mesh objects in scope: a mesh object is deleted when no object of
/// a connector that projects its type remains joined to it (or, for types nobody
/// projects, when no object at all remains). An orphan (per its type's deletion rule) goes
/// now, or is marked to go after the grace period; a marked object that has a source again
/// is unmarked; marks that are due go. Returns the number of objects deleted. A full sync
/// makes one grouped pass over the joined objects (hash joins); a delta looks its few
/// objects up by index, and their connector objects by (connector, mesh id).
pub fn lifecycle_sql(scope: Scope) -> String {
    let joined = match scope {
        Scope::All => "FROM mesh.connector_object c JOIN cand ON cand.id = c.mesh_id AND NOT c.deleted\n",
        Scope::Affected => {
            "FROM cand CROSS JOIN mesh.connector k\n\
             JOIN LATERAL (SELECT c.mesh_id, c.connector_id, c.object_type FROM mesh.connector_object c\n\
             WHERE c.connector_id = k.id AND c.mesh_id = cand.id AND NOT c.deleted OFFSET 0) c ON true\n"
        }
    };
    format!(
        "WITH cand AS (\n\
         SELECT o.id, o.ctid AS row_id, o.object_type, o.delete_at, o.delete_reason\n\
         {objects}\
         WHERE NOT o.deleted\n\
         ), live AS (\n\
         SELECT c.mesh_id, bool_or(p.connector_id IS NOT NULL) AS authoritative\n\
         {joined}\
         LEFT JOIN mesh.projection p ON p.connector_id = c.connector_id AND p.object_type = c.object_type AND p.enabled\n\
         GROUP BY c.mesh_id\n\
         ), verdict AS (\n\
         SELECT cand.id, cand.row_id, cand.delete_at, cand.delete_reason, t.grace,\n\
         CASE t.deletion\n\
         WHEN 'manual' THEN false\n\
         WHEN 'last_connector' THEN live.mesh_id IS NULL\n\
         ELSE NOT coalesce(live.authoritative, false)\n\
         AND (live.mesh_id IS NULL\n\
         OR cand.object_type IN (SELECT p.object_type FROM mesh.projection p WHERE p.enabled))\n\
         END AS orphan\n\
         FROM cand JOIN mesh.object_type t ON t.name = cand.object_type\n\
         LEFT JOIN live ON live.mesh_id = cand.id\n\
         ), act AS (\n\
         SELECT v.*,\n\
         coalesce((v.orphan AND v.grace = interval '0')\n\
         OR (v.delete_at <= now() AND (v.orphan OR v.delete_reason = 'manual')), false) AS go\n\
         FROM verdict v\n\
         ), upd AS (\n\
         UPDATE mesh.mesh_object o\n\
         SET deleted = act.go,\n\
         delete_at = CASE WHEN act.go THEN o.delete_at\n\
         WHEN act.orphan THEN coalesce(o.delete_at, now() + act.grace)\n\
         WHEN o.delete_reason = 'manual' THEN o.delete_at END,\n\
         delete_reason = CASE WHEN act.go THEN o.delete_reason\n\
         WHEN act.orphan THEN coalesce(o.delete_reason, 'grace')\n\
         WHEN o.delete_reason = 'manual' THEN 'manual' END,\n\
         updated_at = now()\n\
         FROM act\n\
         WHERE o.ctid = act.row_id\n\
         AND (act.go OR (act.orphan AND o.delete_at IS NULL)\n\
         OR (NOT act.orphan AND o.delete_reason = 'grace'))\n\
         RETURNING act.go\n\
         )\n\
         SELECT count(*) FILTER (WHERE go) FROM upd",
        objects = mesh_objects(scope),
    )
}

/// One SELECT per connector and object type listing every contribution (one row per flow
/// per connector object); `mesh.contributions` is their UNION ALL.
pub fn contributions_sql(flows: &[ImportFlow]) -> String {
    let mut groups: Vec<(i32, &str)> = flows
        .iter()
        .map(|f| (f.connector_id, f.object_type.as_str()))
        .collect();
    groups.sort();
    groups.dedup();
    if groups.is_empty() {
        return "SELECT NULL::bigint AS mesh_id, NULL::integer AS connector_id, NULL::text AS anchor, \
                NULL::timestamptz AS observed_at, NULL::integer AS rule_id, NULL::text AS attribute, \
                NULL::jsonb AS value, NULL::integer AS confidence, NULL::boolean AS empty_is_value WHERE false"
            .to_string();
    }
    let selects: Vec<String> = groups
        .iter()
        .map(|(cid, ot)| {
            let fs: Vec<&ImportFlow> =
                flows.iter().filter(|f| f.connector_id == *cid && f.object_type == *ot).collect();
            let parsed: Vec<(String, Source)> = fs.iter().map(|f| (slot(f.id), Source::parse(&f.source))).collect();
            let refs: Vec<(String, &Source)> = parsed.iter().map(|(s, src)| (s.clone(), src)).collect();
            let scope = expression_scope(&format!("c{cid}"), &format!("x{cid}"), &refs).unwrap_or_default();
            let rows: Vec<String> = fs
                .iter()
                .map(|f| {
                    format!(
                        "({}::integer, {}::text, ({})::jsonb, {}::integer, {})",
                        f.id,
                        literal(&f.target),
                        import_value(f, &Source::parse(&f.source)),
                        f.confidence,
                        f.empty_is_value
                    )
                })
                .collect();
            format!(
                "SELECT c{cid}.mesh_id, c{cid}.connector_id, c{cid}.anchor, c{cid}.observed_at, f.rule_id, \
                 f.attribute, f.value, f.confidence, f.empty_is_value\n\
                 FROM mesh.connector_object c{cid}\n{scope}\n\
                 CROSS JOIN LATERAL (VALUES {}) f(rule_id, attribute, value, confidence, empty_is_value)\n\
                 WHERE c{cid}.connector_id = {cid} AND c{cid}.object_type = {} AND c{cid}.mesh_id IS NOT NULL AND NOT c{cid}.deleted",
                rows.join(", "),
                literal(ot)
            )
        })
        .collect();
    selects.join("\nUNION ALL\n")
}

/// Finds, for connector objects not joined yet, the mesh objects one join rule matches,
/// and records anchors with at least one candidate in `_mesh_join`. Anchors decided by an
/// earlier rule are skipped. `$1` is the sync's change_seq fence (objects changed after it),
/// or NULL for every unjoined object.
pub fn join_sql(rule: &JoinRule) -> String {
    let cid = rule.connector_id;
    let src = Source::parse(&rule.source);
    let scope = expression_scope("c", "x", &[("v".to_string(), &src)]).unwrap_or_default();
    format!(
        "INSERT INTO _mesh_join (connector_id, anchor, position, candidates, mesh_ids)\n\
         SELECT {cid}, c.anchor, {pos}, count(*), array_agg(o.id ORDER BY o.id)\n\
         FROM mesh.connector_object c\n{scope}\n\
         JOIN mesh.mesh_object o ON o.object_type = {ot} AND NOT o.deleted AND o.attrs->>{attr} = {value}\n\
         WHERE c.connector_id = {cid} AND c.object_type = {ot} AND c.mesh_id IS NULL AND NOT c.deleted AND NOT c.disconnected\n\
           AND ($1::bigint IS NULL OR c.change_seq > $1)\n\
           AND NOT EXISTS (SELECT 1 FROM _mesh_join j WHERE j.connector_id = {cid} AND j.anchor = c.anchor)\n\
         GROUP BY c.anchor",
        pos = rule.position,
        ot = literal(&rule.object_type),
        attr = literal(&rule.mesh_attribute),
        value = src.text("c", "x", "v"),
    )
}

/// Mesh objects whose reference contributions from `flow` point at nothing yet: kept in
/// `mesh.unresolved_reference` so they are recomputed when the target arrives.
pub fn unresolved_references_sql(flow: &ImportFlow, scope: Scope) -> Option<String> {
    if !flow.reference {
        return None;
    }
    let cid = flow.connector_id;
    let src = Source::parse(&flow.source);
    let scope_sql = expression_scope(
        &format!("c{cid}"),
        &format!("x{cid}"),
        &[(slot(flow.id), &src)],
    )
    .unwrap_or_default();
    let raw = src.jsonb(&format!("c{cid}"), &format!("x{cid}"), &slot(flow.id));
    let affected = match scope {
        Scope::Affected => format!("JOIN _mesh_affected a ON a.id = c{cid}.mesh_id\n"),
        _ => String::new(),
    };
    Some(format!(
        "INSERT INTO mesh.unresolved_reference (mesh_id, rule_id, connector_id, name_key)\n\
         SELECT DISTINCT c{cid}.mesh_id, {rid}, {refc}, mesh.name_key(e.value)\n\
         FROM mesh.connector_object c{cid}\n{affected}{scope_sql}\n\
         CROSS JOIN LATERAL mesh.ref_values({raw}) e(value)\n\
         WHERE c{cid}.connector_id = {cid} AND c{cid}.object_type = {ot} AND c{cid}.mesh_id IS NOT NULL AND NOT c{cid}.deleted\n\
           AND NOT EXISTS (SELECT 1 FROM mesh.connector_object r WHERE r.connector_id = {refc} \
               AND r.name_key = mesh.name_key(e.value) AND NOT r.deleted AND r.mesh_id IS NOT NULL)\n\
         ON CONFLICT DO NOTHING",
        rid = flow.id,
        refc = flow.ref_connector_id,
        ot = literal(&flow.object_type),
    ))
}

/// The export plan of one connector's objects of one type: for each mesh object in scope
/// (or already linked), the values the export flows compute, turned into an operation
/// (add, update, disable, delete, disconnect) and attribute changes in `_mesh_plan`,
/// keeping only rows with something to do (or a pending export to revise). Everything
/// per attribute is written out here, so no SQL function runs per object.
pub fn export_plan_sql(
    connector_id: i32,
    object_type: &str,
    flows: &[ExportFlow],
    provisioning: Option<&Provisioning>,
    scope: Scope,
) -> String {
    let flows: Vec<&ExportFlow> = flows
        .iter()
        .filter(|f| f.connector_id == connector_id && f.object_type == object_type)
        .collect();
    let parsed: Vec<(String, Source)> = flows
        .iter()
        .map(|f| (slot(f.id), Source::parse(&f.source)))
        .collect();
    let scope_src = provisioning
        .and_then(|p| p.scope.as_ref())
        .map(|s| Source::Expression {
            text: s.clone(),
            names: crate::sql::used_names(s),
        });
    let mut refs: Vec<(String, &Source)> = parsed.iter().map(|(s, src)| (s.clone(), src)).collect();
    if let Some(s) = &scope_src {
        refs.push(("in_scope".to_string(), s));
    }
    let expr_scope = expression_scope("o", "x", &refs).unwrap_or_default();
    let pairs: Vec<(String, String)> = flows
        .iter()
        .zip(parsed.iter())
        .map(|(f, (slot, src))| {
            let raw = src.jsonb("o", "x", slot);
            let v = if f.reference {
                format!("mesh.ref_name({connector_id}, {raw})")
            } else {
                raw
            };
            (f.target.clone(), v)
        })
        .collect();
    let in_scope = if scope_src.is_some() {
        "COALESCE((x.in_scope)::boolean, false)"
    } else {
        "true"
    };
    let (provision, deprovision) = match provisioning {
        Some(p) => ("true", literal(p.deprovision.name())),
        None => ("false", "'leave'".to_string()),
    };
    // What disabling writes (the policy's values, each of which may clear an attribute).
    let (disable_values, disable_attributes): (String, Vec<(String, bool)>) =
        match provisioning.map(|p| &p.deprovision) {
            Some(Deprovision::Disable(v)) => (
                format!("({}::jsonb)", literal(&v.to_string())),
                v.as_object()
                    .map(|m| m.keys().map(|k| (k.clone(), true)).collect())
                    .unwrap_or_default(),
            ),
            _ => ("NULL::jsonb".to_string(), Vec::new()),
        };
    let mut attributes: Vec<(String, bool)> = Vec::new();
    for f in &flows {
        match attributes.iter_mut().find(|(t, _)| *t == f.target) {
            Some(a) => a.1 |= f.empty_is_value,
            None => attributes.push((f.target.clone(), f.empty_is_value)),
        }
    }
    let mut previous_keys: Vec<String> = attributes
        .iter()
        .chain(disable_attributes.iter())
        .map(|(k, _)| k.clone())
        .collect();
    previous_keys.sort();
    previous_keys.dedup();
    let add_attributes: Vec<(String, bool)> =
        attributes.iter().map(|(k, _)| (k.clone(), false)).collect();
    // `d` computes each object's wanted values once (OFFSET 0 keeps it a subquery of its
    // own); `y` its operation and changes once, for the filter and for the insert.
    format!(
        "INSERT INTO _mesh_plan (connector_id, mesh_id, object_type, anchor, name, mesh_deleted, op, changes, previous)\n\
         SELECT y.connector_id, y.mesh_id, y.object_type, y.anchor, y.name, y.mesh_deleted, y.op, y.changes, {previous}\n\
         FROM (\n\
         SELECT d.connector_id, d.mesh_id, d.object_type, d.anchor, d.name, d.current, d.mesh_deleted, x.op,\n\
         CASE x.op WHEN 'add' THEN {add} WHEN 'update' THEN {update} WHEN 'disable' THEN {disable_diff} \
         ELSE '{{}}'::jsonb END AS changes\n\
         FROM (\n\
         SELECT {connector_id} AS connector_id, o.id AS mesh_id, o.object_type, c.anchor, c.name, c.attrs AS current, \
         {want} AS want, {in_scope} AS in_scope, o.deleted AS mesh_deleted, {provision} AS provision, \
         {deprovision}::text AS deprovision\n\
         {objects}\
         LEFT JOIN mesh.connector_object c ON c.connector_id = {connector_id} AND c.mesh_id = o.id AND NOT c.deleted\n\
         {expr_scope}\n\
         WHERE o.object_type = {ot} AND (NOT o.deleted OR c.anchor IS NOT NULL) AND (o.deleted OR o.delete_at IS NULL)\n\
         OFFSET 0) d\n\
         CROSS JOIN LATERAL (SELECT CASE\n\
         WHEN d.anchor IS NULL THEN CASE WHEN d.provision AND NOT d.mesh_deleted AND d.in_scope THEN 'add' END\n\
         WHEN d.mesh_deleted OR (d.provision AND NOT d.in_scope) THEN\n\
         CASE d.deprovision WHEN 'delete' THEN 'delete' WHEN 'disable' THEN 'disable' ELSE 'disconnect' END\n\
         ELSE 'update' END AS op) x\n\
         OFFSET 0) y\n\
         WHERE y.op IN ('add', 'delete', 'disable', 'disconnect') OR y.changes <> '{{}}'\n\
         OR EXISTS (SELECT 1 FROM mesh.pending_export pe WHERE pe.connector_id = y.connector_id AND pe.mesh_id = y.mesh_id)",
        previous = previous_sql("y.current", "y.changes", &previous_keys),
        add = diff_sql("NULL::jsonb", "d.want", &add_attributes),
        update = diff_sql("d.current", "d.want", &attributes),
        disable_diff = diff_sql("d.current", &disable_values, &disable_attributes),
        want = build_object(&pairs),
        objects = mesh_objects(scope),
        ot = literal(object_type),
    )
}

/// The values `cur` had for the keys of `changes` it has (what an export overwrites, kept
/// with the pending export), written out for the keys a plan can change.
pub fn previous_sql(cur: &str, changes: &str, keys: &[String]) -> String {
    if keys.is_empty() {
        return "'{}'::jsonb".to_string();
    }
    let parts: Vec<String> = keys
        .iter()
        .map(|k| {
            let k = literal(k);
            format!("CASE WHEN {changes} ? {k} AND {cur} ? {k} THEN jsonb_build_object({k}, {cur}->{k}) ELSE '{{}}'::jsonb END")
        })
        .collect();
    format!("('{{}}'::jsonb || {})", parts.join(" || "))
}

/// The attribute-level difference `mesh.diff(cur, want, nullable)` written out for the
/// attributes a plan knows when it is compiled: no SQL function runs per row (a call of
/// `mesh.diff` costs about 10 µs a row). `attributes`: each target and whether an empty
/// value clears it. A multi-valued value equal as a set to the current one is no change.
pub fn diff_sql(cur: &str, want: &str, attributes: &[(String, bool)]) -> String {
    if attributes.is_empty() {
        return "'{}'::jsonb".to_string();
    }
    let parts: Vec<String> = attributes
        .iter()
        .map(|(target, nullable)| {
            let k = literal(target);
            let (c, w) = (format!("{cur}->{k}"), format!("{want}->{k}"));
            let counts = if *nullable {
                String::new()
            } else {
                format!("NOT mesh.is_empty({w}) AND ")
            };
            // mesh.same_value is SQL the planner inlines: no call per row.
            format!(
                "CASE WHEN {counts}NOT mesh.same_value({c}, {w}) \
                 THEN jsonb_build_object({k}, mesh.nullif_empty({w})) ELSE '{{}}'::jsonb END"
            )
        })
        .collect();
    format!("('{{}}'::jsonb || {})", parts.join(" || "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn flow(id: i32, cid: i32, name: &str, src: &str, target: &str, conf: i32) -> ImportFlow {
        ImportFlow {
            id,
            connector_id: cid,
            connector_name: name.into(),
            object_type: "person".into(),
            source: src.into(),
            target: target.into(),
            confidence: conf,
            empty_is_value: false,
            reference: false,
            ref_connector_id: cid,
        }
    }

    #[test]
    fn case_follows_confidence_order() {
        let hr = flow(1, 1, "HR", "title", "title", 90);
        let pb = flow(2, 2, "Phonebook", "title", "title", 50);
        let sql = attribute_case(&[&pb, &hr]);
        let hr_at = sql.find("c1.attrs->'title'").unwrap();
        let pb_at = sql.find("c2.attrs->'title'").unwrap();
        assert!(hr_at < pb_at, "HR (90) must be tested first: {sql}");
        assert!(sql.contains("NOT mesh.is_empty(c1.attrs->'title')"));
    }

    #[test]
    fn ties_use_time_then_name() {
        let a = flow(1, 1, "Alpha", "title", "title", 50);
        let b = flow(2, 2, "Beta", "title", "title", 50);
        let sql = attribute_case(&[&a, &b]);
        assert!(
            sql.contains("ORDER BY t.observed_at DESC, t.connector LIMIT 1"),
            "{sql}"
        );
        assert!(sql.contains("'Alpha'") && sql.contains("'Beta'"));
    }

    #[test]
    fn clearing_rule_contributes_null_and_counts_when_present() {
        let mut a = flow(1, 1, "HR", "title", "title", 90);
        a.empty_is_value = true;
        let sql = attribute_case(&[&a]);
        assert_eq!(
            sql,
            "CASE WHEN c1.anchor IS NOT NULL THEN mesh.nullif_empty(c1.attrs->'title') END"
        );
    }

    #[test]
    fn resolution_statement_shape() {
        let flows = vec![
            flow(1, 1, "HR", "title", "title", 90),
            flow(2, 2, "Phonebook", "title", "title", 50),
            flow(3, 1, "HR", "first || ' ' || last", "display_name", 80),
        ];
        let sql = resolution_sql("person", &flows, Scope::Affected);
        assert!(sql.contains("FROM _mesh_affected a\nCROSS JOIN LATERAL (SELECT m0.*, m0.ctid AS ctid FROM mesh.mesh_object m0 WHERE m0.id = a.id OFFSET 0) o\n"), "{sql}");
        assert!(sql.contains("LEFT JOIN mesh.connector_object c1 ON c1.connector_id = 1"));
        assert!(sql.contains("LEFT JOIN mesh.connector_object c2 ON c2.connector_id = 2"));
        assert!(sql.contains("x1.v3"), "{sql}");
        assert!(sql.contains("WHERE m.ctid = r.row_id AND r.old_attrs IS DISTINCT FROM r.attrs"));
        assert!(
            sql.contains("OFFSET 0\n) r"),
            "resolved once per object: {sql}"
        );
        let full = resolution_sql("person", &flows, Scope::All);
        assert!(!full.contains("_mesh_affected"));
    }

    #[test]
    fn many_attributes_split_build_object() {
        let flows: Vec<ImportFlow> = (0..90)
            .map(|i| flow(i, 1, "HR", &format!("a{i}"), &format!("a{i}"), 50))
            .collect();
        let sql = resolution_sql("person", &flows, Scope::All);
        assert_eq!(sql.matches("jsonb_build_object(").count(), 3);
    }

    #[test]
    fn reference_flows_go_through_mesh_ref() {
        let mut m = flow(4, 1, "HR", "manager_id", "manager", 90);
        m.reference = true;
        let sql = attribute_case(&[&m]);
        assert!(sql.contains("mesh.ref(1, c1.attrs->'manager_id')"), "{sql}");
        let u = unresolved_references_sql(&m, Scope::Affected).unwrap();
        assert!(u.contains("mesh.ref_values(c1.attrs->'manager_id')"));
        assert!(unresolved_references_sql(&flow(5, 1, "HR", "x", "x", 1), Scope::All).is_none());
    }

    #[test]
    fn join_statement_uses_rule_attribute() {
        let r = JoinRule {
            connector_id: 2,
            object_type: "person".into(),
            position: 1,
            source: "employeeID".into(),
            mesh_attribute: "employee_id".into(),
        };
        let sql = join_sql(&r);
        assert!(
            sql.contains("o.attrs->>'employee_id' = c.attrs->>'employeeID'"),
            "{sql}"
        );
        let r2 = JoinRule {
            source: "lower(mail)".into(),
            ..r
        };
        assert!(join_sql(&r2).contains("(x.v #>> '{}')"));
    }

    #[test]
    fn export_plan_with_scope_and_reference() {
        let flows = vec![
            ExportFlow {
                id: 1,
                connector_id: 3,
                object_type: "person".into(),
                source: "email".into(),
                target: "mail".into(),
                empty_is_value: false,
                reference: false,
            },
            ExportFlow {
                id: 2,
                connector_id: 3,
                object_type: "person".into(),
                source: "manager".into(),
                target: "manager_id".into(),
                empty_is_value: true,
                reference: true,
            },
        ];
        let prov = Provisioning {
            connector_id: 3,
            object_type: "person".into(),
            scope: Some("department IS NOT NULL".into()),
            deprovision: Deprovision::Delete,
        };
        let sql = export_plan_sql(3, "person", &flows, Some(&prov), Scope::Affected);
        assert!(sql.contains("'mail', o.attrs->'email'"), "{sql}");
        assert!(sql.contains("mesh.ref_name(3, o.attrs->'manager')"));
        // update: the manager may be cleared, the mail may not; the add writes non-empty values
        assert!(
            sql.contains(
                "WHEN 'update' THEN ('{}'::jsonb || CASE WHEN NOT mesh.is_empty(d.want->'mail')"
            ),
            "{sql}"
        );
        assert!(
            sql.contains(
                "|| CASE WHEN NOT mesh.same_value(d.current->'manager_id', d.want->'manager_id')"
            ),
            "{sql}"
        );
        assert!(sql.contains("WHEN 'add' THEN ('{}'::jsonb || CASE WHEN NOT mesh.is_empty(d.want->'mail') AND NOT mesh.same_value(NULL::jsonb->'mail'"), "{sql}");
        assert!(
            sql.contains("CASE WHEN y.changes ? 'manager_id' AND y.current ? 'manager_id' THEN"),
            "{sql}"
        );
        assert!(sql.contains("COALESCE((x.in_scope)::boolean, false)"));
        assert!(sql.contains("o.attrs->>'department' AS \"department\""));
        assert!(
            sql.contains("true AS provision, 'delete'::text AS deprovision\n"),
            "{sql}"
        );
    }

    #[test]
    fn disabling_writes_the_disable_values_and_keeps_their_previous_ones() {
        let flows = vec![ExportFlow {
            id: 1,
            connector_id: 3,
            object_type: "person".into(),
            source: "title".into(),
            target: "title".into(),
            empty_is_value: false,
            reference: false,
        }];
        let prov = Provisioning {
            connector_id: 3,
            object_type: "person".into(),
            scope: None,
            deprovision: Deprovision::Disable(json!({"active": false})),
        };
        let sql = export_plan_sql(3, "person", &flows, Some(&prov), Scope::All);
        assert!(
            sql.contains("WHEN 'disable' THEN ('{}'::jsonb || CASE WHEN NOT mesh.same_value(d.current->'active', ('{\"active\":false}'::jsonb)->'active')"),
            "{sql}"
        );
        assert!(sql.contains("CASE WHEN y.changes ? 'active' AND y.current ? 'active'"));
        assert!(sql.contains("CASE WHEN y.changes ? 'title' AND y.current ? 'title'"));
    }

    #[test]
    fn lifecycle_reads_a_deltas_objects_by_index_and_all_objects_in_one_pass() {
        let delta = lifecycle_sql(Scope::Affected);
        assert!(
            delta.contains("FROM _mesh_affected a\nCROSS JOIN LATERAL (SELECT m0.*"),
            "{delta}"
        );
        assert!(delta.contains("WHERE c.connector_id = k.id AND c.mesh_id = cand.id AND NOT c.deleted OFFSET 0) c ON true"));
        let full = lifecycle_sql(Scope::All);
        assert!(
            full.contains("FROM mesh.mesh_object o\nWHERE NOT o.deleted"),
            "{full}"
        );
        assert!(full.contains(
            "FROM mesh.connector_object c JOIN cand ON cand.id = c.mesh_id AND NOT c.deleted"
        ));
        for sql in [&delta, &full] {
            assert!(sql.contains("WHERE o.ctid = act.row_id"));
            assert!(sql.ends_with("SELECT count(*) FILTER (WHERE go) FROM upd"));
        }
    }

    #[test]
    fn compiled_diff_has_an_arm_per_attribute() {
        let d = diff_sql(
            "d.current",
            "d.want",
            &[("mail".into(), false), ("manager_id".into(), true)],
        );
        assert!(d.starts_with("('{}'::jsonb || CASE WHEN NOT mesh.is_empty(d.want->'mail') AND NOT mesh.same_value(d.current->'mail', d.want->'mail')"), "{d}");
        // an attribute whose empty value clears has no emptiness condition
        assert!(
            d.contains(
                "|| CASE WHEN NOT mesh.same_value(d.current->'manager_id', d.want->'manager_id')"
            ),
            "{d}"
        );
        assert!(d.contains(
            "THEN jsonb_build_object('manager_id', mesh.nullif_empty(d.want->'manager_id'))"
        ));
        assert_eq!(diff_sql("c", "w", &[]), "'{}'::jsonb");
    }

    #[test]
    fn join_attributes_only_for_projected_objects() {
        let flows = vec![
            flow(1, 1, "HR", "id", "employee_id", 100),
            flow(2, 1, "HR", "title", "title", 90),
        ];
        let sql = join_attributes_sql("person", &flows, &["employee_id".to_string()]).unwrap();
        assert!(
            sql.starts_with("INSERT INTO mesh.mesh_object (id, object_type, projected_by, attrs)"),
            "{sql}"
        );
        assert!(sql.contains("FROM _mesh_projected o\nLEFT JOIN mesh.connector_object c1 ON c1.connector_id = 1 AND c1.mesh_id = o.id"));
        assert!(
            sql.contains("'employee_id'") && !sql.contains("'title'"),
            "{sql}"
        );
        assert!(join_attributes_sql("person", &flows, &["mail".to_string()]).is_none());
    }

    #[test]
    fn deprovision_options() {
        assert_eq!(
            Deprovision::from_options(&json!({})).unwrap(),
            Deprovision::Leave
        );
        assert_eq!(
            Deprovision::from_options(&json!({"deprovision": "delete"})).unwrap(),
            Deprovision::Delete
        );
        assert!(Deprovision::from_options(&json!({"deprovision": "disable"})).is_err());
        assert!(Deprovision::from_options(&json!({"deprovision": "shred"}))
            .unwrap_err()
            .contains("shred"));
        let d = Deprovision::from_options(
            &json!({"deprovision": "disable", "disable": {"active": false}}),
        )
        .unwrap();
        assert_eq!(d, Deprovision::Disable(json!({"active": false})));
        // A misspelled or misplaced option is refused, never read as "leave".
        let typo = Deprovision::from_options(&json!({"deprovison": "delete"})).unwrap_err();
        assert!(typo.contains("\"deprovison\""), "{typo}");
        assert!(Deprovision::from_options(&json!({"deprovision": null})).is_err());
    }

    #[test]
    fn contributions_view_has_fixed_columns_when_empty() {
        assert!(contributions_sql(&[]).contains("WHERE false"));
        let sql = contributions_sql(&[
            flow(1, 1, "HR", "title", "title", 90),
            flow(2, 2, "PB", "title", "title", 50),
        ]);
        assert_eq!(sql.matches("UNION ALL").count(), 1);
    }
}

/// Adds to `_mesh_affected` the mesh objects whose reference attribute `target` points at
/// an affected object (their targets' identifiers may have changed).
pub fn referrers_sql(target: &str) -> String {
    format!(
        "INSERT INTO _mesh_affected SELECT o.id FROM _mesh_affected a \
         JOIN mesh.mesh_object o ON o.attrs->{t} @> to_jsonb(a.id) ON CONFLICT DO NOTHING",
        t = literal(target)
    )
}

/// A statement that checks an import flow's source compiles (runs on no rows).
pub fn check_import_source_sql(flow: &ImportFlow) -> String {
    let cid = flow.connector_id;
    let src = Source::parse(&flow.source);
    let scope = expression_scope(
        &format!("c{cid}"),
        &format!("x{cid}"),
        &[(slot(flow.id), &src)],
    )
    .unwrap_or_default();
    format!(
        "SELECT {} FROM mesh.connector_object c{cid} {scope} LIMIT 0",
        import_value(flow, &src)
    )
}

/// A statement that checks an expression over mesh attributes compiles; with `condition`
/// it must also be a boolean condition.
pub fn check_mesh_expression_sql(expr: &str, condition: bool) -> String {
    check_mesh_expression_over(expr, condition, None)
}

/// As [`check_mesh_expression_sql`], with only the `attributes` given as columns (all the
/// names the expression seems to use when None): a name PostgreSQL then reads as a column
/// fails it with 42703, and words that are no column (`current_date`, `integer` in a
/// cast, `year` in `extract`) are no attribute.
pub fn check_mesh_expression_over(expr: &str, condition: bool, attributes: Option<&[String]>) -> String {
    let names: Vec<crate::sql::UsedName> = crate::sql::used_names(expr)
        .into_iter()
        .filter(|n| attributes.is_none_or(|a| a.contains(&n.key)))
        .collect();
    let cols: Vec<String> = names
        .iter()
        .map(|n| {
            format!(
                "o.attrs->>{} AS {}",
                literal(&n.key),
                crate::sql::ident(&n.column)
            )
        })
        .collect();
    let inner = format!(
        "SELECT {} FROM mesh.mesh_object o",
        if cols.is_empty() {
            "1 AS one".to_string()
        } else {
            cols.join(", ")
        }
    );
    if condition {
        format!("SELECT 1 FROM ({inner}) s WHERE ({expr}) LIMIT 0")
    } else {
        format!("SELECT to_jsonb(({expr})) FROM ({inner}) s LIMIT 0")
    }
}

/// A statement that checks a join rule's source compiles.
pub fn check_join_source_sql(rule: &JoinRule) -> String {
    let src = Source::parse(&rule.source);
    let scope = expression_scope("c", "x", &[("v".to_string(), &src)]).unwrap_or_default();
    format!(
        "SELECT {} FROM mesh.connector_object c {scope} LIMIT 0",
        src.text("c", "x", "v")
    )
}
