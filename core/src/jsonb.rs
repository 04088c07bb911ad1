//! Reading PostgreSQL's binary jsonb in place: whether a value is empty (the sync asks
//! that for every attribute of every object, and the SQL way to ask, four jsonb
//! comparisons, costs about 0.7 µs; the header answers it in a few loads), and the whole
//! value (`to_value`, for the export's batches: no text written by the server and parsed
//! again).
//!
//! The layout (PostgreSQL `utils/jsonb.h`): a 32-bit container header (element count and
//! the flags scalar / object / array), then one 32-bit entry per element whose top bits
//! are its type and whose low 28 bits its length or end offset. A scalar is a one-element
//! array flagged scalar. Both words are in the machine's byte order.

pub(crate) const COUNT_MASK: u32 = 0x0FFF_FFFF;
pub(crate) const FLAG_SCALAR: u32 = 0x1000_0000;
pub(crate) const FLAG_OBJECT: u32 = 0x2000_0000;
pub(crate) const FLAG_ARRAY: u32 = 0x4000_0000;
pub(crate) const ENTRY_LENGTH_MASK: u32 = 0x0FFF_FFFF;
pub(crate) const ENTRY_TYPE_MASK: u32 = 0x7000_0000;
pub(crate) const ENTRY_HAS_OFFSET: u32 = 0x8000_0000;
pub(crate) const ENTRY_STRING: u32 = 0x0000_0000;
pub(crate) const ENTRY_NUMERIC: u32 = 0x1000_0000;
pub(crate) const ENTRY_FALSE: u32 = 0x2000_0000;
pub(crate) const ENTRY_TRUE: u32 = 0x3000_0000;
pub(crate) const ENTRY_NULL: u32 = 0x4000_0000;
pub(crate) const ENTRY_CONTAINER: u32 = 0x5000_0000;

