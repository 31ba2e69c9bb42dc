//! Sums rows of a data table: `/data/table` holds one integer per line; stdin names row
//! numbers (0-based, whitespace-separated); stdout is `<sum>\n`. With `/data/offset`
//! present, its integer is added too (a second data file). Bad input or a missing table
//! exits 2 with a message on stderr.

use std::process::ExitCode;

fn main() -> ExitCode {
    match run() {
        Ok(sum) => {
            println!("{sum}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("lookup: {message}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<i64, String> {
    let table = std::fs::read_to_string("/data/table")
        .map_err(|e| format!("cannot read /data/table: {e}"))?;
    let rows: Vec<i64> = table
        .lines()
        .map(|l| {
            l.trim()
                .parse::<i64>()
                .map_err(|e| format!("table row {l:?}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let mut input = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut input)
        .map_err(|e| format!("cannot read stdin: {e}"))?;
    let mut sum = 0i64;
    for word in input.split_whitespace() {
        let i: usize = word.parse().map_err(|e| format!("row {word:?}: {e}"))?;
        let v = rows
            .get(i)
            .ok_or_else(|| format!("row {i} is past the table's {} rows", rows.len()))?;
        sum = sum.wrapping_add(*v);
    }
    if let Ok(offset) = std::fs::read_to_string("/data/offset") {
        sum = sum.wrapping_add(
            offset
                .trim()
                .parse::<i64>()
                .map_err(|e| format!("/data/offset: {e}"))?,
        );
    }
    Ok(sum)
}
