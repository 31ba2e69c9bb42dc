//! Counts the primes in a half-open range with a segmented sieve.
//!
//! stdin: `a b\n` (u64, `a <= b <= 10^12`); stdout: the number of primes in
//! `[a, b)` as `N\n`.

const MAX_BOUND: u64 = 1_000_000_000_000;

/// Odd numbers per segment; the sieve holds one byte per odd number, so this
/// keeps the working set near 256 KiB regardless of how wide the range is.
const SEGMENT_ODDS: u64 = 1 << 18;

#[path = "../../range_input.rs"]
mod range_input;

/// The range, with `b` capped so the base primes stay small.
fn parse_range(input: &str) -> Result<(u64, u64), String> {
    let (a, b) = range_input::parse_range(input)?;
    if b > MAX_BOUND {
        return Err(format!("b ({b}) must not exceed {MAX_BOUND}"));
    }
    Ok((a, b))
}

/// Odd primes up to and including `limit`, by a plain sieve of Eratosthenes.
fn odd_primes_up_to(limit: u64) -> Vec<u64> {
    // Callers pass at most isqrt(10^12), which fits usize on every target.
    let limit = limit as usize;
    let mut composite = vec![false; limit + 1];
    let mut primes = Vec::new();
    let mut n = 3;
    while n <= limit {
        if !composite[n] {
            primes.push(n as u64);
            let mut multiple = n * n;
            while multiple <= limit {
                composite[multiple] = true;
                multiple += 2 * n;
            }
        }
        n += 2;
    }
    primes
}

/// Number of primes `p` with `a <= p < b`; `b` must be at most [`MAX_BOUND`]
/// so that the base primes stay small.
fn count_primes(a: u64, b: u64) -> u64 {
    let mut count = u64::from(a <= 2 && 2 < b);

    // Only odd numbers >= 3 are sieved; 2 was counted above and 1 is not prime.
    let first_odd = a.max(3) | 1;
    if first_odd >= b {
        return count;
    }
    // Every composite below b has a prime factor <= isqrt(b - 1).
    let base = odd_primes_up_to((b - 1).isqrt());

    let mut sieve = Vec::new();
    let mut lo = first_odd;
    while lo < b {
        let odds = ((b - lo).div_ceil(2)).min(SEGMENT_ODDS);
        let hi = lo + 2 * odds; // exclusive, always odd
        sieve.clear();
        sieve.resize(odds as usize, true);

        for &p in &base {
            if p * p >= hi {
                break;
            }
            let mut m = lo.div_ceil(p) * p;
            if m % 2 == 0 {
                m += p;
            }
            m = m.max(p * p);
            while m < hi {
                sieve[((m - lo) / 2) as usize] = false;
                m += 2 * p;
            }
        }
        count += sieve.iter().filter(|&&is_prime| is_prime).count() as u64;
        lo = hi;
    }
    count
}

/// The whole guest as a function: stdin bytes in, stdout bytes out.
pub fn compute(input: &[u8]) -> Result<Vec<u8>, String> {
    let input = std::str::from_utf8(input).map_err(|_| "input is not UTF-8 text".to_string())?;
    let (a, b) = parse_range(input)?;
    Ok(format!("{}\n", count_primes(a, b)).into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_prime_naive(n: u64) -> bool {
        n >= 2
            && (2..)
                .take_while(|d| d * d <= n)
                .all(|d| !n.is_multiple_of(d))
    }

    #[test]
    fn known_counts() {
        assert_eq!(count_primes(0, 1_000_000), 78498);
        assert_eq!(count_primes(0, 100), 25);
        assert_eq!(count_primes(0, 2), 0);
        assert_eq!(count_primes(2, 3), 1);
        assert_eq!(count_primes(0, 3), 1);
        assert_eq!(count_primes(3, 4), 1);
        assert_eq!(count_primes(4, 5), 0);
        assert_eq!(count_primes(7, 7), 0);
        assert_eq!(count_primes(0, 0), 0);
        assert_eq!(count_primes(1_000_000, 2_000_000), 148933 - 78498);
        assert_eq!(count_primes(0, 10_000_000), 664_579);
    }

    #[test]
    fn near_the_upper_bound() {
        // The 10 largest primes below 10^12 all lie above 10^12 - 400; the
        // window also crosses segment boundaries with squares of base primes.
        let lo = MAX_BOUND - 1000;
        let expected = (lo..MAX_BOUND).filter(|&n| is_prime_naive(n)).count() as u64;
        assert_eq!(count_primes(lo, MAX_BOUND), expected);
        assert_eq!(count_primes(MAX_BOUND - 100, MAX_BOUND), 4);
        assert_eq!(count_primes(999_999_999_989, 999_999_999_990), 1);
    }

    #[test]
    fn matches_naive_on_every_small_range() {
        let primes: Vec<u64> = (0..200).filter(|&n| is_prime_naive(n)).collect();
        for a in 0..200 {
            for b in a..200 {
                let expected = primes.iter().filter(|&&p| a <= p && p < b).count() as u64;
                assert_eq!(count_primes(a, b), expected, "[{a}, {b})");
            }
        }
    }

    #[test]
    fn split_ranges_sum_to_the_whole() {
        let whole = count_primes(0, 3_000_000);
        let cuts = [
            0, 1, 2, 3, 1000, 524_289, 524_290, 1_048_577, 2_999_999, 3_000_000,
        ];
        let parts: u64 = cuts.windows(2).map(|w| count_primes(w[0], w[1])).sum();
        assert_eq!(parts, whole);
        assert_eq!(whole, 216_816);
    }

    #[test]
    fn segment_edges_are_exact() {
        // Ranges exactly one and a bit more than a segment wide, at odd and
        // even starts, catch off-by-one errors in segment bookkeeping.
        for start in [0, 1, 2, 3, 10_007, 10_008] {
            for width in [2 * SEGMENT_ODDS - 1, 2 * SEGMENT_ODDS, 2 * SEGMENT_ODDS + 1] {
                let (a, b) = (start, start + width);
                let mid = a + width / 2;
                assert_eq!(
                    count_primes(a, b),
                    count_primes(a, mid) + count_primes(mid, b),
                    "[{a}, {b})"
                );
            }
        }
    }

    #[test]
    fn parses_and_validates_input() {
        assert_eq!(parse_range("0 100\n"), Ok((0, 100)));
        assert_eq!(parse_range("  5\t5  "), Ok((5, 5)));
        assert_eq!(parse_range("0 1000000000000"), Ok((0, MAX_BOUND)));
        assert!(parse_range("0 1000000000001").is_err());
        assert!(parse_range("10 5").is_err());
        assert!(parse_range("").is_err());
        assert!(parse_range("1").is_err());
        assert!(parse_range("1 2 3").is_err());
        assert!(parse_range("-1 5").is_err());
        assert!(parse_range("1 five").is_err());
        assert!(parse_range("1 99999999999999999999999").is_err());
    }
}
