//! `pubsub bench plot`: latency by percentile as an SVG, one curve per `.hgrm` file.
//!
//! The x axis is 1/(1−p) on a log scale, so that 90%, 99%, 99.9% and 99.99% are evenly
//! spaced; the y axis is latency in microseconds, linear from 0. The last line of an
//! `.hgrm` file (p = 1, the maximum) has no finite x; it is shown in the legend instead.

use super::PlotArgs;
use std::error::Error;
use std::fmt::Write as _;

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 560.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// One run's distribution: (quantile, value in µs) pairs in file order, and the maximum.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub max: Option<f64>,
}

/// Runs `pubsub bench plot`.
pub fn run(args: &PlotArgs) -> Result<(), Box<dyn Error>> {
    let mut curves = Vec::new();
    for input in &args.inputs {
        let (label, path) = match input.split_once('=') {
            Some((label, path)) => (label.to_owned(), path.to_owned()),
            None => {
                let stem = std::path::Path::new(input)
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| input.clone());
                (stem, input.clone())
            }
        };
        let text =
            std::fs::read_to_string(&path).map_err(|err| format!("cannot read {path}: {err}"))?;
        let mut curve = parse_hgrm(&text).map_err(|err| format!("{path}: {err}"))?;
        curve.label = label;
        curves.push(curve);
    }
    let svg = render_svg(&args.title, &curves);
    std::fs::write(&args.out, svg)
        .map_err(|err| format!("cannot write {}: {err}", args.out.display()))?;
    Ok(())
}

/// Reads the Value and Percentile columns of an `.hgrm` file. Header, blank and `#`
/// lines are skipped; a data line with a non-numeric field is an error.
pub fn parse_hgrm(text: &str) -> Result<Curve, String> {
    let mut points = Vec::new();
    let mut max = None;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("Value") {
            continue;
        }
        let mut fields = line.split_whitespace();
        let parse = |field: Option<&str>, column: &str| -> Result<f64, String> {
            field
                .and_then(|f| f.parse::<f64>().ok())
                .ok_or_else(|| format!("line {}: invalid {column} in {line:?}", number + 1))
        };
        let value = parse(fields.next(), "value")?;
        let quantile = parse(fields.next(), "percentile")?;
        if quantile >= 1.0 {
            max = Some(value);
        } else {
            points.push((quantile, value));
        }
    }
    if points.is_empty() && max.is_none() {
        return Err("no percentile lines found; is this an .hgrm file?".into());
    }
    Ok(Curve {
        label: String::new(),
        points,
        max,
    })
}

/// Returns the x-axis label of decade `k` (x = 10^k): 0%, 90%, 99%, 99.9%, …
fn decade_label(k: u32) -> String {
    match k {
        0 => "0%".into(),
        1 => "90%".into(),
        2 => "99%".into(),
        _ => format!("99.{}%", "9".repeat(k as usize - 2)),
    }
}

/// Returns a 1-2-5 tick step that splits `max` into about six intervals.
fn tick_step(max: f64) -> f64 {
    let raw = (max / 6.0).max(1e-9);
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * magnitude);
    step.max(1.0)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Draws `curves` into one SVG document.
