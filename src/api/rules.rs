//! Flow rules, join rules, projection and provisioning. Every rule is checked when it is
//! added: names must exist and expressions must compile, so a bad rule never reaches a sync.

use crate::connectors;
use crate::engine::{self, Connector};
use crate::error::{invalid, raise, undefined};
use crate::store::{self, subxact};
use idmesh_core::compile::{self as core_compile, Deprovision, ImportFlow, JoinRule};
use idmesh_core::source::Source;
use idmesh_core::sql::{ident, is_mesh_attribute_name, literal};
use pgrx::prelude::*;
use pgrx::JsonB;

fn object_type(name: &str) {
    let known: Option<bool> = store::one(
        "SELECT EXISTS (SELECT 1 FROM mesh.object_type WHERE name = $1)",
        &[name.into()],
    );
    if known != Some(true) {
        undefined(
            "object type",
            name,
            "Known types are in mesh.object_type; add one with mesh.create_object_type(name).",
        );
    }
}

fn mesh_attribute(name: &str) {
    if !is_mesh_attribute_name(name) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_NAME,
            format!("\"{name}\" is not a valid mesh attribute name"),
            "Mesh attribute names are letters, digits and underscores, starting with a letter.",
        );
    }
}

/// Every attribute `expr` reads is one an import flow of `object_type` gives: any other
/// reads as NULL for every object, a typo that would go unnoticed (a bare word is an
/// attribute: write `(true)` for a constant). The expression is compiled with those
/// attributes only as columns, so a word PostgreSQL does not read as a column
/// (`current_date`, a type name) is never taken for one. With `flows_first`, import flows
/// must come first; otherwise a rule made before them is not checked.
fn check_mesh_attributes(object_type: &str, expr: &str, what: &str, flows_first: bool, condition: bool) {
    let known: Vec<String> = store::json(
        "SELECT coalesce(jsonb_agg(DISTINCT target ORDER BY target), '[]') FROM mesh.flow_rule \
          WHERE direction = 'import' AND object_type = $1",
        &[object_type.into()],
    )
    .as_array()
    .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
    .unwrap_or_default();
    if known.is_empty() && !flows_first {
        return;
    }
    let sql = core_compile::check_mesh_expression_over(expr, condition, Some(&known));
    let Err(e) = subxact(|| store::exec(&sql, &[])) else {
        return;
    };
    if e.code != PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN {
        return; // another error is check_compiles's to report
    }
    // The attribute the server stopped at (its message names the column).
    let unknown = Source::parse(expr)
        .reads()
        .into_iter()
        .find(|n| !known.contains(n) && e.message.contains(&format!("\"{n}\"")))
        .unwrap_or_else(|| e.message.clone());
    if known.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
            format!("{what} \"{expr}\" uses \"{unknown}\", and no import flow of {object_type} gives any attribute yet"),
            "Add the import flows first: the attributes a rule uses are checked against them.",
        );
    }
    raise(
        PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
        format!("{what} \"{expr}\" uses \"{unknown}\", which no import flow of {object_type} gives"),
        &format!("{} A constant is written as an expression, e.g. (true).", close_names(&unknown, &known)),
    );
}

/// Runs a check statement; a failure becomes an error that names the rule part at fault.
fn check_compiles(sql: &str, what: &str, text: &str) {
    if let Err(e) = subxact(|| store::exec(sql, &[])) {
        raise(
            e.code,
            format!("{what} \"{text}\" is not valid: {}", e.message),
            "Write an attribute name or an SQL expression over attribute names.",
        );
    }
}

/// The closest names, for "did you mean" hints.
fn close_names(name: &str, known: &[String]) -> String {
    let lower = name.to_lowercase();
    let mut scored: Vec<(usize, &String)> = known
        .iter()
        .map(|k| (distance(&lower, &k.to_lowercase()), k))
        .collect();
    scored.sort();
    let close: Vec<&str> = scored
        .iter()
        .take(3)
        .filter(|(d, _)| *d <= 3)
        .map(|(_, k)| k.as_str())
        .collect();
    if close.is_empty() {
        format!("Known: {}.", known.join(", "))
    } else {
        format!("Did you mean: {}?", close.join(", "))
    }
}

fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A plain source attribute must be one the connector provides (where that is known).
/// The attributes a connector's objects of a type have: its discovered schema
/// (`mesh.discover_schema`), else what its kind knows before a run (None: not known).
fn known_attributes(c: &Connector, object_type: &str) -> Option<Vec<String>> {
    let found = store::json(
        "SELECT jsonb_agg(attribute ORDER BY attribute) FROM mesh.connector_schema WHERE connector_id = $1 AND object_type = $2",
        &[c.id.into(), object_type.into()],
    );
    match found.as_array() {
        Some(a) => Some(
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
        ),
        None => connectors::import_attributes(&c.kind, &c.config),
    }
}

fn source_attribute(c: &Connector, object_type: &str, source: &str) {
    let Source::Attribute(attr) = Source::parse(source) else {
        if let Some(known) = known_attributes(c, object_type) {
            for n in Source::parse(source).reads() {
                if !known.iter().any(|k| k == &n) {
                    pgrx::warning!(
                        "connector \"{}\" does not provide \"{n}\" ({})",
                        c.name,
                        close_names(&n, &known)
                    );
                }
            }
        }
        return;
    };
    if let Some(known) = known_attributes(c, object_type) {
        if !known.iter().any(|k| k == &attr) {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!("connector \"{}\" has no attribute \"{attr}\"", c.name),
                &close_names(&attr, &known),
            );
        }
    }
}

fn rules_changed() {
    store::exec("UPDATE mesh.sync_state SET rules_changed = true", &[]);
}

/// An index on a mesh attribute, so joins and reference lookups on it are index probes.
fn index_mesh_attribute(attr: &str) {
    create_index_once(
        &format!("mesh_object_attr_{}", attr.to_lowercase()),
        &format!("((attrs->>{}))", literal(attr)),
    );
}

/// A GIN index on a reference attribute: finding the objects that refer to a changed one
/// (`attrs->'manager' @> '42'`, also inside arrays of members) is an index probe.
fn index_reference_attribute(attr: &str) {
    create_index_once(
        &format!("mesh_object_ref_{}", attr.to_lowercase()),
        &format!("USING gin ((attrs->{}) jsonb_path_ops)", literal(attr)),
    );
}

/// `CREATE INDEX` on mesh.mesh_object (`how`: method and expression) unless an index of
/// that name is there: asked first, so the caller sees no "already exists" notice.
fn create_index_once(name: &str, how: &str) {
    let name: String = name.chars().take(60).collect();
    let exists = store::one::<bool>("SELECT to_regclass($1) IS NOT NULL", &[format!("mesh.{}", ident(&name)).into()]);
    if exists != Some(true) {
        store::exec(&format!("CREATE INDEX IF NOT EXISTS {} ON mesh.mesh_object {how}", ident(&name)), &[]);
    }
}

/// Adds an import flow: the connector's `source` (attribute or SQL expression) contributes
/// to mesh attribute `target` with `confidence` (0-100).
#[pg_extern(volatile)]
fn add_import_flow(
    connector: &str,
    object_type: &str,
    source: &str,
    target: &str,
    confidence: i32,
    empty_is_value: default!(bool, false),
    reference: default!(bool, false),
    reference_to: default!(Option<&str>, "NULL"),
) -> i32 {
    store::lock();
    let c = engine::connector(connector);
    self::object_type(object_type);
    mesh_attribute(target);
    let ref_connector = reference_to.map(|name| {
        if !reference {
            crate::error::invalid(
                "reference_to is for reference flows",
                "Add reference => true: the value then names objects of the connector given in reference_to.",
            );
        }
        engine::connector(name).id
    });
    if !(0..=100).contains(&confidence) {
        raise(
            PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
            format!("confidence {confidence} is out of range"),
            "Confidence is 0 to 100; the highest wins.",
        );
    }
    source_attribute(&c, object_type, source);
    let flow = ImportFlow {
        id: 0,
        connector_id: c.id,
        connector_name: c.name.clone(),
        object_type: object_type.into(),
        source: source.into(),
        target: target.into(),
        confidence,
        empty_is_value,
        reference,
        ref_connector_id: ref_connector.unwrap_or(c.id),
    };
    check_compiles(
        &core_compile::check_import_source_sql(&flow),
        "flow source",
        source,
    );
    let id = insert_flow(
        &c,
        "import",
        object_type,
        source,
        target,
        Some(confidence),
        empty_is_value,
        reference,
    );
    if let Some(r) = ref_connector {
        store::exec(
            "UPDATE mesh.flow_rule SET references_connector = $2 WHERE id = $1",
            &[id.into(), r.into()],
        );
    }
    if reference {
        index_reference_attribute(target);
    }
    rules_changed();
    engine::compile::rebuild_views();
    id
}

