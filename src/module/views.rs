//! What operators read: `cdr kafka show status` and `show destinations`, and the
//! res_prometheus scrape. Read-only: nothing here changes what runs.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{current, lock};
use crate::config;
use crate::delivery::feeder::DestinationStats;
use crate::delivery::stats::Stats;
use crate::destinations;
use crate::record;

/// The text of `cdr kafka show status`.
pub fn status_text() -> String {
    let Some(running) = current() else {
        return "cdr_kafka is not running\n".to_string();
    };
    let settings = &running.settings;
    let kafka = &settings.kafka;
    let stats = &running.stats;
    let log = &running.log;
    let statuses = lock(&running.delivery).statuses();
    let counters = &log.counters;
    let (depth_records, depth_bytes) = log.depth();
    let mut lines: Vec<(String, String)> = vec![
        (
            "Brokers".into(),
            kafka.shown("bootstrap.servers").unwrap_or_default().into(),
        ),
        (
            "Connection".into(),
            settings.connection.clone().unwrap_or_else(|| "-".into()),
        ),
        ("Topic".into(), settings.topic.clone()),
        (
            "Key".into(),
            settings
                .key
                .map_or_else(|| "(none)".to_string(), |k| k.name().to_string()),
        ),
        ("Running since".into(), format_system_time(running.started)),
        ("Received".into(), Stats::get(&stats.received).to_string()),
        ("Spooled".into(), Stats::get(&stats.spooled).to_string()),
        ("Refused".into(), Stats::get(&stats.failed).to_string()),
    ];
    let total = |pick: fn(&DestinationStats) -> &AtomicU64| -> u64 {
        statuses
            .iter()
            .map(|status| DestinationStats::get(pick(&status.stats)))
            .sum()
    };
    lines.extend([
        ("Queued".into(), total(|s| &s.offered).to_string()),
        ("Delivered".into(), total(|s| &s.delivered).to_string()),
        ("Failed".into(), total(|s| &s.failed).to_string()),
        ("In flight".into(), total(|s| &s.in_flight).to_string()),
        ("Replayed".into(), total(|s| &s.replayed).to_string()),
        ("Retried".into(), total(|s| &s.retried).to_string()),
        (
            "Spool depth".into(),
            format!("{depth_records} records, {depth_bytes} bytes"),
        ),
        (
            "Oldest undelivered".into(),
            log.oldest_undelivered_age()
                .map_or_else(|| "(none)".to_string(), |age| format!("{age} s old")),
        ),
        (
            "Dead-lettered".into(),
            format!(
                "{} (in {})",
                total(|s| &s.failed),
                lock(&running.delivery).dead_letter_path().display()
            ),
        ),
        (
            "Spool refused".into(),
            Stats::get(&counters.refused).to_string(),
        ),
        (
            "Spool sync errors".into(),
            Stats::get(&counters.sync_errors).to_string(),
        ),
        ("Rebuilds".into(), total(|s| &s.rebuilds).to_string()),
        ("CEL".into(), cel_status(&settings.cel)),
        (
            "CEL received".into(),
            Stats::get(&stats.cel_received).to_string(),
        ),
        (
            "CEL spooled".into(),
            Stats::get(&stats.cel_spooled).to_string(),
        ),
        (
            "CEL failed".into(),
            Stats::get(&stats.cel_failed).to_string(),
        ),
        (
            "Spool".into(),
            format!(
                "{} (spool_sync = {})",
                log.dir().display(),
                log.settings().sync.name()
            ),
        ),
    ]);
    for status in &statuses {
        let destination = &status.stats;
        let thread = if destination.running.load(Ordering::Acquire) {
            "feeder running"
        } else {
            "feeder stopped"
        };
        let line = destination
            .describe
            .lock()
            .map(|line| line.clone())
            .unwrap_or_default();
        lines.push((
            format!("Destination {}", status.name),
            format!(
                "{line}; {thread}; delivered {}, failed {}, in flight {}, waiting {}{}",
                DestinationStats::get(&destination.delivered),
                DestinationStats::get(&destination.failed),
                DestinationStats::get(&destination.in_flight),
                status.waiting,
                match DestinationStats::get(&destination.panics) {
                    0 => String::new(),
                    panics => format!(", {panics} pass(es) panicked (see the log)"),
                }
            ),
        ));
        if let Some((error, when)) = destination.last_error.lock().ok().and_then(|l| l.clone()) {
            lines.push((
                format!("Last error {}", status.name),
                format!("{error} (at {})", format_system_time(when)),
            ));
        }
    }
    let text = match stats.last_error() {
        Some((error, when)) => format!("{error} (at {})", format_system_time(when)),
        None => "(none)".into(),
    };
    lines.push(("Last error".into(), text));
    for property in [
        "security.protocol",
        "sasl.mechanisms",
        "sasl.username",
        "sasl.password",
    ] {
        if let Some(value) = kafka.shown(property) {
            lines.push((property.into(), value.to_string()));
        }
    }
    let mut text = String::new();
    for (label, value) in lines {
        text.push_str(&format!("{label:<20}: {value}\n"));
    }
    text
}

