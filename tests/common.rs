//! shared helpers
