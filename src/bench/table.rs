//! `pubsub bench table`: one markdown table from several JSON summaries. Each row is one
//! figure of one named run; each column is one system (the summary's `label`), the
//! baseline first. When a system has several summaries of one run, its cell shows the
//! median of their figures. Every cell but the baseline's also shows its ratio to the
//! baseline's figure: above 1 means a larger figure, which is better for rates and worse
//! for latencies.

use super::TableArgs;
use super::report::{Summary, group_thousands};
use std::error::Error;

/// One figure a row can show.
struct Metric {
    key: &'static str,
    title: &'static str,
    /// Decimals shown; rates and latencies are shown with thousands separators.
    decimals: usize,
    ratio: bool,
}

const LATENCY: &[Metric] = &[
    metric("latency_p50_us", "p50 latency (µs)", 0),
    metric("latency_p99_us", "p99 latency (µs)", 0),
    metric("latency_p99_9_us", "p99.9 latency (µs)", 0),
    metric("latency_p99_99_us", "p99.99 latency (µs)", 0),
    metric("latency_max_us", "max latency (µs)", 0),
    count("lost", "lost messages"),
];

const THROUGHPUT: &[Metric] = &[
    metric("delivered_msgs_per_s", "delivered (msg/s)", 0),
    metric("delivered_mb_per_s", "delivered (MB/s)", 1),
    count("lost", "lost messages"),
];

const REPLAY: &[Metric] = &[
    metric("replay_msgs_per_s", "replay (msg/s)", 0),
    metric("prefill_msgs_per_s", "prefill (msg/s)", 0),
    metric(
        "broker_overhead_per_message_bytes",
        "memory beyond payload (bytes/msg)",
        1,
    ),
    metric(
        "broker_overhead_per_delivered_message_bytes",
        "memory beyond payload once delivered (bytes/msg)",
        1,
    ),
];

const fn metric(key: &'static str, title: &'static str, decimals: usize) -> Metric {
    Metric {
        key,
        title,
        decimals,
        ratio: true,
    }
}

const fn count(key: &'static str, title: &'static str) -> Metric {
    Metric {
        key,
        title,
        decimals: 0,
        ratio: false,
    }
}

/// Runs `pubsub bench table`.
pub fn run(args: &TableArgs) -> Result<(), Box<dyn Error>> {
    let mut summaries = Vec::new();
    for path in &args.inputs {
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
        let summary = Summary::parse(&text)
            .map_err(|err| format!("{} is not a summary: {err}", path.display()))?;
        summaries.push(summary);
    }
    print!("{}", render(&summaries, &args.baseline));
    Ok(())
}

/// Renders the markdown table. Runs appear in the order of their first summary, and
/// systems in the order of their first summary after the baseline.
pub fn render(summaries: &[Summary], baseline: &str) -> String {
    let label_of = |s: &Summary| s.get_text("label").unwrap_or("unlabelled").to_owned();
    let name_of = |s: &Summary| s.get_text("name").unwrap_or("unnamed").to_owned();
    let mut labels = vec![baseline.to_owned()];
    let mut names: Vec<String> = Vec::new();
    for summary in summaries {
        let label = label_of(summary);
        if !labels.contains(&label) {
            labels.push(label);
        }
        let name = name_of(summary);
        if !names.contains(&name) {
            names.push(name);
        }
    }

    let mut out = String::new();
    out.push_str("| run | figure |");
    for label in &labels {
        out.push_str(&format!(" {label} |"));
    }
    out.push_str("\n|---|---|");
    for _ in &labels {
        out.push_str("---:|");
    }
    out.push('\n');

    let mut max_runs = 1;
    for name in &names {
        // The median of `key` over every summary of this run and system.
        let figure = |label: &str, key: &str| {
            let values: Vec<f64> = summaries
                .iter()
                .filter(|s| name_of(s) == *name && label_of(s) == label)
                .filter_map(|s| s.get_number(key))
                .collect();
            median(values)
        };
        for label in &labels {
            let runs = summaries
                .iter()
                .filter(|s| name_of(s) == *name && label_of(s) == *label)
                .count();
            max_runs = max_runs.max(runs);
        }
        let scenario = summaries
            .iter()
            .find(|s| name_of(s) == *name)
            .and_then(|s| s.get_text("scenario"))
            .unwrap_or_default();
        let metrics = match scenario {
            "latency" => LATENCY,
            "replay" => REPLAY,
            _ => THROUGHPUT,
        };
        for metric in metrics {
            let base = figure(baseline, metric.key);
            if labels.iter().all(|l| figure(l, metric.key).is_none()) {
                continue;
            }
            out.push_str(&format!("| {name} | {} |", metric.title));
            for label in &labels {
                let cell = match figure(label, metric.key) {
                    None => "n/a".to_owned(),
                    Some(value) => {
                        let mut cell = format_value(value, metric.decimals);
                        let base = base.filter(|b| *b != 0.0);
                        if let Some(base) = base.filter(|_| metric.ratio && label != baseline) {
                            cell.push_str(&format!(" ({:.2}×)", value / base));
                        }
                        cell
                    }
                };
                out.push_str(&format!(" {cell} |"));
            }
            out.push('\n');
        }
    }
    if max_runs > 1 {
        out.push_str(&format!(
            "\nEach figure is the median of up to {max_runs} runs of that scenario on that system.\n"
        ));
    }
    out
}

