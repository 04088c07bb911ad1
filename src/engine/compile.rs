//! Loads the rules and hands them to `idmesh_core::compile`: the statements a sync runs.

use crate::store;
use idmesh_core::compile::*;
use serde_json::Value;

fn rows(sql: &str) -> Vec<Value> {
    store::json(sql, &[])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn s(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}
fn i(v: &Value, k: &str) -> i32 {
    v.get(k).and_then(Value::as_i64).unwrap_or_default() as i32
}
fn b(v: &Value, k: &str) -> bool {
    v.get(k).and_then(Value::as_bool).unwrap_or(false)
}

pub fn import_flows() -> Vec<ImportFlow> {
    rows(
        "SELECT coalesce(jsonb_agg(jsonb_build_object('id', f.id, 'connector_id', f.connector_id, 'connector_name', c.name, \
         'object_type', f.object_type, 'source', f.source, 'target', f.target, 'confidence', f.confidence, \
         'empty_is_value', f.empty_is_value, 'reference', f.reference, \
         'ref_connector_id', coalesce(f.references_connector, f.connector_id)) ORDER BY f.id), '[]') \
         FROM mesh.flow_rule f JOIN mesh.connector c ON c.id = f.connector_id WHERE f.direction = 'import'",
    )
    .iter()
    .map(|r| ImportFlow {
        id: i(r, "id"),
        connector_id: i(r, "connector_id"),
        connector_name: s(r, "connector_name"),
        object_type: s(r, "object_type"),
        source: s(r, "source"),
        target: s(r, "target"),
        confidence: i(r, "confidence"),
        empty_is_value: b(r, "empty_is_value"),
        reference: b(r, "reference"),
        ref_connector_id: i(r, "ref_connector_id"),
    })
    .collect()
}

pub fn export_flows() -> Vec<ExportFlow> {
    rows(
        "SELECT coalesce(jsonb_agg(to_jsonb(f) ORDER BY f.id), '[]') FROM mesh.flow_rule f WHERE f.direction = 'export'",
    )
    .iter()
    .map(|r| ExportFlow {
        id: i(r, "id"),
        connector_id: i(r, "connector_id"),
        object_type: s(r, "object_type"),
        source: s(r, "source"),
        target: s(r, "target"),
        empty_is_value: b(r, "empty_is_value"),
        reference: b(r, "reference"),
    })
    .collect()
}

pub fn join_rules() -> Vec<JoinRule> {
    rows("SELECT coalesce(jsonb_agg(to_jsonb(j) ORDER BY j.connector_id, j.object_type, j.position), '[]') FROM mesh.join_rule j")
        .iter()
        .map(|r| JoinRule {
            connector_id: i(r, "connector_id"),
            object_type: s(r, "object_type"),
            position: i(r, "position"),
            source: s(r, "source"),
            mesh_attribute: s(r, "mesh_attribute"),
        })
        .collect()
}

pub fn provisioning() -> Vec<Provisioning> {
    rows("SELECT coalesce(jsonb_agg(to_jsonb(p)), '[]') FROM mesh.provisioning p")
        .iter()
        .map(|r| Provisioning {
            connector_id: i(r, "connector_id"),
            object_type: s(r, "object_type"),
            scope: r.get("scope").and_then(Value::as_str).map(str::to_string),
            // A stored policy that no longer reads is an error, never a quiet "leave".
            deprovision: Deprovision::from_options(r.get("options").unwrap_or(&Value::Null)).unwrap_or_else(|m| {
                crate::error::invalid(
                    format!("the provisioning of {} in connector {}: {m}", s(r, "object_type"), i(r, "connector_id")),
                    "Set it again with mesh.set_provisioning(connector, object_type, scope, options).",
                )
            }),
        })
        .collect()
}

/// The statements of one sync step, as (connector id, object type, sql).
pub fn statements(step: &str, full: bool) -> Vec<(Option<i32>, String, String)> {
    let scope = if full { Scope::All } else { Scope::Affected };
    match step {
        "join" => join_rules()
            .iter()
            .map(|r| (Some(r.connector_id), r.object_type.clone(), join_sql(r)))
            .collect(),
        "resolve" => {
            let flows = import_flows();
            let mut types: Vec<String> = flows.iter().map(|f| f.object_type.clone()).collect();
            types.sort();
            types.dedup();
            types
                .into_iter()
                .map(|t| (None, t.clone(), resolution_sql(&t, &flows, scope)))
                .collect()
        }
        "lifecycle" => vec![(None, String::new(), lifecycle_sql(scope))],
        "prejoin" => {
            let flows = import_flows();
            let rules = join_rules();
            let mut types: Vec<String> = rules.iter().map(|r| r.object_type.clone()).collect();
            types.sort();
            types.dedup();
            types
                .into_iter()
                .filter_map(|t| {
                    let attrs: Vec<String> = rules
                        .iter()
                        .filter(|r| r.object_type == t)
                        .map(|r| r.mesh_attribute.clone())
                        .collect();
                    join_attributes_sql(&t, &flows, &attrs).map(|sql| (None, t, sql))
                })
                .collect()
        }
        "unresolved" => import_flows()
            .iter()
            .filter_map(|f| {
                unresolved_references_sql(f, scope)
                    .map(|sql| (Some(f.connector_id), f.object_type.clone(), sql))
            })
            .collect(),
        "referrers" => {
            let mut targets: Vec<(String, String)> = import_flows()
                .into_iter()
                .filter(|f| f.reference)
                .map(|f| (f.object_type, f.target))
                .collect();
            targets.sort();
            targets.dedup();
            targets
                .into_iter()
                .map(|(t, target)| (None, t, referrers_sql(&target)))
                .collect()
        }
        "plan" => {
            let flows = export_flows();
            let prov = provisioning();
            let mut pairs: Vec<(i32, String)> = flows
                .iter()
                .map(|f| (f.connector_id, f.object_type.clone()))
                .chain(prov.iter().map(|p| (p.connector_id, p.object_type.clone())))
                .collect();
            pairs.sort();
            pairs.dedup();
            pairs
                .into_iter()
                .map(|(cid, t)| {
                    let p = prov
                        .iter()
                        .find(|p| p.connector_id == cid && p.object_type == t);
                    (
                        Some(cid),
                        t.clone(),
                        export_plan_sql(cid, &t, &flows, p, scope),
                    )
                })
                .collect()
        }
        "contributions" => vec![(None, String::new(), contributions_sql(&import_flows()))],
        other => crate::error::invalid(
            format!("unknown compile step \"{other}\""),
            "Steps: join, prejoin, lifecycle, resolve, unresolved, referrers, plan, contributions.",
        ),
    }
}

/// Rebuilds `mesh.contributions` from the current import flows.
pub fn rebuild_views() {
    let union = contributions_sql(&import_flows());
    store::exec(
        &format!(
            "CREATE OR REPLACE VIEW mesh.contributions AS \
             SELECT u.mesh_id, u.attribute, u.value, u.confidence, u.observed_at, c.name AS connector, u.rule_id, \
                    f.source, u.anchor COLLATE \"C\" AS anchor, u.empty_is_value \
             FROM ({union}) u JOIN mesh.connector c ON c.id = u.connector_id JOIN mesh.flow_rule f ON f.id = u.rule_id"
        ),
        &[],
    );
}
