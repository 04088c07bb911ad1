//! Building PostgreSQL's binary jsonb from JSON text, as `jsonb_in` would, byte for byte.
//!
//! An import from another PostgreSQL database receives every row as JSON text; turning
//! it into jsonb inside the server (`t::jsonb`) was a quarter of the import's time, as the
//! server's parser copies each string a character at a time and sorts each object's keys.
//! Built here, the same bytes cost a fraction of that.
//!
//! The contract is strict: for any text this accepts, the result equals `jsonb_in`'s.
//! Whatever it is not sure of (invalid JSON, `\u0000`, lone surrogates, deep nesting,
//! numbers it does not encode itself and the caller cannot either) it declines with
//! `None`, and the caller leaves that row to the server, which then also reports the error.
//!
//! The layout (`utils/adt/jsonb_util.c`, `convertToJsonb`): a container is a 32-bit header
//! (count and kind), a 32-bit entry per child (type bits and length, every 32nd child its
//! end offset instead), then the children's data; an object has its keys first, sorted by
//! length then bytes (the last of equal keys wins), then its values. Numbers are numeric
//! datums and containers inside containers start 4-byte aligned; alignment counts from the
//! start of the value, which follows the 4-byte varlena header.

use std::borrow::Cow;

use crate::jsonb::{
    COUNT_MASK, ENTRY_CONTAINER, ENTRY_FALSE, ENTRY_HAS_OFFSET, ENTRY_LENGTH_MASK, ENTRY_NULL,
    ENTRY_NUMERIC, ENTRY_TRUE, ENTRY_TYPE_MASK, FLAG_ARRAY, FLAG_OBJECT, FLAG_SCALAR,
};
const OFFSET_STRIDE: usize = 32;
/// Deeper values are left to the server (which has its own stack-depth check).
const MAX_DEPTH: usize = 200;