fn word(bytes: &[u8], at: usize) -> Option<u32> {
    bytes
        .get(at..at + 4)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// Whether the jsonb value (its data, without the varlena header) is one of the values that
/// mean "no value": JSON null, the empty string or the empty array. An object, even an
/// empty one, is a value.
pub fn is_empty_value(data: &[u8]) -> bool {
    let Some(header) = word(data, 0) else {
        return false;
    };
    let count = header & COUNT_MASK;
    if header & FLAG_SCALAR != 0 {
        return match word(data, 4) {
            Some(entry) if count == 1 => match entry & ENTRY_TYPE_MASK {
                ENTRY_NULL => true,
                ENTRY_STRING => entry & ENTRY_LENGTH_MASK == 0,
                _ => false,
            },
            _ => false,
        };
    }
    header & FLAG_ARRAY != 0 && count == 0
}

/// The JSON value of a jsonb datum (its data, without the varlena header), read from the
/// binary form: the export reads every pending change this way, which skips `jsonb_out`
/// writing it as text and a JSON parser reading the text back (most of reading a batch).
/// None when the bytes are not what this reader knows (a truncated value, text that is
/// not UTF-8, a numeric it cannot read); the caller then goes through the text.
pub fn to_value(data: &[u8]) -> Option<serde_json::Value> {
    let header = word(data, 0)?;
    if header & FLAG_SCALAR != 0 {
        // A scalar is stored as a one-element array.
        let mut items = match container(data, 0, 0)? {
            serde_json::Value::Array(items) => items,
            _ => return None,
        };
        return (items.len() == 1).then(|| items.pop()).flatten();
    }
    container(data, 0, 0)
}

/// Deeper values are read through their text (which has no such limit).
const MAX_DEPTH: usize = 200;

/// The container starting at `at`.
fn container(data: &[u8], at: usize, depth: usize) -> Option<serde_json::Value> {
    if depth > MAX_DEPTH {
        return None;
    }
    let header = word(data, at)?;
    let count = (header & COUNT_MASK) as usize;
    let object = header & FLAG_OBJECT != 0;
    let entries = if object { count.checked_mul(2)? } else { count };
    let base = at.checked_add(4)?.checked_add(entries.checked_mul(4)?)?;
    if base > data.len() {
        return None;
    }
    // Each child's data runs from the end of the one before to its own end: an entry holds
    // either its length or (every 32nd) its end offset.
    let mut start = 0usize;
    let mut read = |i: usize| -> Option<(u32, usize, usize)> {
        let entry = word(data, at + 4 + 4 * i)?;
        let value = (entry & ENTRY_LENGTH_MASK) as usize;
        let end = if entry & ENTRY_HAS_OFFSET != 0 {
            value
        } else {
            start.checked_add(value)?
        };
        let from = start;
        start = end;
        (from <= end && base + end <= data.len()).then_some((
            entry & ENTRY_TYPE_MASK,
            base + from,
            base + end,
        ))
    };
    let mut children = Vec::with_capacity(entries);
    for i in 0..entries {
        children.push(read(i)?);
    }
    let child = |(kind, from, end): (u32, usize, usize)| -> Option<serde_json::Value> {
        use serde_json::Value;
        // Numbers and containers start 4-byte aligned; the padding counts in their length.
        let aligned = base + (from - base).next_multiple_of(4);
        Some(match kind {
            ENTRY_STRING => {
                Value::String(std::str::from_utf8(data.get(from..end)?).ok()?.to_string())
            }
            ENTRY_NUMERIC => Value::Number(numeric_text(data.get(aligned..end)?)?.parse().ok()?),
            ENTRY_FALSE => Value::Bool(false),
            ENTRY_TRUE => Value::Bool(true),
            ENTRY_NULL => Value::Null,
            ENTRY_CONTAINER if aligned <= end => container(data.get(..end)?, aligned, depth + 1)?,
            _ => return None,
        })
    };
    if object {
        let mut map = serde_json::Map::new();
        for (key, value) in children[..count].iter().zip(&children[count..]) {
            let serde_json::Value::String(key) = child(*key)? else {
                return None;
            };
            map.insert(key, child(*value)?);
        }
        Some(serde_json::Value::Object(map))
    } else {
        let items: Option<Vec<_>> = children.into_iter().map(child).collect();
        Some(serde_json::Value::Array(items?))
    }
}

/// The text `numeric_out` writes for a numeric datum (varlena header included), or None
/// for what a JSON number cannot be (NaN, infinities) and headers this reader does not
/// know. The datum is PostgreSQL's base-10000 form: a 16-bit header (sign, display scale,
/// and in the short form the weight), in the long form a 16-bit weight, then the digits.
pub fn numeric_text(datum: &[u8]) -> Option<String> {
    // The varlena header: 4 bytes (the form numbers take inside jsonb) or 1; read on a
    // little-endian machine only (the bit layout differs on others).
    if !cfg!(target_endian = "little") {
        return None;
    }
    let first = *datum.first()?;
    let body = if first & 0x03 == 0 {
        let len = (word(datum, 0)? >> 2) as usize;
        datum.get(4..len)?
    } else if first & 0x01 == 1 && first != 0x01 {
        datum.get(1..(first >> 1) as usize)?
    } else {
        return None;
    };
    let half = |at: usize| -> Option<u16> {
        body.get(at..at + 2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
    };
    let header = half(0)?;
    let (negative, scale, weight, digits_at) = match header & 0xC000 {
        0x8000 => {
            let weight = if header & 0x0040 != 0 {
                (header & 0x003F) as i32 - 64
            } else {
                (header & 0x003F) as i32
            };
            (
                header & 0x2000 != 0,
                ((header & 0x1F80) >> 7) as usize,
                weight,
                2,
            )
        }
        0xC000 => return None,
        sign => (
            sign == 0x4000,
            (header & 0x3FFF) as usize,
            half(2)? as i16 as i32,
            4,
        ),
    };
    let digits: Vec<u16> = body
        .get(digits_at..)?
        .chunks_exact(2)
        .map(|b| u16::from_ne_bytes([b[0], b[1]]))
        .collect();
    if digits.iter().any(|&d| d > 9999) {
        return None;
    }
    let digit = |i: i32| -> u16 {
        usize::try_from(i)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let mut out = String::with_capacity(8 + 4 * digits.len() + scale);
    if negative {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for i in 0..=weight {
            if i == 0 {
                out.push_str(&digit(i).to_string());
            } else {
                out.push_str(&format!("{:04}", digit(i)));
            }
        }
    }
    if scale > 0 {
        out.push('.');
        let mut i = weight + 1;
        let mut left = scale;
        while left > 0 {
            let group = format!("{:04}", digit(i));
            let take = left.min(4);
            out.push_str(&group[..take]);
            left -= take;
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(words: &[u32], tail: &[u8]) -> Vec<u8> {
        let mut v: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        v.extend_from_slice(tail);
        v
    }

    fn read_back(text: &str) -> Option<serde_json::Value> {
        let built = crate::jsonb_build::from_text(text, &mut crate::jsonb_build::numeric_of)
            .unwrap_or_else(|| panic!("the builder declined {text}"));
        to_value(&built)
    }

    #[test]
    fn values_read_back_as_their_json() {
        let long = format!(
            "{{\"k\": [{}]}}",
            (0..70)
                .map(|i| format!("\"v{i}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let wide = format!(
            "{{{}}}",
            (0..40)
                .map(|i| format!("\"key{i}\": {i}.5"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for text in [
            "{}",
            "[]",
            "null",
            "true",
            "\"\"",
            "\"Ada \\\"the Countess\\\" Lovelace \\u00e9\"",
            "12.50",
            "-0.0001",
            "{\"name\": \"Ada\", \"salary\": 123456789012345678901234567890.1234567891, \"active\": false, \"manager\": null}",
            "{\"members\": [\"a\", 1, [2, [3, {\"x\": []}]], {\"y\": {\"z\": true}}], \"a\": 1, \"a\": 2}",
            "[1, \"two\", 3.000, null, true, false, {}, []]",
            "{\"üß\": \"日本\", \"\": \"empty key\", \"esc\": \"\\u00e9\\n\\t\"}",
            long.as_str(),
            wide.as_str(),
        ] {
            let expected: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(read_back(text), Some(expected), "{text}");
        }
    }

    #[test]
    fn numerics_read_as_numeric_out_writes_them() {
        for text in [
            "0",
            "1",
            "-1",
            "9999",
            "10000",
            "12345678",
            "0.0001",
            "123.4500",
            "-0.5",
            "99999999.99999999",
            "100000000",
            "0.00000001",
            "1.000",
            "0.00",
        ] {
            let datum = crate::jsonb_build::numeric_of(text).unwrap();
            assert_eq!(numeric_text(&datum).as_deref(), Some(text), "{text}");
        }
        // "-0" is 0 to a numeric.
        assert_eq!(
            numeric_text(&crate::jsonb_build::numeric_of("-0").unwrap()).as_deref(),
            Some("0")
        );
        // The long form (as a scale over 63 makes it): sign, scale 64, weight 0, digits 1 and 5000.
        let mut long = vec![0u8; 4];
        for half in [0x4000u16 | 64, 0, 1, 5000] {
            long.extend_from_slice(&half.to_ne_bytes());
        }
        let len = (long.len() as u32) << 2;
        long[..4].copy_from_slice(&len.to_ne_bytes());
        assert_eq!(numeric_text(&long), Some(format!("-1.5{}", "0".repeat(63))));
        // NaN and a truncated datum are not numbers this reader gives.
        let nan = [8u8 << 2, 0, 0, 0, 0x00, 0xC0, 0, 0];
        assert_eq!(numeric_text(&nan), None);
        assert_eq!(numeric_text(&[40, 0, 0, 0, 0, 0x80]), None);
    }

    #[test]
    fn damaged_values_are_declined() {
        let good = crate::jsonb_build::from_text(
            "{\"a\": [1, \"b\"]}",
            &mut crate::jsonb_build::numeric_of,
        )
        .unwrap();
        for cut in 0..good.len() {
            assert_eq!(to_value(&good[..cut]), None, "cut at {cut}");
        }
        assert_eq!(
            to_value(&bytes(&[FLAG_ARRAY | FLAG_SCALAR | 1, 2], &[0xff, 0xfe])),
            None,
            "not UTF-8"
        );
    }

    #[test]
    fn empty_values() {
        // null, "" (scalars), [] (an array of none)
        assert!(is_empty_value(&bytes(
            &[FLAG_ARRAY | FLAG_SCALAR | 1, ENTRY_NULL],
            &[]
        )));
        assert!(is_empty_value(&bytes(
            &[FLAG_ARRAY | FLAG_SCALAR | 1, 0x8000_0000],
            &[]
        )));
        assert!(is_empty_value(&bytes(&[FLAG_ARRAY], &[])));
    }

    #[test]
    fn values() {
        // "a", 0 (numeric), false, [null], {} and a truncated value
        assert!(!is_empty_value(&bytes(
            &[FLAG_ARRAY | FLAG_SCALAR | 1, 1],
            b"a"
        )));
        assert!(!is_empty_value(&bytes(
            &[FLAG_ARRAY | FLAG_SCALAR | 1, 0x1000_0008],
            &[0; 8]
        )));
        assert!(!is_empty_value(&bytes(
            &[FLAG_ARRAY | FLAG_SCALAR | 1, 0x2000_0000],
            &[]
        )));
        assert!(!is_empty_value(&bytes(&[FLAG_ARRAY | 1, ENTRY_NULL], &[])));
        assert!(!is_empty_value(&bytes(&[0x2000_0000], &[])));
        assert!(!is_empty_value(&[0, 0]));
    }
}
