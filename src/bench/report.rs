//! Run results: percentiles from a latency histogram, HdrHistogram's `.hgrm` percentile
//! text, the flat JSON summary written by `--json`, and the human table on stdout.

use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::io::{self, Write};

/// HdrHistogram's default number of reporting steps per halving of the distance to 100%.
const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// The highest latency a histogram tracks, in microseconds (one hour). Higher values are
/// recorded as this value.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Creates an empty latency histogram: microseconds from 1 to [`MAX_LATENCY_US`], 3
/// significant digits.
///
/// The bounds are fixed because hdrhistogram 7.6's `saturating_record` clamps to the
/// current highest value of an auto-resizing histogram instead of growing it.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// The latency figures every report shows, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
}

impl LatencySummary {
    /// Extracts the summary; each percentile is the highest value equivalent to the
    /// recorded value at that quantile, as HdrHistogram reports it.
    pub fn from_histogram(histogram: &Histogram<u64>) -> LatencySummary {
        let at = |quantile: f64| histogram.value_at_quantile(quantile);
        LatencySummary {
            count: histogram.len(),
            mean: histogram.mean(),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            p9999: at(0.9999),
            max: histogram.max(),
        }
    }
}

/// Writes `histogram` in HdrHistogram's percentile distribution format: a header, one
/// line per reporting step with the columns Value, Percentile, TotalCount and
/// 1/(1-Percentile), and a footer with the mean, standard deviation, maximum and count.
/// Values are in the histogram's unit (microseconds here).
pub fn write_hgrm(histogram: &Histogram<u64>, out: &mut impl Write) -> io::Result<()> {
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    if !histogram.is_empty() {
        for step in histogram.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            total += step.count_since_last_iteration();
            let value = step.value_iterated_to() as f64;
            let quantile = step.quantile_iterated_to();
            if quantile < 1.0 {
                writeln!(
                    out,
                    "{value:12.3} {quantile:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - quantile)
                )?;
            } else {
                writeln!(out, "{value:12.3} {quantile:2.12} {total:10}")?;
            }
        }
    }
    let (mean, stdev, max) = if histogram.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (histogram.mean(), histogram.stdev(), histogram.max() as f64)
    };
    writeln!(
        out,
        "#[Mean    = {mean:12.3}, StdDeviation   = {stdev:12.3}]"
    )?;
    writeln!(
        out,
        "#[Max     = {max:12.3}, Total count    = {:12}]",
        histogram.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        histogram.buckets(),
        sub_bucket_count(histogram.sigfig())
    )
}

/// Returns HdrHistogram's sub-bucket count for a precision: the power of two that covers
/// 2 × 10^sigfig.
fn sub_bucket_count(sigfig: u8) -> u64 {
    (2 * 10u64.pow(u32::from(sigfig))).next_power_of_two()
}

/// One value of a flat JSON summary.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Text(String),
    Number(f64),
    Null,
}

/// A flat JSON object with keys in insertion order; the format `--json` writes and
/// `pubsub bench table` reads. One key per line, so shell tools can read it too.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    fields: Vec<(String, Value)>,
}

impl Summary {
    /// Sets `key` to a string, replacing an earlier value.
    pub fn text(&mut self, key: &str, value: impl Into<String>) {
        self.set(key, Value::Text(value.into()));
    }

    /// Sets `key` to a number; a non-finite number is stored as null.
    pub fn number(&mut self, key: &str, value: impl Into<f64>) {
        let value = value.into();
        self.set(
            key,
            if value.is_finite() {
                Value::Number(value)
            } else {
                Value::Null
            },
        );
    }

    /// Sets `key` to a count. Counts above 2^53 lose precision, as in any JSON reader.
    pub fn count(&mut self, key: &str, value: u64) {
        self.set(key, Value::Number(value as f64));
    }

    fn set(&mut self, key: &str, value: Value) {
        match self.fields.iter_mut().find(|(k, _)| k == key) {
            Some(field) => field.1 = value,
            None => self.fields.push((key.to_owned(), value)),
        }
    }

