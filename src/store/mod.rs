//! SPI access: the only place that speaks SPI. Results come back as JSON where that keeps
//! the glue small (configuration, rules); bulk data moves in set-based statements.

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::JsonB;
use pgrx::PgMemoryContexts;
use serde_json::Value;
use std::panic::AssertUnwindSafe;

/// Runs a statement whose first column of the first row is jsonb, or json (text); Null
/// when no row. Bulk reads return json: built as text, it skips jsonb's binary form on the
/// way out (a batch of pending exports costs a fifth of its jsonb twin).
pub fn json(sql: &str, args: &[DatumWithOid]) -> Value {
    Spi::connect_mut(|c| {
        let t = c.update(sql, Some(1), args)?;
        if t.is_empty() {
            return Ok::<_, pgrx::spi::Error>(Value::Null);
        }
        if t.column_type_oid(1)?.value() == pg_sys::JSONOID {
            // SAFETY: a non-null datum of the json column the statement returns.
            return Ok(match t.first().get_datum_by_ordinal(1)? {
                Some(d) => match unsafe { <&str>::from_datum(d, false) } {
                    // A result the engine cannot read is an error, never "no rows".
                    Some(text) => serde_json::from_str(text)
                        .unwrap_or_else(|e| panic!("the engine could not read a JSON result: {e}")),
                    None => Value::Null,
                },
                None => Value::Null,
            });
        }
        // Converted here, in SPI's own memory context: pgrx's typed getters copy the datum
        // into the parent context (the transaction's, for an atomic SPI connection), which
        // would keep every batch's result until commit.
        Ok(match t.first().get_datum_by_ordinal(1)? {
            // SAFETY: a non-null datum of the jsonb column the statement returns.
            Some(d) => unsafe { JsonB::from_datum(d, false) }
                .map(|j| j.0)
                .unwrap_or(Value::Null),
            None => Value::Null,
        })
    })
    .unwrap_or_else(|e| panic!("SPI: {e}"))
}

/// One row of a bulk read: its columns' datums, read in place in SPI's memory (no copy).
pub struct Row<'a> {
    datums: &'a [Option<pg_sys::Datum>],
    types: &'a [pg_sys::Oid],
}

impl Row<'_> {
    /// The column's datum, after checking it has the type the caller reads it as.
    fn datum(&self, column: usize, oid: pg_sys::Oid) -> Option<pg_sys::Datum> {
        assert_eq!(
            self.types[column], oid,
            "column {column} of a bulk read has another type"
        );
        self.datums[column]
    }

    pub fn int8(&self, column: usize) -> Option<i64> {
        self.datum(column, pg_sys::INT8OID)
            .map(|d| d.value() as i64)
    }

    pub fn text(&self, column: usize) -> Option<String> {
        // SAFETY: a non-null text datum of the row (checked above), valid while the row is.
        self.datum(column, pg_sys::TEXTOID)
            .and_then(|d| unsafe { <&str>::from_datum(d, false) })
            .map(str::to_string)
    }

    /// A jsonb column's value, read from its binary form (`idmesh_core::jsonb::to_value`),
    /// through its text only where that reader declines.
    pub fn jsonb(&self, column: usize) -> Option<Value> {
        let d = self.datum(column, pg_sys::JSONBOID)?;
        // SAFETY: a non-null jsonb datum of the row; detoasting allocates in SPI's memory.
        unsafe {
            idmesh_core::jsonb::to_value(crate::values::varlena_bytes(d))
                .or_else(|| JsonB::from_datum(d, false).map(|j| j.0))
        }
    }
}

/// Runs a query and hands each row to `f`, its columns read in place: a batch of rows costs
/// no JSON text on the way out and no copy into a longer-lived memory context.
pub fn each_row(sql: &str, args: &[DatumWithOid], mut f: impl FnMut(&Row)) {
    Spi::connect_mut(|c| {
        let mut t = c.update(sql, None, args)?;
        if t.is_empty() {
            return Ok(());
        }
        let n = t.columns()?;
        let types: Vec<pg_sys::Oid> = (1..=n)
            .map(|k| t.column_type_oid(k).map(|o| o.value()))
            .collect::<Result<_, _>>()?;
        let mut datums = Vec::with_capacity(n);
        while t.next().is_some() {
            datums.clear();
            for k in 1..=n {
                datums.push(t.get_datum_by_ordinal(k)?);
            }
            f(&Row {
                datums: &datums,
                types: &types,
            });
        }
        Ok::<_, pgrx::spi::Error>(())
    })
    .unwrap_or_else(|e| panic!("SPI: {e}"))
}

