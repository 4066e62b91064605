//! Helpers shared by satcosign's benchmarks: latency statistics and table printing.

use std::time::Duration;

/// Latency samples of one scenario, and the wall time they took.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    /// Each request's latency, microseconds.
    pub micros: Vec<u32>,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

impl Samples {
    /// Requests completed per second.
    pub fn rate(&self) -> f64 {
        self.micros.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile (0..=1) of latency, microseconds.
    pub fn quantile(&mut self, q: f64) -> u32 {
        if self.micros.is_empty() {
            return 0;
        }
        self.micros.sort_unstable();
        let idx = ((self.micros.len() - 1) as f64 * q).round() as usize;
        self.micros[idx]
    }
}

/// Formats rows as an aligned text table with a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == 0 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    let mut out = line(header.iter().map(|s| s.to_string()).collect());
    out.push('\n');
    out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1)));
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_rate() {
        let mut s = Samples {
            micros: (1..=100).rev().collect(),
            elapsed: Duration::from_secs(2),
        };
        assert_eq!(s.quantile(0.5), 51);
        assert_eq!(s.quantile(0.99), 99);
        assert_eq!(s.rate(), 50.0);
    }
}
