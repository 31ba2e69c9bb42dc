//! Parses the `a b` range input that sweep manifests give each unit
//! (`sweep = { from, to, step }` makes unit `a` read `"a b\n"`).

/// The half-open range `[a, b)` from `"a b"` (u64s, `a <= b`, any whitespace).
pub fn parse_range(input: &str) -> Result<(u64, u64), String> {
    let fields: Vec<&str> = input.split_ascii_whitespace().collect();
    let [a, b] = fields[..] else {
        return Err(format!(
            "expected two integers `a b`, got {} fields",
            fields.len()
        ));
    };
    let a: u64 = a
        .parse()
        .map_err(|_| format!("a is not a non-negative integer: {a:?}"))?;
    let b: u64 = b
        .parse()
        .map_err(|_| format!("b is not a non-negative integer: {b:?}"))?;
    if a > b {
        return Err(format!("a ({a}) must not exceed b ({b})"));
    }
    Ok((a, b))
}