#[allow(clippy::too_many_arguments)]
fn insert_flow(
    c: &Connector,
    direction: &str,
    object_type: &str,
    source: &str,
    target: &str,
    confidence: Option<i32>,
    empty_is_value: bool,
    reference: bool,
) -> i32 {
    let taken: Option<bool> = store::one(
        "SELECT EXISTS (SELECT 1 FROM mesh.flow_rule WHERE connector_id = $1 AND direction = $2 AND object_type = $3 AND target = $4)",
        &[c.id.into(), direction.into(), object_type.into(), target.into()],
    );
    if taken == Some(true) {
        raise(
            PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
            format!("connector \"{}\" already has an {direction} flow to \"{target}\" for {object_type}", c.name),
            "Remove it first with mesh.remove_flow(rule_id); rules are listed in mesh.rules.",
        );
    }
    store::one::<i32>(
        "INSERT INTO mesh.flow_rule (connector_id, direction, object_type, source, target, confidence, empty_is_value, reference) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        &[
            c.id.into(),
            direction.into(),
            object_type.into(),
            source.trim().into(),
            target.into(),
            confidence.into(),
            empty_is_value.into(),
            reference.into(),
        ],
    )
    .expect("rule id")
}

/// Adds an export flow: mesh `source` (attribute or SQL expression over mesh attributes)
/// is written to the connector's `target` attribute or column.
#[pg_extern(volatile)]
fn add_export_flow(
    connector: &str,
    object_type: &str,
    source: &str,
    target: &str,
    empty_is_value: default!(bool, false),
    reference: default!(bool, false),
) -> i32 {
    store::lock();
    let c = engine::connector(connector);
    self::object_type(object_type);
    if let Some(known) = connectors::export_targets(&c.kind, &c.config)
        .or_else(|| known_attributes(&c, object_type).filter(|_| c.kind == "active_directory"))
    {
        if !known.iter().any(|k| k == target) {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!("connector \"{}\" cannot write \"{target}\"", c.name),
                &close_names(target, &known),
            );
        }
    } else if c.kind == "table"
        && c.config
            .get("export_functions")
            .map_or(true, |f| f.is_null())
    {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "connector \"{}\" has no export_table or export_functions",
                c.name
            ),
            "Set one with mesh.alter_connector(name, config => ...).",
        );
    }
    if let Source::Attribute(a) = Source::parse(source) {
        mesh_attribute(&a);
    }
    check_compiles(
        &core_compile::check_mesh_expression_sql(source, false),
        "export source",
        source,
    );
    check_mesh_attributes(object_type, source, "export source", true, false);
    let id = insert_flow(
        &c,
        "export",
        object_type,
        source,
        target,
        None,
        empty_is_value,
        reference,
    );
    rules_changed();
    id
}

