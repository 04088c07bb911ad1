//! idmesh-core: the engine's pure logic, free of pgrx so it is unit-tested in plain Rust.
//!
//! - [`sql`]: quoting and the scanner that finds the attributes a flow expression uses.
//! - [`source`]: what a flow's source means (an attribute, an expression, a reference).
//! - [`resolve`]: confidence resolution order, in Rust; the SQL the engine runs follows it.
//! - [`compile`]: flow, join and provisioning rules compiled into set-based SQL.
//! - [`delta`]: delta-column predicates and overlap windows for SQL sources.
//! - [`export_sql`]: the statements that apply export batches to SQL tables (PostgreSQL, SQL Server MERGE).
//! - [`value_text`]: export values as a column's input text, as the JSON batch would store them.

pub mod ad;
pub mod compile;
pub mod delta;
pub mod dn;
pub mod export_sql;
pub mod jsonb;
pub mod jsonb_build;
pub mod resolve;
pub mod source;
pub mod sql;
pub mod value_text;
