//! Order statistics of latency samples.

use std::time::Duration;

use serde_json::{json, Value};

/// min / median / p95 / max (and mean) of a sample, in microseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub min_us: f64,
    pub median_us: f64,
    pub p95_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

/// The `q` quantile (0..=1) of sorted values, linearly interpolated between the closest
/// ranks (the median of an even count is the mean of the middle two).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let pos = q.clamp(0.0, 1.0) * (n - 1) as f64;
            let lo = pos.floor() as usize;
            let hi = pos.ceil() as usize;
            sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
        }
    }
}

impl Summary {
    /// `None` for an empty sample.
    pub fn of_us(values: &[f64]) -> Option<Summary> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        Some(Summary {
            n: v.len(),
            min_us: v[0],
            median_us: quantile(&v, 0.5),
            p95_us: quantile(&v, 0.95),
            max_us: v[v.len() - 1],
            mean_us: v.iter().sum::<f64>() / v.len() as f64,
        })
    }

    pub fn of(samples: &[Duration]) -> Option<Summary> {
        let us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        Summary::of_us(&us)
    }

    /// Every figure finite and none negative (what the smoke test checks).
    pub fn is_sane(&self) -> bool {
        let all = [
            self.min_us,
            self.median_us,
            self.p95_us,
            self.max_us,
            self.mean_us,
        ];
        self.n > 0
            && all.iter().all(|x| x.is_finite() && *x >= 0.0)
            && self.min_us <= self.median_us
            && self.median_us <= self.p95_us
            && self.p95_us <= self.max_us
    }

    /// `min / med / p95 / max` in microseconds, for a table cell.
    pub fn cell(&self) -> String {
        format!(
            "{} / {} / {} / {}",
            fmt_us(self.min_us),
            fmt_us(self.median_us),
            fmt_us(self.p95_us),
            fmt_us(self.max_us)
        )
    }

    pub fn to_json(&self) -> Value {
        json!({
            "n": self.n,
            "min_us": round1(self.min_us),
            "median_us": round1(self.median_us),
            "p95_us": round1(self.p95_us),
            "max_us": round1(self.max_us),
            "mean_us": round1(self.mean_us),
        })
    }
}

/// Microseconds without a fraction, with thousands separators.
pub fn fmt_us(us: f64) -> String {
    group(us.round() as u64)
}

/// `1234567` -> `1,234,567`.
pub fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One decimal place (JSON output).
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&v, 0.5), 2.5);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 1.0), 4.0);
        let s = Summary::of_us(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((s.min_us, s.median_us, s.max_us), (1.0, 3.0, 5.0));
        assert!(s.is_sane());
        assert!(Summary::of_us(&[]).is_none());
    }

    #[test]
    fn groups_thousands() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1234567), "1,234,567");
    }
}
