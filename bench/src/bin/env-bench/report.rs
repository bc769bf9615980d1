//! Formatting: aligned tables, numbers, and PASS/MISS verdicts against the targets of
//! `DESIGN.md` ("Performance targets").

use std::fmt::Write;

use hdrhistogram::Histogram;

use crate::procs::u64_f64;

/// A plain text table: the first column left-aligned, the others right-aligned.
pub(crate) struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|&h| h.to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: &[String]| {
            let mut text = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = cells.get(i).map_or("", String::as_str);
                let pad = width.saturating_sub(cell.chars().count());
                if i > 0 {
                    text.push_str("  ");
                }
                if i == 0 {
                    text.push_str(cell);
                    text.push_str(&" ".repeat(pad));
                } else {
                    text.push_str(&" ".repeat(pad));
                    text.push_str(cell);
                }
            }
            let _ = writeln!(out, "  {}", text.trim_end());
        };
        line(&mut out, &self.headers);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        line(&mut out, &rule);
        for row in &self.rows {
            line(&mut out, row);
        }
        out
    }
}

/// Nanoseconds as microseconds with one decimal.
pub(crate) fn us(ns: u64) -> String {
    format!("{:.1}", u64_f64(ns) / 1000.0)
}

/// p50, p90, p99 and max of a latency histogram (ns), in µs.
pub(crate) fn percentiles(hist: &Histogram<u64>) -> [String; 4] {
    [
        us(hist.value_at_quantile(0.50)),
        us(hist.value_at_quantile(0.90)),
        us(hist.value_at_quantile(0.99)),
        us(hist.max()),
    ]
}

/// An integer with thousands separators: 31234 → "31,234".
pub(crate) fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return "-".to_owned();
    }
    let rounded = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, ch) in rounded.chars().enumerate() {
        if i > 0 && (rounded.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if v < 0.0 && rounded != "0" {
        out.insert(0, '-');
    }
    out
}

/// `a / b` as "×1.23" (or "-" when undefined).
pub(crate) fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() && b.is_finite() {
        format!("×{:.2}", a / b)
    } else {
        "-".to_owned()
    }
}

/// Which side of the target passes.
#[derive(Clone, Copy)]
pub(crate) enum Goal {
    /// measured ≤ target
    AtMost,
    /// measured ≥ target
    AtLeast,
}

/// One target and how the run fared against it.
pub(crate) struct Verdict {
    pub(crate) what: String,
    pub(crate) target: String,
    pub(crate) measured: String,
    pub(crate) outcome: String,
    pub(crate) pass: bool,
}

impl Verdict {
    /// A numeric target; `unit` and `digits` format the values and the margin.
    pub(crate) fn numeric(
        what: &str,
        goal: Goal,
        target: f64,
        measured: f64,
        unit: &str,
        digits: usize,
    ) -> Self {
        let (pass, sign) = match goal {
            Goal::AtMost => (measured <= target, "≤"),
            Goal::AtLeast => (measured >= target, "≥"),
        };
        let fmt = |v: f64| {
            if digits == 0 {
                thousands(v)
            } else {
                format!("{v:.digits$}")
            }
        };
        let diff = (measured - target).abs();
        let pct = if target == 0.0 {
            0.0
        } else {
            100.0 * diff / target
        };
        let outcome = match (pass, goal) {
            (true, Goal::AtMost) => format!("PASS, {} {unit} ({pct:.0}%) under", fmt(diff)),
            (true, Goal::AtLeast) => format!("PASS, {} {unit} ({pct:.0}%) over", fmt(diff)),
            (false, Goal::AtMost) => format!("MISS by {} {unit} (+{pct:.0}%)", fmt(diff)),
            (false, Goal::AtLeast) => format!("MISS by {} {unit} (−{pct:.0}%)", fmt(diff)),
        };
        Self {
            what: what.to_owned(),
            target: format!("{sign} {} {unit}", fmt(target)),
            measured: format!("{} {unit}", fmt(measured)),
            outcome,
            pass,
        }
    }

    /// A yes/no target.
    pub(crate) fn check(what: &str, target: &str, measured: String, pass: bool) -> Self {
        Self {
            what: what.to_owned(),
            target: target.to_owned(),
            measured,
            outcome: if pass { "PASS" } else { "MISS" }.to_owned(),
            pass,
        }
    }

    /// A target that could not be measured.
    pub(crate) fn unmeasured(what: &str, target: &str, why: &str) -> Self {
        Self {
            what: what.to_owned(),
            target: target.to_owned(),
            measured: "-".to_owned(),
            outcome: format!("NOT MEASURED ({why})"),
            pass: false,
        }
    }
}

/// The verdicts as a table.
pub(crate) fn verdict_table(verdicts: &[Verdict]) -> String {
    let mut table = Table::new(&["target", "goal", "measured", "verdict"]);
    for v in verdicts {
        table.row(vec![
            v.what.clone(),
            v.target.clone(),
            v.measured.clone(),
            v.outcome.clone(),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(31234.0), "31,234");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(thousands(-1500.0), "-1,500");
    }

    #[test]
    fn verdicts_state_the_margin() {
        let v = Verdict::numeric("p50", Goal::AtMost, 60.0, 45.0, "µs", 1);
        assert!(v.pass);
        assert_eq!(v.outcome, "PASS, 15.0 µs (25%) under");
        let v = Verdict::numeric("steps/s", Goal::AtLeast, 30_000.0, 24_000.0, "steps/s", 0);
        assert!(!v.pass);
        assert_eq!(v.outcome, "MISS by 6,000 steps/s (−20%)");
    }

    #[test]
    fn tables_align() {
        let mut t = Table::new(&["a", "bb"]);
        t.row(vec!["long".to_owned(), "1".to_owned()]);
        assert_eq!(t.render(), "  a     bb\n  ----  --\n  long   1\n");
    }
}
