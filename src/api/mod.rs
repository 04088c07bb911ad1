//! SQL-callable functions, one file per area. Public names live in schema `mesh`; helpers
//! the SQL layer calls start with an underscore.

mod connectors;
mod rules;
mod runs;
