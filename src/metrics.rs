//! The module's figures in Prometheus' text exposition format, for Asterisk's
//! res_prometheus (which adds no prefix: the names here are the names scraped), and the
//! delivery-latency histogram the feeders fill.
//!
//! Threads: `render` is pure; it runs on res_prometheus' HTTP thread over a snapshot
//! taken there. `LatencyHistogram` is lock-free: a feeder observes, any thread takes a
//! snapshot, nobody waits.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds (the last bucket, +Inf, is implied).
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The same bounds in nanoseconds, so an observation is placed without float rounding.
const LATENCY_BOUNDS_NANOS: [u64; 13] = [
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
];

/// One count per bucket of `LATENCY_BUCKETS`, plus the +Inf bucket.
const BUCKETS: usize = LATENCY_BUCKETS.len() + 1;

/// Hangup-to-confirmation latency of one destination: counts per bucket and the sum.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Not cumulative: each observation lands in exactly one slot.
    counts: [AtomicU64; BUCKETS],
    sum_micros: AtomicU64,
}

impl LatencyHistogram {
    pub fn observe(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let slot = LATENCY_BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            counts: std::array::from_fn(|slot| self.counts[slot].load(Ordering::Relaxed)),
            sum_micros: self.sum_micros.load(Ordering::Relaxed),
        }
    }
}

/// A histogram read at one moment. Its count is the sum of its buckets, so `_count`
/// and the +Inf bucket always agree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencySnapshot {
    /// Observations per bucket of `LATENCY_BUCKETS` then +Inf, not cumulative.
    pub counts: [u64; BUCKETS],
    pub sum_micros: u64,
}

impl LatencySnapshot {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_micros as f64 / 1_000_000.0
    }

    /// (upper bound, observations at or below it), as Prometheus' `le` buckets count;
    /// the last bound is infinity.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let bounds = LATENCY_BUCKETS.iter().copied().chain([f64::INFINITY]);
        bounds.zip(self.counts.iter().scan(0u64, |total, &n| {
            *total += n;
            Some(*total)
        }))
    }
}

/// One destination's figures at the moment of a scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DestinationMetrics {
    pub name: String,
    /// `kafka`, `file`, ... (the `type` label).
    pub kind: String,
    pub matched: u64,
    pub delivered: u64,
    pub failed: u64,
    pub filtered: u64,
    pub skipped: u64,
    pub retried: u64,
    pub waiting: u64,
    pub in_flight: u64,
    pub enabled: bool,
    pub up: bool,
    /// `None` for a destination that does not measure it (no histogram is rendered).
    pub latency: Option<LatencySnapshot>,
}

/// The module's figures at the moment of a scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModuleMetrics {
    pub received: u64,
    pub spooled: u64,
    pub refused: u64,
    pub skipped: u64,
    pub spool_depth_records: u64,
    pub spool_depth_bytes: u64,
    pub oldest_age_seconds: f64,
    pub destinations: Vec<DestinationMetrics>,
}

const PREFIX: &str = "asterisk_cdr_kafka_";

enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// The per-destination families that hold one value each.
type DestinationValue = fn(&DestinationMetrics) -> u64;
const DESTINATION_FAMILIES: [(&str, Kind, &str, DestinationValue); 10] = [
    (
        "destination_records_matched_total",
        Kind::Counter,
        "Records the destination's filter let through.",
        |d| d.matched,
    ),
    (
        "destination_records_delivered_total",
        Kind::Counter,
        "Records the destination confirmed (written or acknowledged).",
        |d| d.delivered,
    ),
    (
        "destination_records_failed_total",
        Kind::Counter,
        "Records the destination refused for good, written to the dead-letter file.",
        |d| d.failed,
    ),
    (
        "destination_records_filtered_total",
        Kind::Counter,
        "Records the destination's filter left out.",
        |d| d.filtered,
    ),
    (
        "destination_records_skipped_total",
        Kind::Counter,
        "Records skipped because the spool could not read them back intact.",
        |d| d.skipped,
    ),
    (
        "destination_records_retried_total",
        Kind::Counter,
        "Records offered again after a failure or a rebuild.",
        |d| d.retried,
    ),
    (
        "destination_records_waiting",
        Kind::Gauge,
        "Records in the spool the destination has not confirmed yet.",
        |d| d.waiting,
    ),
    (
        "destination_records_in_flight",
        Kind::Gauge,
        "Records handed to the destination and not yet confirmed or refused.",
        |d| d.in_flight,
    ),
    (
        "destination_enabled",
        Kind::Gauge,
        "1 when the destination is enabled, 0 when an operator disabled it.",
        |d| u64::from(d.enabled),
    ),
    (
        "destination_up",
        Kind::Gauge,
        "1 while the destination is delivering, 0 when it is stopped or broken.",
        |d| u64::from(d.up),
    ),
];