enum Json<'a> {
    Null,
    Bool(bool),
    Number(&'a str),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

/// The jsonb value (the bytes after the varlena header) of `text`, or None to leave it to
/// the server. `numeric` gives a JSON number's numeric datum (varlena header included),
/// or None when it cannot.
pub fn from_text(text: &str, numeric: &mut dyn FnMut(&str) -> Option<Vec<u8>>) -> Option<Vec<u8>> {
    let mut p = Parser {
        text,
        s: text.as_bytes(),
        at: 0,
    };
    p.space();
    let value = p.value(0)?;
    p.space();
    if p.at != p.s.len() {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() + 64);
    match value {
        Json::Array(_) | Json::Object(_) => {
            container(&mut out, &value, numeric)?;
        }
        // A scalar alone is stored as a one-element array flagged scalar.
        scalar => {
            out.extend_from_slice(&(1 | FLAG_ARRAY | FLAG_SCALAR).to_ne_bytes());
            out.extend_from_slice(&[0; 4]);
            let entry = child(&mut out, &scalar, numeric)?;
            let entry = (entry & ENTRY_TYPE_MASK) | (entry & ENTRY_LENGTH_MASK) | ENTRY_HAS_OFFSET;
            out[4..8].copy_from_slice(&entry.to_ne_bytes());
        }
    }
    Some(out)
}

/// Pads `out` to a multiple of 4 bytes; returns the padding added.
fn pad(out: &mut Vec<u8>) -> u32 {
    let padding = (4 - out.len() % 4) % 4;
    out.resize(out.len() + padding, 0);
    padding as u32
}

/// Appends one child's data; returns its entry (type bits and length, padding included).
fn child(
    out: &mut Vec<u8>,
    v: &Json,
    numeric: &mut dyn FnMut(&str) -> Option<Vec<u8>>,
) -> Option<u32> {
    Some(match v {
        Json::Null => ENTRY_NULL,
        Json::Bool(true) => ENTRY_TRUE,
        Json::Bool(false) => ENTRY_FALSE,
        Json::String(s) => {
            out.extend_from_slice(s.as_bytes());
            u32::try_from(s.len())
                .ok()
                .filter(|&n| n <= ENTRY_LENGTH_MASK)?
        }
        Json::Number(text) => {
            let datum = numeric(text)?;
            let padding = pad(out);
            out.extend_from_slice(&datum);
            ENTRY_NUMERIC | (padding + datum.len() as u32)
        }
        Json::Array(_) | Json::Object(_) => ENTRY_CONTAINER | container(out, v, numeric)?,
    })
}

/// Appends a container; returns its length, padding before it included.
fn container(
    out: &mut Vec<u8>,
    v: &Json,
    numeric: &mut dyn FnMut(&str) -> Option<Vec<u8>>,
) -> Option<u32> {
    let base = out.len();
    pad(out);
    let (header, keys, values): (u32, Vec<&str>, Vec<&Json>) = match v {
        Json::Array(items) => (
            items.len() as u32 | FLAG_ARRAY,
            Vec::new(),
            items.iter().collect(),
        ),
        Json::Object(pairs) => {
            // By length, then bytes; of equal keys the last one read comes first and stays.
            let mut order: Vec<usize> = (0..pairs.len()).collect();
            order.sort_by(|&a, &b| {
                let (ka, kb) = (pairs[a].0.as_bytes(), pairs[b].0.as_bytes());
                ka.len().cmp(&kb.len()).then(ka.cmp(kb)).then(b.cmp(&a))
            });
            order.dedup_by(|later, kept| pairs[*later].0 == pairs[*kept].0);
            (
                order.len() as u32 | FLAG_OBJECT,
                order.iter().map(|&i| pairs[i].0.as_ref()).collect(),
                order.iter().map(|&i| &pairs[i].1).collect(),
            )
        }
        _ => return None,
    };
    if values.len() > COUNT_MASK as usize {
        return None;
    }
    out.extend_from_slice(&header.to_ne_bytes());
    let entries_at = out.len();
    let children = keys.len() + values.len();
    out.resize(entries_at + 4 * children, 0);
    let mut total: u32 = 0;
    let mut put = |out: &mut Vec<u8>, i: usize, entry: u32| -> Option<()> {
        total = total
            .checked_add(entry & ENTRY_LENGTH_MASK)
            .filter(|&t| t <= ENTRY_LENGTH_MASK)?;
        let entry = if i % OFFSET_STRIDE == 0 {
            (entry & ENTRY_TYPE_MASK) | total | ENTRY_HAS_OFFSET
        } else {
            entry
        };
        out[entries_at + 4 * i..entries_at + 4 * i + 4].copy_from_slice(&entry.to_ne_bytes());
        Some(())
    };
    for (i, k) in keys.iter().enumerate() {
        out.extend_from_slice(k.as_bytes());
        put(
            out,
            i,
            u32::try_from(k.len())
                .ok()
                .filter(|&n| n <= ENTRY_LENGTH_MASK)?,
        )?;
    }
    for (i, v) in values.iter().enumerate() {
        let entry = child(out, v, numeric)?;
        put(out, keys.len() + i, entry)?;
    }
    u32::try_from(out.len() - base)
        .ok()
        .filter(|&n| n <= ENTRY_LENGTH_MASK)
}

/// A JSON reader that accepts exactly what PostgreSQL's does (`common/jsonapi.c`), and
/// declines what it is not sure of.
struct Parser<'a> {
    text: &'a str,
    s: &'a [u8],
    at: usize,
}

/// Characters PostgreSQL reads as part of a word or number: one right after a literal or a
/// number makes it invalid ("truex", "01").
fn word_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

