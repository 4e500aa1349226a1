//! The results: rows of (measure, value, baseline, ratio, target, verdict),
//! printed as a table and written as JSON, plus the statistics they use.

use std::fmt::Write as _;

/// What a row's numbers count.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Unit {
    /// Seconds (printed as ns, µs, ms or s).
    Secs,
    /// Instructions (per call or per run).
    Instr,
    /// Kilobytes (1024 bytes).
    KiB,
    /// Indirect branches.
    Branches,
}

impl Unit {
    fn json(self) -> &'static str {
        match self {
            Unit::Secs => "s",
            Unit::Instr => "instructions",
            Unit::KiB => "kB",
            Unit::Branches => "indirect branches",
        }
    }
}

/// Formats `v` in `unit` for the table.
pub fn show(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Secs => {
            let a = v.abs();
            if a < 1e-6 {
                format!("{:.2} ns", v * 1e9)
            } else if a < 1e-3 {
                format!("{:.0} µs", v * 1e6)
            } else if a < 1.0 {
                format!("{:.2} ms", v * 1e3)
            } else {
                format!("{:.2} s", v)
            }
        }
        Unit::Instr if v.abs() >= 1e6 => format!("{:.2} M instr", v / 1e6),
        Unit::Instr if v.abs() >= 1e4 => format!("{:.1} k instr", v / 1e3),
        Unit::Instr => format!("{v:.2} instr"),
        Unit::KiB => format!("{v:.0} kB"),
        Unit::Branches => format!("{v:.2} ind. br."),
    }
}

/// The goal a row is judged against.
#[derive(Clone, Debug)]
pub enum Target {
    /// value ≤ limit (in the row's unit).
    AtMost(f64),
    /// value / baseline ≤ limit.
    RatioAtMost(f64),
    /// value − baseline ≤ limit (in the row's unit).
    DeltaAtMost(f64),
    /// Judged by the measure itself; the text says what the goal is.
    Custom(String),
}

pub struct Row {
    pub measure: String,
    pub unit: Unit,
    pub value: Option<f64>,
    pub baseline: Option<f64>,
    pub target: Option<Target>,
    /// For `Target::Custom` (and for rows that could not be measured).
    pub verdict: Option<String>,
    pub note: String,
    /// More numbers for the JSON only (samples, p90, ...).
    pub extra: Vec<(String, f64)>,
    pub samples: Vec<f64>,
}

impl Row {
    pub fn new(measure: impl Into<String>, unit: Unit, value: f64) -> Row {
        Row {
            measure: measure.into(),
            unit,
            value: Some(value),
            baseline: None,
            target: None,
            verdict: None,
            note: String::new(),
            extra: Vec::new(),
            samples: Vec::new(),
        }
    }

    /// A row for something that could not be measured, saying why.
    pub fn missing(measure: impl Into<String>, unit: Unit, why: impl Into<String>) -> Row {
        let mut r = Row::new(measure, unit, 0.0);
        r.value = None;
        r.verdict = Some("not measured".into());
        r.note = why.into();
        r
    }

    pub fn baseline(mut self, b: f64) -> Row {
        self.baseline = Some(b);
        self
    }

    pub fn target(mut self, t: Target) -> Row {
        self.target = Some(t);
        self
    }

    pub fn note(mut self, n: impl Into<String>) -> Row {
        self.note = n.into();
        self
    }

    pub fn verdict(mut self, v: impl Into<String>) -> Row {
        self.verdict = Some(v.into());
        self
    }

    pub fn samples(mut self, s: &[f64]) -> Row {
        self.samples = s.to_vec();
        self
    }

    pub fn extra(mut self, k: &str, v: f64) -> Row {
        self.extra.push((k.into(), v));
        self
    }

    pub fn ratio(&self) -> Option<f64> {
        match (self.value, self.baseline) {
            (Some(v), Some(b)) if b != 0.0 => Some(v / b),
            _ => None,
        }
    }

    pub fn target_text(&self) -> String {
        match &self.target {
            None => "-".into(),
            Some(Target::AtMost(t)) => format!("≤ {}", show(*t, self.unit)),
            Some(Target::RatioAtMost(t)) => format!("≤ {t:.2}×"),
            Some(Target::DeltaAtMost(t)) => format!("≤ +{}", show(*t, self.unit)),
            Some(Target::Custom(s)) => s.clone(),
        }
    }

