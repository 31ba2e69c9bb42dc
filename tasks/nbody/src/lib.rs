//! The Jovian planets around the Sun, integrated with symplectic Euler steps: the n-body
//! kernel of the Computer Language Benchmarks Game, in double precision.
//!
//! stdin: `steps\n` (1 to 10^9). stdout: the system's energy before and after,
//! `<before> <after> <bits>\n`, the energies with 9 decimals and `bits` the exact IEEE-754
//! bits of the final energy in hex.
//!
//! Only `+ - * /` and `sqrt` on `f64`, each correctly rounded by IEEE-754, in a fixed
//! order (Rust never fuses a multiply and an add on its own), so every host — native or
//! WebAssembly, any CPU — computes the same bits.

use std::f64::consts::PI;

const SOLAR_MASS: f64 = 4.0 * PI * PI;
const DAYS_PER_YEAR: f64 = 365.24;
/// Most steps one unit may ask for.
pub const MAX_STEPS: u64 = 1_000_000_000;

#[derive(Clone, Copy)]
struct Body {
    position: [f64; 3],
    velocity: [f64; 3],
    mass: f64,
}

fn body(position: [f64; 3], velocity: [f64; 3], mass: f64) -> Body {
    Body {
        position,
        velocity: velocity.map(|v| v * DAYS_PER_YEAR),
        mass: mass * SOLAR_MASS,
    }
}

/// The Sun, Jupiter, Saturn, Uranus and Neptune, with the Sun's momentum offset so the
/// system's total momentum is zero.
fn solar_system() -> [Body; 5] {
    let mut bodies = [
        body([0.0; 3], [0.0; 3], 1.0),
        body(
            [
                4.841_431_442_464_72,
                -1.160_320_044_027_428_4,
                -0.103_622_044_471_123_1,
            ],
            [
                0.001_660_076_642_744_037,
                0.007_699_011_184_197_404,
                -6.904_600_169_720_63e-5,
            ],
            9.547_919_384_243_266e-4,
        ),
        body(
            [
                8.343_366_718_244_58,
                4.124_798_564_124_305,
                -0.403_523_417_114_321_4,
            ],
            [
                -0.002_767_425_107_268_624,
                0.004_998_528_012_349_172,
                2.304_172_975_737_639_3e-5,
            ],
            2.858_859_806_661_308e-4,
        ),
        body(
            [
                12.894_369_562_139_131,
                -15.111_151_401_698_631,
                -0.223_307_578_892_655_73,
            ],
            [
                0.002_964_601_375_647_616,
                0.002_378_471_739_594_809_5,
                -2.965_895_685_402_375_6e-5,
            ],
            4.366_244_043_351_563e-5,
        ),
        body(
            [
                15.379_697_114_850_917,
                -25.919_314_609_987_964,
                0.179_258_772_950_371_18,
            ],
            [
                0.002_680_677_724_903_893_2,
                0.001_628_241_700_382_423,
                -9.515_922_545_197_159e-5,
            ],
            5.151_389_020_466_114_5e-5,
        ),
    ];
    let mut momentum = [0.0; 3];
    for b in &bodies {
        for (m, v) in momentum.iter_mut().zip(b.velocity) {
            *m += v * b.mass;
        }
    }
    let sun = &mut bodies[0];
    for (v, m) in sun.velocity.iter_mut().zip(momentum) {
        *v = -m / SOLAR_MASS;
    }
    bodies
}

fn energy(bodies: &[Body]) -> f64 {
    let mut e = 0.0;
    for (i, a) in bodies.iter().enumerate() {
        let [vx, vy, vz] = a.velocity;
        e += 0.5 * a.mass * (vx * vx + vy * vy + vz * vz);
        for b in &bodies[i + 1..] {
            let [dx, dy, dz] = [0, 1, 2].map(|k| a.position[k] - b.position[k]);
            e -= a.mass * b.mass / (dx * dx + dy * dy + dz * dz).sqrt();
        }
    }
    e
}

fn advance(bodies: &mut [Body; 5], dt: f64) {
    for i in 0..bodies.len() {
        let (left, right) = bodies.split_at_mut(i + 1);
        let a = &mut left[i];
        for b in right.iter_mut() {
            let dx = a.position[0] - b.position[0];
            let dy = a.position[1] - b.position[1];
            let dz = a.position[2] - b.position[2];
            let d2 = dx * dx + dy * dy + dz * dz;
            let magnitude = dt / (d2 * d2.sqrt());
            let (ma, mb) = (a.mass * magnitude, b.mass * magnitude);
            a.velocity[0] -= dx * mb;
            a.velocity[1] -= dy * mb;
            a.velocity[2] -= dz * mb;
            b.velocity[0] += dx * ma;
            b.velocity[1] += dy * ma;
            b.velocity[2] += dz * ma;
        }
    }
    for b in bodies.iter_mut() {
        for k in 0..3 {
            b.position[k] += dt * b.velocity[k];
        }
    }
}

/// The whole guest as a function: stdin bytes in, stdout bytes out.
pub fn compute(input: &[u8]) -> Result<Vec<u8>, String> {
    let input = std::str::from_utf8(input).map_err(|_| "input is not UTF-8 text".to_string())?;
    let steps: u64 = input
        .trim()
        .parse()
        .map_err(|_| format!("expected the number of steps, got {:?}", input.trim()))?;
    if !(1..=MAX_STEPS).contains(&steps) {
        return Err(format!(
            "steps must be between 1 and {MAX_STEPS} (got {steps})"
        ));
    }
    let mut bodies = solar_system();
    let before = energy(&bodies);
    for _ in 0..steps {
        advance(&mut bodies, 0.01);
    }
    let after = energy(&bodies);
    Ok(format!("{before:.9} {after:.9} {:016x}\n", after.to_bits()).into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn energies(steps: u64) -> String {
        String::from_utf8(compute(format!("{steps}\n").as_bytes()).expect("runs")).expect("utf-8")
    }

    #[test]
    fn matches_the_benchmarks_game_reference_output() {
        // The Benchmarks Game's published output for n = 1000.
        let out = energies(1000);
        assert!(out.starts_with("-0.169075164 -0.169087605 "), "{out}");
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        for (input, reason) in [
            (&b"zero"[..], "number of steps"),
            (b"0", "between 1 and"),
            (b"1000000001", "between 1 and"),
        ] {
            match compute(input) {
                Err(e) => assert!(e.contains(reason), "{e}"),
                Ok(out) => panic!("accepted {input:?}: {out:?}"),
            }
        }
    }
}
