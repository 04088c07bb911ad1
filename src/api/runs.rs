//! Runs from a session. `mesh.run`, `mesh.sync` and `mesh.cycle` (sql/sync.sql) wrap these.

use crate::engine;
use pgrx::prelude::*;

/// Runs one profile of one connector now, in this session; returns the run id.
#[pg_extern(volatile)]
fn _run(connector: &str, profile: &str, parent_run: default!(Option<i64>, "NULL")) -> i64 {
    engine::run(connector, profile, parent_run)
}

/// Runs a whole cycle under an existing cycle run (mesh.cycle() creates it).
#[pg_extern(volatile)]
fn _cycle(cycle_run: i64) {
    engine::cycle(cycle_run)
}

/// The statements a sync step runs, compiled from the current rules.
#[pg_extern(volatile)]
fn _compile(
    step: &str,
    full: bool,
) -> TableIterator<
    'static,
    (
        name!(connector_id, Option<i32>),
        name!(object_type, String),
        name!(sql, String),
    ),
> {
    TableIterator::new(engine::compile::statements(step, full))
}

/// Rebuilds the `mesh.contributions` view after the import flows changed.
#[pg_extern(volatile)]
fn _rebuild_views() {
    engine::compile::rebuild_views()
}

/// The settings every engine run works under (`idmesh_core::sql::RENDERING_SETTINGS`):
/// sql/roles.sql gives them to the functions that run the engine, so they stay in one place.
#[pg_extern(immutable, parallel_safe)]
fn _rendering_settings() -> TableIterator<'static, (name!(name, String), name!(value, String))> {
    TableIterator::new(
        idmesh_core::sql::RENDERING_SETTINGS
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string())),
    )
}