const LATENCY_FAMILY: &str = "destination_delivery_latency_seconds";

/// Appends the text exposition of `metrics` to `out`.
pub fn render(metrics: &ModuleMetrics, out: &mut String) {
    let module: [(&str, Kind, &str, f64); 7] = [
        (
            "records_received_total",
            Kind::Counter,
            "CDRs and CEL events Asterisk handed to cdr_kafka.",
            metrics.received as f64,
        ),
        (
            "records_spooled_total",
            Kind::Counter,
            "Records written to the spool.",
            metrics.spooled as f64,
        ),
        (
            "records_refused_total",
            Kind::Counter,
            "Records the spool refused (full or failing disk): lost.",
            metrics.refused as f64,
        ),
        (
            "records_skipped_total",
            Kind::Counter,
            "Records no destination wanted, so never spooled.",
            metrics.skipped as f64,
        ),
        (
            "spool_depth_records",
            Kind::Gauge,
            "Records in the spool some destination has not confirmed.",
            metrics.spool_depth_records as f64,
        ),
        (
            "spool_depth_bytes",
            Kind::Gauge,
            "Bytes of the records in the spool some destination has not confirmed.",
            metrics.spool_depth_bytes as f64,
        ),
        (
            "spool_oldest_record_age_seconds",
            Kind::Gauge,
            "Age of the oldest record some destination has not confirmed (0 when none).",
            metrics.oldest_age_seconds,
        ),
    ];
    for (name, kind, help, value) in module {
        header(out, name, &kind, help);
        let _ = writeln!(out, "{PREFIX}{name} {}", Number(value));
    }
    if metrics.destinations.is_empty() {
        return;
    }
    for (name, kind, help, value) in &DESTINATION_FAMILIES {
        header(out, name, kind, help);
        for destination in &metrics.destinations {
            let _ = writeln!(
                out,
                "{PREFIX}{name}{{{}}} {}",
                Labels(destination, None),
                value(destination)
            );
        }
    }
    let measured = metrics
        .destinations
        .iter()
        .filter_map(|destination| Some((destination, destination.latency.as_ref()?)));
    let mut measured = measured.peekable();
    if measured.peek().is_none() {
        return;
    }
    header(
        out,
        LATENCY_FAMILY,
        &Kind::Histogram,
        "Seconds from a call's hangup to the destination's confirmation of its record.",
    );
    for (destination, latency) in measured {
        for (bound, count) in latency.cumulative() {
            let _ = writeln!(
                out,
                "{PREFIX}{LATENCY_FAMILY}_bucket{{{}}} {count}",
                Labels(destination, Some(bound))
            );
        }
        let labels = Labels(destination, None);
        let _ = writeln!(
            out,
            "{PREFIX}{LATENCY_FAMILY}_sum{{{labels}}} {}",
            Number(latency.sum_seconds())
        );
        let _ = writeln!(
            out,
            "{PREFIX}{LATENCY_FAMILY}_count{{{labels}}} {}",
            latency.count()
        );
    }
}

