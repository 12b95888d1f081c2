//! Summaries for scripts/bench.sh: the one JSON result line per run, and the median (min–max)
//! over files of them.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::Value;

/// The result as one JSON line that starts with `{"mode":` (the scripts look for that).
pub(crate) fn result_line(mut report: Value) -> String {
    let mode = report
        .as_object_mut()
        .and_then(|o| o.remove("mode"))
        .unwrap_or(Value::Null);
    let rest = report.to_string();
    match rest.strip_prefix('{') {
        Some("}") | None => format!("{{\"mode\":{mode}}}"),
        Some(fields) => format!("{{\"mode\":{mode},{fields}"),
    }
}

/// For each file of JSON lines (`{"mode":...}`): every numeric figure as median (min–max) over
/// the runs, every boolean as how many runs were true.
pub(crate) fn summarize(files: &[PathBuf]) -> ExitCode {
    for file in files {
        let name = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let runs: Vec<Value> = text
            .lines()
            .filter(|l| l.starts_with("{\"mode\""))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        println!("== {name}: {} run(s)", runs.len());
        let mut keys: Vec<String> = runs
            .iter()
            .filter_map(Value::as_object)
            .flat_map(|o| o.keys().cloned())
            .collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            let values: Vec<&Value> = runs.iter().filter_map(|r| r.get(&key)).collect();
            let mut nums: Vec<f64> = values.iter().filter_map(|v| v.as_f64()).collect();
            if !nums.is_empty() && nums.len() == values.len() {
                nums.sort_by(|a, b| a.total_cmp(b));
                let median = if nums.len() % 2 == 1 {
                    nums[nums.len() / 2]
                } else {
                    (nums[nums.len() / 2 - 1] + nums[nums.len() / 2]) / 2.0
                };
                println!(
                    "  {key:<34} {} ({}–{})",
                    fmt_num(median),
                    fmt_num(nums[0]),
                    fmt_num(nums[nums.len() - 1])
                );
            } else if values.iter().all(|v| v.is_boolean()) && !values.is_empty() {
                let yes = values.iter().filter(|v| v.as_bool() == Some(true)).count();
                println!("  {key:<34} true in {yes} of {}", values.len());
            } else if values.iter().all(|v| v.is_string()) && !values.is_empty() {
                let mut distinct: Vec<&str> = values.iter().filter_map(|v| v.as_str()).collect();
                distinct.dedup();
                println!("  {key:<34} {}", distinct.join(" | "));
            }
        }
    }
    ExitCode::SUCCESS
}

fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 || x.abs() >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}