/// Returns the median of `values`; the mean of the two middle ones for an even count.
fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    })
}

fn format_value(value: f64, decimals: usize) -> String {
    if decimals == 0 {
        group_thousands(value)
    } else {
        format!("{value:.decimals$}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(name: &str, label: &str, scenario: &str, figures: &[(&str, f64)]) -> Summary {
        let mut summary = Summary::default();
        summary.text("name", name);
        summary.text("label", label);
        summary.text("scenario", scenario);
        for (key, value) in figures {
            summary.number(key, *value);
        }
        summary
    }

    #[test]
    fn table_has_ratios_to_the_baseline() {
        let summaries = vec![
            summary(
                "tp-16B",
                "nats",
                "throughput",
                &[("delivered_msgs_per_s", 500_000.0), ("lost", 0.0)],
            ),
            summary(
                "tp-16B",
                "pubsub",
                "throughput",
                &[("delivered_msgs_per_s", 1_000_000.0), ("lost", 0.0)],
            ),
            summary("lat", "pubsub", "latency", &[("latency_p99_us", 40.0)]),
            summary("lat", "nats", "latency", &[("latency_p99_us", 60.0)]),
        ];
        let table = render(&summaries, "pubsub");
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "| run | figure | pubsub | nats |");
        assert_eq!(lines[1], "|---|---|---:|---:|");
        assert!(
            table.contains("| tp-16B | delivered (msg/s) | 1,000,000 | 500,000 (0.50×) |"),
            "{table}"
        );
        assert!(
            table.contains("| tp-16B | lost messages | 0 | 0 |"),
            "{table}"
        );
        assert!(
            table.contains("| lat | p99 latency (µs) | 40 | 60 (1.50×) |"),
            "{table}"
        );
        assert!(
            !table.contains("p50 latency"),
            "rows with no figure at all are left out"
        );
    }

    #[test]
    fn repeated_runs_show_the_median() {
        let summaries: Vec<Summary> = [3.0, 1.0, 2.0, 10.0, 20.0]
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let label = if i < 3 { "pubsub" } else { "nats" };
                summary("tp", label, "throughput", &[("delivered_msgs_per_s", *v)])
            })
            .collect();
        let table = render(&summaries, "pubsub");
        assert!(
            table.contains("| tp | delivered (msg/s) | 2 | 15 (7.50×) |"),
            "{table}"
        );
        assert!(table.contains("median of up to 3 runs"), "{table}");
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(Vec::new()), None);
    }

    #[test]
    fn missing_figures_show_not_available() {
        let summaries = vec![
            summary("replay", "pubsub", "replay", &[("replay_msgs_per_s", 2e6)]),
            summary(
                "tp",
                "redis",
                "throughput",
                &[("delivered_msgs_per_s", 3e5)],
            ),
        ];
        let table = render(&summaries, "pubsub");
        assert!(
            table.contains("| replay | replay (msg/s) | 2,000,000 | n/a |"),
            "{table}"
        );
        assert!(
            table.contains("| tp | delivered (msg/s) | n/a | 300,000 |"),
            "{table}"
        );
    }
}