fn header(out: &mut String, name: &str, kind: &Kind, help: &str) {
    let _ = writeln!(out, "# HELP {PREFIX}{name} {help}");
    let _ = writeln!(out, "# TYPE {PREFIX}{name} {}", kind.name());
}

/// A sample value as the exposition format writes floats (`+Inf`, `NaN`, `0.25`, `3`).
struct Number(f64);

impl std::fmt::Display for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = self.0;
        if value.is_nan() {
            f.write_str("NaN")
        } else if value.is_infinite() {
            f.write_str(if value > 0.0 { "+Inf" } else { "-Inf" })
        } else {
            write!(f, "{value}")
        }
    }
}

/// `destination="..",type=".."` and, for a bucket, `le=".."`.
struct Labels<'a>(&'a DestinationMetrics, Option<f64>);

impl std::fmt::Display for Labels<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "destination=\"{}\",type=\"{}\"",
            Escaped(&self.0.name),
            Escaped(&self.0.kind)
        )?;
        if let Some(bound) = self.1 {
            write!(f, ",le=\"{}\"", Number(bound))?;
        }
        Ok(())
    }
}

/// A label value: backslash, double quote and line feed escaped, as the format requires.
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka_destination() -> DestinationMetrics {
        let histogram = LatencyHistogram::default();
        histogram.observe(Duration::from_millis(20));
        histogram.observe(Duration::from_millis(300));
        DestinationMetrics {
            name: "global".into(),
            kind: "kafka".into(),
            matched: 10,
            delivered: 7,
            failed: 1,
            filtered: 2,
            skipped: 0,
            retried: 3,
            waiting: 2,
            in_flight: 1,
            enabled: true,
            up: false,
            latency: Some(histogram.snapshot()),
        }
    }

    #[test]
    fn one_kafka_destination_renders_exactly_this_text() {
        let metrics = ModuleMetrics {
            received: 12,
            spooled: 11,
            refused: 1,
            skipped: 0,
            spool_depth_records: 2,
            spool_depth_bytes: 2048,
            oldest_age_seconds: 1.5,
            destinations: vec![kafka_destination()],
        };
        let mut text = String::new();
        render(&metrics, &mut text);
        let labels = r#"destination="global",type="kafka""#;
        let expected = format!(
            r#"# HELP asterisk_cdr_kafka_records_received_total CDRs and CEL events Asterisk handed to cdr_kafka.
# TYPE asterisk_cdr_kafka_records_received_total counter
asterisk_cdr_kafka_records_received_total 12
# HELP asterisk_cdr_kafka_records_spooled_total Records written to the spool.
# TYPE asterisk_cdr_kafka_records_spooled_total counter
asterisk_cdr_kafka_records_spooled_total 11
# HELP asterisk_cdr_kafka_records_refused_total Records the spool refused (full or failing disk): lost.
# TYPE asterisk_cdr_kafka_records_refused_total counter
asterisk_cdr_kafka_records_refused_total 1
# HELP asterisk_cdr_kafka_records_skipped_total Records no destination wanted, so never spooled.
# TYPE asterisk_cdr_kafka_records_skipped_total counter
asterisk_cdr_kafka_records_skipped_total 0
# HELP asterisk_cdr_kafka_spool_depth_records Records in the spool some destination has not confirmed.
# TYPE asterisk_cdr_kafka_spool_depth_records gauge
asterisk_cdr_kafka_spool_depth_records 2
# HELP asterisk_cdr_kafka_spool_depth_bytes Bytes of the records in the spool some destination has not confirmed.
# TYPE asterisk_cdr_kafka_spool_depth_bytes gauge
asterisk_cdr_kafka_spool_depth_bytes 2048
# HELP asterisk_cdr_kafka_spool_oldest_record_age_seconds Age of the oldest record some destination has not confirmed (0 when none).
# TYPE asterisk_cdr_kafka_spool_oldest_record_age_seconds gauge
asterisk_cdr_kafka_spool_oldest_record_age_seconds 1.5
# HELP asterisk_cdr_kafka_destination_records_matched_total Records the destination's filter let through.
# TYPE asterisk_cdr_kafka_destination_records_matched_total counter
asterisk_cdr_kafka_destination_records_matched_total{{{labels}}} 10
# HELP asterisk_cdr_kafka_destination_records_delivered_total Records the destination confirmed (written or acknowledged).
# TYPE asterisk_cdr_kafka_destination_records_delivered_total counter
asterisk_cdr_kafka_destination_records_delivered_total{{{labels}}} 7
# HELP asterisk_cdr_kafka_destination_records_failed_total Records the destination refused for good, written to the dead-letter file.
# TYPE asterisk_cdr_kafka_destination_records_failed_total counter
asterisk_cdr_kafka_destination_records_failed_total{{{labels}}} 1
# HELP asterisk_cdr_kafka_destination_records_filtered_total Records the destination's filter left out.
# TYPE asterisk_cdr_kafka_destination_records_filtered_total counter
asterisk_cdr_kafka_destination_records_filtered_total{{{labels}}} 2
# HELP asterisk_cdr_kafka_destination_records_skipped_total Records skipped because the spool could not read them back intact.
# TYPE asterisk_cdr_kafka_destination_records_skipped_total counter
asterisk_cdr_kafka_destination_records_skipped_total{{{labels}}} 0
# HELP asterisk_cdr_kafka_destination_records_retried_total Records offered again after a failure or a rebuild.
# TYPE asterisk_cdr_kafka_destination_records_retried_total counter
asterisk_cdr_kafka_destination_records_retried_total{{{labels}}} 3
# HELP asterisk_cdr_kafka_destination_records_waiting Records in the spool the destination has not confirmed yet.
# TYPE asterisk_cdr_kafka_destination_records_waiting gauge
asterisk_cdr_kafka_destination_records_waiting{{{labels}}} 2
# HELP asterisk_cdr_kafka_destination_records_in_flight Records handed to the destination and not yet confirmed or refused.
# TYPE asterisk_cdr_kafka_destination_records_in_flight gauge
asterisk_cdr_kafka_destination_records_in_flight{{{labels}}} 1
# HELP asterisk_cdr_kafka_destination_enabled 1 when the destination is enabled, 0 when an operator disabled it.
# TYPE asterisk_cdr_kafka_destination_enabled gauge
asterisk_cdr_kafka_destination_enabled{{{labels}}} 1
# HELP asterisk_cdr_kafka_destination_up 1 while the destination is delivering, 0 when it is stopped or broken.
# TYPE asterisk_cdr_kafka_destination_up gauge
asterisk_cdr_kafka_destination_up{{{labels}}} 0
# HELP asterisk_cdr_kafka_destination_delivery_latency_seconds Seconds from a call's hangup to the destination's confirmation of its record.
# TYPE asterisk_cdr_kafka_destination_delivery_latency_seconds histogram
asterisk_cdr_kafka_destination_delivery_latency_seconds_bucket{{{labels},le="0.005"}} 0
asterisk_cdr_kafka_destination_delivery_latency_seconds_bucket{{{labels},le="0.01"}} 0
asterisk_cdr_kafka_destination_delivery_latency_seconds_bucket{{{labels},le="0.025"}} 1
asterisk_cdr_kafka_destination_delivery_latency_seconds_bucket{{{labels},le="0.05"}} 1
asterisk_cdr_kafka_destination_delivery_latency_seconds_bucket{{{labels},le="0.1"}} 1
asterisk_cdr_kafka_destination_delivery_latency_seconds_bucket{{{labels},le="0.25"}} 1
asterisk_cdr_kafka_destination_delivery_latency_seconds_bucket{{{labels},le="0.5"}} 2
asterisk_cdr_kafka_destination_delivery_latency_seconds_bucket{{{labels},le="1"}} 2
asterisk_cdr_kafka_destination_delivery_latency_seconds_bucket{{{labels},le="2.5"}} 2
asterisk_cdr_kafka_destination_delivery_latency_seconds_bucket{{{labels},le="5"}} 2
asterisk_cdr_kafka_destination_delivery_latency_seconds_bucket{{{labels},le="10"}} 2
asterisk_cdr_kafka_destination_delivery_latency_seconds_bucket{{{labels},le="30"}} 2
asterisk_cdr_kafka_destination_delivery_latency_seconds_bucket{{{labels},le="60"}} 2
asterisk_cdr_kafka_destination_delivery_latency_seconds_bucket{{{labels},le="+Inf"}} 2
asterisk_cdr_kafka_destination_delivery_latency_seconds_sum{{{labels}}} 0.32
asterisk_cdr_kafka_destination_delivery_latency_seconds_count{{{labels}}} 2
"#
        );
        assert_eq!(text, expected);
    }

    /// The exposition of a module with this one destination.
    fn render_destination(destination: DestinationMetrics) -> String {
        let metrics = ModuleMetrics {
            destinations: vec![destination],
            ..ModuleMetrics::default()
        };
        let mut text = String::new();
        render(&metrics, &mut text);
        text
    }

    #[test]
    fn label_values_escape_backslash_quote_and_line_feed() {
        let destination = DestinationMetrics {
            name: "a\\b\"c\nd".into(),
            kind: "file".into(),
            ..DestinationMetrics::default()
        };
        let text = render_destination(destination);
        assert!(
            text.contains(
                "asterisk_cdr_kafka_destination_up{destination=\"a\\\\b\\\"c\\nd\",type=\"file\"} 0\n"
            ),
            "{text}"
        );
        assert!(
            !text.lines().any(|line| line.starts_with("d\"")),
            "a raw line feed split a sample: {text}"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_bounds_are_inclusive() {
        let histogram = LatencyHistogram::default();
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_millis(100)); // exactly on a bound: le="0.1"
        histogram.observe(Duration::from_nanos(100_000_001)); // just above: le="0.25"
        histogram.observe(Duration::from_secs(120)); // past the last bound: +Inf only
        let snapshot = histogram.snapshot();
        let buckets: Vec<(f64, u64)> = snapshot.cumulative().collect();
        assert_eq!(
            buckets,
            [
                (0.005, 1),
                (0.01, 1),
                (0.025, 1),
                (0.05, 1),
                (0.1, 2),
                (0.25, 3),
                (0.5, 3),
                (1.0, 3),
                (2.5, 3),
                (5.0, 3),
                (10.0, 3),
                (30.0, 3),
                (60.0, 3),
                (f64::INFINITY, 4),
            ]
        );
        assert_eq!(snapshot.count(), 4);
        assert_eq!(snapshot.sum_micros, 3_000 + 100_000 + 100_000 + 120_000_000);
    }

    #[test]
    fn destination_without_latency_has_no_histogram() {
        let destination = DestinationMetrics {
            latency: None,
            ..kafka_destination()
        };
        let text = render_destination(destination);
        assert!(
            text.contains("asterisk_cdr_kafka_destination_up{"),
            "{text}"
        );
        assert!(!text.contains("latency"), "{text}");
    }

    #[test]
    fn module_without_destinations_has_no_destination_families() {
        let mut text = String::new();
        render(&ModuleMetrics::default(), &mut text);
        assert!(text.contains("asterisk_cdr_kafka_spool_depth_records 0\n"));
        assert!(!text.contains("asterisk_cdr_kafka_destination_"), "{text}");
    }

    #[test]
    fn special_float_values_use_the_exposition_spelling() {
        assert_eq!(Number(f64::NAN).to_string(), "NaN");
        assert_eq!(Number(f64::INFINITY).to_string(), "+Inf");
        assert_eq!(Number(f64::NEG_INFINITY).to_string(), "-Inf");
        assert_eq!(Number(60.0).to_string(), "60");
        assert_eq!(Number(0.025).to_string(), "0.025");
    }
}