    pub fn verdict_text(&self) -> String {
        if let Some(v) = &self.verdict {
            return v.clone();
        }
        let Some(v) = self.value else {
            return "not measured".into();
        };
        match &self.target {
            None | Some(Target::Custom(_)) => "-".into(),
            Some(Target::AtMost(t)) => {
                if v <= *t {
                    "met".into()
                } else {
                    format!("MISSED by {} ({:.1}×)", show(v - t, self.unit), v / t)
                }
            }
            Some(Target::RatioAtMost(t)) => match self.ratio() {
                Some(r) if r <= *t => "met".into(),
                Some(r) => format!("MISSED by {:.1}%", (r - t) * 100.0),
                None => "no baseline".into(),
            },
            Some(Target::DeltaAtMost(t)) => match self.baseline {
                Some(b) if v - b <= *t => "met".into(),
                Some(b) => format!("MISSED by {}", show(v - b - t, self.unit)),
                None => "no baseline".into(),
            },
        }
    }
}

/// The median of `xs` (0 when empty).
pub fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 0 {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    } else {
        v[n / 2]
    }
}

/// The `p`th percentile of `xs`, nearest rank (0 when empty).
pub fn percentile(xs: &[f64], p: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// The printed table.
pub fn table(rows: &[Row]) -> String {
    let head = ["measure", "value", "baseline", "ratio", "target", "verdict"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.measure.clone(),
                r.value.map_or("-".into(), |v| show(v, r.unit)),
                r.baseline.map_or("-".into(), |b| show(b, r.unit)),
                r.ratio().map_or("-".into(), |x| format!("{x:.3}")),
                r.target_text(),
                r.verdict_text(),
            ]
        })
        .collect();
    let mut width = head.map(|h| h.chars().count());
    for c in &cells {
        for (w, s) in width.iter_mut().zip(c.iter()) {
            *w = (*w).max(s.chars().count());
        }
    }
    let line = |c: &[String]| {
        let mut s = String::new();
        for (i, (cell, w)) in c.iter().zip(width.iter()).enumerate() {
            let pad = w - cell.chars().count();
            if i == 0 || i >= 4 {
                let _ = write!(s, "{cell}{}", " ".repeat(pad));
            } else {
                let _ = write!(s, "{}{cell}", " ".repeat(pad));
            }
            if i + 1 < c.len() {
                s.push_str("  ");
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&head.map(String::from));
    out += &line(&width.map(|w| "-".repeat(w)));
    for c in &cells {
        out += &line(c);
    }
    out
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// A JSON number (null when not finite).
pub fn json_num(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "null".into()
    }
}

fn json_opt(v: Option<f64>) -> String {
    v.map_or("null".into(), json_num)
}

/// One row as a JSON object.
pub fn row_json(r: &Row) -> String {
    let mut s = String::from("{");
    let _ = write!(
        s,
        "\"measure\": {}, \"unit\": {}, \"value\": {}, \"baseline\": {}, \"ratio\": {}, \"target\": {}, \"verdict\": {}, \"note\": {}",
        json_str(&r.measure),
        json_str(r.unit.json()),
        json_opt(r.value),
        json_opt(r.baseline),
        json_opt(r.ratio()),
        json_str(&r.target_text()),
        json_str(&r.verdict_text()),
        json_str(&r.note)
    );
    for (k, v) in &r.extra {
        let _ = write!(s, ", {}: {}", json_str(k), json_num(*v));
    }
    if !r.samples.is_empty() {
        let xs: Vec<String> = r.samples.iter().map(|x| json_num(*x)).collect();
        let _ = write!(s, ", \"samples\": [{}]", xs.join(", "));
    }
    s.push('}');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(
            percentile(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 90.0),
            9.0
        );
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn verdicts() {
        let r = Row::new("x", Unit::Secs, 2e-3).target(Target::AtMost(1e-3));
        assert_eq!(r.verdict_text(), "MISSED by 1.00 ms (2.0×)");
        let r = Row::new("x", Unit::Secs, 1.01)
            .baseline(1.0)
            .target(Target::RatioAtMost(1.05));
        assert_eq!(r.verdict_text(), "met");
        let r = Row::new("x", Unit::KiB, 500.0)
            .baseline(100.0)
            .target(Target::DeltaAtMost(200.0));
        assert_eq!(r.verdict_text(), "MISSED by 200 kB");
    }

    #[test]
    fn json_escapes() {
        assert_eq!(json_str("a\"b\\\n"), "\"a\\\"b\\\\\\n\"");
        assert_eq!(json_num(f64::NAN), "null");
    }
}