    /// Returns the value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Returns the number stored under `key`.
    pub fn get_number(&self, key: &str) -> Option<f64> {
        match self.get(key)? {
            Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// Returns the string stored under `key`.
    pub fn get_text(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// Adds the latency figures under `latency_*_us` keys.
    pub fn latency(&mut self, latency: &LatencySummary) {
        self.count("latency_count", latency.count);
        self.number("latency_mean_us", latency.mean);
        self.count("latency_p50_us", latency.p50);
        self.count("latency_p90_us", latency.p90);
        self.count("latency_p99_us", latency.p99);
        self.count("latency_p99_9_us", latency.p999);
        self.count("latency_p99_99_us", latency.p9999);
        self.count("latency_max_us", latency.max);
    }

    /// Renders the summary as a JSON object, one key per line.
    pub fn to_json(&self) -> String {
        let mut out = String::from("{\n");
        for (index, (key, value)) in self.fields.iter().enumerate() {
            let _ = write!(out, "  {}: ", quote(key));
            match value {
                Value::Text(text) => out.push_str(&quote(text)),
                Value::Number(number) => {
                    let _ = write!(out, "{number}");
                }
                Value::Null => out.push_str("null"),
            }
            out.push_str(if index + 1 < self.fields.len() {
                ",\n"
            } else {
                "\n"
            });
        }
        out.push_str("}\n");
        out
    }

    /// Parses a flat JSON object whose values are strings, numbers, booleans (read as 0
    /// or 1) or null. Nested objects and arrays are rejected.
    pub fn parse(text: &str) -> Result<Summary, String> {
        let mut parser = Parser {
            bytes: text.as_bytes(),
            pos: 0,
        };
        let mut summary = Summary::default();
        parser.expect(b'{')?;
        if parser.peek() == Some(b'}') {
            parser.pos += 1;
        } else {
            loop {
                let key = parser.string()?;
                parser.expect(b':')?;
                let value = parser.value()?;
                summary.set(&key, value);
                match parser.next_byte() {
                    Some(b',') => continue,
                    Some(b'}') => break,
                    other => return Err(parser.unexpected(other, "',' or '}'")),
                }
            }
        }
        if parser.peek().is_some() {
            return Err(format!("trailing characters at byte {}", parser.pos));
        }
        Ok(summary)
    }
}

fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn skip_space(&mut self) {
        while self
            .bytes
            .get(self.pos)
            .is_some_and(|b| b.is_ascii_whitespace())
        {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_space();
        self.bytes.get(self.pos).copied()
    }

    fn next_byte(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.pos += 1;
        Some(byte)
    }

    fn unexpected(&self, found: Option<u8>, expected: &str) -> String {
        match found {
            Some(byte) => format!(
                "expected {expected} at byte {}, found {:?}",
                self.pos.saturating_sub(1),
                byte as char
            ),
            None => format!("expected {expected}, found the end of the input"),
        }
    }

    fn expect(&mut self, expected_byte: u8) -> Result<(), String> {
        match self.next_byte() {
            Some(byte) if byte == expected_byte => Ok(()),
            other => Err(self.unexpected(other, &format!("{:?}", expected_byte as char))),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            let Some(&byte) = self.bytes.get(self.pos) else {
                return Err("unterminated string".into());
            };
            self.pos += 1;
            match byte {
                b'"' => break,
                b'\\' => {
                    let Some(&escaped) = self.bytes.get(self.pos) else {
                        return Err("unterminated escape".into());
                    };
                    self.pos += 1;
                    match escaped {
                        b'"' | b'\\' | b'/' => out.push(escaped),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'u' => {
                            let hex = self
                                .bytes
                                .get(self.pos..self.pos + 4)
                                .and_then(|h| std::str::from_utf8(h).ok())
                                .and_then(|h| u32::from_str_radix(h, 16).ok())
                                .ok_or("invalid \\u escape")?;
                            self.pos += 4;
                            let c = char::from_u32(hex).unwrap_or('\u{fffd}');
                            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                        }
                        other => return Err(format!("invalid escape \\{}", other as char)),
                    }
                }
                other => out.push(other),
            }
        }
        String::from_utf8(out).map_err(|_| "string is not valid UTF-8".into())
    }

    fn value(&mut self) -> Result<Value, String> {
        match self.peek() {
            Some(b'"') => Ok(Value::Text(self.string()?)),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b't') => self.literal("true", Value::Number(1.0)),
            Some(b'f') => self.literal("false", Value::Number(0.0)),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.pos;
                while self
                    .bytes
                    .get(self.pos)
                    .is_some_and(|b| b.is_ascii_digit() || b"+-.eE".contains(b))
                {
                    self.pos += 1;
                }
                let text = std::str::from_utf8(&self.bytes[start..self.pos]).unwrap_or_default();
                text.parse()
                    .map(Value::Number)
                    .map_err(|_| format!("invalid number {text:?}"))
            }
            other => Err(self.unexpected(other, "a string, number or null")),
        }
    }

    fn literal(&mut self, word: &str, value: Value) -> Result<Value, String> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(format!("invalid literal at byte {}", self.pos))
        }
    }
}

/// Prints rows of (name, value) as two aligned columns under a title.
pub fn print_table(title: &str, rows: &[(String, String)]) {
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    println!("{title}");
    for (name, value) in rows {
        println!("  {name:<width$}  {value}");
    }
}

