//! Reading PostgreSQL's binary jsonb just far enough to tell an empty value: the sync asks
//! "is this value empty?" for every attribute of every object, and the SQL way to ask
//! (four jsonb comparisons) costs about 0.7 µs; the header answers it in a few loads.
//!
//! The layout (PostgreSQL `utils/jsonb.h`): a 32-bit container header (element count and
//! the flags scalar / object / array), then one 32-bit entry per element whose top bits
//! are its type and whose low 28 bits its length or end offset. A scalar is a one-element
//! array flagged scalar. Both words are in the machine's byte order.

const COUNT_MASK: u32 = 0x0FFF_FFFF;
const FLAG_SCALAR: u32 = 0x1000_0000;
const FLAG_ARRAY: u32 = 0x4000_0000;
const ENTRY_TYPE_MASK: u32 = 0x7000_0000;
const ENTRY_STRING: u32 = 0x0000_0000;
const ENTRY_NULL: u32 = 0x4000_0000;
const ENTRY_LENGTH_MASK: u32 = 0x0FFF_FFFF;

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

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(words: &[u32], tail: &[u8]) -> Vec<u8> {
        let mut v: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        v.extend_from_slice(tail);
        v
    }

    #[test]
    fn empty_values() {
        // null, "" (scalars), [] (an array of none)
        assert!(is_empty_value(&bytes(&[FLAG_ARRAY | FLAG_SCALAR | 1, ENTRY_NULL], &[])));
        assert!(is_empty_value(&bytes(&[FLAG_ARRAY | FLAG_SCALAR | 1, 0x8000_0000], &[])));
        assert!(is_empty_value(&bytes(&[FLAG_ARRAY], &[])));
    }

    #[test]
    fn values() {
        // "a", 0 (numeric), false, [null], {} and a truncated value
        assert!(!is_empty_value(&bytes(&[FLAG_ARRAY | FLAG_SCALAR | 1, 1], b"a")));
        assert!(!is_empty_value(&bytes(&[FLAG_ARRAY | FLAG_SCALAR | 1, 0x1000_0008], &[0; 8])));
        assert!(!is_empty_value(&bytes(&[FLAG_ARRAY | FLAG_SCALAR | 1, 0x2000_0000], &[])));
        assert!(!is_empty_value(&bytes(&[FLAG_ARRAY | 1, ENTRY_NULL], &[])));
        assert!(!is_empty_value(&bytes(&[0x2000_0000], &[])));
        assert!(!is_empty_value(&[0, 0]));
    }
}