impl<'a> Parser<'a> {
    fn space(&mut self) {
        while matches!(self.s.get(self.at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn value(&mut self, depth: usize) -> Option<Json<'a>> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'{' => {
                self.at += 1;
                let mut pairs = Vec::new();
                self.space();
                if self.peek()? == b'}' {
                    self.at += 1;
                    return Some(Json::Object(pairs));
                }
                loop {
                    self.space();
                    if self.peek()? != b'"' {
                        return None;
                    }
                    let key = self.string()?;
                    self.space();
                    if self.peek()? != b':' {
                        return None;
                    }
                    self.at += 1;
                    self.space();
                    pairs.push((key, self.value(depth + 1)?));
                    self.space();
                    match self.peek()? {
                        b',' => self.at += 1,
                        b'}' => {
                            self.at += 1;
                            return Some(Json::Object(pairs));
                        }
                        _ => return None,
                    }
                }
            }
            b'[' => {
                self.at += 1;
                let mut items = Vec::new();
                self.space();
                if self.peek()? == b']' {
                    self.at += 1;
                    return Some(Json::Array(items));
                }
                loop {
                    self.space();
                    items.push(self.value(depth + 1)?);
                    self.space();
                    match self.peek()? {
                        b',' => self.at += 1,
                        b']' => {
                            self.at += 1;
                            return Some(Json::Array(items));
                        }
                        _ => return None,
                    }
                }
            }
            b'"' => self.string().map(Json::String),
            b'-' | b'0'..=b'9' => self.number(),
            _ => {
                let start = self.at;
                while self.peek().is_some_and(word_char) {
                    self.at += 1;
                }
                match &self.s[start..self.at] {
                    b"true" => Some(Json::Bool(true)),
                    b"false" => Some(Json::Bool(false)),
                    b"null" => Some(Json::Null),
                    _ => None,
                }
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.at += 1;
        }
        self.at - start
    }

    fn number(&mut self) -> Option<Json<'a>> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return None;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if self.digits() == 0 {
                return None;
            }
        }
        if self.peek().is_some_and(word_char) {
            return None;
        }
        // The slice is ASCII, cut at ASCII boundaries of a str.
        std::str::from_utf8(&self.s[start..self.at])
            .ok()
            .map(Json::Number)
    }

    fn hex4(&mut self) -> Option<u32> {
        let h = self.s.get(self.at..self.at + 4)?;
        let mut v = 0;
        for &c in h {
            v = v * 16 + (c as char).to_digit(16)?;
        }
        self.at += 4;
        Some(v)
    }

    /// Moves past plain characters (not a quote, a backslash or a control character) and
    /// returns them, as one slice: its ends are ASCII, so they fall between characters.
    fn plain(&mut self) -> &'a str {
        let start = self.at;
        while self
            .peek()
            .is_some_and(|c| c != b'"' && c != b'\\' && c >= 0x20)
        {
            self.at += 1;
        }
        &self.text[start..self.at]
    }

    fn string(&mut self) -> Option<Cow<'a, str>> {
        self.at += 1; // the opening quote
                      // Plain strings (no escape) are borrowed as they are.
        let first = self.plain();
        if self.peek()? == b'"' {
            self.at += 1;
            return Some(Cow::Borrowed(first));
        }
        let mut s = String::from(first);
        loop {
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    return Some(Cow::Owned(s));
                }
                b'\\' => {
                    self.at += 1;
                    let c = self.peek()?;
                    self.at += 1;
                    match c {
                        b'"' => s.push('"'),
                        b'\\' => s.push('\\'),
                        b'/' => s.push('/'),
                        b'b' => s.push('\u{8}'),
                        b'f' => s.push('\u{c}'),
                        b'n' => s.push('\n'),
                        b'r' => s.push('\r'),
                        b't' => s.push('\t'),
                        b'u' => {
                            let mut code = self.hex4()?;
                            if (0xD800..0xDC00).contains(&code) {
                                if self.s.get(self.at..self.at + 2)? != b"\\u" {
                                    return None;
                                }
                                self.at += 2;
                                let low = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&low) {
                                    return None;
                                }
                                code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                            }
                            // \u0000 and lone low surrogates: the server's error to give.
                            if code == 0 {
                                return None;
                            }
                            s.push(char::from_u32(code)?);
                        }
                        _ => return None,
                    }
                }
                // A control character must be escaped.
                c if c < 0x20 => return None,
                _ => s.push_str(self.plain()),
            }
        }
    }
}