/// Takes the engine's transaction-level lock (see `mesh._lock` in sql/sync.sql).
pub fn lock() {
    exec("SELECT mesh._lock()", &[]);
}

/// Runs a statement; returns the number of rows it processed.
pub fn exec(sql: &str, args: &[DatumWithOid]) -> u64 {
    Spi::connect_mut(|c| c.update(sql, None, args).map(|t| t.len() as u64))
        .unwrap_or_else(|e| panic!("SPI: {e}"))
}

/// A scalar result (first column of the first row).
pub fn one<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid]) -> Option<T> {
    Spi::connect_mut(|c| {
        let t = c.update(sql, Some(1), args)?;
        if t.is_empty() {
            return Ok(None);
        }
        t.first().get_one::<T>()
    })
    .unwrap_or_else(|e| panic!("SPI: {e}"))
}

/// Column names and type names of a query's result, without running it.
pub fn columns_of(sql: &str) -> Vec<(String, String)> {
    Spi::connect_mut(|c| {
        let t = c.update(&format!("SELECT * FROM ({sql}) q LIMIT 0"), None, &[])?;
        let n = t.columns()?;
        let mut out = Vec::with_capacity(n);
        for i in 1..=n {
            let name = t.column_name(i)?;
            let oid = t.column_type_oid(i)?.value();
            out.push((name, oid));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .unwrap_or_else(|e| panic!("SPI: {e}"))
    .into_iter()
    .map(|(name, oid)| {
        let ty: String = one("SELECT format_type($1, NULL)", &[oid.into()]).unwrap_or_default();
        (name, ty)
    })
    .collect()
}

/// An error caught from SQL run in a subtransaction.
#[derive(Debug, Clone)]
pub struct SqlError {
    pub code: PgSqlErrorCode,
    pub message: String,
}

impl SqlError {
    pub fn sqlstate(&self) -> String {
        crate::error::sqlstate(self.code)
    }
}

/// Runs `f` in a subtransaction: on an error, everything `f` did is rolled back and the
/// error comes back as a value, so one bad object does not fail a run.
pub fn subxact<T>(f: impl FnOnce() -> T) -> Result<T, SqlError> {
    let (ctx, owner) = unsafe {
        let ctx = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(ctx);
        (ctx, owner)
    };
    let result = PgTryBuilder::new(AssertUnwindSafe(|| Ok(f())))
        .catch_others(|e| {
            let r = crate::error::report_of(&e);
            Err(SqlError {
                code: r.sql_error_code(),
                message: r.message().to_string(),
            })
        })
        .execute();
    unsafe {
        match result {
            Ok(_) => pg_sys::ReleaseCurrentSubTransaction(),
            Err(_) => pg_sys::RollbackAndReleaseCurrentSubTransaction(),
        }
        pg_sys::MemoryContextSwitchTo(ctx);
        pg_sys::CurrentResourceOwner = owner;
    }
    result
}

/// A memory context for one batch that outlives a single call: what runs in it across
/// several calls (each poll of a connector's export) is freed together when it drops.
pub struct BatchContext(PgMemoryContexts);

impl BatchContext {
    /// A child of TopMemoryContext: the batch may span a worker's commit (its checkpoint),
    /// which deletes the transaction's contexts and every context under them.
    pub fn new() -> Self {
        // SAFETY: creates the context under TopMemoryContext and switches straight back.
        BatchContext(unsafe {
            PgMemoryContexts::TopMemoryContext.switch_to(|_| PgMemoryContexts::new("idmesh batch"))
        })
    }

    pub fn run<R>(&mut self, f: impl FnOnce() -> R) -> R {
        // SAFETY: the context lives as long as `self`; `f` runs in it and returns to the
        // caller's context.
        unsafe { self.0.switch_to(|_| f()) }
    }
}

/// Runs one batch in a memory context of its own, deleted afterwards: what SPI and datum
/// conversions allocate for a batch is freed with it, so a run's memory stays flat
/// however many batches it has.
pub fn in_batch_context<R>(f: impl FnOnce() -> R) -> R {
    let mut ctx = PgMemoryContexts::new("idmesh batch");
    // SAFETY: the context is created just above and lives until `ctx` drops after the call.
    unsafe { ctx.switch_to(|_| f()) }
}
