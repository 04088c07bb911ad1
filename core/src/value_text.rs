//! Export values as the text a PostgreSQL column's input function reads, for a batch that
//! travels as one text array per column (`export_sql::postgres_text_add`): exactly the text
//! `jsonb_populate_record` gives the JSON batch's values, as the two must store the same.
//! What cannot be said the same way (see `text_of`) is declined, and the batch goes as JSON.

use serde_json::Value;

/// How a target column takes a JSON value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextColumn {
    /// A scalar type (text, numbers, booleans, dates, uuids, enums, ...): a scalar's text.
    Scalar,
    /// `jsonb`: the value as JSON (jsonb does not keep its spelling, so compact JSON is it).
    Jsonb,
    /// A one-dimensional array of a scalar type: a JSON array of scalars as an array literal.
    ScalarArray,
}

/// The value's text for a column (None for NULL: a JSON null, or no value at all); Err
/// where it cannot be written as the JSON batch would store it.
pub fn text_of(column: TextColumn, value: Option<&Value>) -> Result<Option<String>, Declined> {
    match (column, value) {
        (_, None | Some(Value::Null)) => Ok(None),
        (TextColumn::Jsonb, Some(v)) => serde_json::to_string(v).map(Some).map_err(|_| Declined),
        (TextColumn::ScalarArray, Some(Value::Array(items))) => {
            let mut literal = String::from("{");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    literal.push(',');
                }
                match item {
                    Value::Null => literal.push_str("NULL"),
                    scalar => {
                        literal.push('"');
                        for ch in scalar_text(scalar)?.chars() {
                            if ch == '"' || ch == '\\' {
                                literal.push('\\');
                            }
                            literal.push(ch);
                        }
                        literal.push('"');
                    }
                }
            }
            literal.push('}');
            Ok(Some(literal))
        }
        // A JSON array or object in a scalar column: the JSON batch stores jsonb's own
        // spelling of it (`[1, 2]`), which is not serde's.
        (_, Some(scalar)) => scalar_text(scalar).map(Some),
    }
}

/// A value this module declines to write (the batch then goes as JSON).
#[derive(Debug, PartialEq, Eq)]
pub struct Declined;

/// A scalar's text as `jsonb_populate_record` gives it. Numbers keep their digits (the
/// engine carries them exactly); one with an exponent is declined, as jsonb would write it
/// out in full (`1e3` is `1000`, which an integer column takes and `1e3` it does not), and
/// so is a negative zero. A
/// NUL cannot be in a text value (nor in jsonb). Arrays and objects are declined.
fn scalar_text(value: &Value) -> Result<String, Declined> {
    match value {
        Value::String(s) if !s.contains('\0') => Ok(s.clone()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) => {
            let text = n.to_string();
            // jsonb keeps no negative zero: `-0.0` is `0.0` to a text column.
            let negative_zero = text.starts_with('-') && text.bytes().all(|b| matches!(b, b'-' | b'0' | b'.'));
            if text.contains(['e', 'E']) || negative_zero {
                Err(Declined)
            } else {
                Ok(text)
            }
        }
        _ => Err(Declined),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn texts(columns: &[TextColumn], values: &[Value]) -> Result<Vec<Option<String>>, Declined> {
        columns.iter().zip(values).map(|(c, v)| text_of(*c, Some(v))).collect()
    }

    fn some(texts: &[&str]) -> Vec<Option<String>> {
        texts.iter().map(|t| Some(t.to_string())).collect()
    }

    #[test]
    fn scalars_are_their_text() {
        use TextColumn::*;
        // Numbers keep their digits as the source wrote them (the scale of a numeric).
        let salary: Value = serde_json::from_str("1001.50").unwrap();
        let got = texts(
            &[Scalar, Scalar, Scalar, Scalar],
            &[json!("a\tb\\c\nd"), salary, json!(true), json!("O'Brien; DROP TABLE x")],
        );
        assert_eq!(got, Ok(some(&["a\tb\\c\nd", "1001.50", "true", "O'Brien; DROP TABLE x"])));
        // NULL for a JSON null and for no value at all (a column the change does not carry).
        assert_eq!(text_of(Scalar, Some(&json!(null))), Ok(None));
        assert_eq!(text_of(Jsonb, None), Ok(None));
        assert_eq!(text_of(ScalarArray, Some(&json!(null))), Ok(None));
    }

    #[test]
    fn jsonb_columns_take_json_and_arrays_take_array_literals() {
        use TextColumn::*;
        let got = texts(
            &[Jsonb, Jsonb, ScalarArray, ScalarArray, ScalarArray],
            &[
                json!({"k": "v\\w", "n": [1, 2]}),
                json!("just a string"),
                json!(["x,y", "q\"", null, 3, false, "b\\s"]),
                json!([]),
                json!("{4,5}"),
            ],
        );
        assert_eq!(
            got,
            Ok(some(&[
                "{\"k\":\"v\\\\w\",\"n\":[1,2]}",
                "\"just a string\"",
                "{\"x,y\",\"q\\\"\",NULL,\"3\",\"false\",\"b\\\\s\"}",
                "{}",
                "{4,5}",
            ]))
        );
    }

    #[test]
    fn what_the_json_batch_would_store_otherwise_is_declined() {
        use TextColumn::*;
        // jsonb's spelling of a structure in a text column is not serde's.
        assert_eq!(text_of(Scalar, Some(&json!([1, 2]))), Err(Declined));
        assert_eq!(text_of(Scalar, Some(&json!({"a": 1}))), Err(Declined));
        // Nested arrays, exponents and NUL characters.
        assert_eq!(text_of(ScalarArray, Some(&json!([[1], [2]]))), Err(Declined));
        let exponent: Value = serde_json::from_str("1e3").unwrap();
        assert_eq!(text_of(Scalar, Some(&exponent)), Err(Declined));
        let negative_zero: Value = serde_json::from_str("-0.00").unwrap();
        assert_eq!(text_of(Scalar, Some(&negative_zero)), Err(Declined));
        let negative: Value = serde_json::from_str("-0.01").unwrap();
        assert_eq!(text_of(Scalar, Some(&negative)), Ok(Some("-0.01".into())));
        assert_eq!(text_of(ScalarArray, Some(&json!(["a\u{0}b"]))), Err(Declined));
        assert_eq!(text_of(Scalar, Some(&json!("a\u{0}b"))), Err(Declined));
    }
}