/// The numeric datum (4-byte varlena header, then PostgreSQL's short numeric form) of a
/// JSON number without an exponent, as `numeric_in` makes it; None for the other forms.
pub fn numeric_of(text: &str) -> Option<Vec<u8>> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    if int.is_empty()
        || !int.bytes().all(|c| c.is_ascii_digit())
        || !frac.bytes().all(|c| c.is_ascii_digit())
        || unsigned.contains(['e', 'E'])
    {
        return None;
    }
    let dscale = frac.len();
    // Base-10000 digits aligned on the decimal point.
    let int_groups = int.len().div_ceil(4);
    let mut digits: Vec<i16> = Vec::with_capacity(int_groups + frac.len().div_ceil(4));
    let lead = int.len() - (int_groups - 1) * 4;
    let mut weight = int_groups as i32 - 1;
    let group = |s: &str| -> i16 {
        let mut v = 0i16;
        for c in s.bytes() {
            v = v * 10 + (c - b'0') as i16;
        }
        v
    };
    digits.push(group(&int[..lead]));
    for i in 0..int_groups - 1 {
        digits.push(group(&int[lead + 4 * i..lead + 4 * i + 4]));
    }
    for chunk in frac.as_bytes().chunks(4) {
        let mut v = group(std::str::from_utf8(chunk).ok()?);
        for _ in chunk.len()..4 {
            v *= 10;
        }
        digits.push(v);
    }
    // Leading and trailing zero digits go (the weight follows the leading ones).
    let first = digits.iter().position(|&d| d != 0);
    let (digits, sign_negative) = match first {
        None => {
            weight = 0;
            (&digits[..0], false)
        }
        Some(f) => {
            weight -= f as i32;
            let last = digits.iter().rposition(|&d| d != 0).unwrap_or(f);
            (&digits[f..=last], negative)
        }
    };
    // The short form holds scales up to 63 and weights from -64 to 63.
    if dscale > 63 || !(-64..=63).contains(&weight) {
        return None;
    }
    let header: u16 = 0x8000
        | if sign_negative { 0x2000 } else { 0 }
        | ((dscale as u16) << 7)
        | if weight < 0 { 0x0040 } else { 0 }
        | (weight as u16 & 0x003F);
    let len = 4 + 2 + 2 * digits.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&varlena_header(len));
    out.extend_from_slice(&header.to_ne_bytes());
    for d in digits {
        out.extend_from_slice(&d.to_ne_bytes());
    }
    Some(out)
}

