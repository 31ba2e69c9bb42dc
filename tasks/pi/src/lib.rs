//! Monte Carlo estimate of pi over a range of sample indices.
//!
//! stdin: `a b\n` (u64, `a <= b`). Sample `i` takes two outputs of splitmix64
//! seeded with `i` as a point in the unit square and counts it as a hit when
//! it lies inside the quarter circle. stdout: `<hits> <samples>\n`.
//!
//! Each sample depends only on its index, so any split of a range into units
//! yields the same total as the unsplit range.

/// The splitmix64 generator (Steele, Lea, Flood 2014), as used to seed the
/// xoshiro family: cheap, well mixed, and trivially reproducible anywhere.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Maps the top 53 bits to [0, 1); the conversion and the scaling by a power
/// of two are exact, so the result is identical on every IEEE-754 target.
fn unit_interval(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

fn is_hit(index: u64) -> bool {
    let mut rng = SplitMix64(index);
    let x = unit_interval(rng.next());
    let y = unit_interval(rng.next());
    x * x + y * y < 1.0
}

fn count_hits(a: u64, b: u64) -> u64 {
    (a..b).filter(|&i| is_hit(i)).count() as u64
}

#[path = "../../range_input.rs"]
mod range_input;
use range_input::parse_range;

/// The whole guest as a function: stdin bytes in, stdout bytes out.
pub fn compute(input: &[u8]) -> Result<Vec<u8>, String> {
    let input = std::str::from_utf8(input).map_err(|_| "input is not UTF-8 text".to_string())?;
    let (a, b) = parse_range(input)?;
    Ok(format!("{} {}\n", count_hits(a, b), b - a).into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_reference_outputs() {
        // Reference values from Vigna's splitmix64.c.
        let mut rng = SplitMix64(1_234_567);
        let outputs: Vec<u64> = (0..5).map(|_| rng.next()).collect();
        assert_eq!(
            outputs,
            [
                6_457_827_717_110_365_317,
                3_203_168_211_198_807_973,
                9_817_491_932_198_370_423,
                4_593_380_528_125_082_431,
                16_408_922_859_458_223_821,
            ]
        );
        assert_eq!(SplitMix64(0).next(), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn unit_interval_bounds() {
        assert_eq!(unit_interval(0), 0.0);
        assert_eq!(unit_interval(u64::MAX), 1.0 - f64::EPSILON / 2.0);
        assert_eq!(unit_interval(1 << 63), 0.5);
        assert_eq!(unit_interval((1 << 11) - 1), 0.0);
    }

    #[test]
    fn pinned_counts() {
        // Pinned so that any change to the sampling, which would silently
        // invalidate results already computed by volunteers, fails loudly.
        assert_eq!(count_hits(0, 1_000_000), PINNED_HITS_0_1M);
        assert_eq!(count_hits(0, 0), 0);
        assert_eq!(count_hits(u64::MAX - 10, u64::MAX), PINNED_HITS_TOP_10);
    }

    const PINNED_HITS_0_1M: u64 = 786_170;
    const PINNED_HITS_TOP_10: u64 = 4;

    #[test]
    fn estimate_is_close_to_pi() {
        let n = 1_000_000;
        let estimate = 4.0 * count_hits(0, n) as f64 / n as f64;
        // Four standard deviations of the estimator at this sample size.
        assert!(
            (estimate - std::f64::consts::PI).abs() < 4.0 * 1.7 / 1000.0,
            "{estimate}"
        );
    }

    #[test]
    fn any_split_gives_the_same_total() {
        let whole = count_hits(1_000, 50_000);
        let cuts = [1_000, 1_001, 7_777, 20_000, 49_999, 50_000];
        let parts: u64 = cuts.windows(2).map(|w| count_hits(w[0], w[1])).sum();
        assert_eq!(parts, whole);
    }

    #[test]
    fn parses_and_validates_input() {
        assert_eq!(parse_range("0 100\n"), Ok((0, 100)));
        assert_eq!(
            parse_range("18446744073709551615 18446744073709551615"),
            Ok((u64::MAX, u64::MAX))
        );
        assert!(parse_range("10 5").is_err());
        assert!(parse_range("").is_err());
        assert!(parse_range("1 2 3").is_err());
        assert!(parse_range("1 -2").is_err());
        assert!(parse_range("1 18446744073709551616").is_err());
    }
}