/// Formats a rate with a thousands separator and no decimals, e.g. `1,234,567`.
pub fn group_thousands(value: f64) -> String {
    if !value.is_finite() {
        return "n/a".into();
    }
    let rounded = value.round().abs() as u64;
    let digits = rounded.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    if value < 0.0 && rounded != 0 {
        out.insert(0, '-');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram_1_to_10000() -> Histogram<u64> {
        let mut histogram = new_histogram();
        for value in 1..=10_000u64 {
            histogram.record(value).unwrap();
        }
        histogram
    }

    #[test]
    fn percentiles_of_uniform_values() {
        let summary = LatencySummary::from_histogram(&histogram_1_to_10000());
        assert_eq!(summary.count, 10_000);
        assert_eq!(
            summary.p50, 5_003,
            "p50 is the bucket top of 5000 at 3 digits"
        );
        assert_eq!(summary.p90, 9_007);
        assert_eq!(summary.p99, 9_903);
        assert_eq!(summary.p999, 9_991);
        assert_eq!(summary.p9999, 9_999);
        assert_eq!(summary.max, 10_007);
        assert!((summary.mean - 5000.5).abs() < 5.0, "mean {}", summary.mean);
    }

    #[test]
    fn saturating_record_keeps_large_values() {
        let mut histogram = new_histogram();
        histogram.saturating_record(10);
        histogram.saturating_record(250_000);
        histogram.saturating_record(u64::MAX);
        let summary = LatencySummary::from_histogram(&histogram);
        assert_eq!(summary.count, 3);
        assert!(
            (250_000..251_000).contains(&summary.p50),
            "p50 {} should be the 250 ms value",
            summary.p50
        );
        assert!(
            summary.max >= MAX_LATENCY_US,
            "max {} was not clamped to the top",
            summary.max
        );
    }

    #[test]
    fn percentiles_see_the_tail() {
        let mut histogram = new_histogram();
        histogram.record_n(100, 9_990).unwrap();
        histogram.record_n(50_000, 10).unwrap();
        let summary = LatencySummary::from_histogram(&histogram);
        assert_eq!(summary.p99, 100);
        assert_eq!(summary.p999, 100, "the tail is exactly the top 0.1%");
        assert!(
            summary.p9999 >= 49_000,
            "p99.99 {} misses the tail",
            summary.p9999
        );
        assert!(summary.max >= 50_000);
    }

    #[test]
    fn hgrm_has_header_columns_and_footer() {
        let mut out = Vec::new();
        write_hgrm(&histogram_1_to_10000(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines[1], "");
        let first: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(first, ["1.000", "0.000000000000", "1", "1.00"]);

        let data: Vec<&str> = lines[2..]
            .iter()
            .copied()
            .take_while(|line| !line.starts_with('#'))
            .collect();
        let last: Vec<&str> = data.last().unwrap().split_whitespace().collect();
        assert_eq!(last, ["10007.000", "1.000000000000", "10000"]);
        let mut previous_count = 0u64;
        for line in &data {
            let count: u64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
            assert!(count >= previous_count, "TotalCount went down at {line:?}");
            previous_count = count;
        }
        assert!(text.contains("#[Max     =    10007.000, Total count    =        10000]"));
        assert!(text.contains("#[Buckets = "));
        assert!(text.contains("SubBuckets     =         2048]"));
    }

    #[test]
    fn empty_histogram_writes_header_and_footer() {
        let mut out = Vec::new();
        write_hgrm(&new_histogram(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("       Value"));
        assert!(text.contains("Total count    =            0]"));
    }

    #[test]
    fn summary_json_round_trips() {
        let mut summary = Summary::default();
        summary.text("label", "nats \"core\"\n");
        summary.count("sent", 1_000_000);
        summary.number("rate", 1234.5);
        summary.number("bad", f64::NAN);
        summary.text("label", "pubsub");
        let json = summary.to_json();
        assert!(json.contains("\n  \"sent\": 1000000,\n"), "{json}");
        let parsed = Summary::parse(&json).unwrap();
        assert_eq!(parsed, summary);
        assert_eq!(parsed.get_text("label"), Some("pubsub"));
        assert_eq!(parsed.get_number("rate"), Some(1234.5));
        assert_eq!(parsed.get("bad"), Some(&Value::Null));
    }

    #[test]
    fn summary_parse_handles_escapes_and_literals() {
        let parsed = Summary::parse(r#" { "a" : "x\"y\u0041", "b": true, "c": -1.5e3 } "#).unwrap();
        assert_eq!(parsed.get_text("a"), Some("x\"yA"));
        assert_eq!(parsed.get_number("b"), Some(1.0));
        assert_eq!(parsed.get_number("c"), Some(-1500.0));
        assert_eq!(Summary::parse("{}").unwrap(), Summary::default());
    }

    #[test]
    fn summary_parse_rejects_nesting_and_junk() {
        assert!(Summary::parse(r#"{"a": {"b": 1}}"#).is_err());
        assert!(Summary::parse(r#"{"a": [1]}"#).is_err());
        assert!(Summary::parse(r#"{"a": 1} x"#).is_err());
        assert!(Summary::parse(r#"{"a" 1}"#).is_err());
        assert!(Summary::parse(r#"{"a": "open"#).is_err());
    }

    #[test]
    fn thousands_grouping() {
        assert_eq!(group_thousands(0.0), "0");
        assert_eq!(group_thousands(999.4), "999");
        assert_eq!(group_thousands(1000.0), "1,000");
        assert_eq!(group_thousands(1_234_567.8), "1,234,568");
        assert_eq!(group_thousands(-4_500.0), "-4,500");
        assert_eq!(group_thousands(f64::INFINITY), "n/a");
    }
}
