//! idmesh: a bi-directional identity synchronization engine inside PostgreSQL.
//!
//! This crate is the thin pgrx glue: SQL-callable functions (`api`), the run drivers
//! (`engine`), SPI access (`store`) and the connectors. The rules compiler and resolution
//! order live in `idmesh-core`; the connector trait in `idmesh-sdk`; the schema, views and
//! the set-based sync in `sql/`.

use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

mod api;
mod connectors;
mod engine;
mod error;
mod guc;
mod secrets;
mod store;
mod values;
mod worker;

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::init();
    // Background runs exist only when loaded at server start.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        worker::register_launcher();
    }
}

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!("../sql/sync.sql", name = "sync", requires = ["schema"]);
extension_sql_file!("../sql/safety.sql", name = "safety", requires = ["sync"]);
extension_sql_file!(
    "../sql/workers.sql",
    name = "workers",
    requires = ["safety"]
);
extension_sql_file!("../sql/roles.sql", name = "roles", finalize);

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    include!("../pgrx-tests/scenarios.rs");
    include!("../pgrx-tests/safety.rs");
    include!("../pgrx-tests/process.rs");
    include!("../pgrx-tests/jsonb_build.rs");
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