/// An import flow that is the only one giving its attribute stays while a rule uses that
/// attribute: without it the attribute reads as NULL for every object (a provisioning
/// scope false for all of them would deprovision them all).
fn refuse_if_last_source(rule_id: i32) {
    let flow = store::json(
        "SELECT jsonb_build_object('type', object_type, 'attribute', target) FROM mesh.flow_rule f \
          WHERE id = $1 AND direction = 'import' \
            AND NOT EXISTS (SELECT 1 FROM mesh.flow_rule o WHERE o.id <> f.id AND o.direction = 'import' \
                              AND o.object_type = f.object_type AND o.target = f.target)",
        &[rule_id.into()],
    );
    let (Some(object_type), Some(attribute)) = (flow["type"].as_str(), flow["attribute"].as_str()) else {
        return;
    };
    let users = store::json(
        "SELECT coalesce(jsonb_agg(jsonb_build_array(what, expr)), '[]') FROM ( \
            SELECT format('the provisioning scope of %s', c.name) AS what, p.scope AS expr \
              FROM mesh.provisioning p JOIN mesh.connector c ON c.id = p.connector_id \
             WHERE p.object_type = $1 AND p.scope IS NOT NULL \
            UNION ALL \
            SELECT format('export flow #%s', f.id), f.source FROM mesh.flow_rule f \
             WHERE f.object_type = $1 AND f.direction = 'export' \
            UNION ALL \
            SELECT format('join rule #%s', j.id), j.mesh_attribute FROM mesh.join_rule j WHERE j.object_type = $1) u",
        &[object_type.into()],
    );
    let using: Vec<String> = users
        .as_array()
        .into_iter()
        .flatten()
        .filter(|u| Source::parse(u[1].as_str().unwrap_or_default()).reads().iter().any(|r| r == attribute))
        .filter_map(|u| u[0].as_str().map(str::to_string))
        .collect();
    if !using.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
            format!(
                "import flow #{rule_id} is the only one giving {object_type} attribute \"{attribute}\", which {} uses",
                using.join(", ")
            ),
            "Change or remove those first; rules are listed in mesh.rules.",
        );
    }
}

/// Removes a flow rule by id.
#[pg_extern(volatile)]
fn remove_flow(rule_id: i32) {
    store::lock();
    refuse_if_last_source(rule_id);
    let n = store::exec(
        "DELETE FROM mesh.flow_rule WHERE id = $1 RETURNING id",
        &[rule_id.into()],
    );
    if n == 0 {
        undefined(
            "flow rule",
            &rule_id.to_string(),
            "Rules are listed in mesh.rules.",
        );
    }
    rules_changed();
    engine::compile::rebuild_views();
}

/// Removes a join rule by id: objects already joined stay joined.
#[pg_extern(volatile)]
fn remove_join_rule(rule_id: i32) {
    store::lock();
    let n = store::exec("DELETE FROM mesh.join_rule WHERE id = $1 RETURNING id", &[rule_id.into()]);
    if n == 0 {
        undefined("join rule", &rule_id.to_string(), "Rules are listed in mesh.rules.");
    }
    rules_changed();
}

/// Stops creating objects of a type in a connector. Objects it created stay, joined and
/// kept up to date by the export flows; adds and deprovisionings not yet written are
/// dropped at once. (A scope that holds for nothing would deprovision every object instead.)
#[pg_extern(volatile)]
fn remove_provisioning(connector: &str, object_type: &str) {
    store::lock();
    let c = engine::connector(connector);
    let n = store::exec(
        "DELETE FROM mesh.provisioning WHERE connector_id = $1 AND object_type = $2 RETURNING 1",
        &[c.id.into(), object_type.into()],
    );
    if n == 0 {
        undefined(
            "provisioning",
            &format!("{} {object_type}", c.name),
            "Rules are listed in mesh.rules.",
        );
    }
    // Adds and deprovisionings not yet written go now: an export before the next sync
    // must not create what is no longer asked for.
    store::exec(
        "DELETE FROM mesh.pending_export WHERE connector_id = $1 AND object_type = $2 \
            AND operation IN ('add', 'disable', 'delete') AND status <> 'applied'",
        &[c.id.into(), object_type.into()],
    );
    rules_changed();
}

