//! The reducer ABI, shared by the reducer guests through `#[path]` so that
//! they stay free of external crates.
//!
//! A reducer's stdin holds the verified outputs of every unit of a job,
//! sorted by unit name, as a sequence of records read to EOF:
//!
//! ```text
//! u32 LE name length | name bytes (UTF-8) | u64 LE output length | output bytes
//! ```

use std::fmt;

/// One unit's verified output, borrowed from the reducer's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub name: &'a str,
    pub output: &'a [u8],
}

/// Why the reducer input could not be split into records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbiError {
    /// Zero-based position of the offending record.
    pub index: usize,
    /// Byte offset in the input where the offending record starts.
    pub offset: usize,
    /// The unit's name, when the record got far enough to have one.
    pub unit: Option<String>,
    pub problem: &'static str,
}

impl fmt::Display for AbiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "malformed record #{} at byte {}",
            self.index, self.offset
        )?;
        if let Some(unit) = &self.unit {
            write!(f, " (unit {unit:?})")?;
        }
        write!(f, ": {}", self.problem)
    }
}

impl std::error::Error for AbiError {}

/// Splits the whole reducer input into records, rejecting anything that is
/// not an exact sequence of well-formed records.
pub fn parse(input: &[u8]) -> Result<Vec<Record<'_>>, AbiError> {
    let mut records = Vec::new();
    let mut pos = 0;
    while pos < input.len() {
        let start = pos;
        let fail = |unit: Option<&str>, problem| AbiError {
            index: records.len(),
            offset: start,
            unit: unit.map(str::to_owned),
            problem,
        };

        let name_len = take(input, &mut pos, 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| fail(None, "truncated name length"))?;
        // A length that does not fit usize cannot fit in memory either, so
        // it is reported the same way as any other overrun.
        let name_len = usize::try_from(name_len).unwrap_or(usize::MAX);
        let name = take(input, &mut pos, name_len)
            .ok_or_else(|| fail(None, "name runs past the end of the input"))?;
        let name =
            std::str::from_utf8(name).map_err(|_| fail(None, "unit name is not valid UTF-8"))?;

        let output_len = take(input, &mut pos, 8)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .ok_or_else(|| fail(Some(name), "truncated output length"))?;
        let output_len = usize::try_from(output_len).unwrap_or(usize::MAX);
        let output = take(input, &mut pos, output_len)
            .ok_or_else(|| fail(Some(name), "output runs past the end of the input"))?;

        records.push(Record { name, output });
    }
    Ok(records)
}

fn take<'a>(input: &'a [u8], pos: &mut usize, len: usize) -> Option<&'a [u8]> {
    let end = pos.checked_add(len)?;
    let bytes = input.get(*pos..end)?;
    *pos = end;
    Some(bytes)
}

/// The inverse of [`parse`], so tests can build inputs the way the host does.
#[cfg(test)]
pub fn encode(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, output) in records {
        let name_len = u32::try_from(name.len()).expect("test names are short");
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(output.len() as u64).to_le_bytes());
        out.extend_from_slice(output);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_input_has_no_records() {
        assert_eq!(parse(&[]), Ok(vec![]));
    }

    #[test]
    fn round_trips_records() {
        let input = encode(&[("unit-0", b"12\n"), ("unit-1", b""), ("", b"x")]);
        let records = parse(&input).expect("well-formed input");
        assert_eq!(
            records,
            vec![
                Record {
                    name: "unit-0",
                    output: b"12\n"
                },
                Record {
                    name: "unit-1",
                    output: b""
                },
                Record {
                    name: "",
                    output: b"x"
                },
            ]
        );
    }

    #[test]
    fn exact_byte_layout() {
        let input = [
            2, 0, 0, 0, b'u', b'1', 3, 0, 0, 0, 0, 0, 0, 0, b'4', b'2', b'\n',
        ];
        assert_eq!(
            parse(&input),
            Ok(vec![Record {
                name: "u1",
                output: b"42\n"
            }])
        );
    }

    #[test]
    fn truncated_length_prefix() {
        let mut input = encode(&[("a", b"1")]);
        input.extend_from_slice(&[1, 0]);
        let err = parse(&input).expect_err("trailing garbage");
        assert_eq!(err.index, 1);
        assert_eq!(err.offset, 14);
        assert_eq!(err.unit, None);
        assert_eq!(err.problem, "truncated name length");
    }

    #[test]
    fn truncated_output_names_the_unit() {
        let mut input = encode(&[("a", b"1"), ("b", b"1234")]);
        input.pop();
        let err = parse(&input).expect_err("short output");
        assert_eq!(err.index, 1);
        assert_eq!(err.unit.as_deref(), Some("b"));
        assert!(err.to_string().contains("unit \"b\""), "{err}");
    }

    #[test]
    fn missing_output_length_names_the_unit() {
        let input = [1, 0, 0, 0, b'z', 0, 0];
        let err = parse(&input).expect_err("short length");
        assert_eq!(err.unit.as_deref(), Some("z"));
        assert_eq!(err.problem, "truncated output length");
    }

    #[test]
    fn huge_lengths_do_not_overflow() {
        let mut input = vec![0xff, 0xff, 0xff, 0xff];
        input.extend_from_slice(b"abc");
        assert!(parse(&input).is_err());

        let mut input = vec![1, 0, 0, 0, b'a'];
        input.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse(&input).is_err());
    }

    #[test]
    fn rejects_non_utf8_names() {
        let input = [1, 0, 0, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];
        let err = parse(&input).expect_err("bad name");
        assert_eq!(err.problem, "unit name is not valid UTF-8");
    }
}