pub fn render_svg(title: &str, curves: &[Curve]) -> String {
    let x_of = |quantile: f64| (1.0 / (1.0 - quantile)).log10();
    let data_decades = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|&(q, _)| x_of(q)))
        .fold(0.0f64, f64::max);
    // At least to 99.99%, at most to 99.99999%.
    let decades = (data_decades.ceil() as u32).clamp(4, 7);
    let y_data_max = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|&(_, v)| v))
        .fold(0.0f64, f64::max);
    let step = tick_step(y_data_max.max(1.0));
    let y_max = (y_data_max / step).ceil().max(1.0) * step;

    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - TOP - BOTTOM;
    let px = |x: f64| LEFT + x / decades as f64 * plot_width;
    let py = |y: f64| TOP + plot_height - y / y_max * plot_height;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="28" text-anchor="middle" font-size="16">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );

    // Vertical grid lines and percentile labels.
    let mut x_ticks: Vec<(f64, String)> =
        (0..=decades).map(|k| (k as f64, decade_label(k))).collect();
    x_ticks.insert(1, (2f64.log10(), "50%".into()));
    for (x, label) in &x_ticks {
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{2}" stroke="#ddd"/><text x="{0:.1}" y="{3}" text-anchor="middle">{4}</text>"##,
            px(*x),
            TOP,
            TOP + plot_height,
            TOP + plot_height + 18.0,
            label
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">Percentile</text>"#,
        LEFT + plot_width / 2.0,
        HEIGHT - 15.0
    );

    // Horizontal grid lines and latency labels.
    let mut y = 0.0;
    while y <= y_max + step / 2.0 {
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#ddd"/><text x="{2}" y="{3:.1}" text-anchor="end">{4}</text>"##,
            py(y),
            LEFT + plot_width,
            LEFT - 8.0,
            py(y) + 4.0,
            y
        );
        y += step;
    }
    let _ = writeln!(
        svg,
        r#"<text transform="translate(22 {}) rotate(-90)" text-anchor="middle">Latency (µs)</text>"#,
        TOP + plot_height / 2.0
    );
    let _ = writeln!(
        svg,
        r#"<rect x="{LEFT}" y="{TOP}" width="{plot_width}" height="{plot_height}" fill="none" stroke="black"/>"#
    );

    for (index, curve) in curves.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        let points: Vec<String> = curve
            .points
            .iter()
            .map(|&(q, v)| format!("{:.1},{:.1}", px(x_of(q)), py(v)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let legend_y = TOP + 18.0 + index as f64 * 18.0;
        let max = curve
            .max
            .map(|m| format!(" (max {m} µs)"))
            .unwrap_or_default();
        let _ = writeln!(
            svg,
            r#"<line x1="{0}" y1="{1:.1}" x2="{2}" y2="{1:.1}" stroke="{color}" stroke-width="3"/><text x="{3}" y="{4:.1}">{5}{6}</text>"#,
            LEFT + 12.0,
            legend_y,
            LEFT + 36.0,
            LEFT + 42.0,
            legend_y + 4.0,
            escape(&curve.label),
            max
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::{new_histogram, write_hgrm};

    fn sample_hgrm() -> String {
        let mut histogram = new_histogram();
        for value in 1..=100_000u64 {
            histogram.record(value % 1000 + 10).unwrap();
        }
        let mut out = Vec::new();
        write_hgrm(&histogram, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn hgrm_parses_back() {
        let curve = parse_hgrm(&sample_hgrm()).unwrap();
        assert!(
            curve.points.len() > 20,
            "only {} points",
            curve.points.len()
        );
        assert_eq!(curve.points[0].0, 0.0);
        assert!(
            curve.points.windows(2).all(|w| w[0].0 <= w[1].0),
            "quantiles not sorted"
        );
        assert_eq!(curve.max, Some(1009.0));
    }

    #[test]
    fn hgrm_with_junk_is_rejected() {
        assert!(parse_hgrm("hello world\n").is_err());
        assert!(parse_hgrm("# only a comment\n").is_err());
    }

    #[test]
    fn svg_draws_every_curve_with_percentile_ticks() {
        let mut a = parse_hgrm(&sample_hgrm()).unwrap();
        a.label = "pubsub <fast> & co".into();
        let mut b = a.clone();
        b.label = "nats".into();
        let svg = render_svg("p99 & friends", &[a, b]);
        assert!(svg.starts_with("<svg "));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        for tick in ["50%", "90%", "99%", "99.9%", "99.99%"] {
            assert!(
                svg.contains(&format!(">{tick}</text>")),
                "missing tick {tick}"
            );
        }
        assert!(svg.contains("pubsub &lt;fast&gt; &amp; co"));
        assert!(svg.contains("p99 &amp; friends"));
        assert!(svg.contains("(max 1009 µs)"));
    }

    #[test]
    fn x_axis_grows_with_the_data() {
        let curve = Curve {
            label: "deep".into(),
            points: vec![(0.0, 1.0), (0.999_999, 5.0)],
            max: None,
        };
        let svg = render_svg("t", &[curve]);
        assert!(svg.contains(">99.9999%</text>"));
        assert!(!svg.contains(">99.99999%</text>"));
    }

    #[test]
    fn tick_steps_are_1_2_5() {
        assert_eq!(tick_step(60.0), 10.0);
        assert_eq!(tick_step(100.0), 20.0);
        assert_eq!(tick_step(250.0), 50.0);
        assert_eq!(tick_step(3.0), 1.0);
        assert_eq!(tick_step(7000.0), 2000.0);
    }

    #[test]
    fn decade_labels() {
        let labels: Vec<String> = (0..=5).map(decade_label).collect();
        assert_eq!(labels, ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]);
    }
}