/// Adds the next join rule for a connector and object type: connector-side `source` equals
/// mesh attribute `mesh_attribute`. Rules are tried in order; two candidates is an error.
#[pg_extern(volatile)]
fn add_join_rule(connector: &str, object_type: &str, source: &str, mesh_attribute: &str) -> i32 {
    store::lock();
    let c = engine::connector(connector);
    self::object_type(object_type);
    self::mesh_attribute(mesh_attribute);
    // (a join rule may come before the flows: a typo there joins nothing, and deletes nothing)
    check_mesh_attributes(object_type, mesh_attribute, "join rule's mesh attribute", false, false);
    source_attribute(&c, object_type, source);
    let same: Option<i32> = store::one(
        "SELECT id FROM mesh.join_rule WHERE connector_id = $1 AND object_type = $2 AND source = $3 AND mesh_attribute = $4",
        &[c.id.into(), object_type.into(), source.trim().into(), mesh_attribute.into()],
    );
    if let Some(id) = same {
        raise(
            PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
            format!("connector \"{}\" already has this join rule (#{id})", c.name),
            "Rules are listed in mesh.rules.",
        );
    }
    let position: i32 = store::one(
        "SELECT coalesce(max(position), 0) + 1 FROM mesh.join_rule WHERE connector_id = $1 AND object_type = $2",
        &[c.id.into(), object_type.into()],
    )
    .unwrap_or(1);
    let rule = JoinRule {
        connector_id: c.id,
        object_type: object_type.into(),
        position,
        source: source.into(),
        mesh_attribute: mesh_attribute.into(),
    };
    check_compiles(
        &core_compile::check_join_source_sql(&rule),
        "join source",
        source,
    );
    index_mesh_attribute(mesh_attribute);
    rules_changed();
    store::one::<i32>(
        "INSERT INTO mesh.join_rule (connector_id, object_type, position, source, mesh_attribute) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        &[c.id.into(), object_type.into(), position.into(), source.trim().into(), mesh_attribute.into()],
    )
    .expect("join rule id")
}

/// Whether this connector may create mesh objects of this type when no join matches.
#[pg_extern(volatile)]
fn set_projection(connector: &str, object_type: &str, enabled: bool) {
    store::lock();
    let c = engine::connector(connector);
    self::object_type(object_type);
    store::exec(
        "INSERT INTO mesh.projection (connector_id, object_type, enabled) VALUES ($1, $2, $3) \
         ON CONFLICT (connector_id, object_type) DO UPDATE SET enabled = EXCLUDED.enabled",
        &[c.id.into(), object_type.into(), enabled.into()],
    );
    rules_changed();
}

/// Provision objects in this connector for mesh objects of the type in `scope` (an SQL
/// condition over mesh attributes; NULL = all). Options: deprovision (delete | disable |
/// leave, default leave), disable ({attribute: value} written on disable).
#[pg_extern(volatile)]
fn set_provisioning(
    connector: &str,
    object_type: &str,
    scope: Option<&str>,
    options: default!(JsonB, "'{}'"),
) {
    store::lock();
    let c = engine::connector(connector);
    self::object_type(object_type);
    if !options.0.is_object() {
        invalid("provisioning options must be a JSON object", "");
    }
    if let Err(msg) = Deprovision::from_options(&options.0) {
        invalid(msg, "");
    }
    if let Some(s) = scope {
        check_compiles(
            &core_compile::check_mesh_expression_sql(s, true),
            "provisioning scope",
            s,
        );
        // A misspelled attribute reads as NULL for every object: the scope would hold for
        // none, and a "delete" deprovisioning would delete every object of the target.
        check_mesh_attributes(object_type, s, "provisioning scope", true, true);
    }
    store::exec(
        "INSERT INTO mesh.provisioning (connector_id, object_type, scope, options) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (connector_id, object_type) DO UPDATE SET scope = EXCLUDED.scope, options = EXCLUDED.options",
        &[c.id.into(), object_type.into(), scope.into(), options.into()],
    );
    rules_changed();
}
