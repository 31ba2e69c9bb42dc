//! Reducer: combines the `<hits> <samples>` outputs of `pi` units into one
//! estimate of pi.
//!
//! stdin follows the reducer ABI (see `tasks/reduce_abi.rs`). stdout is
//! `pi ~= <4*hits/samples, 9 decimals> (<hits> hits of <samples> samples)\n`.

#[path = "../../reduce_abi.rs"]
mod reduce_abi;

use std::io::{self, Read, Write};
use std::process::ExitCode;

use reduce_abi::Record;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Tally {
    hits: u128,
    samples: u128,
}

fn tally(records: &[Record<'_>]) -> Result<Tally, String> {
    let mut total = Tally::default();
    for record in records {
        let (hits, samples) = parse_output(record.output)
            .ok_or_else(|| format!("unit {:?}: output is not `<hits> <samples>`", record.name))?;
        if hits > samples {
            return Err(format!(
                "unit {:?}: {hits} hits is more than its {samples} samples",
                record.name
            ));
        }
        // u64 per unit summed in u128 cannot overflow for any input that
        // fits in memory, but checked arithmetic keeps that an explicit claim.
        total.hits = total
            .hits
            .checked_add(u128::from(hits))
            .ok_or("hit count overflows")?;
        total.samples = total
            .samples
            .checked_add(u128::from(samples))
            .ok_or("sample count overflows")?;
    }
    Ok(total)
}

fn parse_output(output: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(output).ok()?;
    let mut fields = text.split_ascii_whitespace();
    let hits = fields.next()?.parse().ok()?;
    let samples = fields.next()?.parse().ok()?;
    fields.next().is_none().then_some((hits, samples))
}

/// Formats the estimate with integer arithmetic (rounding half up) so the
/// digits do not depend on float rounding of very large tallies.
fn report(total: Tally) -> Result<String, String> {
    const SCALE: u128 = 1_000_000_000;
    if total.samples == 0 {
        return Err("no samples to reduce".to_owned());
    }
    let scaled = total
        .hits
        .checked_mul(4 * SCALE * 2)
        .and_then(|n| n.checked_add(total.samples))
        .ok_or("hit count too large to format")?
        / (2 * total.samples);
    Ok(format!(
        "pi ~= {}.{:09} ({} hits of {} samples)\n",
        scaled / SCALE,
        scaled % SCALE,
        total.hits,
        total.samples
    ))
}

fn main() -> ExitCode {
    let mut input = Vec::new();
    if let Err(err) = io::stdin().read_to_end(&mut input) {
        eprintln!("pi-reduce: cannot read stdin: {err}");
        return ExitCode::from(2);
    }
    let line = reduce_abi::parse(&input)
        .map_err(|err| err.to_string())
        .and_then(|records| tally(&records))
        .and_then(report);
    match line {
        Ok(line) => {
            if let Err(err) = io::stdout().lock().write_all(line.as_bytes()) {
                eprintln!("pi-reduce: cannot write stdout: {err}");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("pi-reduce: {message}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reduce(records: &[(&str, &[u8])]) -> Result<String, String> {
        let input = reduce_abi::encode(records);
        let records = reduce_abi::parse(&input).map_err(|err| err.to_string())?;
        report(tally(&records)?)
    }

    #[test]
    fn combines_units() {
        let records: &[(&str, &[u8])] = &[
            ("pi-0000", b"785398 1000000\n"),
            ("pi-0001", b"785398163 1000000000"),
        ];
        assert_eq!(
            reduce(records),
            Ok("pi ~= 3.141592651 (786183561 hits of 1001000000 samples)\n".to_owned())
        );
    }

    #[test]
    fn formats_nine_decimals_with_rounding() {
        let line = |hits, samples| report(Tally { hits, samples });
        assert_eq!(
            line(785398163, 1_000_000_000),
            Ok("pi ~= 3.141592652 (785398163 hits of 1000000000 samples)\n".to_owned())
        );
        assert_eq!(
            line(1, 1),
            Ok("pi ~= 4.000000000 (1 hits of 1 samples)\n".to_owned())
        );
        assert_eq!(
            line(0, 7),
            Ok("pi ~= 0.000000000 (0 hits of 7 samples)\n".to_owned())
        );
        // 4/3 = 1.3333333333..., 8/3 = 2.6666666666... rounds up.
        assert_eq!(
            line(2, 3),
            Ok("pi ~= 2.666666667 (2 hits of 3 samples)\n".to_owned())
        );
    }

    #[test]
    fn big_tallies_keep_every_digit() {
        let max = u64::MAX.to_string();
        let unit = format!("{max} {max}");
        let records: Vec<(&str, &[u8])> = vec![("a", unit.as_bytes()), ("b", unit.as_bytes())];
        let expected = 2 * u128::from(u64::MAX);
        assert_eq!(
            reduce(&records),
            Ok(format!(
                "pi ~= 4.000000000 ({expected} hits of {expected} samples)\n"
            ))
        );
    }

    #[test]
    fn rejects_empty_and_malformed_outputs() {
        assert_eq!(reduce(&[]), Err("no samples to reduce".to_owned()));
        assert!(reduce(&[("z", b"0 0")]).is_err());

        for bad in [&b"12"[..], b"1 2 3", b"-1 5", b"x 5", b"", b"\xff 1"] {
            let err = reduce(&[("ok", b"1 2"), ("unit-9", bad)]).expect_err("malformed");
            assert!(err.contains("\"unit-9\""), "{err}");
        }

        let err = reduce(&[("greedy", b"5 4")]).expect_err("hits > samples");
        assert!(err.contains("\"greedy\""), "{err}");
    }
}
