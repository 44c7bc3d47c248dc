//! The printed result: one row per metric with Concord's number, the reference measured in the same
//! run, the target of DESIGN.md and whether it was met; and the sample statistics behind them.

use std::time::Duration;

/// Durations measured for one metric.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    sorted: Vec<Duration>,
}

impl Samples {
    pub fn new(mut samples: Vec<Duration>) -> Samples {
        samples.sort();
        Samples { sorted: samples }
    }

    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// The nearest-rank percentile `p` (0 to 100); zero when there are no samples.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = (p / 100.0 * self.sorted.len() as f64).ceil() as usize;
        self.sorted[rank.clamp(1, self.sorted.len()) - 1]
    }

    pub fn median(&self) -> Duration {
        self.percentile(50.0)
    }

    pub fn max(&self) -> Duration {
        self.sorted.last().copied().unwrap_or_default()
    }
}

/// Milliseconds with a precision that suits the size.
pub fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// Whether a row met its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    /// No target applies (a number shown for context).
    Info,
    /// The target needs the reference, which is missing; what could be checked is said.
    NoReference(String),
    /// The measurement itself failed.
    Error,
}

impl Verdict {
    pub fn of(met: bool) -> Verdict {
        if met { Verdict::Pass } else { Verdict::Fail }
    }

    fn text(&self) -> String {
        match self {
            Verdict::Pass => "PASS".into(),
            Verdict::Fail => "FAIL".into(),
            Verdict::Info => "-".into(),
            Verdict::NoReference(partial) => format!("n/a ({partial})"),
            Verdict::Error => "ERROR".into(),
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub metric: String,
    pub concord: String,
    pub reference: String,
    pub target: String,
    pub verdict: Verdict,
}

impl Row {
    pub fn new(
        metric: impl Into<String>,
        concord: impl Into<String>,
        reference: impl Into<String>,
        target: impl Into<String>,
        verdict: Verdict,
    ) -> Row {
        Row {
            metric: metric.into(),
            concord: concord.into(),
            reference: reference.into(),
            target: target.into(),
            verdict,
        }
    }

    /// A section whose measurement failed: the error stands in the Concord column.
    pub fn error(metric: &str, error: &str) -> Row {
        Row::new(metric, format!("error: {error}"), "", "", Verdict::Error)
    }
}

/// What the reference column says when etcd is not installed.
pub const NO_REFERENCE: &str = "not available (install etcd-server)";

/// Prints the rows as a table with aligned columns.
pub fn print(rows: &[Row]) {
    let header = [
        "metric",
        "Concord",
        "reference (same run)",
        "target",
        "result",
    ]
    .map(String::from);
    let lines: Vec<[String; 5]> = std::iter::once(header)
        .chain(rows.iter().map(|r| {
            [
                r.metric.clone(),
                r.concord.clone(),
                r.reference.clone(),
                r.target.clone(),
                r.verdict.text(),
            ]
        }))
        .collect();
    let mut widths = [0usize; 5];
    for line in &lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for (i, line) in lines.iter().enumerate() {
        let padded: Vec<String> = line
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", padded.join(" | ").trim_end());
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            println!("{}", rule.join("-|-"));
        }
    }
}
