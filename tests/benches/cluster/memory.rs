//! Metric 6: the resident memory (VmRSS) of idle replicas, beside etcd members' in the same run.

use crate::table::{Row, Verdict};

/// The resident set of process `pid`, in bytes, from `/proc/PID/status`.
pub fn rss(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| format!("{path} has no VmRSS line"))?;
    Ok(kb * 1024)
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// The largest of each side (every replica is listed), against the target.
pub fn rows(concord: &[u64], etcd: Result<&[u64], &str>, idle_secs: u64) -> Vec<Row> {
    let max = concord.iter().copied().max().unwrap_or(0);
    let all: Vec<String> = concord.iter().map(|b| mb(*b)).collect();
    let reference = match etcd {
        Ok(e) => format!(
            "etcd member max: {}",
            mb(e.iter().copied().max().unwrap_or(0))
        ),
        Err(why) => why.to_string(),
    };
    vec![Row::new(
        format!(
            "idle replica RSS, max of {} ({}; idle {idle_secs} s)",
            concord.len(),
            all.join(", ")
        ),
        mb(max),
        reference,
        "< 50 MB",
        Verdict::of(max < 50_000_000),
    )]
}

/// The same, read once more after every write of the run (the concurrent writers last), when the
/// history is `history` transitions long: the target holds as the history grows, too.
pub fn rows_after_writes(concord: &[u64], history: u64, idle_secs: u64) -> Vec<Row> {
    let max = concord.iter().copied().max().unwrap_or(0);
    let all: Vec<String> = concord.iter().map(|b| mb(*b)).collect();
    vec![Row::new(
        format!(
            "idle replica RSS after every write, history {history}, max of {} ({}; idle {idle_secs} s)",
            concord.len(),
            all.join(", ")
        ),
        mb(max),
        "-",
        "< 50 MB",
        Verdict::of(max < 50_000_000),
    )]
}
