//! The Prometheus text exposition format, version 0.0.4: `# HELP` and `# TYPE` lines, samples with
//! escaped label values, histograms as cumulative `_bucket`, `_sum` and `_count` series.
//!
//! Owns only the syntax: a pure writer into a `String`, with no knowledge of which metrics exist.
//! Must never write a sample before its family's HELP and TYPE lines, or a label value unescaped.

use std::fmt::Write;

use super::histogram::Histogram;

/// The `Content-Type` of a `/metrics` answer in this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type, as the `# TYPE` line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Writes one exposition document: call [`Exposition::family`], then its samples, for each family.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Starts a family: its HELP and TYPE lines. Every family needs both, even one without samples.
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) {
        // `write!` into a String cannot fail.
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        write_labels(&mut self.out, labels, None);
        let _ = writeln!(self.out, " {}", format_value(value));
    }

    /// The series of one histogram of the current family: a cumulative `_bucket` per bound and `+Inf`,
    /// then `_sum` and `_count`.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let mut cumulative = 0u64;
        for (bound, count) in h.bounds().iter().zip(h.bucket_counts()) {
            cumulative += count;
            let le = format_value(*bound);
            let _ = write!(self.out, "{name}_bucket");
            write_labels(&mut self.out, labels, Some(&le));
            let _ = writeln!(self.out, " {cumulative}");
        }
        let _ = write!(self.out, "{name}_bucket");
        write_labels(&mut self.out, labels, Some("+Inf"));
        let _ = writeln!(self.out, " {}", h.count());
        let _ = write!(self.out, "{name}_sum");
        write_labels(&mut self.out, labels, None);
        let _ = writeln!(self.out, " {}", format_value(h.sum()));
        let _ = write!(self.out, "{name}_count");
        write_labels(&mut self.out, labels, None);
        let _ = writeln!(self.out, " {}", h.count());
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    let all = labels.iter().copied().chain(le.map(|v| ("le", v)));
    for (name, value) in all {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "{name}=\"{}\"", escape_label_value(value));
    }
    out.push('}');
}

/// Label values escape backslash, double quote and line feed.
fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text escapes backslash and line feed (not the double quote).
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A sample value as the format spells it: Go's float syntax, with `+Inf`, `-Inf` and `NaN`.
fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        // Rust's shortest round-trip form ("0.005", "1", "1e-7") is valid Go float syntax.
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_starts_with_help_and_type() {
        let mut e = Exposition::new();
        e.family("concord_x", "What x is.", Kind::Gauge);
        e.sample("concord_x", &[], 3.0);
        assert_eq!(
            e.finish(),
            "# HELP concord_x What x is.\n# TYPE concord_x gauge\nconcord_x 3\n"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut e = Exposition::new();
        e.family("concord_y_total", "a \\ back\nslash", Kind::Counter);
        e.sample(
            "concord_y_total",
            &[("a", "q\"uo\\te\nnl"), ("b", "plain")],
            1.5,
        );
        assert_eq!(
            e.finish(),
            "# HELP concord_y_total a \\\\ back\\nslash\n# TYPE concord_y_total counter\n\
             concord_y_total{a=\"q\\\"uo\\\\te\\nnl\",b=\"plain\"} 1.5\n"
        );
    }

    #[test]
    fn special_values_use_the_formats_spelling() {
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(0.005), "0.005");
        assert_eq!(format_value(-1.0), "-1");
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(0.5);
        h.observe(7.0);
        let mut e = Exposition::new();
        e.family("concord_d_seconds", "d", Kind::Histogram);
        e.histogram("concord_d_seconds", &[("method", "m")], &h);
        assert_eq!(
            e.finish(),
            "# HELP concord_d_seconds d\n# TYPE concord_d_seconds histogram\n\
             concord_d_seconds_bucket{method=\"m\",le=\"0.1\"} 1\n\
             concord_d_seconds_bucket{method=\"m\",le=\"1\"} 3\n\
             concord_d_seconds_bucket{method=\"m\",le=\"+Inf\"} 4\n\
             concord_d_seconds_sum{method=\"m\"} 8.05\n\
             concord_d_seconds_count{method=\"m\"} 4\n"
        );
    }
}
