//! Reducer input framing. A reducer is a WASI command like any guest; its stdin is every
//! verified output of the project, sorted by unit name, as records:
//!
//! ```text
//! u32 little-endian  name length
//! name bytes         (UTF-8 unit name)
//! u64 little-endian  output length
//! output bytes
//! ```
//!
//! repeated to the end of input. Its stdout becomes the project's aggregate.

/// Encodes `(name, output)` pairs, which the caller has sorted by name.
pub fn encode<'a>(records: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, output) in records {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(output.len() as u64).to_le_bytes());
        out.extend_from_slice(output);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn framing_is_length_prefixed() {
        let bytes = super::encode([("a", &b"12"[..])]);
        assert_eq!(
            bytes,
            [1, 0, 0, 0, b'a', 2, 0, 0, 0, 0, 0, 0, 0, b'1', b'2']
        );
    }
}