fn cel_status(cel: &config::CelSettings) -> String {
    if !cel.enabled {
        return "disabled".to_string();
    }
    let events = if cel.events.is_empty() {
        "all".to_string()
    } else {
        cel.events.join(",")
    };
    format!(
        "enabled, topic '{}', key {}, events {events}",
        cel.topic,
        cel.key.map_or("(none)", |key| key.name())
    )
}

fn format_system_time(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    record::format_time(
        record::CdrTime {
            sec: secs,
            usec: 0,
            gmtoff: 0,
        },
        true,
    )
}

/// The names of the destinations the configuration enables (CLI completion).
pub fn destination_names() -> Vec<String> {
    current()
        .map(|running| {
            destinations::planned(&running.settings)
                .into_iter()
                .map(|p| p.name)
                .collect()
        })
        .unwrap_or_default()
}

/// The text of `cdr kafka show destinations`: one line per destination.
pub fn destinations_text() -> String {
    let Some(running) = current() else {
        return "cdr_kafka is not running\n".to_string();
    };
    let delivery = lock(&running.delivery);
    let statuses = delivery.statuses();
    let mut text = format!(
        "{:<16} {:<7} {:<9} {:>9} {:>9} {:>7} {:>9} {:>8} {:>8}  {}\n",
        "Destination",
        "Type",
        "State",
        "Matched",
        "Delivered",
        "Failed",
        "Filtered",
        "Skipped",
        "Waiting",
        "Target"
    );
    for planned in destinations::planned(&running.settings) {
        let status = statuses.iter().find(|s| s.name == planned.name);
        let stats = delivery.stats_of(&planned.name);
        let get = |pick: fn(&DestinationStats) -> &AtomicU64| {
            stats.as_ref().map_or(0, |s| DestinationStats::get(pick(s)))
        };
        let (state, waiting) = match status {
            Some(status) => ("running", status.waiting),
            None => ("disabled", delivery.waiting_for(&planned.name)),
        };
        let target = stats
            .as_ref()
            .and_then(|s| s.describe.lock().ok().map(|line| line.clone()))
            .unwrap_or_default();
        let _ = writeln!(
            text,
            "{:<16} {:<7} {:<9} {:>9} {:>9} {:>7} {:>9} {:>8} {:>8}  {}",
            planned.name,
            planned.kind.name(),
            state,
            get(|s| &s.matched),
            get(|s| &s.delivered),
            get(|s| &s.failed),
            get(|s| &s.filtered),
            get(|s| &s.skipped),
            waiting,
            target
        );
    }
    let skipped = Stats::get(&running.stats.skipped);
    let _ = writeln!(
        text,
        "CDRs the dialplan sent nowhere (kafka_skip): {skipped}"
    );
    text
}

/// The module's figures for res_prometheus; empty when the module is not running. Runs
/// on res_prometheus's HTTP thread: it never waits for the delivery lock (a stop holds
/// it through a flush); that scrape then lacks the destination series.
pub fn prometheus_text() -> String {
    let Some(running) = current() else {
        return String::new();
    };
    let delivery = match running.delivery.try_lock() {
        Ok(delivery) => Some(delivery),
        Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    };
    let mut destinations = Vec::new();
    if let Some(delivery) = &delivery {
        let statuses = delivery.statuses();
        for planned in destinations::planned(&running.settings) {
            let Some(stats) = delivery.stats_of(&planned.name) else {
                continue;
            };
            let status = statuses.iter().find(|s| s.name == planned.name);
            let get = |counter: &AtomicU64| DestinationStats::get(counter);
            destinations.push(crate::metrics::DestinationMetrics {
                name: planned.name.clone(),
                kind: planned.kind.name().to_string(),
                matched: get(&stats.matched),
                delivered: get(&stats.delivered),
                failed: get(&stats.failed),
                filtered: get(&stats.filtered),
                skipped: get(&stats.skipped),
                retried: get(&stats.retried),
                waiting: status.map_or_else(|| delivery.waiting_for(&planned.name), |s| s.waiting),
                in_flight: get(&stats.in_flight),
                enabled: status.is_some(),
                up: status.is_some() && stats.running.load(Ordering::Acquire),
                latency: Some(stats.latency.snapshot()),
            });
        }
    }
    drop(delivery);
    let stats = &running.stats;
    let (depth_records, depth_bytes) = running.log.depth();
    let metrics = crate::metrics::ModuleMetrics {
        received: Stats::get(&stats.received) + Stats::get(&stats.cel_received),
        spooled: Stats::get(&stats.spooled) + Stats::get(&stats.cel_spooled),
        refused: Stats::get(&stats.failed) + Stats::get(&stats.cel_failed),
        skipped: Stats::get(&stats.skipped),
        spool_depth_records: depth_records,
        spool_depth_bytes: depth_bytes,
        oldest_age_seconds: running.log.oldest_undelivered_age().unwrap_or(0) as f64,
        destinations,
    };
    let mut text = String::new();
    crate::metrics::render(&metrics, &mut text);
    text
}
