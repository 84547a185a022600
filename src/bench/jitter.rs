//! `pubsub bench jitter`: the machine's own noise floor. One thread reads the monotonic
//! clock in a tight loop. Every gap between two reads longer than 10 µs is time the
//! thread did not run, because of an interrupt, another task, or the hypervisor taking
//! the CPU. A latency measured on the same CPU shows these stalls in its tail.

use super::JitterArgs;
use super::engine::add_environment;
use super::report::{Summary, group_thousands, print_table};
use std::error::Error;
use std::time::{Duration, Instant};

/// Gap thresholds in microseconds; a gap is counted under every threshold it exceeds.
pub const THRESHOLDS_US: [u64; 6] = [10, 100, 500, 1_000, 5_000, 10_000];

/// Counts of gaps between consecutive clock reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gaps {
    /// `over[i]` counts gaps longer than `THRESHOLDS_US[i]`.
    pub over: [u64; THRESHOLDS_US.len()],
    pub max: Duration,
    /// Sum of the gaps longer than the first threshold.
    pub stalled: Duration,
}

impl Gaps {
    /// Counts one gap.
    pub fn record(&mut self, gap: Duration) {
        let micros = gap.as_micros() as u64;
        for (count, threshold) in self.over.iter_mut().zip(THRESHOLDS_US) {
            if micros > threshold {
                *count += 1;
            }
        }
        if micros > THRESHOLDS_US[0] {
            self.stalled += gap;
        }
        self.max = self.max.max(gap);
    }
}

/// Runs `pubsub bench jitter`.
pub fn run(args: &JitterArgs) -> Result<(), Box<dyn Error>> {
    let mut gaps = Gaps::default();
    let start = Instant::now();
    let mut last = start;
    while last.duration_since(start) < args.duration {
        let now = Instant::now();
        gaps.record(now.duration_since(last));
        last = now;
    }
    let elapsed = last.duration_since(start);
    let stalled_percent = gaps.stalled.as_secs_f64() / elapsed.as_secs_f64() * 100.0;

    let mut summary = Summary::default();
    summary.text("name", "jitter");
    summary.text("scenario", "jitter");
    add_environment(&mut summary);
    summary.number("duration_s", elapsed.as_secs_f64());
    let mut rows = vec![(
        "date".to_owned(),
        summary.get_text("date").unwrap_or_default().to_owned(),
    )];
    for (count, threshold) in gaps.over.iter().zip(THRESHOLDS_US) {
        summary.count(&format!("gaps_over_{threshold}_us"), *count);
        let per_second = *count as f64 / elapsed.as_secs_f64();
        rows.push((
            format!("gaps > {} µs", group_thousands(threshold as f64)),
            format!("{} ({per_second:.1}/s)", group_thousands(*count as f64)),
        ));
    }
    summary.count("max_gap_us", gaps.max.as_micros() as u64);
    summary.number("stalled_percent", stalled_percent);
    rows.push((
        "max gap".into(),
        format!("{} µs", group_thousands(gaps.max.as_micros() as f64)),
    ));
    rows.push((
        "time not running".into(),
        format!("{stalled_percent:.2}% (gaps > 10 µs)"),
    ));
    print_table(
        &format!(
            "jitter over {:.1} s of one spinning thread",
            elapsed.as_secs_f64()
        ),
        &rows,
    );
    if let Some(path) = &args.json {
        std::fs::write(path, summary.to_json())
            .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_count_under_every_threshold_passed() {
        let mut gaps = Gaps::default();
        gaps.record(Duration::from_micros(5));
        gaps.record(Duration::from_micros(150));
        gaps.record(Duration::from_micros(2_000));
        assert_eq!(gaps.over, [2, 2, 1, 1, 0, 0]);
        assert_eq!(gaps.max, Duration::from_micros(2_000));
        assert_eq!(gaps.stalled, Duration::from_micros(2_150));
    }
}
