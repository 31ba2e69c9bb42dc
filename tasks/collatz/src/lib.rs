//! Collatz total stopping times over a range, in checkpointed steps: the example of a
//! long-running guest that saves its progress with Fallow's checkpoint API.
//!
//! stdin: `a b [interval]\n` (u64, `1 <= a <= b`; `interval` numbers per checkpoint,
//! default 100,000); stdout: `<sum of steps> <max steps> <first n with max steps>\n` over
//! `[a, b)`. The answer does not depend on `interval`; only how often progress is saved.

#![forbid(unsafe_code)]

/// Numbers per checkpoint when the input does not say.
pub const DEFAULT_INTERVAL: u64 = 100_000;

/// What a unit asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    /// First number.
    pub a: u64,
    /// One past the last number.
    pub b: u64,
    /// Numbers between checkpoints (at least 1).
    pub interval: u64,
}

/// Everything the computation needs to carry on: the checkpointed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Next number to do.
    pub next: u64,
    /// Sum of the stopping times so far.
    pub sum: u64,
    /// Largest stopping time so far.
    pub max_steps: u64,
    /// The first number that reached `max_steps`.
    pub argmax: u64,
}

/// Size of [`Progress::encode`].
pub const STATE_BYTES: usize = 32;

impl Job {
    /// Parses `a b [interval]`.
    pub fn parse(input: &[u8]) -> Result<Job, String> {
        let text = std::str::from_utf8(input).map_err(|_| "input is not UTF-8".to_string())?;
        let fields: Vec<u64> = text
            .split_ascii_whitespace()
            .map(|f| {
                f.parse()
                    .map_err(|_| format!("not a non-negative integer: {f:?}"))
            })
            .collect::<Result<_, _>>()?;
        let (a, b, interval) = match fields[..] {
            [a, b] => (a, b, DEFAULT_INTERVAL),
            [a, b, i] => (a, b, i),
            _ => {
                return Err(format!(
                    "expected `a b [interval]`, got {} fields",
                    fields.len()
                ));
            }
        };
        if a == 0 || a > b {
            return Err(format!("need 1 <= a <= b (got a = {a}, b = {b})"));
        }
        if interval == 0 {
            return Err("interval must be at least 1".into());
        }
        Ok(Job { a, b, interval })
    }

    /// The state before any work.
    pub fn start(&self) -> Progress {
        Progress {
            next: self.a,
            sum: 0,
            max_steps: 0,
            argmax: self.a,
        }
    }

    /// Does up to `interval` numbers; true when the range is finished.
    pub fn step(&self, p: &mut Progress) -> bool {
        let end = p.next.saturating_add(self.interval).min(self.b);
        while p.next < end {
            let steps = stopping_time(p.next);
            p.sum = p.sum.wrapping_add(steps);
            if steps > p.max_steps {
                p.max_steps = steps;
                p.argmax = p.next;
            }
            p.next += 1;
        }
        p.next >= self.b
    }
}

impl Progress {
    /// The checkpoint bytes.
    pub fn encode(&self) -> [u8; STATE_BYTES] {
        let mut out = [0; STATE_BYTES];
        for (chunk, v) in
            out.chunks_exact_mut(8)
                .zip([self.next, self.sum, self.max_steps, self.argmax])
        {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Reads [`Progress::encode`] back; `None` if the bytes are not one.
    pub fn decode(bytes: &[u8]) -> Option<Progress> {
        if bytes.len() != STATE_BYTES {
            return None;
        }
        let mut v = bytes.chunks_exact(8).map(|c| {
            let mut a = [0; 8];
            a.copy_from_slice(c);
            u64::from_le_bytes(a)
        });
        Some(Progress {
            next: v.next()?,
            sum: v.next()?,
            max_steps: v.next()?,
            argmax: v.next()?,
        })
    }

    /// The unit's stdout.
    pub fn output(&self) -> Vec<u8> {
        format!("{} {} {}\n", self.sum, self.max_steps, self.argmax).into_bytes()
    }
}

/// Steps for `n` to reach 1 (`n -> n/2` or `3n + 1`), wrapping on overflow (never reached
/// below 2^60, and deterministic anyway).
pub fn stopping_time(mut n: u64) -> u64 {
    let mut steps = 0;
    while n > 1 {
        n = if n.is_multiple_of(2) {
            n / 2
        } else {
            n.wrapping_mul(3).wrapping_add(1)
        };
        steps += 1;
    }
    steps
}

/// The whole range straight through (natively: benchmarks and tests).
pub fn compute(input: &[u8]) -> Result<Vec<u8>, String> {
    let job = Job::parse(input)?;
    let mut p = job.start();
    while !job.step(&mut p) {}
    Ok(p.output())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_stopping_times() {
        assert_eq!(stopping_time(1), 0);
        assert_eq!(stopping_time(6), 8);
        assert_eq!(stopping_time(27), 111);
        // 1..9 take 0, 1, 7, 2, 5, 8, 16, 3, 19 steps: 61 in all, 9 the most.
        assert_eq!(compute(b"1 10").expect("ok"), b"61 19 9\n");
    }

    #[test]
    fn the_answer_does_not_depend_on_the_interval_or_on_restarts() {
        let straight = compute(b"1 5000 5000").expect("ok");
        for interval in [1, 7, 1000] {
            let job = Job::parse(format!("1 5000 {interval}").as_bytes()).expect("job");
            // Restart from the encoded state after every step, as the sandbox does.
            let mut saved = job.start().encode();
            loop {
                let mut p = Progress::decode(&saved).expect("decodes");
                if job.step(&mut p) {
                    assert_eq!(p.output(), straight, "interval {interval}");
                    break;
                }
                saved = p.encode();
            }
        }
    }

    #[test]
    fn bad_input_is_refused() {
        for bad in [&b""[..], b"0 5", b"5 4", b"1 2 0", b"1 x", b"1 2 3 4"] {
            assert!(compute(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(Progress::decode(&[0; 31]), None);
    }
}
