//! Reducer: adds up the integer outputs of every unit of a job.
//!
//! stdin follows the reducer ABI (see `tasks/reduce_abi.rs`); each unit's
//! output must be an ASCII integer, optionally surrounded by whitespace.
//! stdout is the sum as `N\n`.

#[path = "../../reduce_abi.rs"]
mod reduce_abi;

use std::io::{self, Read, Write};
use std::process::ExitCode;

use reduce_abi::Record;

/// Sums in `i128` so that any realistic number of `i64`-sized outputs adds up
/// without overflow, while still refusing to wrap silently.
fn sum_outputs(records: &[Record<'_>]) -> Result<i128, String> {
    let mut total: i128 = 0;
    for record in records {
        let value = parse_integer(record.output).ok_or_else(|| {
            format!(
                "unit {:?}: output is not an integer: {}",
                record.name,
                preview(record.output)
            )
        })?;
        total = total
            .checked_add(value)
            .ok_or_else(|| format!("unit {:?}: sum overflows", record.name))?;
    }
    Ok(total)
}

fn parse_integer(output: &[u8]) -> Option<i128> {
    std::str::from_utf8(output).ok()?.trim().parse().ok()
}

/// Keeps error messages readable when a unit's output is large or binary.
fn preview(output: &[u8]) -> String {
    const LIMIT: usize = 64;
    let shown = String::from_utf8_lossy(&output[..output.len().min(LIMIT)]).into_owned();
    if output.len() > LIMIT {
        format!("{shown:?}... ({} bytes)", output.len())
    } else {
        format!("{shown:?}")
    }
}

fn main() -> ExitCode {
    let mut input = Vec::new();
    if let Err(err) = io::stdin().read_to_end(&mut input) {
        eprintln!("sum: cannot read stdin: {err}");
        return ExitCode::from(2);
    }
    let total = reduce_abi::parse(&input)
        .map_err(|err| err.to_string())
        .and_then(|records| sum_outputs(&records));
    match total {
        Ok(total) => {
            if let Err(err) = writeln!(io::stdout().lock(), "{total}") {
                eprintln!("sum: cannot write stdout: {err}");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("sum: {message}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum_of(records: &[(&str, &[u8])]) -> Result<i128, String> {
        let input = reduce_abi::encode(records);
        let records = reduce_abi::parse(&input).map_err(|err| err.to_string())?;
        sum_outputs(&records)
    }

    #[test]
    fn no_units_sum_to_zero() {
        assert_eq!(sum_of(&[]), Ok(0));
    }

    #[test]
    fn sums_outputs_with_whitespace() {
        let records: &[(&str, &[u8])] = &[
            ("primes-0000", b"78498\n"),
            ("primes-0001", b"  70435\r\n"),
            ("primes-0002", b"-3"),
            ("primes-0003", b"+5 "),
        ];
        assert_eq!(sum_of(records), Ok(78498 + 70435 - 3 + 5));
    }

    #[test]
    fn exceeds_u64_without_overflow() {
        let max = u64::MAX.to_string();
        let records: &[(&str, &[u8])] = &[("a", max.as_bytes()), ("b", max.as_bytes())];
        assert_eq!(sum_of(records), Ok(2 * i128::from(u64::MAX)));
    }

    #[test]
    fn overflow_is_an_error() {
        let max = i128::MAX.to_string();
        let records: &[(&str, &[u8])] = &[("a", max.as_bytes()), ("b", b"1")];
        let err = sum_of(records).expect_err("overflow");
        assert!(err.contains("\"b\"") && err.contains("overflow"), "{err}");
    }

    #[test]
    fn non_integer_output_names_the_unit() {
        let records: &[(&str, &[u8])] = &[("good", b"1\n"), ("unit-7", b"12 apples\n")];
        let err = sum_of(records).expect_err("not an integer");
        assert!(err.contains("\"unit-7\""), "{err}");
        assert!(err.contains("12 apples"), "{err}");

        let records: &[(&str, &[u8])] = &[("empty", b"  \n")];
        assert!(sum_of(records).is_err());

        let records: &[(&str, &[u8])] = &[("binary", &[0xff, 0x31])];
        assert!(sum_of(records).is_err());
    }

    #[test]
    fn preview_truncates_long_output() {
        let long = vec![b'9'; 1000];
        let shown = preview(&long);
        assert!(shown.len() < 100, "{shown}");
        assert!(shown.contains("1000 bytes"), "{shown}");
    }
}
