//! The module's own start and stop records (`records = control`).

use std::time::{Duration, Instant};

use super::publish::{unix_seconds_text, Headers};
use super::{lock, Running};
use crate::config;
use crate::delivery::feeder::DestinationStats;
use crate::delivery::log::{AppendError, NewRecord, RecordKind};
use crate::delivery::stats::Stats;
use crate::destinations;

impl Running {
    /// Appends the module's own start or stop record (for destinations with
    /// `records = control`); returns its sequence number.
    pub fn publish_control(&self, what: &str) -> Result<u64, AppendError> {
        let record_id = self.record_ids.next();
        let counts = self.counts();
        let identity = &self.identity;
        let (depth, _) = self.log.depth();
        let mut record = serde_json::Map::new();
        let mut put = |name: &str, value: serde_json::Value| {
            record.insert(name.to_string(), value);
        };
        put("type", what.into());
        put("module_version", env!("CARGO_PKG_VERSION").into());
        put("asterisk_version", identity.asterisk_version.clone().into());
        put("entity_id", identity.entity_id.clone().into());
        if !identity.system_name.is_empty() {
            put("system_name", identity.system_name.clone().into());
        }
        put("hostname", identity.hostname.clone().into());
        put(
            "time",
            crate::shaping::contract_time(crate::delivery::log::now_ms(), self.settings.usegmtime)
                .into(),
        );
        put(
            "config_digest",
            format!("crc32:{:08x}", self.settings.digest).into(),
        );
        put(
            "counters",
            serde_json::json!({
                "received": counts.received,
                "spooled": counts.spooled,
                "refused": counts.refused,
                "delivered": counts.delivered,
                "dead_lettered": counts.dead_lettered,
                "skipped": Stats::get(&self.stats.skipped),
            }),
        );
        put("spool_depth", depth.into());
        // serde_json's map keeps keys sorted; the control record's order is the
        // documented one, so it is written field by field.
        let order = config::CONTROL_FIELDS;
        let mut payload = Vec::with_capacity(512);
        payload.push(b'{');
        for name in order {
            if let Some(value) = record.get(name) {
                if payload.len() > 1 {
                    payload.push(b',');
                }
                let _ = serde_json::to_writer(&mut payload, name);
                payload.push(b':');
                let _ = serde_json::to_writer(&mut payload, value);
            }
        }
        payload.push(b'}');
        let timestamp = unix_seconds_text();
        let mut headers = Headers::default();
        self.headers(record_id.as_str(), timestamp.as_str(), &mut headers);
        self.log.append(&NewRecord {
            kind: RecordKind::Control,
            record_id: record_id.as_str(),
            topic: &self.settings.topic,
            key: None,
            headers: headers.as_slice(),
            payload: &payload,
        })
    }

    /// Waits until `deadline` for every running destination that takes control records
    /// to confirm record `seq` (the stop record at unload).
    pub(super) fn wait_for_control_record(&self, seq: u64, deadline: Instant) {
        let takers: Vec<String> = destinations::planned(&self.settings)
            .into_iter()
            .filter(|p| p.routing.records.control)
            .map(|p| p.name)
            .collect();
        if takers.is_empty() {
            return;
        }
        self.log.wake_feeders();
        while Instant::now() < deadline {
            let statuses = lock(&self.delivery).statuses();
            let done = statuses
                .iter()
                .filter(|s| takers.contains(&s.name))
                .all(|s| DestinationStats::get(&s.stats.watermark) > seq);
            if done {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