/// A 4-byte varlena header for a datum of `len` bytes (PostgreSQL's SET_VARSIZE).
pub fn varlena_header(len: usize) -> [u8; 4] {
    if cfg!(target_endian = "little") {
        ((len as u32) << 2).to_le_bytes()
    } else {
        ((len as u32) & 0x3FFF_FFFF).to_be_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(b: &[u8]) -> Vec<u32> {
        b.chunks(4)
            .map(|c| {
                let mut w = [0u8; 4];
                w[..c.len()].copy_from_slice(c);
                u32::from_ne_bytes(w)
            })
            .collect()
    }

    fn build(text: &str) -> Option<Vec<u8>> {
        from_text(text, &mut |n| numeric_of(n))
    }

    #[test]
    fn keys_sort_by_length_then_bytes_and_the_last_duplicate_wins() {
        let b = build(r#"{"bb": 1, "a": "x", "ab": true, "a": "y"}"#).unwrap();
        let w = words(&b);
        assert_eq!(w[0], 3 | FLAG_OBJECT);
        // keys a, ab, bb; then values "y", true, 1
        assert_eq!(w[1], 1 | ENTRY_HAS_OFFSET);
        assert_eq!(w[2], 2);
        assert_eq!(w[3], 2);
        assert_eq!(w[4] & ENTRY_TYPE_MASK, 0);
        assert_eq!(w[4] & ENTRY_LENGTH_MASK, 1);
        assert_eq!(w[5], ENTRY_TRUE);
        assert_eq!(w[6] & ENTRY_TYPE_MASK, ENTRY_NUMERIC);
        assert_eq!(&b[28..34], b"aabbby");
    }

    #[test]
    fn every_32nd_entry_is_an_end_offset() {
        let items: Vec<String> = (0..40)
            .map(|i| format!("\"{}\"", "x".repeat(i % 3)))
            .collect();
        let b = build(&format!("[{}]", items.join(","))).unwrap();
        let w = words(&b);
        assert_eq!(w[0], 40 | FLAG_ARRAY);
        assert_eq!(w[1], ENTRY_HAS_OFFSET); // "" ends at 0
        let before: u32 = (0..32).map(|i| (i % 3) as u32).sum();
        assert_eq!(w[33], ENTRY_HAS_OFFSET | (before + 32 % 3));
        assert_eq!(w[34], 33 % 3);
    }

    #[test]
    fn nested_containers_and_numbers_are_aligned() {
        let b = build(r#"["a", [1], {"k": null}]"#).unwrap();
        let w = words(&b);
        assert_eq!(w[0], 3 | FLAG_ARRAY);
        // "a" at data offset 16; the array pads from 17 to 20 (its length counts the
        // padding) and holds a numeric at 28; the object starts at 36 and ends unpadded
        assert_eq!(b[16], b'a');
        assert_eq!(w[2], ENTRY_CONTAINER | 19);
        assert_eq!(w[3], ENTRY_CONTAINER | 13);
        assert_eq!(words(&b[20..24])[0], 1 | FLAG_ARRAY);
        assert_eq!(words(&b[24..28])[0], ENTRY_HAS_OFFSET | ENTRY_NUMERIC | 8);
        assert_eq!(words(&b[36..40])[0], 1 | FLAG_OBJECT);
        assert_eq!(b.len(), 49);
    }

    #[test]
    fn scalars_are_one_element_arrays() {
        let b = build(r#" "hi" "#).unwrap();
        assert_eq!(
            words(&b)[..2],
            [1 | FLAG_ARRAY | FLAG_SCALAR, 2 | ENTRY_HAS_OFFSET]
        );
        assert_eq!(&b[8..], b"hi");
        assert_eq!(
            words(&build("null").unwrap())[1],
            ENTRY_NULL | ENTRY_HAS_OFFSET
        );
    }

    #[test]
    fn escapes_decode_and_doubtful_text_is_declined() {
        let b = build(r#"["\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00"]"#).unwrap();
        assert!(String::from_utf8_lossy(&b).contains("\"\\/\u{8}\u{c}\n\r\té😀"));
        for bad in [
            r#"["\u0000"]"#,
            r#"["\ud800"]"#,
            r#"["\udc00"]"#,
            "[01]",
            "[1.]",
            "[.5]",
            "[-]",
            "[1e]",
            "[truex]",
            "[1x]",
            "{\"a\" 1}",
            "[1,]",
            "{\"a\":1,}",
            "[\"a\nb\"]",
            "[\"\\x\"]",
            "[1] x",
            "",
            "{",
            "[\"a\"",
            "'a'",
            "[NaN]",
            "[+1]",
        ] {
            assert!(build(bad).is_none(), "{bad} declined");
        }
        let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
        assert!(build(&deep).is_none());
    }

    #[test]
    fn long_strings_with_escapes_are_read_once() {
        let long = format!("[\"\\n{}\\t{}\"]", "a".repeat(200_000), "é".repeat(1000));
        let b = build(&long).unwrap();
        let want = format!("\n{}\t{}", "a".repeat(200_000), "é".repeat(1000));
        assert_eq!(&b[8..], want.as_bytes());
        // the same key written raw and escaped is one key; the last one wins
        let b = build("{\"é\": 1, \"\\u00e9\": true}").unwrap();
        assert_eq!(words(&b)[0], 1 | FLAG_OBJECT);
        assert_eq!(words(&b)[2], ENTRY_TRUE);
    }

    #[test]
    fn numbers_it_cannot_encode_decline_the_row() {
        assert!(from_text("[1e3]", &mut |n| numeric_of(n)).is_none());
        assert!(from_text("[1e3]", &mut |_| Some(vec![16, 0, 0, 0])).is_some());
    }

    #[test]
    fn numerics_in_short_form() {
        let n = |t: &str| {
            words(&numeric_of(t).unwrap()[4..])
                .iter()
                .map(|w| *w as u64)
                .collect::<Vec<_>>()
        };
        let raw = |t: &str| numeric_of(t).unwrap();
        // 0: no digits, weight 0, positive, whatever the sign or scale
        assert_eq!(
            raw("0"),
            [varlena_header(6).as_slice(), &0x8000u16.to_ne_bytes()].concat()
        );
        assert_eq!(raw("-0.00")[4..6], (0x8000u16 | (2 << 7)).to_ne_bytes());
        // 12345.678 = [1, 2345, 6780], weight 1, dscale 3
        let b = raw("12345.678");
        assert_eq!(b[..4], varlena_header(12));
        assert_eq!(b[4..6], (0x8000u16 | (3 << 7) | 1).to_ne_bytes());
        assert_eq!(
            b[6..],
            [1i16, 2345, 6780]
                .iter()
                .flat_map(|d| d.to_ne_bytes())
                .collect::<Vec<_>>()[..]
        );
        // -0.0001 = [1], weight -1, negative
        let b = raw("-0.0001");
        assert_eq!(
            b[4..6],
            (0x8000u16 | 0x2000 | (4 << 7) | 0x0040 | 0x3F).to_ne_bytes()
        );
        // 10000 = [1], weight 1 (trailing zero digit dropped)
        assert_eq!(raw("10000").len(), 8);
        assert!(!n("1").is_empty());
        assert!(numeric_of("1e5").is_none());
        assert!(numeric_of(&format!("0.{}1", "0".repeat(70))).is_none());
    }
}
